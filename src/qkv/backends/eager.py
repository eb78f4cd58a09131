"""Eager attention: materializes the (B, Hq, Nq, Nk) probabilities with plain torch ops.

Scores, softmax and the product with V run in float32 (float64 for float64
inputs), so half-precision inputs with large logits do not overflow. This is
also the backend that serves `qkv.attention_weights`. ``bias`` is a float
tensor or a score modifier ``mod(score, b, h, q_idx, kv_idx, Nq, Nk)``.
"""

from __future__ import annotations

from typing import Unpack

import torch
from torch import Tensor

from qkv.backends.common import accumulation_dtype, combine_mask, crossovers, index_grids, masked_softmax
from qkv.backends.common.interface import Arguments, Call, Offer, Scores

NAME = "eager"
TAKES_MASK_OBJECTS = False
TAKES_SCORE_MODS = True


def refuse(call: Call) -> str | None:
    """Eager computes every call."""
    return None


def estimate(call: Call) -> Offer:
    return Offer(crossovers.current().eager, "materializes the probabilities; it computes every call")


def _grouped(x: Tensor, num_kv_heads: int) -> Tensor:
    """Split the head axis into (kv head, group): (B, Hq, N, X) -> (B, Hkv, G, N, X)."""
    b, h, n, d = x.shape
    return x.view(b, num_kv_heads, h // num_kv_heads, n, d)


def weights_and_lse(q: Tensor, k: Tensor, **scores: Unpack[Scores]) -> tuple[Tensor, Tensor]:
    """Probabilities ``(B, Hq, Nq, Nk)`` and lse ``(B, Hq, Nq)`` in the accumulation dtype."""
    mask, bias, causal, scale = scores["mask"], scores["bias"], scores["causal"], scores["scale"]
    acc = accumulation_dtype(q.dtype)
    b, hq, nq, _ = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    # grouped-query attention without copying K: query head h = kv * G + g reads kv head kv
    qg = _grouped(q.to(acc), hkv)  # (B, Hkv, G, Nq, D)
    kg = k.to(acc).unsqueeze(2)  # (B, Hkv, 1, Nk, D)
    s = (qg @ kg.transpose(-2, -1)) * scale  # (B, Hkv, G, Nq, D) @ (B, Hkv, 1, D, Nk) -> (B, Hkv, G, Nq, Nk)
    s = s.reshape(b, hq, nq, nk)  # (B, Hkv, G, Nq, Nk) -> (B, Hq, Nq, Nk)
    if isinstance(bias, Tensor):
        s = s + bias.to(acc)
    elif bias is not None:  # a score modifier
        s = bias(s, *index_grids(b, hq, nq, nk, q.device), nq, nk)
    allowed = combine_mask(mask, causal, nq, nk, q.device)
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    if allowed is None and bias is None:
        probs = torch.softmax(s, dim=-1)
        return probs, torch.logsumexp(s, dim=-1)
    return masked_softmax(s)


def attention(q: Tensor, k: Tensor, v: Tensor, **arguments: Unpack[Arguments]) -> tuple[Tensor, Tensor | None]:
    scores = Scores(
        mask=arguments["mask"], bias=arguments["bias"], causal=arguments["causal"], scale=arguments["scale"]
    )
    probs, lse = weights_and_lse(q, k, **scores)
    if arguments["dropout_p"] > 0.0:
        probs = torch.nn.functional.dropout(probs, p=arguments["dropout_p"])
    hkv = v.shape[1]
    pg = _grouped(probs, hkv)  # (B, Hq, Nq, Nk) -> (B, Hkv, G, Nq, Nk)
    vg = v.to(probs.dtype).unsqueeze(2)  # (B, Hkv, 1, Nk, Dv)
    out = pg @ vg  # (B, Hkv, G, Nq, Nk) @ (B, Hkv, 1, Nk, Dv) -> (B, Hkv, G, Nq, Dv)
    out = out.flatten(1, 2)  # (B, Hkv, G, Nq, Dv) -> (B, Hq, Nq, Dv)
    return out.to(q.dtype), (lse if arguments["return_lse"] else None)
