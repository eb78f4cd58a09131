# qkv exercise: split-heads
"""Splitting and merging heads (qkv learn exercise split-heads).

Head h takes features h·E/H … (h+1)·E/H - 1 of each token. split_heads reshapes and moves the head
axis before the tokens; merge_heads is its exact inverse.

Lesson: qkv learn --text multi-head
Check:  qkv learn check split_heads.py
Hints:  qkv learn exercise split-heads --hint 1   (then 2, 3, ...)
"""

import numpy as np  # noqa: F401  (or `import torch`: when this file imports torch, the grader passes tensors)


def split_heads(x, num_heads):
    """(B, N, E) -> (B, H, N, E/H): head h holds features h·E/H … (h+1)·E/H - 1.
    """
    raise NotImplementedError("write split_heads")


def merge_heads(x):
    """(B, H, N, Dh) -> (B, N, H·Dh): the exact inverse of split_heads.
    """
    raise NotImplementedError("write merge_heads")
