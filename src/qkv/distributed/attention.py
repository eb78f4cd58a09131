"""`ring_attention`: the arguments checked on every rank and agreed by all, then the ring (`qkv.distributed.ring`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from qkv import checks
from qkv.distributed.group import Group, agree, describe, device_of, world
from qkv.distributed.layout import LAYOUTS, check_layout, check_lengths
from qkv.distributed.plan import Problem, pieces, with_causal
from qkv.distributed.ring import Ring, RingAttention, mod_tensors
from qkv.errors import AttentionError
from qkv.masks import Mask
from qkv.mods import ScoreMod

# What every rank reports before the ring starts; all but the lengths must agree across ranks.
_FIELDS = (
    "batch", "query heads", "key heads", "head dim", "value dim", "dtype", "device type", "causal",
    "mask given", "score_mod given", "layout", "scale",
)  # fmt: skip
_DTYPES = checks.FLOAT_DTYPES


def ring_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Mask | None = None,
    score_mod: ScoreMod | None = None,
    layout: str = "zigzag",
    group: Group | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Exact attention over a sequence split among the ranks: this rank's parts in, its part of the output out.

    Args:
        q: this rank's queries ``(B, Hq, nq, D)``, cut from the full ``(B, Hq, Nq, D)`` by
            `qkv.distributed.shard` with the same ``layout``.
        k: this rank's keys ``(B, Hkv, nk, D)``; ``Hq % Hkv == 0`` (grouped-query heads).
        v: this rank's values ``(B, Hkv, nk, Dv)``.
        mask: a `qkv.masks.Mask` written in GLOBAL positions, as for one process on the full
            ``(Nq, Nk)`` problem (``masks.sliding_window(256)``, ``masks.document(ids)`` with
            the ids of the whole sequence, ...). Blocks it rules out are skipped.
        score_mod: a `qkv.mods.ScoreMod`, in global positions too (``mods.alibi(H)``, ...).
        causal: as `qkv.attention`'s: bottom-right aligned over the global ``Nq, Nk``.
        scale: multiplies ``q kᵀ``; defaults to ``1/sqrt(D)``.
        layout: ``"zigzag"`` (balanced under causal masks) or ``"contiguous"``.
        group: the process group; None is the default group.
        return_lse: also return this rank's rows of the log-sum-exp ``(B, Hq, nq)``.

    Returns:
        ``out (B, Hq, nq, Dv)`` in q's dtype: the rows of the single-process
        ``qkv.attention(Q, K, V, mask=mask, bias=score_mod, causal=causal)`` this rank holds;
        with ``return_lse`` also ``lse``, float32 (float64 for float64 inputs).
        Differentiable in q, k and v: the backward pass is a second ring, and each rank's
        gradients are those of the sum over ranks of the losses.

    Raises:
        AttentionError: bad arguments on any rank, ranks that disagree (shapes, dtype,
            layout, scale), local lengths that do not match the layout, or no process
            group. Raised on every rank, with the failing rank's message.
    """
    rank, size = world("ring_attention", group)
    error, cause, numbers = None, None, [0.0] * (len(_FIELDS) + 2)
    try:
        numbers = _local_numbers(q, k, v, mask, score_mod, causal, scale, layout, return_lse, group)
    except Exception as exc:  # noqa: BLE001  (any failure: every rank learns of it before anyone waits)
        error, cause = describe(exc), exc
    try:
        table = agree("ring_attention", error, numbers, group)
    except AttentionError as agreed:
        raise agreed from cause
    problem, scale = _global_problem(table, layout)
    rule = with_causal(mask, causal)
    error, cause, plan = None, None, []
    try:
        _check_rules(rule, score_mod, problem)
        plan = [pieces(problem, rank, source, rule, score_mod, q.device) for source in range(size)]
    except Exception as exc:  # noqa: BLE001  (a failing mask rule too: every rank learns of it)
        error, cause = describe(exc), exc
    try:
        agree("ring_attention", error, [], group)
    except AttentionError as agreed:
        raise agreed from cause
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    ring = Ring(rank, size, group, plan, [int(row[1]) for row in table], scale, acc)
    out, lse = RingAttention.apply(ring, q, k, v, *mod_tensors(score_mod))  # type: ignore[no-untyped-call]
    return (out, lse) if return_lse else out


def _local_numbers(
    q: object, k: object, v: object, mask: object, score_mod: object, causal: object, scale: object,
    layout: object, return_lse: object, group: Group | None,
) -> list[float]:  # fmt: skip
    """This rank's checks; its lengths and the fields every rank must agree on."""
    q = checks.tensor("q", q, "(B, Hq, nq, D), this rank's part", dims=4, dtypes=_DTYPES)
    k = checks.tensor("k", k, "(B, Hkv, nk, D), this rank's part", dims=4, dtypes=_DTYPES)
    v = checks.tensor("v", v, "(B, Hkv, nk, Dv), this rank's part", dims=4, dtypes=_DTYPES)
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype or t.device != q.device:
            raise AttentionError(
                f"{name}: dtype {t.dtype} on {t.device}, but q is {q.dtype} on {q.device}; all three must match"
            )
    b, hq, nq, d = q.shape
    if k.shape[0] != b or v.shape[0] != b:
        raise AttentionError(f"k, v: batch {k.shape[0]}, {v.shape[0]} differs from q's {b}")
    if v.shape[1] != k.shape[1] or v.shape[2] != k.shape[2]:
        raise AttentionError(f"v: shape {tuple(v.shape)} must match k's {tuple(k.shape)} in heads and length")
    if k.shape[1] == 0 or hq % k.shape[1]:
        raise AttentionError(f"k: {k.shape[1]} key heads do not divide q's {hq} query heads (Hq % Hkv must be 0)")
    if k.shape[3] != d:
        raise AttentionError(f"k: head dim {k.shape[3]} differs from q's {d}")
    if mask is not None and not isinstance(mask, Mask):
        raise AttentionError(
            f"mask: expected a qkv.masks.Mask in global positions or None, got {type(mask).__name__}; a dense "
            "mask would be (Nq, Nk) on every rank: write the rule with qkv.masks (masks.from_function for any rule)"
        )
    if score_mod is not None and not isinstance(score_mod, ScoreMod):
        raise AttentionError(
            f"score_mod: expected a qkv.mods.ScoreMod in global positions or None, got {type(score_mod).__name__}; "
            "for a custom bias use mods.from_function(fn)"
        )
    is_causal = checks.flag("causal", causal)
    checks.flag("return_lse", return_lse)
    scale = 1.0 / math.sqrt(d) if scale is None else checks.positive_number("scale", scale)
    layout = check_layout(layout)
    collective = device_of(group).type
    if q.device.type != collective:
        raise AttentionError(
            f"q: on {q.device}, but the process group's backend sends {collective} tensors; use gloo for CPU "
            "tensors and nccl for CUDA tensors"
        )
    fields = [
        b, hq, k.shape[1], d, v.shape[3], _DTYPES.index(q.dtype), 1 if q.is_cuda else 0, is_causal,
        mask is not None, score_mod is not None, LAYOUTS.index(layout), scale,
    ]  # fmt: skip
    return [float(nq), float(k.shape[2]), *map(float, fields)]


def _global_problem(table: list[list[float]], layout: str) -> tuple[Problem, float]:
    """The shared problem from every rank's numbers; the same AttentionError on every rank if they disagree."""
    first = table[0][2:]
    for r, row in enumerate(table):
        for name, mine, theirs in zip(_FIELDS, row[2:], first):
            if mine != theirs:
                raise AttentionError(
                    f"ring_attention: the ranks disagree on {name}: rank 0 has {theirs:g}, rank {r} has {mine:g}; "
                    "every rank must pass the same shapes, dtype and arguments"
                )
    num_queries = check_lengths("q", [int(row[0]) for row in table], layout)
    num_keys = check_lengths("k", [int(row[1]) for row in table], layout)
    batch, heads = int(first[0]), int(first[1])
    return Problem(batch, heads, num_queries, num_keys, len(table), layout), first[-1]


def _check_rules(mask: Mask | None, mod: ScoreMod | None, problem: Problem) -> None:
    """The mask and mod against the global problem (document ids for every key, ALiBi slopes for every head)."""
    sizes = (problem.batch, problem.heads, problem.num_queries, problem.num_keys)
    if mask is not None:
        mask.check(*sizes)
    if mod is not None:
        mod.check(*sizes)


__all__ = ["ring_attention"]
