"""The specification, callable: attention computed in float64 with the same arguments as `qkv.attention`.

Use it as the golden answer in tests and experiments. Arguments are checked
exactly as `qkv.attention` checks them; results stay in float64 whatever the
input dtype (compare a float16 run against it, not against itself). The math
lives in `qkv.backends.reference`, one short file.

>>> import torch, qkv
>>> q, k, v = torch.randn(3, 1, 2, 6, 16).unbind(0)
>>> out = qkv.reference.attention(q, k, v, causal=True)
>>> out.dtype
torch.float64
>>> (qkv.attention(q, k, v, causal=True).double() - out).abs().max() < 1e-5
tensor(True)
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from qkv.backends import reference as spec
from qkv.errors import AttentionError
from qkv.masks import Mask
from qkv.validation import AttentionCall, check_call


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    return_lse: bool = False,
    backend: str = "reference",
) -> Tensor | tuple[Tensor, Tensor]:
    """`qkv.attention` in float64: ``out`` (and ``lse``) as float64 tensors.

    ``backend`` is accepted so the signature matches `qkv.attention`; only
    ``"reference"`` is meaningful here.
    """
    if backend != "reference":
        raise AttentionError(f"backend: qkv.reference.attention always computes the spec; got {backend!r}")
    call = _dense(check_call(q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, dropout_p=dropout_p))
    out, lse = spec.attention(call.q, call.k, call.v, **call.kwargs(bool(return_lse)))
    return (out, lse) if return_lse else out


def attention_weights(
    q: Tensor,
    k: Tensor,
    *,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """`qkv.attention_weights` in float64: the probabilities ``(B, Hq, Nq, Nk)``."""
    call = _dense(check_call(q, k, None, mask=mask, bias=bias, causal=causal, scale=scale))
    return spec.weights(call.q, call.k, mask=call.mask, bias=call.bias, causal=call.causal, scale=call.scale)


def _dense(call: AttentionCall) -> AttentionCall:
    """A mask object as the spec reads every mask: its dense bool form (`qkv.masks.Mask.to_dense`)."""
    if not isinstance(call.mask, Mask):
        return call
    b, hq, nq, nk = call.shape
    return dataclasses.replace(call, mask=call.mask.to_dense(b, hq, nq, nk, device=call.q.device))
