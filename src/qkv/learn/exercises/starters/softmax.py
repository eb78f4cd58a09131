# qkv exercise: softmax
"""A numerically stable softmax (qkv learn exercise softmax).

Turn scores into probabilities along `axis`: exp(x) / sum(exp(x)). Large scores (1000) must not
overflow into inf/inf = NaN, and a slice that is all -inf (every key masked) must give zeros.

Lesson: qkv learn --text masks
Check:  qkv learn check softmax.py
Hints:  qkv learn exercise softmax --hint 1   (then 2, 3, ...)
"""

import numpy as np  # noqa: F401  (or `import torch`: when this file imports torch, the grader passes tensors)


def softmax(x, axis=-1):
    """Softmax of ``x`` along ``axis``: non-negative, sums to 1 along ``axis``.

    x: an array of any shape (float32 or float64). A slice that is all -inf gives zeros.
    Returns an array of the same shape.

    For example softmax of [0, log 3] is [0.25, 0.75].
    """
    raise NotImplementedError("write softmax")
