import numpy as np


def apply_rope(x, positions, base=10000.0):
    d = x.shape[-1]
    i = np.arange(d // 2)
    theta = positions[:, None] * base ** (-i / d)
    x1, x2 = x[..., ::2], x[..., 1::2]
    out = np.zeros_like(x)
    out[..., ::2] = x1 * np.cos(theta) - x2 * np.sin(theta)
    out[..., 1::2] = x1 * np.sin(theta) + x2 * np.cos(theta)
    return out
