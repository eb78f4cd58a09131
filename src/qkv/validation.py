"""Checks the arguments of an attention call once, and says exactly what is wrong.

Every public attention function runs its arguments through `check_call`; the
backends then trust what they get: 4-D masks and biases that broadcast to
``(B, Hq, Nq, Nk)``, one dtype, one device, a finite scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import torch
from torch import Tensor

from qkv import checks
from qkv.checks import FLOAT_DTYPES, shape_of
from qkv.errors import AttentionError
from qkv.masks import Mask
from qkv.mods import ScoreMod

BROADCAST_AXES = ("B", "Hq", "Nq", "Nk")


class ScoreOptions(TypedDict, total=False):
    """The keyword arguments that shape the scores, as `qkv.attention_weights` takes them (defaults in `check_call`)."""

    mask: Tensor | Mask | None
    bias: Tensor | ScoreMod | None
    causal: bool
    scale: float | None


class CallOptions(ScoreOptions, total=False):
    """The keyword arguments of an attention call besides ``return_lse`` and ``backend``."""

    dropout_p: float


@dataclass(frozen=True)
class AttentionCall:
    """A checked attention call: what every backend receives."""

    q: Tensor
    k: Tensor
    v: Tensor | None
    mask: Tensor | Mask | None
    bias: Tensor | ScoreMod | None
    causal: bool
    scale: float
    dropout_p: float

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(B, Hq, Nq, Nk)``: the shape of the attention matrix."""
        b, hq, nq, _ = self.q.shape
        return b, hq, nq, self.k.shape[2]

    @property
    def values(self) -> Tensor:
        """``v``, of a call with values (every call but a weights-only one)."""
        assert self.v is not None, "a weights-only call has no values"
        return self.v

    def kwargs(self, return_lse: bool) -> dict[str, Any]:
        return {
            "mask": self.mask,
            "bias": self.bias,
            "causal": self.causal,
            "scale": self.scale,
            "dropout_p": self.dropout_p,
            "return_lse": return_lse,
        }


def _check_tensor(name: str, t: object, layout: str) -> Tensor:
    hint = ""
    if isinstance(t, Tensor) and t.dim() == 3:
        hint = (
            "; modules take (B, N, E) but the functional API takes (B, H, N, D): "
            "split heads with x.view(B, N, H, D).transpose(1, 2)"
        )
    return checks.tensor(name, t, layout, dims=4, dtypes=FLOAT_DTYPES, hint=hint)


def check_qk(q: object, k: object) -> tuple[Tensor, Tensor]:
    """q and k: 4-D, same dtype and device, matching batch and head dims, Hq % Hkv == 0."""
    q = _check_tensor("q", q, "(B, Hq, Nq, D)")
    k = checks.same_dtype_and_device("k", _check_tensor("k", k, "(B, Hkv, Nk, D)"), q, "q")
    if k.shape[0] != q.shape[0]:
        raise AttentionError(
            f"k: batch size {k.shape[0]} differs from q's {q.shape[0]} (q {shape_of(q)}, k {shape_of(k)})"
        )
    if k.shape[-1] != q.shape[-1]:
        raise AttentionError(
            f"k: head dim D = {k.shape[-1]} differs from q's D = {q.shape[-1]} (q {shape_of(q)}, k {shape_of(k)})"
        )
    if q.shape[-1] == 0:
        raise AttentionError(f"q: head dim D must be at least 1, got shape {shape_of(q)}")
    hq, hkv = q.shape[1], k.shape[1]
    if hkv == 0 or hq % hkv != 0:
        raise AttentionError(
            f"k: number of key/value heads Hkv = {hkv} must divide the number of query heads "
            f"Hq = {hq} (grouped-query attention); got q {shape_of(q)}, k {shape_of(k)}"
        )
    if k.shape[2] == 0:
        raise AttentionError(f"k: has no keys (Nk = 0, shape {shape_of(k)}); attention needs at least one key")
    return q, k


def check_v(v: object, q: Tensor, k: Tensor) -> Tensor:
    v = checks.same_dtype_and_device("v", _check_tensor("v", v, "(B, Hkv, Nk, Dv)"), q, "q")
    if v.shape[:3] != k.shape[:3]:
        raise AttentionError(
            f"v: shape {shape_of(v)} must match k {shape_of(k)} in (B, Hkv, Nk); keys and values come in pairs"
        )
    return v


def _check_broadcast(name: str, t: Tensor, target: tuple[int, int, int, int], hint: str) -> Tensor:
    """Return ``t`` as a 4-D view that broadcasts to ``target``, or raise."""
    want = "(" + ", ".join(f"{a}={s}" for a, s in zip(BROADCAST_AXES, target)) + ")"
    given = shape_of(t)
    if t.dim() == 2:
        t = t[None, None]  # (Nq, Nk) -> (1, 1, Nq, Nk)
    elif t.dim() != 4:
        raise AttentionError(
            f"{name}: expected a 2-D (Nq, Nk) or 4-D (B, Hq, Nq, Nk) tensor broadcastable to {want}, "
            f"got shape {given}; {hint}"
        )
    for axis, size, want_size in zip(BROADCAST_AXES, t.shape, target):
        if size not in (1, want_size):
            raise AttentionError(
                f"{name}: shape {given} does not broadcast to {want}: axis {axis} has size {size}, "
                f"expected 1 or {want_size}; {hint}"
            )
    return t


def check_mask(mask: object, q: Tensor, target: tuple[int, int, int, int]) -> Tensor | Mask | None:
    if mask is None:
        return None
    if isinstance(mask, Mask):
        mask.check(*target)  # e.g. padding lengths for another batch size
        return mask
    if not isinstance(mask, Tensor):
        raise AttentionError(f"mask: expected None, a bool tensor or a qkv.masks.Mask, got {type(mask).__name__}")
    fix = "for an additive float mask pass it as bias=..., for 0/1 integers use mask.bool()"
    checks.bool_tensor("mask", mask, fix=fix)
    checks.same_device("mask", mask, q, "q")
    return _check_broadcast(
        "mask", mask, target, "a padding mask over keys of shape (B, Nk) becomes mask[:, None, None, :]"
    )


def _probe_score_mod(mod: ScoreMod, q: Tensor, target: tuple[int, int, int, int]) -> None:
    """Run the modifier on the last (batch, head, query, key) so a mismatch fails here, clearly."""
    b, h, nq, nk = target
    try:
        mod.check(b, h, nq, nk)  # e.g. per-head tables (alibi, relative positions) for another head count
    except AttentionError as error:
        raise AttentionError(f"bias: {error}") from None
    if 0 in target:
        return
    last_b, last_h, last_q, last_k = (torch.tensor([[[[n - 1]]]], device=q.device) for n in target)  # (1, 1, 1, 1)
    try:
        mod(torch.zeros(1, 1, 1, 1, dtype=q.dtype, device=q.device), last_b, last_h, last_q, last_k, nq, nk)
    except AttentionError as error:
        raise AttentionError(f"bias: {mod!r} does not fit this call: {error}") from None
    except (IndexError, RuntimeError) as error:
        raise AttentionError(
            f"bias: {mod!r} failed on the last position of (B={b}, Hq={h}, Nq={nq}, Nk={nk}): {error}"
        ) from None


def check_bias(bias: object, q: Tensor, target: tuple[int, int, int, int]) -> Tensor | ScoreMod | None:
    if bias is None:
        return None
    if isinstance(bias, ScoreMod):
        _probe_score_mod(bias, q, target)
        return bias
    if not isinstance(bias, Tensor):
        raise AttentionError(f"bias: expected None, a float tensor or a qkv.mods.ScoreMod, got {type(bias).__name__}")
    checks.same_dtype_and_device("bias", bias, q, "q", hint="a boolean mask goes in mask=...")
    return _check_broadcast("bias", bias, target, "a per-head bias of shape (Hq, Nq, Nk) becomes bias[None]")


def check_scale(scale: object, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float, Tensor)):
        raise AttentionError(f"scale: expected None or a finite number, got {type(scale).__name__}")
    if isinstance(scale, Tensor):
        if scale.numel() != 1:
            raise AttentionError(f"scale: expected a number, got a tensor of shape {shape_of(scale)}")
        scale = scale.item()
    scale = float(scale)
    if not math.isfinite(scale):
        raise AttentionError(f"scale: expected a finite number, got {scale}")
    return scale


def check_dropout(dropout_p: object) -> float:
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise AttentionError(f"dropout_p: expected a float in [0, 1), got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:
        raise AttentionError(f"dropout_p: expected a float in [0, 1), got {dropout_p}")
    return float(dropout_p)


def check_causal(causal: object) -> bool:
    return checks.flag("causal", causal, hint="a custom pattern goes in mask=...")


def check_call(
    q: object,
    k: object,
    v: object,
    *,
    mask: object = None,
    bias: object = None,
    causal: object = False,
    scale: object = None,
    dropout_p: object = 0.0,
) -> AttentionCall:
    """Check every argument of an attention call (`check_weights_call` for one without values).

    These keyword defaults are the defaults of every attention function.
    """
    q, k = check_qk(q, k)
    return _checked(q, k, check_v(v, q, k), mask, bias, causal, scale, dropout_p)


def check_weights_call(
    q: object, k: object, *, mask: object = None, bias: object = None, causal: object = False, scale: object = None
) -> AttentionCall:
    """Check the arguments of a weights-only call (`qkv.attention_weights`): the call's ``v`` is None."""
    q, k = check_qk(q, k)
    return _checked(q, k, None, mask, bias, causal, scale, 0.0)


def _checked(
    q: Tensor, k: Tensor, v: Tensor | None, mask: object, bias: object, causal: object, scale: object, dropout_p: object
) -> AttentionCall:
    b, hq, nq, _ = q.shape
    target = (b, hq, nq, k.shape[2])
    return AttentionCall(
        q=q,
        k=k,
        v=v,
        mask=check_mask(mask, q, target),
        bias=check_bias(bias, q, target),
        causal=check_causal(causal),
        scale=check_scale(scale, q.shape[-1]),
        dropout_p=check_dropout(dropout_p),
    )


def check_rows(rows: object, num_queries: int, device: torch.device) -> Tensor:
    """A 1-D LongTensor of query indices in [0, Nq)."""
    if isinstance(rows, Tensor):
        if rows.dim() != 1 or rows.dtype in FLOAT_DTYPES or rows.dtype == torch.bool:
            raise AttentionError(
                f"rows: expected a 1-D integer tensor of query indices, got dtype {rows.dtype} "
                f"and shape {shape_of(rows)}"
            )
        rows = rows.to(device=device, dtype=torch.long)
    elif isinstance(rows, Sequence) and all(isinstance(r, int) and not isinstance(r, bool) for r in rows):
        rows = torch.tensor(list(rows), dtype=torch.long, device=device)
    else:
        raise AttentionError(f"rows: expected a 1-D integer tensor or a list of ints, got {type(rows).__name__}")
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= num_queries):
        raise AttentionError(
            f"rows: query indices must lie in [0, Nq) = [0, {num_queries}), got min {int(rows.min())} "
            f"and max {int(rows.max())}"
        )
    return rows
