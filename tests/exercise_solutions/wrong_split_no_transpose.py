import numpy as np


def split_heads(x, num_heads):
    b, n, e = x.shape
    return x.reshape(b, num_heads, n, e // num_heads)


def merge_heads(x):
    b, h, n, d = x.shape
    return np.swapaxes(x, 1, 2).reshape(b, n, h * d)
