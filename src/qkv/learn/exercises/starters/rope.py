# qkv exercise: rope
"""Rotary position embedding (qkv learn exercise rope).

Rotate each pair (x[..., 2i], x[..., 2i+1]) of token n by the angle positions[n] · base^(-2i/D): (a,
b) -> (a cos θ - b sin θ, a sin θ + b cos θ). x is (..., N, D), positions (N,).

Lesson: qkv learn --text position
Check:  qkv learn check rope.py
Hints:  qkv learn exercise rope --hint 1   (then 2, 3, ...)
"""

import numpy as np  # noqa: F401  (or `import torch`: when this file imports torch, the grader passes tensors)


def apply_rope(x, positions, base=10000.0):
    """Rotary embedding of x (..., N, D) at integer positions (N,).

    Pair i is (x[..., 2i], x[..., 2i+1]), rotated by θ = positions[n] · base^(-2i/D):
    (a, b) -> (a cos θ - b sin θ, a sin θ + b cos θ). Returns (..., N, D).
    """
    raise NotImplementedError("write apply_rope")
