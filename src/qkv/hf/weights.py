"""Exact attention probabilities from the pass that ran: ``exp(q kᵀ · scale + bias − lse)``, masked.

`qkv.attention` with ``return_lse=True`` gives the log-sum-exp of every query row over its
allowed keys; one more product of the chosen rows and heads with the keys gives their
probabilities exactly, without a second softmax and without materializing the rows and heads
nobody asked for.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qkv.masks import Mask
from qkv.mods import ScoreMod


def _pick(t: Tensor, dim: int, index: Tensor | None) -> Tensor:
    """Rows (or heads) ``index`` of a tensor along ``dim``, unless that axis is broadcast (size 1)."""
    if index is None or t.shape[dim] == 1:
        return t
    return t.index_select(dim, index.to(t.device))


def probabilities(
    q: Tensor,
    k: Tensor,
    lse: Tensor,
    *,
    mask: Mask | Tensor | None,
    bias: ScoreMod | Tensor | None,
    causal: bool,
    scale: float | None,
    heads: Tensor | None = None,
    rows: Tensor | None = None,
) -> Tensor:
    """The probabilities ``(B, H', R, Nk)`` of query heads ``heads`` and rows ``rows`` (all where None).

    ``q (B, Hq, Nq, D)``, ``k (B, Hkv, Nk, D)`` and ``lse (B, Hq, Nq)`` are what one `qkv.attention`
    call took and returned; ``mask``, ``bias``, ``causal`` and ``scale`` mean what they meant there.
    The result is float32 (float64 for float64 inputs); rows with no allowed key are zeros.

    >>> import torch, qkv
    >>> q, k, v = torch.randn(3, 1, 4, 5, 8).unbind(0)          # (B=1, H=4, N=5, D=8) each
    >>> _, lse = qkv.attention(q, k, v, causal=True, return_lse=True)
    >>> p = probabilities(q, k, lse, mask=None, bias=None, causal=True, scale=None)
    >>> torch.allclose(p, qkv.attention_weights(q, k, causal=True), atol=1e-6)
    True
    >>> probabilities(q, k, lse, mask=None, bias=None, causal=True, scale=None,
    ...               heads=torch.tensor([1]), rows=torch.tensor([4])).shape
    torch.Size([1, 1, 1, 5])
    """
    b, hq, nq, d = q.shape  # (B, Hq, Nq, D)
    nk = k.shape[2]
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    group = hq // k.shape[1]
    device = q.device
    head_index = torch.arange(hq, device=device) if heads is None else heads.to(device)
    row_index = torch.arange(nq, device=device) if rows is None else rows.to(device)
    q = _pick(q, 1, heads)  # (B, Hq, Nq, D) -> (B, H', Nq, D)
    q = _pick(q, 2, rows)  # (B, H', Nq, D) -> (B, H', R, D)
    k = k.index_select(1, torch.div(head_index, group, rounding_mode="floor"))  # (B, Hkv, Nk, D) -> (B, H', Nk, D)
    lse = _pick(_pick(lse, 1, heads), 2, rows).to(dtype)  # (B, Hq, Nq) -> (B, H', R)
    s = (q.to(dtype) @ k.to(dtype).transpose(-2, -1)) * (d**-0.5 if scale is None else scale)  # (B, H', R, Nk)
    grid_b = torch.arange(b, device=device)[:, None, None, None]  # (B, 1, 1, 1)
    grid_h = head_index[None, :, None, None]  # (1, H', 1, 1)
    grid_i = row_index[None, None, :, None]  # (1, 1, R, 1)
    grid_j = torch.arange(nk, device=device)[None, None, None, :]  # (1, 1, 1, Nk)
    if isinstance(bias, ScoreMod):
        s = bias(s, grid_b, grid_h, grid_i, grid_j, nq, nk)
    elif bias is not None:
        s = s + _pick(_pick(bias, 1, heads), 2, rows).to(dtype)  # (B|1, H'|1, R|1, Nk)
    allowed = torch.ones((), dtype=torch.bool, device=device)
    if isinstance(mask, Mask):
        allowed = mask.allowed(grid_b, grid_h, grid_i, grid_j, nq, nk)
    elif mask is not None:
        allowed = _pick(_pick(mask, 1, heads), 2, rows).to(torch.bool)
    if causal:
        allowed = allowed & (grid_j <= grid_i + (nk - nq))
    s = s.masked_fill(~allowed, float("-inf"))
    finite = torch.isfinite(lse)[..., None]  # (B, H', R, 1): rows with an allowed key
    return torch.exp(s - torch.where(finite, lse[..., None], 0.0)).masked_fill(~finite, 0.0)
