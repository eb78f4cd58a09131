"""The functional API: `attention`, `attention_weights`, `explain_dispatch`.

Each function checks its arguments once (`qkv.validation`), picks a backend
(`qkv.dispatch`) and runs it. Layout is ``(B, H, N, D)`` throughout.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Unpack, overload

import torch
from torch import Tensor

from qkv import checks
from qkv.backends import BACKENDS, eager
from qkv.backends import reference as spec
from qkv.backends.common import accumulation_dtype, causal_allowed, index_grids
from qkv.dispatch import Dispatch, choose
from qkv.masks import Causal, Mask
from qkv.mods import ScoreMod
from qkv.validation import AttentionCall, CallOptions, check_call, check_rows, check_weights_call


def _normalized(call: AttentionCall) -> AttentionCall:
    """``mask=masks.causal()`` is ``causal=True`` (which fused kernels run without a mask), and one
    query under bottom-right causal alignment (a decoding step) sees every key: no mask at all."""
    causal = call.causal or isinstance(call.mask, Causal)
    mask = None if isinstance(call.mask, Causal) else call.mask
    if causal and call.q.shape[2] <= 1:
        causal = False
    if causal == call.causal and mask is call.mask:
        return call
    return dataclasses.replace(call, mask=mask, causal=causal)


def _backend_kwargs(call: AttentionCall, backend: str, return_lse: bool) -> dict[str, Any]:
    """The call's arguments in the form the backend takes: dense where it cannot read structure."""
    module = BACKENDS[backend]
    kwargs = call.kwargs(return_lse)
    b, hq, nq, nk = call.shape
    if isinstance(call.mask, Mask) and not module.TAKES_MASK_OBJECTS:
        kwargs["mask"] = call.mask.to_dense(b, hq, nq, nk, device=call.q.device)
    if isinstance(call.bias, ScoreMod) and not module.TAKES_SCORE_MODS:
        kwargs["bias"] = call.bias.additive_bias(b, hq, nq, nk, device=call.q.device, dtype=call.q.dtype)
    return kwargs


# The options are `qkv.validation.CallOptions` (mask, bias, causal, scale, dropout_p); only ``return_lse`` changes
# what comes back.
# fmt: off
@overload
def attention(
    q: Tensor, k: Tensor, v: Tensor, *, return_lse: Literal[False] = False, backend: str = "auto",
    **options: Unpack[CallOptions],
) -> Tensor: ...


@overload
def attention(
    q: Tensor, k: Tensor, v: Tensor, *, return_lse: Literal[True], backend: str = "auto",
    **options: Unpack[CallOptions],
) -> tuple[Tensor, Tensor]: ...


@overload
def attention(
    q: Tensor, k: Tensor, v: Tensor, *, return_lse: bool = False, backend: str = "auto",
    **options: Unpack[CallOptions],
) -> Tensor | tuple[Tensor, Tensor]: ...
# fmt: on


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | Mask | None = None,
    bias: Tensor | ScoreMod | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    return_lse: bool = False,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Scaled dot-product attention, ``softmax(q kᵀ · scale + bias) v`` over the allowed keys.

    Args:
        q: queries ``(B, Hq, Nq, D)``.
        k: keys ``(B, Hkv, Nk, D)``. ``Hq % Hkv == 0``: query head ``h`` reads key
            head ``h // (Hq // Hkv)`` (grouped-query; ``Hkv = 1`` is multi-query).
        v: values ``(B, Hkv, Nk, Dv)``.
        mask: True = may attend. A `qkv.masks.Mask` (``masks.sliding_window(256)``,
            ``masks.document(ids) & masks.causal()``, ...), whose structure lets the
            blockwise backend skip what it rules out; or a bool tensor, 2-D
            ``(Nq, Nk)`` or 4-D, broadcastable to ``(B, Hq, Nq, Nk)`` (each axis 1 or full size).
        bias: a `qkv.mods.ScoreMod` (``mods.alibi(H)``, ``mods.softcap(30)``, ...)
            applied to the scaled scores, or a float tensor of q's dtype, shaped like
            a dense ``mask``, added to them (-inf entries act as a mask).
        causal: bottom-right aligned: query ``i`` may attend key ``j`` iff
            ``j <= i + (Nk - Nq)``::

                Nq = Nk = 4        Nq = 2, Nk = 4 (2 new queries, KV cache of 4)
                  k0 k1 k2 k3        k0 k1 k2 k3
              q0  x  .  .  .     q0  x  x  x  .
              q1  x  x  .  .     q1  x  x  x  x
              q2  x  x  x  .
              q3  x  x  x  x     With Nq > Nk the first Nq - Nk rows see no key.

        scale: multiplies ``q kᵀ``; defaults to ``1/sqrt(D)``. ``scale=1.0`` is unscaled.
        dropout_p: probability of zeroing an attention weight (applied whenever > 0,
            as in torch; modules pass 0 in eval mode).
        return_lse: also return the log-sum-exp ``(B, Hq, Nq)`` of the allowed scores.
        backend: ``"auto"`` (see `explain_dispatch`), ``"sdpa"``, ``"blockwise"``, ``"eager"``,
            ``"triton"`` (CUDA tensors; ``pip install qkv[gpu]``) or ``"reference"``.

    Returns:
        ``out (B, Hq, Nq, Dv)`` in q's dtype; with ``return_lse`` also ``lse``, float32
        (float64 for float64 inputs). A query row with no allowed key gives
        ``out = 0``, ``lse = -inf`` and zero gradients, on every backend.

    Raises:
        AttentionError: bad shapes, dtypes, devices or arguments; the message says which.

    Equivalent to (for allowed keys; see `qkv.reference.attention` for the spec):

    >>> import torch, qkv
    >>> q, k, v = torch.randn(3, 2, 4, 5, 8).unbind(0)   # (B=2, H=4, N=5, D=8) each
    >>> s = (q @ k.transpose(-2, -1)) / 8 ** 0.5
    >>> expected = torch.softmax(s, dim=-1) @ v
    >>> torch.allclose(qkv.attention(q, k, v), expected, atol=1e-6)
    True
    >>> out, lse = qkv.attention(q, k, v, causal=True, return_lse=True)
    >>> out.shape, lse.shape
    (torch.Size([2, 4, 5, 8]), torch.Size([2, 4, 5]))
    """
    call = _normalized(check_call(q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, dropout_p=dropout_p))
    return_lse = checks.flag("return_lse", return_lse)
    chosen = choose(call, backend, return_lse)
    kwargs = _backend_kwargs(call, chosen.backend, return_lse)
    result: tuple[Tensor, Tensor | None] = BACKENDS[chosen.backend].attention(call.q, call.k, call.values, **kwargs)
    out, lse = result
    if bool(torch.isnan(out.detach().sum())):  # rare: NaN somewhere (one sum over out, ~1% of the call)
        out, lse = _spec_on_nan_rows(call, out, lse)
    out = out.to(call.q.dtype)
    if not return_lse:
        return out
    assert lse is not None, "every backend returns the log-sum-exp it is asked for"
    return out, lse.to(accumulation_dtype(call.q.dtype))


def attention_weights(
    q: Tensor,
    k: Tensor,
    *,
    mask: Tensor | Mask | None = None,
    bias: Tensor | ScoreMod | None = None,
    causal: bool = False,
    scale: float | None = None,
    rows: Tensor | list[int] | None = None,
) -> Tensor:
    """The exact attention probabilities ``(B, Hq, Nq, Nk)``, the weights `attention` applies to ``v``.

    Arguments mean what they mean for `attention`. With ``rows`` (a 1-D integer
    tensor or list of query indices) only those query rows are computed:
    ``(B, Hq, len(rows), Nk)``, at memory proportional to ``len(rows) * Nk``.
    Rows with no allowed key are zeros. The result is float32 (float64 for
    float64 inputs), so half-precision inputs keep exact weights.

    >>> import torch, qkv
    >>> q = torch.randn(1, 1, 3, 4); k = torch.randn(1, 1, 3, 4)
    >>> w = qkv.attention_weights(q, k, causal=True)
    >>> w[0, 0, 0]                     # the first query sees only the first key
    tensor([1., 0., 0.])
    >>> torch.allclose(w.sum(-1), torch.ones(1, 1, 3))
    True
    >>> qkv.attention_weights(q, k, causal=True, rows=[2]).shape
    torch.Size([1, 1, 1, 3])
    """
    call = check_weights_call(q, k, mask=mask, bias=bias, causal=causal, scale=scale)
    q, mask, bias, causal = call.q, call.mask, call.bias, call.causal
    b, hq, nq, nk = call.shape
    if rows is None:
        if isinstance(mask, Mask):
            mask = mask.to_dense(b, hq, nq, nk, device=q.device)
        probs, _ = eager.weights_and_lse(q, call.k, mask=mask, bias=bias, causal=causal, scale=call.scale)
        return probs
    q, mask, bias = _select_rows(call, check_rows(rows, nq, q.device))
    probs, _ = eager.weights_and_lse(q, call.k, mask=mask, bias=bias, causal=False, scale=call.scale)
    return probs


def _select_rows(call: AttentionCall, rows: Tensor) -> tuple[Tensor, Tensor | None, Tensor | ScoreMod | None]:
    """``(q, mask, bias)`` of the query rows ``rows`` alone, the causal triangle folded into the mask:
    local row r is query ``rows[r]``, and ``causal=False`` computes them exactly."""
    q, mask, bias = call.q, call.mask, call.bias
    b, hq, nq, nk = call.shape
    q = q.index_select(2, rows)  # (B, Hq, Nq, D) -> (B, Hq, R, D)
    if isinstance(mask, Mask):
        grid_b, grid_h, _, grid_j = index_grids(b, hq, nq, nk, q.device)
        mask = mask.allowed(grid_b, grid_h, rows[None, None, :, None], grid_j, nq, nk)  # (B|1, Hq|1, R, Nk)
    elif mask is not None and mask.shape[2] != 1:
        mask = mask.index_select(2, rows)  # (B, Hq, Nq, Nk) -> (B, Hq, R, Nk)
    if isinstance(bias, ScoreMod):
        bias = _OnRows(bias, rows, nq)
    elif bias is not None and bias.shape[2] != 1:
        bias = bias.index_select(2, rows)  # (B, Hq, Nq, Nk) -> (B, Hq, R, Nk)
    if call.causal:
        tri = causal_allowed(nq, nk, q.device).index_select(0, rows)  # (Nq, Nk) -> (R, Nk)
        mask = tri if mask is None else mask & tri
    return q, mask, bias


# The spec recomputes NaN rows this many scores at a time (float64), so memory stays bounded.
SPEC_ROWS_ELEMENTS = 1 << 22


def _spec_on_nan_rows(call: AttentionCall, out: Tensor, lse: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``out`` (and ``lse``) with every query row holding a NaN recomputed by the float64 spec.

    A fast backend may spread a NaN of ``k`` or ``v`` into rows that may not attend it
    (``0 · NaN`` in a product over a partly masked tile); the spec puts NaN exactly in
    the rows that attend it. Only rows where the backend gave NaN are recomputed: the
    backends never hide a NaN the spec has (tested), so the other rows are right.
    """
    b, hq, _, nk = call.shape
    rows = torch.isnan(out).any(dim=-1).flatten(0, 1).any(dim=0).nonzero().flatten()  # (R,) query rows
    step = max(1, SPEC_ROWS_ELEMENTS // (b * hq * nk))
    for start in range(0, rows.numel(), step):
        part = rows[start : start + step]
        q, mask, bias = _select_rows(call, part)
        part_out, part_lse = spec.attention(
            q, call.k, call.values, mask=mask, bias=bias, causal=False, scale=call.scale,
            dropout_p=call.dropout_p, return_lse=lse is not None,
        )  # fmt: skip
        out = out.index_copy(2, part, part_out.to(out.dtype))  # (B, Hq, R, Dv) into (B, Hq, Nq, Dv)
        if lse is not None and part_lse is not None:  # both or neither: the spec was asked for it
            lse = lse.index_copy(2, part, part_lse.to(lse.dtype))  # (B, Hq, R) into (B, Hq, Nq)
    return out, lse


class _OnRows(ScoreMod):
    """A modifier as seen by selected query rows: local row r is query ``rows[r]`` of ``num_queries``."""

    def __init__(self, mod: ScoreMod, rows: Tensor, num_queries: int):
        self.mod, self.rows, self.num_queries = mod, rows, num_queries

    def __call__(
        self, score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        return self.mod(score, b, h, self.rows[q_idx], kv_idx, self.num_queries, num_keys)


def explain_dispatch(
    q: Tensor, k: Tensor, v: Tensor, *, return_lse: bool = False, backend: str = "auto", **options: Unpack[CallOptions]
) -> Dispatch:
    """Which backend `attention` would run for these arguments, and why (runs nothing).

    Takes the arguments of `attention` (``mask``, ``bias``, ``causal``, ``scale``,
    ``dropout_p`` as ``options``), checked the same way.

    >>> import torch, qkv
    >>> q = torch.randn(1, 2, 4, 8)
    >>> print(qkv.explain_dispatch(q, q, q, return_lse=True))
    backend 'blockwise': computes this call exactly at O(N) memory, skipping the key tiles the mask rules out
      not 'sdpa': torch's scaled_dot_product_attention does not return the log-sum-exp
    """
    call = _normalized(check_call(q, k, v, **options))
    return choose(call, backend, checks.flag("return_lse", return_lse))


__all__ = ["attention", "attention_weights", "explain_dispatch", "Dispatch"]
