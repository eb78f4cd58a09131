import numpy as np


def multi_head_attention(x, w_q, w_k, w_v, w_o, num_heads, causal=False):
    b, n, e = x.shape
    d = e // num_heads
    q = (x @ w_q).reshape(b, n, num_heads, d).transpose(0, 2, 1, 3)
    k = (x @ w_k).reshape(b, n, num_heads, d).transpose(0, 2, 1, 3)
    v = (x @ w_v).reshape(b, n, num_heads, d).transpose(0, 2, 1, 3)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(e)
    if causal:
        scores = np.where(np.tri(n, dtype=bool), scores, -np.inf)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return (w @ v).transpose(0, 2, 1, 3).reshape(b, n, e) @ w_o
