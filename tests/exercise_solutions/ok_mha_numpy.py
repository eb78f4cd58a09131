import numpy as np


def multi_head_attention(x, w_q, w_k, w_v, w_o, num_heads, causal=False):
    b, n, e = x.shape
    d = e // num_heads

    def split(t):
        return t.reshape(b, n, num_heads, d).transpose(0, 2, 1, 3)

    q, k, v = split(x @ w_q), split(x @ w_k), split(x @ w_v)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    if causal:
        scores = np.where(np.tril(np.ones((n, n), bool)), scores, -np.inf)
    scores = scores - scores.max(-1, keepdims=True)
    w = np.exp(scores)
    w = w / w.sum(-1, keepdims=True)
    out = (w @ v).transpose(0, 2, 1, 3).reshape(b, n, e)
    return out @ w_o
