"""torch's fused ``scaled_dot_product_attention``, used only where it computes qkv's function.

What differs and how this file closes the gap:

- torch's ``is_causal`` is top-left aligned; qkv's causal is bottom-right. They
  agree when Nq == Nk, so ``is_causal`` is used only then; otherwise the causal
  triangle goes into the boolean mask. So it does for ``scale <= 0``, where torch's
  fused causal kernel gives NaN (it scales the masked -inf scores: 0 · -inf).
- qkv has a boolean mask *and* an additive bias; torch has one ``attn_mask``.
  Both together become one float mask (bias where allowed, -inf elsewhere).
- A query row with no allowed key must give 0. torch's CPU kernels do so; on
  other devices this file lets such rows attend everything and zeroes them
  afterwards, which also gives them zero gradient.
- torch's function does not return the log-sum-exp, so calls asking for it go
  elsewhere; it takes only additive score modifiers (as a dense bias), and
  structured masks as dense bool tensors (`qkv.functional` densifies them).
"""

from __future__ import annotations

from typing import Unpack

import torch
from torch import Tensor

from qkv.backends.common import causal_allowed, crossovers
from qkv.backends.common.interface import Arguments, Call, Offer

NAME = "sdpa"
TAKES_MASK_OBJECTS = False
TAKES_SCORE_MODS = False  # additive ones arrive as dense biases


def refuse(call: Call) -> str | None:
    if call.return_lse:
        return "torch's scaled_dot_product_attention does not return the log-sum-exp"
    if call.score_mod and not getattr(call.bias, "additive", False):
        return f"the score modifier {call.bias!r} is not an additive bias, which is all torch's kernel takes"
    return None


def estimate(call: Call) -> Offer:
    """The unit of every estimate: every score of the call, plus a score modifier's dense bias, built first."""
    cost = 1.0 + (crossovers.current().dense_bias if call.score_mod else 0.0)
    return Offer(cost, CHOSEN)


CHOSEN = "torch's fused scaled_dot_product_attention computes this call exactly and is the fastest available"


def _attn_mask(
    mask: Tensor | None, bias: Tensor | None, causal: bool, nq: int, nk: int, device: torch.device, scale: float
) -> tuple[Tensor | None, bool]:
    """torch's ``(attn_mask, is_causal)`` for qkv's ``(mask, bias, causal)``."""
    if causal and mask is None and bias is None and nq == nk and scale > 0:
        return None, True
    if causal:
        tri = causal_allowed(nq, nk, device)  # (Nq, Nk)
        mask = tri if mask is None else mask & tri
    if bias is None:
        return mask, False
    if mask is None:
        return bias, False
    return torch.where(mask, bias, torch.full((), float("-inf"), dtype=bias.dtype, device=device)), False


def empty_rows(attn_mask: Tensor) -> Tensor:
    """``(..., Nq, 1)`` True for rows where no key may be attended."""
    if attn_mask.dtype == torch.bool:
        return ~attn_mask.any(dim=-1, keepdim=True)
    return torch.isneginf(attn_mask).all(dim=-1, keepdim=True)


def guard_empty_rows(attn_mask: Tensor) -> tuple[Tensor, Tensor | None]:
    """Let empty rows attend everything (to be zeroed later); None if there are none."""
    empty = empty_rows(attn_mask)
    if not bool(empty.any()):
        return attn_mask, None
    if attn_mask.dtype == torch.bool:
        return attn_mask | empty, empty
    return attn_mask.masked_fill(empty, 0.0), empty


def attention(q: Tensor, k: Tensor, v: Tensor, **arguments: Unpack[Arguments]) -> tuple[Tensor, Tensor | None]:
    """Dense masks and biases only (`qkv.functional` densifies structured ones and additive score modifiers)."""
    mask: Tensor | None = arguments["mask"]
    bias: Tensor | None = arguments["bias"]
    causal, scale, dropout_p = arguments["causal"], arguments["scale"], arguments["dropout_p"]
    nq, nk = q.shape[-2], k.shape[-2]
    attn_mask, is_causal = _attn_mask(mask, bias, causal, nq, nk, q.device, scale)
    b, hq, hkv = q.shape[0], q.shape[1], k.shape[1]
    if nq == 1 and hq != hkv and attn_mask is None and dropout_p == 0.0:
        # one query per head (a decoding step): the heads of a group become the query rows
        # of their shared key/value head, which saves torch from repeating k and v per head
        grouped = q.reshape(b, hkv, hq // hkv, q.shape[-1])  # (B, Hq, 1, D) -> (B, Hkv, G, D)
        out = torch.nn.functional.scaled_dot_product_attention(grouped, k, v, scale=scale)  # (B, Hkv, G, Dv)
        return out.reshape(b, hq, 1, v.shape[-1]), None  # (B, Hkv, G, Dv) -> (B, Hq, 1, Dv)
    empty = None
    if attn_mask is not None and q.device.type != "cpu":
        attn_mask, empty = guard_empty_rows(attn_mask)
    out = torch.nn.functional.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=attn_mask,
        dropout_p=dropout_p,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )  # (B, Hq, Nq, Dv)
    if empty is not None:
        out = out.masked_fill(empty, 0.0)
    return out, None
