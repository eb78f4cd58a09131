import numpy as np


def sliding_window_mask(n, window):
    i, j = np.indices((n, n))
    return (j <= i) & (i - j <= window)
