"""A float64 attention for transformers models, written apart from qkv: the spec the ``"qkv"`` runs are held to.

Stock ``eager`` is not a spec: some models take the softmax in float32 even in a float64 model,
and its ``finfo.min`` additive mask turns a fully masked row (a left-padded query) into a uniform
row, or into NaN in float64. This one builds the bool mask with transformers' own ``sdpa_mask``
(never skipped), takes every step in float64, and gives fully masked rows zero weight.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "float64_reference"


def _bool_mask(*args: object, **kwargs: object) -> Tensor | None:
    kwargs["allow_is_causal_skip"] = False
    kwargs["allow_is_bidirectional_skip"] = False
    return sdpa_mask(*args, **kwargs)


def _attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    **kwargs: object,
) -> tuple[Tensor, Tensor]:
    q, k, v = query.double(), key.double(), value.double()
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # (B, Hkv, Nk, D) -> (B, Hq, Nk, D)
    v = v.repeat_interleave(group, dim=1)  # (B, Hkv, Nk, Dv) -> (B, Hq, Nk, Dv)
    nq, nk = q.shape[2], k.shape[2]
    s = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scaling is None else scaling)  # (B, Hq, Nq, Nk)
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if attention_mask is None:
        allowed = torch.ones(nq, nk, dtype=torch.bool)
        if getattr(module, "is_causal", False) and nq > 1:
            allowed = allowed.tril(nk - nq)
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask[..., :nk]
    else:  # a float mask built by the caller
        s = s + attention_mask[..., :nk].double()
        allowed = attention_mask[..., :nk] > torch.finfo(attention_mask.dtype).min / 2
    s = s.masked_fill(~allowed, float("-inf"))
    empty = torch.isneginf(s).all(-1, keepdim=True)
    p = torch.softmax(s.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)  # (B, Hq, Nq, Nk)
    out = (p @ v).to(query.dtype)  # (B, Hq, Nq, Dv)
    return out.transpose(1, 2).contiguous(), p  # (B, Nq, Hq, Dv)


AttentionInterface.register(NAME, _attention)
AttentionMaskInterface.register(NAME, _bool_mask)
