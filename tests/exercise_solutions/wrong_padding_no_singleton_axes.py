import numpy as np


def padding_mask(lengths, n_k):
    return np.arange(n_k)[None, :] < lengths[:, None]


def masked_attention(q, k, v, lengths):
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    scores = np.where(padding_mask(lengths, k.shape[-2]), scores, -np.inf)
    top = scores.max(-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    w = np.exp(scores - top)
    total = w.sum(-1, keepdims=True)
    return w / np.where(total > 0, total, 1.0) @ v
