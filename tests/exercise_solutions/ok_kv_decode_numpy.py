import numpy as np


def decode_step(q_t, k_t, v_t, cache_k, cache_v):
    cache_k = np.concatenate([cache_k, k_t], axis=-2)
    cache_v = np.concatenate([cache_v, v_t], axis=-2)
    scores = q_t @ np.swapaxes(cache_k, -1, -2) / np.sqrt(q_t.shape[-1])
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return w @ cache_v, cache_k, cache_v
