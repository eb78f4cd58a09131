# qkv exercise: kv-decode
"""One KV-cache decode step (qkv learn exercise kv-decode).

The newest token's q_t, k_t, v_t (..., 1, D) and the cache (..., T, D) of the keys and values before
it (T may be 0): append k_t, v_t to the cache once, attend q_t over all T + 1 keys (scale 1/√D,
itself included), return the output (..., 1, Dv) and the grown cache. Decoding step by step equals
the full causal pass.

Lesson: qkv learn --text production
Check:  qkv learn check kv_decode.py
Hints:  qkv learn exercise kv-decode --hint 1   (then 2, 3, ...)
"""

import numpy as np  # noqa: F401  (or `import torch`: when this file imports torch, the grader passes tensors)


def decode_step(q_t, k_t, v_t, cache_k, cache_v):
    """One decoding step with a KV cache.

    q_t, k_t: (..., 1, D)   v_t: (..., 1, Dv)   cache_k: (..., T, D)   cache_v: (..., T, Dv)   (T may be 0)
    Returns (out_t (..., 1, Dv), cache_k (..., T+1, D), cache_v (..., T+1, Dv)): the new key and value
    appended once, q_t attending all T + 1 keys with scale 1/√D.
    """
    raise NotImplementedError("write decode_step")
