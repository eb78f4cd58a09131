"""Exact attention probabilities from the pass that ran: ``exp(q kᵀ · scale + bias − lse)``, masked.

`qkv.attention` with ``return_lse=True`` gives the log-sum-exp of every query row over its
allowed keys; one more product of the chosen rows and heads with the keys gives their
probabilities exactly, without a second softmax and without materializing the rows and heads
nobody asked for.
"""

from __future__ import annotations

from typing import Unpack

import torch
from torch import Tensor

from qkv.masks import Mask
from qkv.mods import ScoreMod
from qkv.validation import ScoreOptions


def _pick(t: Tensor, dim: int, index: Tensor | None) -> Tensor:
    """Rows (or heads) ``index`` of a tensor along ``dim``, unless that axis is broadcast (size 1)."""
    if index is None or t.shape[dim] == 1:
        return t
    return t.index_select(dim, index.to(t.device))


def pick(t: Tensor, heads: Tensor | None, rows: Tensor | None) -> Tensor:
    """Heads ``heads`` (axis 1) and query rows ``rows`` (axis 2) of a ``(B, H, Nq, …)`` tensor, all where None,
    an axis of size 1 (broadcast) as it is: ``(B, H', R, …)``."""
    return _pick(_pick(t, 1, heads), 2, rows)


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
    lse = pick(lse, heads, rows)  # (B, Hq, Nq) -> (B, H', R)
    s = _scores(q, k, heads, rows, mask=mask, bias=bias, causal=causal, scale=scale)  # (B, H', R, Nk)
    return _exp_minus(s, lse.to(s.dtype))


def _exp_minus(s: Tensor, lse: Tensor) -> Tensor:
    """``exp(s − lse)`` of masked scores ``(…, R, Nk)``, in ``s``'s own memory (a score matrix is the largest
    tensor here); zeros on rows with no allowed key (``lse = −inf``), NaN where a NaN came in."""
    empty = torch.isneginf(lse)[..., None]  # (…, R, 1): rows with no allowed key
    p = s.sub_(torch.where(empty, 0.0, lse[..., None])).exp_()
    return p.masked_fill(empty, 0.0) if bool(empty.any()) else p


def _scores(q: Tensor, k: Tensor, heads: Tensor | None, rows: Tensor | None, **options: Unpack[ScoreOptions]) -> Tensor:
    """The scores ``q kᵀ · scale + bias`` of heads ``heads`` and rows ``rows`` (all where None), −inf where not
    allowed: ``(B, H', R, Nk)``, float32 (float64 for float64 inputs)."""
    mask, bias, causal, scale = (
        options.get("mask"),
        options.get("bias"),
        options.get("causal", False),
        options.get("scale"),
    )
    b, hq, nq, d = q.shape  # (B, Hq, Nq, D)
    nk = k.shape[2]
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    group = hq // k.shape[1]
    device = q.device
    head_index = torch.arange(hq, device=device) if heads is None else heads.to(device)
    row_index = torch.arange(nq, device=device) if rows is None else rows.to(device)
    q = pick(q, heads, rows)  # (B, Hq, Nq, D) -> (B, H', R, D)
    q = q.to(dtype) * (d**-0.5 if scale is None else scale)  # the scale on R × D numbers, not R × Nk
    k = k.to(dtype)
    r = q.shape[2]
    if heads is None and group > 1:  # every head: each group of query heads reads its kv head, no K copied
        grouped = q.reshape(b, hq // group, group * r, d)  # (B, Hq, R, D) -> (B, Hkv, G·R, D)
        s = (grouped @ k.transpose(-2, -1)).view(b, hq, r, nk)  # (B, Hkv, G·R, Nk) -> (B, Hq, R, Nk)
    else:
        k = k.index_select(1, torch.div(head_index, group, rounding_mode="floor"))  # (B, Hkv, Nk, D) -> (B, H', Nk, D)
        s = q @ k.transpose(-2, -1)  # (B, H', R, Nk)
    grid_b = torch.arange(b, device=device)[:, None, None, None]  # (B, 1, 1, 1)
    grid_h = head_index[None, :, None, None]  # (1, H', 1, 1)
    grid_i = row_index[None, None, :, None]  # (1, 1, R, 1)
    grid_j = torch.arange(nk, device=device)[None, None, None, :]  # (1, 1, 1, Nk)
    if isinstance(bias, ScoreMod):
        s = bias(s, grid_b, grid_h, grid_i, grid_j, nq, nk)
    elif bias is not None:
        s += pick(bias, heads, rows).to(dtype)  # (B|1, H'|1, R|1, Nk)
    allowed: Tensor | None = None
    if isinstance(mask, Mask):
        allowed = mask.allowed(grid_b, grid_h, grid_i, grid_j, nq, nk)
    elif mask is not None:
        allowed = pick(mask, heads, rows).to(torch.bool)
    if causal:
        below = grid_j <= grid_i + (nk - nq)  # (1, 1, R, Nk)
        allowed = below if allowed is None else allowed & below
    if allowed is not None:
        s = s.masked_fill_(~allowed, float("-inf"))
    return s


def attention_with_probabilities(
    q: Tensor, k: Tensor, v: Tensor, **options: Unpack[ScoreOptions]
) -> tuple[Tensor, Tensor, Tensor]:
    """``(out (B, Hq, Nq, Dv), probabilities (B, Hq, Nq, Nk), lse (B, Hq, Nq))`` in one pass, for when every
    probability is wanted anyway: the scores once, their log-sum-exp, ``p = exp(s − lse)``, ``out = p v``.
    ``options`` (``mask``, ``bias``, ``causal``, ``scale``) mean what they mean for `qkv.attention`.

    The probabilities are float32 (float64 for float64 inputs), and ``out`` is computed from them
    in that precision, then given in ``v``'s dtype; rows with no allowed key are zeros.

    >>> import torch, qkv
    >>> q, k, v = torch.randn(3, 1, 4, 5, 8).unbind(0)          # (B=1, H=4, N=5, D=8) each
    >>> out, p, lse = attention_with_probabilities(q, k, v, mask=None, bias=None, causal=True, scale=None)
    >>> torch.allclose(out, qkv.attention(q, k, v, causal=True), atol=1e-6)
    True
    >>> torch.allclose(p, qkv.attention_weights(q, k, causal=True), atol=1e-6)
    True
    """
    s = _scores(q, k, None, None, **options)  # (B, Hq, Nq, Nk)
    top = s.amax(dim=-1)  # (B, Hq, Nq); −inf on a row with no allowed key
    p = torch.softmax(s, dim=-1)  # one pass, as eager's; an all −inf row comes out NaN
    empty = torch.isneginf(top)
    if bool(empty.any()):
        p = p.masked_fill(empty[..., None], 0.0)
    # lse = max + log Σ exp(s − max), and the largest probability is exp(max − lse)
    lse = (top - torch.log(p.amax(dim=-1))).masked_fill(empty, float("-inf"))  # (B, Hq, Nq); −inf on an empty row
    b, hq, nq, nk = p.shape
    hkv = v.shape[1]
    grouped = p.view(b, hkv, (hq // hkv) * nq, nk)  # (B, Hq, Nq, Nk) -> (B, Hkv, G·Nq, Nk): head h reads kv head h // G
    out = (grouped @ v.to(p.dtype)).view(b, hq, nq, v.shape[-1])  # (B, Hkv, G·Nq, Dv) -> (B, Hq, Nq, Dv)
    return out.to(v.dtype), p, lse
