# qkv exercise: sliding-window
"""A sliding-window mask (qkv learn exercise sliding-window).

Causal and local: query i may attend key j iff i - window < j <= i, so each query sees `window`
keys, itself included (fewer at the start). True = may attend.

Lesson: qkv learn --text production
Check:  qkv learn check sliding_window.py
Hints:  qkv learn exercise sliding-window --hint 1   (then 2, 3, ...)
"""

import numpy as np  # noqa: F401  (or `import torch`: when this file imports torch, the grader passes tensors)


def sliding_window_mask(n, window):
    """Bool (n, n): query i may attend key j iff i - window < j <= i (causal, `window` keys incl. itself).
    """
    raise NotImplementedError("write sliding_window_mask")
