"""Checks the arguments of an attention call once, and says exactly what is wrong.

Every public attention function runs its arguments through `check_call`; the
backends then trust what they get: 4-D masks and biases that broadcast to
``(B, Hq, Nq, Nk)``, one dtype, one device, a finite scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.errors import AttentionError
from qkv.masks import Mask
from qkv.mods import ScoreMod

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BROADCAST_AXES = ("B", "Hq", "Nq", "Nk")


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

    def kwargs(self, return_lse: bool) -> dict:
        return dict(
            mask=self.mask,
            bias=self.bias,
            causal=self.causal,
            scale=self.scale,
            dropout_p=self.dropout_p,
            return_lse=return_lse,
        )


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _check_tensor(name: str, t: object, layout: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise AttentionError(f"{name}: expected a torch.Tensor {layout}, got {type(t).__name__}")
    if t.dim() != 4:
        hint = ""
        if t.dim() == 3:
            hint = (
                "; modules take (B, N, E) but the functional API takes (B, H, N, D): "
                "split heads with x.view(B, N, H, D).transpose(1, 2)"
            )
        raise AttentionError(f"{name}: expected a 4-D tensor {layout}, got shape {_shape(t)}{hint}")
    if t.dtype not in FLOAT_DTYPES:
        raise AttentionError(
            f"{name}: expected dtype float16, bfloat16, float32 or float64, got {t.dtype}"
        )
    return t


def check_qk(q: object, k: object) -> tuple[Tensor, Tensor]:
    """q and k: 4-D, same dtype and device, matching batch and head dims, Hq % Hkv == 0."""
    q = _check_tensor("q", q, "(B, Hq, Nq, D)")
    k = _check_tensor("k", k, "(B, Hkv, Nk, D)")
    if k.dtype != q.dtype:
        raise AttentionError(
            f"k: dtype {k.dtype} differs from q's {q.dtype}; qkv does not promote dtypes silently: "
            f"convert with k.to({q.dtype})"
        )
    if k.device != q.device:
        raise AttentionError(f"k: on {k.device} but q is on {q.device}; move both to one device")
    if k.shape[0] != q.shape[0]:
        raise AttentionError(
            f"k: batch size {k.shape[0]} differs from q's {q.shape[0]} (q {_shape(q)}, k {_shape(k)})"
        )
    if k.shape[-1] != q.shape[-1]:
        raise AttentionError(
            f"k: head dim D = {k.shape[-1]} differs from q's D = {q.shape[-1]} (q {_shape(q)}, k {_shape(k)})"
        )
    if q.shape[-1] == 0:
        raise AttentionError(f"q: head dim D must be at least 1, got shape {_shape(q)}")
    hq, hkv = q.shape[1], k.shape[1]
    if hkv == 0 or hq % hkv != 0:
        raise AttentionError(
            f"k: number of key/value heads Hkv = {hkv} must divide the number of query heads "
            f"Hq = {hq} (grouped-query attention); got q {_shape(q)}, k {_shape(k)}"
        )
    if k.shape[2] == 0:
        raise AttentionError(
            f"k: has no keys (Nk = 0, shape {_shape(k)}); attention needs at least one key"
        )
    return q, k


def check_v(v: object, q: Tensor, k: Tensor) -> Tensor:
    v = _check_tensor("v", v, "(B, Hkv, Nk, Dv)")
    if v.dtype != q.dtype:
        raise AttentionError(
            f"v: dtype {v.dtype} differs from q's {q.dtype}; qkv does not promote dtypes silently: "
            f"convert with v.to({q.dtype})"
        )
    if v.device != q.device:
        raise AttentionError(f"v: on {v.device} but q is on {q.device}; move both to one device")
    if v.shape[:3] != k.shape[:3]:
        raise AttentionError(
            f"v: shape {_shape(v)} must match k {_shape(k)} in (B, Hkv, Nk); "
            "keys and values come in pairs"
        )
    return v


def _check_broadcast(name: str, t: Tensor, target: tuple[int, int, int, int], hint: str) -> Tensor:
    """Return ``t`` as a 4-D view that broadcasts to ``target``, or raise."""
    want = "(" + ", ".join(f"{a}={s}" for a, s in zip(BROADCAST_AXES, target)) + ")"
    given = _shape(t)
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
        mask._check(*target)  # e.g. padding lengths for another batch size
        return mask
    if not isinstance(mask, Tensor):
        raise AttentionError(
            f"mask: expected None, a bool tensor or a qkv.masks.Mask, got {type(mask).__name__}"
        )
    if mask.dtype != torch.bool:
        raise AttentionError(
            f"mask: expected dtype torch.bool (True = may attend), got {mask.dtype}; "
            "for an additive float mask pass it as bias=..., for 0/1 integers use mask.bool()"
        )
    if mask.device != q.device:
        raise AttentionError(f"mask: on {mask.device} but q is on {q.device}; move it with mask.to(q.device)")
    return _check_broadcast(
        "mask", mask, target, "a padding mask over keys of shape (B, Nk) becomes mask[:, None, None, :]"
    )


def _probe_score_mod(mod: ScoreMod, q: Tensor, target: tuple[int, int, int, int]) -> None:
    """Run the modifier on the last (batch, head, query, key) so a mismatch fails here, clearly."""
    b, h, nq, nk = target
    for part in (mod, *getattr(mod, "parts", ())):
        try:
            getattr(part, "_check_heads", lambda heads: None)(h)  # per-head tables (alibi, relative positions)
        except AttentionError as error:
            raise AttentionError(f"bias: {error}") from None
    if 0 in target:
        return
    last = [torch.tensor([[[[n - 1]]]], device=q.device) for n in target]  # (1, 1, 1, 1) each
    try:
        mod(torch.zeros(1, 1, 1, 1, dtype=q.dtype, device=q.device), *last, nq, nk)
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
        raise AttentionError(
            f"bias: expected None, a float tensor or a qkv.mods.ScoreMod, got {type(bias).__name__}"
        )
    if bias.dtype != q.dtype:
        raise AttentionError(
            f"bias: dtype {bias.dtype} differs from q's {q.dtype}; "
            f"convert with bias.to({q.dtype}) (a boolean mask goes in mask=...)"
        )
    if bias.device != q.device:
        raise AttentionError(f"bias: on {bias.device} but q is on {q.device}; move it with bias.to(q.device)")
    return _check_broadcast("bias", bias, target, "a per-head bias of shape (Hq, Nq, Nk) becomes bias[None]")


def check_scale(scale: object, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float, Tensor)):
        raise AttentionError(f"scale: expected None or a finite number, got {type(scale).__name__}")
    if isinstance(scale, Tensor):
        if scale.numel() != 1:
            raise AttentionError(f"scale: expected a number, got a tensor of shape {_shape(scale)}")
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
    if not isinstance(causal, bool):
        raise AttentionError(
            f"causal: expected True or False, got {type(causal).__name__}; "
            "a custom pattern goes in mask=..."
        )
    return causal


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
    """Check every argument of an attention call; ``v=None`` for weights-only calls."""
    q, k = check_qk(q, k)
    v = None if v is None else check_v(v, q, k)
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
                f"and shape {_shape(rows)}"
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
