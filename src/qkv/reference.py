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

from typing import Literal, Unpack, overload

from torch import Tensor

from qkv.backends import reference as spec
from qkv.errors import AttentionError
from qkv.masks import Mask
from qkv.validation import AttentionCall, CallOptions, ScoreOptions, check_call, check_weights_call


# fmt: off
@overload
def attention(
    q: Tensor, k: Tensor, v: Tensor, *, return_lse: Literal[False] = False, backend: str = "reference",
    **options: Unpack[CallOptions],
) -> Tensor: ...


@overload
def attention(
    q: Tensor, k: Tensor, v: Tensor, *, return_lse: Literal[True], backend: str = "reference",
    **options: Unpack[CallOptions],
) -> tuple[Tensor, Tensor]: ...


@overload
def attention(
    q: Tensor, k: Tensor, v: Tensor, *, return_lse: bool = False, backend: str = "reference",
    **options: Unpack[CallOptions],
) -> Tensor | tuple[Tensor, Tensor]: ...
# fmt: on


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    return_lse: bool = False,
    backend: str = "reference",
    **options: Unpack[CallOptions],
) -> Tensor | tuple[Tensor, Tensor]:
    """`qkv.attention` in float64: ``out`` (and ``lse``) as float64 tensors.

    Takes the arguments of `qkv.attention` (``mask``, ``bias``, ``causal``,
    ``scale``, ``dropout_p`` as ``options``, with the same defaults). ``backend``
    is accepted so the signature matches; only ``"reference"`` is meaningful here.
    """
    if backend != "reference":
        raise AttentionError(f"backend: qkv.reference.attention always computes the spec; got {backend!r}")
    call = check_call(q, k, v, **options)
    kwargs = call.kwargs(bool(return_lse)) | {"mask": _dense_mask(call)}
    out, lse = spec.attention(call.q, call.k, call.values, **kwargs)
    if not return_lse:
        return out
    assert lse is not None, "the spec returns the log-sum-exp it is asked for"
    return out, lse


def attention_weights(q: Tensor, k: Tensor, **options: Unpack[ScoreOptions]) -> Tensor:
    """`qkv.attention_weights` in float64: the probabilities ``(B, Hq, Nq, Nk)``.

    Takes the keyword arguments of `qkv.attention_weights` but ``rows``: ``mask``, ``bias``, ``causal``, ``scale``.
    """
    call = check_weights_call(q, k, **options)
    return spec.weights(call.q, call.k, mask=_dense_mask(call), bias=call.bias, causal=call.causal, scale=call.scale)


def _dense_mask(call: AttentionCall) -> Tensor | None:
    """The call's mask as the spec reads every mask: a bool tensor (`qkv.masks.Mask.to_dense` of a mask object)."""
    if not isinstance(call.mask, Mask):
        return call.mask
    b, hq, nq, nk = call.shape
    return call.mask.to_dense(b, hq, nq, nk, device=call.q.device)
