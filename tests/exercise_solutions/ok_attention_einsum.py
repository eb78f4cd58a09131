import numpy as np


def attention(q, k, v, mask=None):
    scores = np.einsum("...qd,...kd->...qk", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    top = np.max(scores, axis=-1, keepdims=True)
    top[~np.isfinite(top)] = 0
    w = np.exp(scores - top)
    total = w.sum(-1, keepdims=True)
    total[total == 0] = 1
    return np.einsum("...qk,...kd->...qd", w / total, v)
