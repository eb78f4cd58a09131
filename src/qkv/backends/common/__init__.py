"""What the backends share: small pieces of math (here; the reference keeps its own), the interface
every backend answers (`interface`) and the measured crossovers its cost estimates use (`crossovers`)."""

from __future__ import annotations

import torch
from torch import Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def causal_allowed(num_queries: int, num_keys: int, device: torch.device | None = None) -> Tensor:
    """Bottom-right aligned causal mask ``(Nq, Nk)``: True where j <= i + (Nk - Nq)."""
    i = torch.arange(num_queries, device=device)[:, None]  # (Nq, 1)
    j = torch.arange(num_keys, device=device)[None, :]  # (1, Nk)
    return j <= i + (num_keys - num_queries)  # (Nq, Nk)


def index_grids(batch: int, heads: int, num_queries: int, num_keys: int, device: torch.device) -> tuple[Tensor, ...]:
    """Broadcasting index tensors ``b (B,1,1,1), h (1,H,1,1), i (1,1,Nq,1), j (1,1,1,Nk)`` for score modifiers."""
    return (
        torch.arange(batch, device=device)[:, None, None, None],
        torch.arange(heads, device=device)[None, :, None, None],
        torch.arange(num_queries, device=device)[None, None, :, None],
        torch.arange(num_keys, device=device)[None, None, None, :],
    )


def combine_mask(
    mask: Tensor | None, causal: bool, num_queries: int, num_keys: int, device: torch.device
) -> Tensor | None:
    """One bool mask (True = may attend) out of an optional mask and the causal flag."""
    if not causal:
        return mask
    tri = causal_allowed(num_queries, num_keys, device)  # (Nq, Nk)
    return tri if mask is None else mask & tri


def masked_softmax(s: Tensor) -> tuple[Tensor, Tensor]:
    """``(probs, lse)`` over the last axis of scores that may hold -inf.

    A row that is all -inf gives probabilities 0 and lse -inf, and passes zero
    gradient back (its scores are replaced by 0 before the fused softmax, so no
    NaN appears forward or backward).
    """
    empty = torch.isneginf(s).all(dim=-1, keepdim=True)  # (..., Nq, 1)
    s = s.masked_fill(empty, 0.0)
    probs = torch.softmax(s, dim=-1).masked_fill(empty, 0.0)
    lse = torch.logsumexp(s, dim=-1).masked_fill(empty.squeeze(-1), float("-inf"))
    return probs, lse
