import numpy as np


def padding_mask(lengths, n_k):
    return (np.arange(n_k) < lengths[:, None])[:, None, None, :]


def masked_attention(q, k, v, lengths):
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    scores = np.where(padding_mask(lengths, k.shape[-2]), scores, -np.inf)
    scores = scores - scores.max(-1, keepdims=True)
    w = np.exp(scores)
    return w / w.sum(-1, keepdims=True) @ v
