# qkv exercise: padding-mask
"""A padding mask whose fully masked rows give zeros (qkv learn exercise padding-mask).

Sequence b of a batch has lengths[b] real keys, the rest is padding. padding_mask marks the real
keys (True = may attend) in a shape that broadcasts over heads and queries; masked_attention(q, k,
v, lengths) with q, k, v (B, H, N, D) attends only real keys, and a sequence of length 0 gives
zeros, not NaN.

Lesson: qkv learn --text masks
Check:  qkv learn check padding_mask.py
Hints:  qkv learn exercise padding-mask --hint 1   (then 2, 3, ...)
"""

import numpy as np  # noqa: F401  (or `import torch`: when this file imports torch, the grader passes tensors)


def padding_mask(lengths, n_k):
    """Bool (B, 1, 1, n_k): key j of sequence b is real (True) iff j < lengths[b].

    lengths: int array (B,).
    """
    raise NotImplementedError("write padding_mask")


def masked_attention(q, k, v, lengths):
    """Attention of q, k, v (B, H, N, D) over the real keys of each sequence only.

    lengths: int array (B,); a sequence of length 0 gives zeros, not NaN. Scale 1/√D.
    Returns (B, H, Nq, Dv).
    """
    raise NotImplementedError("write masked_attention")
