import numpy as np


def additive_attention(query, keys, w_q, w_k, v):
    e = np.tanh((query @ w_q)[..., :, None, :] + (keys @ w_k)[..., None, :, :])
    scores = np.einsum("...qka,a->...qk", e, v)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    return np.einsum("...qk,...kd->...qd", w, keys), w
