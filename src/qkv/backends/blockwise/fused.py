"""The blockwise path through torch's fused CPU flash kernels: one call per block, or per run of sliding blocks."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from qkv.backends.blockwise.plan import BLOCK_Q, _Grads, _Plan, _Spec, _take
from qkv.backends.blockwise.tiles import _FloatMasks
from qkv.backends.common import accumulation_dtype, crossovers
from qkv.backends.common.interface import Call, Offer

_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_CPU_BACKWARD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


NAME = "fused"


def refuse(call: Call) -> str | None:
    """On the CPU, torch's fused flash kernel runs each block (it returns the lse too).

    It takes an additive float mask, so it serves dense biases and masks; score
    modifiers that are functions of the scores run on the plain per-block path.
    """
    if not call.q.is_cpu:
        return f"torch's fused flash kernel for blocks runs on the CPU, not on {call.q.device.type}"
    if _FLASH_CPU is None or _FLASH_CPU_BACKWARD is None:
        return f"torch {torch.__version__} has no fused CPU flash kernel"
    if call.score_mod:
        return "torch's fused kernel takes a dense bias, not a score modifier"
    if call.v.shape[-1] != call.q.shape[-1]:
        return "torch's fused kernel wants one head size for q, k and v"
    return None


def estimate(call: Call) -> Offer:
    """Per key tile kept, against torch's kernel on every tile of the dense call."""
    return Offer(1.0 / crossovers.current().dense_enough, "torch's fused CPU kernel per block or run of blocks")


# Query blocks per fused-kernel call where the blocks' key windows slide in step (see _runs).
# The forward kernel gains a little from long runs; the backward one keeps per-call
# gradient buffers that grow with the batch, so short runs serve it best.
FORWARD_RUN = 64
BACKWARD_RUN = 4


def _forward_fused(q: Tensor, k: Tensor, v: Tensor, spec: _Spec, plan: _Plan) -> tuple[Tensor, Tensor]:
    b, hq, nq, _ = q.shape
    # every block writes its rows; rows of blocks with no key at all stay 0
    alloc = torch.empty if plan.covers_every_row else torch.zeros
    out = alloc(b, hq, nq, v.shape[3], dtype=q.dtype, device=q.device)
    lse = torch.full((b, hq, nq), float("-inf"), dtype=spec.acc, device=q.device)
    float_masks = _FloatMasks(spec, b, hq, q.dtype, q.device)
    for n, q0, bq, keys, tile, empty in _run_blocks(plan, nq, float_masks, FORWARD_RUN):
        if n == 1:
            _fused_block_forward(q, k, v, spec, q0, bq, keys, (tile, empty), out, lse)
            continue
        length = keys.stop - keys.start
        # one call per batch row and position in the head group: the windows are strided views
        for i in range(b):
            for heads in _head_groups(hq, k.shape[1]):
                run_out, run_lse = _FLASH_CPU(
                    _windows(q[:, heads], i, q0, n, BLOCK_Q),
                    _windows(k, i, keys.start, n, length),
                    _windows(v, i, keys.start, n, length),
                    0.0,
                    False,
                    attn_mask=_row_of(tile, i, heads),
                    scale=spec.scale,
                )  # (n, Hkv, BLOCK_Q, Dv), (n, Hkv, BLOCK_Q)
                if empty is not None:
                    run_lse = run_lse.masked_fill(_row_of(empty, i, heads)[0], float("-inf"))
                _rows(out[:, heads], i, q0, n).copy_(run_out.transpose(0, 1))  # (n, Hkv, ...) -> (Hkv, n, ...)
                _rows(lse[:, heads], i, q0, n).copy_(run_lse.transpose(0, 1))
    return out, lse


def _backward_fused(q, k, v, out, lse, grad_out, spec: _Spec, plan: _Plan, grads: _Grads) -> None:
    b, hq, nq, _ = q.shape
    hkv = k.shape[1]
    grad_out = grad_out.to(q.dtype)
    safe_lse = _safe_lse(lse, q.dtype)
    float_masks = _FloatMasks(spec, b, hq, q.dtype, q.device)
    for n, q0, bq, keys, tile, _ in _run_blocks(plan, nq, float_masks, BACKWARD_RUN):
        if n == 1:
            _fused_block_backward(q, k, v, out, safe_lse, grad_out, spec, q0, bq, keys, tile, grads)
            continue
        length = keys.stop - keys.start
        for i in range(b):
            for heads in _head_groups(hq, hkv):  # each query head's share goes straight to its kv head
                dq_run, dk_run, dv_run = _FLASH_CPU_BACKWARD(
                    _windows(grad_out[:, heads], i, q0, n, BLOCK_Q),
                    _windows(q[:, heads], i, q0, n, BLOCK_Q),
                    _windows(k, i, keys.start, n, length),
                    _windows(v, i, keys.start, n, length),
                    _windows(out[:, heads], i, q0, n, BLOCK_Q),
                    _windows(safe_lse[:, heads], i, q0, n, BLOCK_Q),
                    0.0,
                    False,
                    attn_mask=_row_of(tile, i, heads),
                    scale=spec.scale,
                )  # (n, Hkv, BLOCK_Q, D), (n, Hkv, R, D), (n, Hkv, R, Dv)
                _rows(grads.dq[:, heads], i, q0, n).copy_(dq_run.transpose(0, 1))  # (n, Hkv, ...) -> (Hkv, n, ...)
                for j in range(n):  # window j's keys start BLOCK_Q·j after the first window's
                    grads.dk[i].narrow(1, keys.start + j * BLOCK_Q, length).add_(dk_run[j])
                    grads.dv[i].narrow(1, keys.start + j * BLOCK_Q, length).add_(dv_run[j])


def _fused_block_forward(
    q, k, v, spec: _Spec, q0: int, bq: int, keys, tile_and_empty, out: Tensor, lse: Tensor
) -> None:
    """One query block through torch's fused CPU kernel, written into its rows of ``out`` and ``lse``."""
    tile, empty = tile_and_empty
    group = q.shape[1] // k.shape[1]
    block_out, block_lse = _FLASH_CPU(
        q.narrow(2, q0, bq),
        _expand_heads(_take(k, keys), group),
        _expand_heads(_take(v, keys), group),
        0.0,
        False,
        attn_mask=tile,
        scale=spec.scale,
    )  # (B, Hq, bq, Dv), (B, Hq, bq)
    if empty is not None:  # the kernel reports lse 0 for a row with no key; qkv says -inf
        block_lse = block_lse.masked_fill(empty, float("-inf"))
    out.narrow(2, q0, bq).copy_(block_out)
    lse.narrow(2, q0, bq).copy_(block_lse)


def _safe_lse(lse: Tensor, dtype: torch.dtype) -> Tensor:
    """lse for torch's fused backward: 0 instead of -inf in rows with no key (their probabilities are 0 anyway)."""
    return lse.masked_fill(torch.isneginf(lse), 0.0).to(accumulation_dtype(dtype))


def _fused_block_backward(q, k, v, out, safe_lse, grad_out, spec: _Spec, q0: int, bq: int, keys, tile, grads) -> None:
    """One query block's gradients through torch's fused CPU kernel: its rows of dq, added into dk and dv."""
    hkv = k.shape[1]
    group = q.shape[1] // hkv
    dq_blk, dk_sel, dv_sel = _FLASH_CPU_BACKWARD(
        grad_out.narrow(2, q0, bq),
        q.narrow(2, q0, bq),
        _expand_heads(_take(k, keys), group),
        _expand_heads(_take(v, keys), group),
        out.narrow(2, q0, bq),
        safe_lse.narrow(2, q0, bq),
        0.0,
        False,
        attn_mask=tile,
        scale=spec.scale,
    )  # (B, Hq, bq, D), (B, Hq, R, D), (B, Hq, R, Dv)
    if group > 1:  # (B, Hq, R, D) -> (B, Hkv, R, D): sum each group's gradients
        dk_sel, dv_sel = dk_sel.unflatten(1, (hkv, group)).sum(2), dv_sel.unflatten(1, (hkv, group)).sum(2)
    grads.dq.narrow(2, q0, bq).copy_(dq_blk)
    grads.add_kv(keys, dk_sel, dv_sel)


def _run_blocks(
    plan: _Plan, nq: int, float_masks: _FloatMasks, longest: int
) -> Iterator[tuple[int, int, int, Tensor | slice, Tensor | None, Tensor | None]]:
    """Each run (see `_runs`) whose blocks keep keys: ``(blocks in it, q0, bq, keys, mask tile, empty rows)``,
    the keys, tile and empty rows those of its first block (``bq`` its rows, ``BLOCK_Q`` in a longer run)."""
    for r0, r1 in _runs(plan, nq, float_masks, longest):
        keys = plan.keys[r0]
        if keys is not None:
            q0 = r0 * BLOCK_Q
            bq = min(BLOCK_Q, nq - q0)
            yield r1 - r0, q0, bq, keys, *float_masks(q0, bq, keys, plan.needs_mask[r0])


def _runs(plan: _Plan, nq: int, float_masks: _FloatMasks, longest: int) -> list[tuple[int, int]]:
    """The query blocks in runs ``[r0, r1)`` that one kernel call computes over strided views.

    Blocks of a run are full size, keep key slices of one length whose start moves
    by ``BLOCK_Q`` from one block to the next (a sliding window, a local band) and
    share one mask tile (none, or an offset-invariant mask's); any other block is a
    run of its own.
    """

    def continues(a: int) -> bool:
        ka, kb = plan.keys[a], plan.keys[a + 1]
        return (
            isinstance(ka, slice)
            and isinstance(kb, slice)
            and (a + 2) * BLOCK_Q <= nq
            and kb.start - ka.start == BLOCK_Q
            and kb.stop - kb.start == ka.stop - ka.start
            and plan.needs_mask[a] == plan.needs_mask[a + 1]
            and (float_masks.reusable or (not plan.needs_mask[a] and float_masks.spec.bias is None))
        )

    runs, r0, blocks = [], 0, len(plan.keys)
    while r0 < blocks:
        r1 = r0 + 1
        while r1 < blocks and r1 - r0 < longest and continues(r1 - 1):
            r1 += 1
        runs.append((r0, r1))
        r0 = r1
    return runs


def _windows(t: Tensor, b: int, start: int, count: int, length: int) -> Tensor:
    """Batch row ``b`` of ``t (B, H, N[, D])`` as ``count`` windows of ``length`` positions, window ``i``
    starting at ``start + i * BLOCK_Q``: a view ``(count, H, length[, D])``; windows may overlap."""
    row = t[b]  # (B, H, N[, D]) -> (H, N[, D])
    st = row.stride()
    size = (count, row.shape[0], length, *row.shape[2:])
    return row.as_strided(size, (BLOCK_Q * st[1], *st), row.storage_offset() + start * st[1])


def _row_of(t: Tensor | None, b: int, heads: slice) -> Tensor | None:
    """Batch row ``b`` and ``heads`` of a mask tile ``(B'|1, H'|1, ...)``, keeping a leading axis
    that broadcasts over windows."""
    if t is None:
        return None
    t = t if t.shape[0] == 1 else t[b : b + 1]
    return t if t.shape[1] == 1 else t[:, heads]


def _head_groups(hq: int, hkv: int) -> list[slice]:
    """Query heads by the position they take in their group: ``heads[j]`` are heads ``j, j + G, ...``,
    which read kv heads ``0, 1, ...`` in order, so each slice pairs with k and v as they are."""
    group = hq // hkv
    return [slice(j, hq, group) for j in range(group)]


def _rows(t: Tensor, b: int, q0: int, count: int) -> Tensor:
    """Rows ``q0 .. q0 + count·BLOCK_Q`` of batch row ``b`` of ``t (B, H, N[, D])``, as ``(H, count, BLOCK_Q[, D])``."""
    rows = t[b].narrow(1, q0, count * BLOCK_Q)  # (H, count·BLOCK_Q[, D])
    return rows.unflatten(1, (count, BLOCK_Q))  # -> (H, count, BLOCK_Q[, D])


def _expand_heads(t: Tensor, group: int) -> Tensor:
    """(B, Hkv, R, D) -> (B, Hq, R, D): query head h reads kv head h // group."""
    return t if group == 1 else t.repeat_interleave(group, dim=1)
