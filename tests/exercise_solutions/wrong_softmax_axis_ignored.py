import numpy as np


def softmax(x, axis=-1):
    top = x.max(-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0)
    e = np.exp(x - top)
    total = e.sum(-1, keepdims=True)
    return e / np.where(total > 0, total, 1)
