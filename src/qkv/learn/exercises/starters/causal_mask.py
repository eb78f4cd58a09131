# qkv exercise: causal-mask
"""A causal mask (qkv learn exercise causal-mask).

Query i may attend key j iff j <= i + (n_k - n_q): bottom-right aligned, so with a cache (n_q < n_k)
the new queries see the whole past. True = may attend.

Lesson: qkv learn --text masks
Check:  qkv learn check causal_mask.py
Hints:  qkv learn exercise causal-mask --hint 1   (then 2, 3, ...)
"""

import numpy as np  # noqa: F401  (or `import torch`: when this file imports torch, the grader passes tensors)


def causal_mask(n_q, n_k):
    """Bool (n_q, n_k): query i may attend key j iff j <= i + (n_k - n_q).

    Bottom-right aligned, e.g. causal_mask(2, 4):
        [[True, True, True, False],
         [True, True, True, True ]]
    """
    raise NotImplementedError("write causal_mask")
