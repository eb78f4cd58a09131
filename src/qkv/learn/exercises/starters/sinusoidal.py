# qkv exercise: sinusoidal
"""Sinusoidal positional encoding (qkv learn exercise sinusoidal).

PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)) for positions p = 0 … n-1:
sin on even columns, cos on odd columns, one frequency per pair.

Lesson: qkv learn --text position
Check:  qkv learn check sinusoidal.py
Hints:  qkv learn exercise sinusoidal --hint 1   (then 2, 3, ...)
"""

import numpy as np  # noqa: F401  (or `import torch`: when this file imports torch, the grader passes tensors)


def sinusoidal_encoding(n, d):
    """(n, d): PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)).

    n: the number of positions (0 … n-1), d: an even number of features.
    """
    raise NotImplementedError("write sinusoidal_encoding")
