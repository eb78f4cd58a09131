"""Error budgets: how far a backend may stray from the float64 reference.

A backend is judged against what a plain same-dtype computation errs, not
against a fixed tolerance: its error against float64 may be at most
``factor ×`` the plain run's error, plus a small absolute floor for the dtype.
`qkv check` and the test suite both use these helpers.

>>> import torch
>>> from qkv import accuracy, reference
>>> q, k, v = torch.randn(3, 1, 2, 32, 16, dtype=torch.float16).unbind(0)
>>> plain = accuracy.plain_attention(q, k, v)
>>> golden = reference.attention(q, k, v)
>>> 0 < accuracy.max_error(plain, golden) < 1e-2
True
"""

from __future__ import annotations

import torch
from torch import Tensor

# The absolute floor per dtype: about one unit of rounding at magnitude 1.
ABS_FLOOR = {
    torch.float64: 1e-12,
    torch.float32: 1e-6,
    torch.bfloat16: 8e-3,
    torch.float16: 1e-3,
}


def plain_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Textbook attention entirely in the inputs' dtype: the baseline a fast backend is held to."""
    nq, nk = q.shape[-2], k.shape[-2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # (B, Hkv, Nk, D) -> (B, Hq, Nk, D)
    v = v.repeat_interleave(group, dim=1)  # (B, Hkv, Nk, Dv) -> (B, Hq, Nk, Dv)
    s = q @ k.transpose(-2, -1) * scale  # (B, Hq, Nq, D) @ (B, Hq, D, Nk) -> (B, Hq, Nq, Nk)
    if bias is not None:
        s = s + bias
    allowed = torch.ones(nq, nk, dtype=torch.bool, device=q.device)
    if causal:
        allowed = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril(nk - nq)
    if mask is not None:
        allowed = allowed & mask
    s = s.masked_fill(~allowed, float("-inf"))
    empty = torch.isneginf(s).all(dim=-1, keepdim=True)
    probs = torch.softmax(s.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    out = probs @ v  # (B, Hq, Nq, Nk) @ (B, Hq, Nk, Dv) -> (B, Hq, Nq, Dv)
    if not return_lse:
        return out
    return out, torch.logsumexp(s, dim=-1)  # (B, Hq, Nq), -inf for empty rows


def max_error(x: Tensor, golden: Tensor) -> float:
    """Largest absolute difference, in float64; inf if ``x`` has a NaN or an inf where golden is finite."""
    x, golden = x.detach().double(), golden.detach().double()
    same_inf = torch.isinf(x) & torch.isinf(golden) & (torch.sign(x) == torch.sign(golden))
    diff = torch.where(same_inf, torch.zeros_like(x), (x - golden).abs())
    diff = torch.nan_to_num(diff, nan=float("inf"))
    return float(diff.max()) if diff.numel() else 0.0


def budget(plain_error: float, dtype: torch.dtype, factor: float = 3.0) -> float:
    """The most a backend may err: ``factor × plain_error + ABS_FLOOR[dtype]``."""
    return factor * plain_error + ABS_FLOOR[dtype]
