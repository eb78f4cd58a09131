# qkv exercise: mha
"""A multi-head attention forward pass (qkv learn exercise mha).

Self-attention of x (B, N, E) with num_heads heads: q = x @ w_q (likewise k, v), split into heads,
scaled dot-product attention per head (scale 1/√(E/H), causal mask bottom-right aligned when
causal), heads merged back, then @ w_o. The weights are (E, E) and used as y = x @ w.

Lesson: qkv learn --text multi-head
Check:  qkv learn check mha.py
Hints:  qkv learn exercise mha --hint 1   (then 2, 3, ...)
"""

import numpy as np  # noqa: F401  (or `import torch`: when this file imports torch, the grader passes tensors)


def multi_head_attention(x, w_q, w_k, w_v, w_o, num_heads, causal=False):
    """Multi-head self-attention of x (B, N, E); the weights are (E, E), used as y = x @ w.

    q, k, v = x @ w_q, x @ w_k, x @ w_v, split into num_heads heads of size E/H;
    per head softmax(q kᵀ / √(E/H)) v (causal: query i sees keys j <= i); heads merged; @ w_o.
    Returns (B, N, E).
    """
    raise NotImplementedError("write multi_head_attention")
