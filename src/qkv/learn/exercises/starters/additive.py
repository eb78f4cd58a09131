# qkv exercise: additive
"""Additive (Bahdanau) attention (qkv learn exercise additive).

query (..., Nq, Dq), keys (..., Nk, Dk), w_q (Dq, A), w_k (Dk, A), v (A,): score[i, j] = v ·
tanh(query_i @ w_q + keys_j @ w_k), weights = softmax over the keys j, context = weights @ keys.
Returns context (..., Nq, Dk) and weights (..., Nq, Nk).

Lesson: qkv learn --text bottleneck
Check:  qkv learn check additive.py
Hints:  qkv learn exercise additive --hint 1   (then 2, 3, ...)
"""

import numpy as np  # noqa: F401  (or `import torch`: when this file imports torch, the grader passes tensors)


def additive_attention(query, keys, w_q, w_k, v):
    """Bahdanau attention: score[i, j] = v · tanh(query_i @ w_q + keys_j @ w_k).

    query: (..., Nq, Dq)   keys: (..., Nk, Dk)   w_q: (Dq, A)   w_k: (Dk, A)   v: (A,)
    Returns (context (..., Nq, Dk), weights (..., Nq, Nk)): weights = softmax over the keys,
    context = weights @ keys.
    """
    raise NotImplementedError("write additive_attention")
