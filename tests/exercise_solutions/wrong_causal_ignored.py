import numpy as np


def multi_head_attention(x, w_q, w_k, w_v, w_o, num_heads, causal=False):
    b, n, e = x.shape
    d = e // num_heads

    def heads(t):
        return t.reshape(b, n, num_heads, d).transpose(0, 2, 1, 3)

    q, k, v = heads(x @ w_q), heads(x @ w_k), heads(x @ w_v)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return (w @ v).transpose(0, 2, 1, 3).reshape(b, n, e) @ w_o
