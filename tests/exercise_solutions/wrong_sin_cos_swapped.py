import numpy as np


def sinusoidal_encoding(n, d):
    pe = np.zeros((n, d))
    position = np.arange(n)[:, None]
    div = np.exp(np.arange(0, d, 2) * -(np.log(10000.0) / d))
    pe[:, 0::2] = np.cos(position * div)
    pe[:, 1::2] = np.sin(position * div)
    return pe
