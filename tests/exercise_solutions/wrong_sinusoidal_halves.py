import numpy as np


def sinusoidal_encoding(n, d):
    angles = np.arange(n)[:, None] / 10000 ** (np.arange(0, d, 2)[None, :] / d)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)
