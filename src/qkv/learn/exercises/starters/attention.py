# qkv exercise: attention
"""Scaled dot-product attention (qkv learn exercise attention).

q (..., Nq, D), k (..., Nk, D), v (..., Nk, Dv) with any leading batch/head dims: softmax(q kᵀ /
√d_k) v, over the keys. `mask` is bool, broadcasts to (..., Nq, Nk), True = may attend; a query with
no allowed key gives zeros, not NaN.

Lesson: qkv learn --text scaling
Check:  qkv learn check attention.py
Hints:  qkv learn exercise attention --hint 1   (then 2, 3, ...)
"""

import numpy as np  # noqa: F401  (or `import torch`: when this file imports torch, the grader passes tensors)


def attention(q, k, v, mask=None):
    """Scaled dot-product attention: softmax(q kᵀ / √d_k, masked) v.

    q: (..., Nq, D)   k: (..., Nk, D)   v: (..., Nk, Dv)   (any leading batch/head dims)
    mask: None or bool, broadcastable to (..., Nq, Nk); True = may attend.
    Returns (..., Nq, Dv). A query row with no allowed key gives zeros.
    """
    raise NotImplementedError("write attention")
