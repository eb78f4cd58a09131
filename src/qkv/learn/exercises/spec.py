"""The exercises' specification: each exercise's functions in plain torch float64, any leading dims.

These are the golden answers the grader compares a learner's function with. They are
written as plainly as `qkv.backends.reference` (and tested against it, against
`qkv.positional` and `qkv.nn`), but take the exercises' shapes: ``(…, N, D)`` with any
leading batch/head dims, bool masks with True = may attend that broadcast over them.
A query row with no allowed key gives zeros, never NaN.

>>> import torch
>>> softmax(torch.tensor([[0.0, float("-inf")], [float("-inf"), float("-inf")]]))
tensor([[1., 0.],
        [0., 0.]], dtype=torch.float64)
>>> causal_mask(2, 3).int()
tensor([[1, 1, 0],
        [1, 1, 1]], dtype=torch.int32)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "additive_attention",
    "apply_rope",
    "attention",
    "causal_mask",
    "decode_step",
    "masked_attention",
    "merge_heads",
    "multi_head_attention",
    "padding_mask",
    "sinusoidal_encoding",
    "sliding_window_mask",
    "softmax",
    "split_heads",
]


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """Softmax over ``axis`` in float64; a slice that is all -inf gives zeros."""
    x = x.double()
    top = x.amax(dim=axis, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # an all -inf slice: shift by 0
    e = torch.exp(x - top)
    total = e.sum(dim=axis, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))  # an all -inf slice: 0 / 1


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """``softmax(q kᵀ / √d_k, masked) v``.

    ``q (…, Nq, D)``, ``k (…, Nk, D)``, ``v (…, Nk, Dv)`` -> ``(…, Nq, Dv)``; ``mask`` bool, True = may attend.
    """
    q, k, v = q.double(), k.double(), v.double()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale  # (…, Nq, D) @ (…, D, Nk) -> (…, Nq, Nk)
    if mask is not None:
        scores = scores.masked_fill(~mask.bool(), float("-inf"))  # mask broadcasts to (…, Nq, Nk)
    return softmax(scores, -1) @ v  # (…, Nq, Nk) @ (…, Nk, Dv) -> (…, Nq, Dv)


def causal_mask(n_q: int, n_k: int) -> Tensor:
    """Bottom-right aligned: query ``i`` may attend key ``j`` iff ``j <= i + (n_k - n_q)``; bool ``(n_q, n_k)``."""
    i = torch.arange(n_q)[:, None]  # (n_q, 1)
    j = torch.arange(n_k)[None, :]  # (1, n_k)
    return j <= i + (n_k - n_q)  # (n_q, n_k)


def padding_mask(lengths: Tensor, n_k: int) -> Tensor:
    """Key ``j`` of sequence ``b`` may be attended iff ``j < lengths[b]``: bool ``(B, 1, 1, n_k)``."""
    j = torch.arange(n_k)[None, :]  # (1, n_k)
    allowed = j < lengths.long()[:, None]  # (B, 1) -> (B, n_k)
    return allowed[:, None, None, :]  # (B, n_k) -> (B, 1, 1, n_k)


def masked_attention(q: Tensor, k: Tensor, v: Tensor, lengths: Tensor) -> Tensor:
    """Attention over ``q, k, v (B, H, N, D)`` where sequence ``b`` has ``lengths[b]`` real keys."""
    return attention(q, k, v, padding_mask(lengths, k.shape[-2]))


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``(B, N, E)`` -> ``(B, H, N, E/H)``: head ``h`` holds features ``h·E/H … (h+1)·E/H - 1``."""
    b, n, e = x.shape
    return x.double().reshape(b, n, num_heads, e // num_heads).transpose(1, 2)  # (B, N, H, Dh) -> (B, H, N, Dh)


def merge_heads(x: Tensor) -> Tensor:
    """``(B, H, N, Dh)`` -> ``(B, N, H·Dh)``, the inverse of `split_heads`."""
    b, h, n, d = x.shape
    return x.double().transpose(1, 2).reshape(b, n, h * d)  # (B, H, N, Dh) -> (B, N, H, Dh) -> (B, N, H·Dh)


def multi_head_attention(
    x: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor, w_o: Tensor, num_heads: int, causal: bool = False
) -> Tensor:
    """Self-attention with ``H`` heads from ``(E, E)`` weights used as ``y = x @ w``: ``(B, N, E)`` -> ``(B, N, E)``."""
    x = x.double()
    q = split_heads(x @ w_q.double(), num_heads)  # (B, N, E) -> (B, H, N, Dh)
    k = split_heads(x @ w_k.double(), num_heads)  # (B, N, E) -> (B, H, N, Dh)
    v = split_heads(x @ w_v.double(), num_heads)  # (B, N, E) -> (B, H, N, Dh)
    n = x.shape[1]
    out = attention(q, k, v, causal_mask(n, n) if causal else None)  # (B, H, N, Dh)
    return merge_heads(out) @ w_o.double()  # (B, N, E) @ (E, E) -> (B, N, E)


def _angles(positions: Tensor, d: int, base: float) -> Tensor:
    """``p · base^(-2i/d)`` for pair ``i``: ``(…, N)`` -> ``(…, N, d/2)``."""
    inv_freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    return positions.double()[..., None] * inv_freq  # (…, N, 1) * (d/2,) -> (…, N, d/2)


def sinusoidal_encoding(n: int, d: int) -> Tensor:
    """``PE[p, 2i] = sin(p / 10000^(2i/d))``, ``PE[p, 2i+1] = cos(p / 10000^(2i/d))``: ``(n, d)``."""
    angles = _angles(torch.arange(n), d, 10000.0)  # (n, d/2)
    pe = torch.empty(n, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles[:, : d // 2])
    return pe


def apply_rope(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotate pair ``(x[2i], x[2i+1])`` at position ``p`` by ``p · base^(-2i/D)``.

    ``x (…, N, D)``, ``positions (N,)``.
    """
    x = x.double()
    angles = _angles(positions, x.shape[-1], float(base))  # (N, D/2)
    cos, sin = torch.cos(angles), torch.sin(angles)
    even, odd = x[..., 0::2], x[..., 1::2]  # (…, N, D/2) each
    out = torch.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def decode_step(
    q_t: Tensor, k_t: Tensor, v_t: Tensor, cache_k: Tensor, cache_v: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One decoding step: append ``k_t, v_t (…, 1, D)`` to the cache ``(…, T, D)``, attend all ``T + 1`` keys."""
    cache_k = torch.cat([cache_k.double(), k_t.double()], dim=-2)  # (…, T, D) + (…, 1, D) -> (…, T+1, D)
    cache_v = torch.cat([cache_v.double(), v_t.double()], dim=-2)  # (…, T, Dv) + (…, 1, Dv) -> (…, T+1, Dv)
    return attention(q_t, cache_k, cache_v), cache_k, cache_v


def additive_attention(query: Tensor, keys: Tensor, w_q: Tensor, w_k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Bahdanau: ``score[i, j] = vᵀ tanh(query_i @ w_q + keys_j @ w_k)``; softmax over keys; context = weights @ keys.

    ``query (…, Nq, Dq)``, ``keys (…, Nk, Dk)``, ``w_q (Dq, A)``, ``w_k (Dk, A)``, ``v (A,)``
    -> ``context (…, Nq, Dk)``, ``weights (…, Nq, Nk)``.
    """
    query, keys = query.double(), keys.double()
    a = (query @ w_q.double())[..., :, None, :]  # (…, Nq, Dq) @ (Dq, A) -> (…, Nq, 1, A)
    b = (keys @ w_k.double())[..., None, :, :]  # (…, Nk, Dk) @ (Dk, A) -> (…, 1, Nk, A)
    scores = torch.tanh(a + b) @ v.double()  # (…, Nq, Nk, A) @ (A,) -> (…, Nq, Nk)
    weights = softmax(scores, -1)
    return weights @ keys, weights  # (…, Nq, Nk) @ (…, Nk, Dk) -> (…, Nq, Dk)


def sliding_window_mask(n: int, window: int) -> Tensor:
    """Causal and local: query ``i`` may attend key ``j`` iff ``i - window < j <= i``; bool ``(n, n)``."""
    i = torch.arange(n)[:, None]  # (n, 1)
    j = torch.arange(n)[None, :]  # (1, n)
    return (j <= i) & (j > i - window)  # (n, n)
