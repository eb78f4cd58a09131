import math

import numpy as np


def softmax(x, axis=-1):
    x = np.moveaxis(np.asarray(x), axis, -1)
    out = np.zeros_like(x)
    for index in np.ndindex(*x.shape[:-1]):
        row = x[index]
        biggest = max(row)
        if biggest == -math.inf:
            continue
        exps = [math.exp(value - biggest) for value in row]
        total = sum(exps)
        out[index] = [e / total for e in exps]
    return np.moveaxis(out, -1, axis)
