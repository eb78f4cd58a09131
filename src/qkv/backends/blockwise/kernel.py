"""The blockwise path through qkv's CPU kernel (`cpu_kernel`): a call's plan as its blocks, segments and tiles."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.backends.blockwise import cpu_kernel
from qkv.backends.blockwise.plan import (
    _additive,
    _Grads,
    _memo,
    _mod_tensors,
    _offset_invariant,
    _Plan,
    _query_blocks,
    _Spec,
)
from qkv.backends.blockwise.tiles import _FloatMasks
from qkv.backends.common import crossovers
from qkv.backends.common.interface import Call, Offer

# The kernel takes blocks of this many query rows; each computes only the keys its own
# rows may attend (a band of 256 costs 288 keys per row at 32 rows, 320 at 64).
KERNEL_ROWS = 32

# A call's blocks go to the kernel in chunks whose mask tiles take at most this much memory
# (masks with a tile per block, such as document masks over long documents, would otherwise
# hold O(N x keys kept) of them).
KERNEL_TILE_BYTES = 32 << 20


# Kernel chunks are kept per mask and shape only for calls of at most this many scores: a causal
# call's tiles differ at every offset (O(N²) bytes), so long calls build them as they go.
KERNEL_MEMO_SCORES = 1 << 24


NAME = "kernel"


KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def refuse(call: Call) -> str | None:
    """The kernel computes float32 and float64 blocks on the CPU (half precision in float32), with
    a dense bias, an additive score modifier (ALiBi, relative position biases) whose tensors need
    no gradient, or neither."""
    if not call.q.is_cpu:
        return f"qkv's blockwise kernel runs on the CPU, not on {call.q.device.type}"
    if call.q.dtype not in KERNEL_DTYPES:
        return f"qkv's blockwise kernel does not compute {call.q.dtype}"
    if call.score_mod:
        if not _additive(call.bias):
            return f"the score modifier {call.bias!r} is not additive"
        if _mod_tensors(call.bias):
            return f"the score modifier {call.bias!r} holds tensors that need gradients"
    if not cpu_kernel.available():
        return cpu_kernel.status()
    return None


def estimate(call: Call) -> Offer:
    """Per key tile kept, against torch's kernel on every tile: less on large calls (the plan's cost is small there)."""
    table = crossovers.current()
    large = call.q.shape[2] * call.k.shape[2] >= table.kernel_min_scores
    return Offer(1.0 / (table.dense_enough_kernel if large else table.dense_enough), KERNEL_OFFER)


KERNEL_OFFER = "qkv's CPU kernel: only the keys each block of rows may attend"


def _kernel_work(spec: _Spec, plan: _Plan, b: int, hq: int, dtype: torch.dtype) -> Iterable[_KernelBlocks]:
    """The kernel's chunks for a call: kept (per mask object and shape) where the tiles are few
    and shared (no bias, a mask that depends only on i' - j, a call of at most ``KERNEL_MEMO_SCORES``),
    else built as they are used."""
    if spec.bias is None and _offset_invariant(spec.mask) and spec.nq * spec.nk <= KERNEL_MEMO_SCORES:
        key = ("kernel", spec.causal, b, hq, spec.nq, spec.nk, dtype)
        return _memo(spec.mask, key, lambda: list(_kernel_chunks(spec, plan, b, hq, dtype)))
    return _kernel_chunks(spec, plan, b, hq, dtype)


@dataclass
class _KernelBlocks:
    """One kernel call's work: its blocks, their key segments and tiles."""

    blocks: Tensor  # int64 (n, 8): first query row, rows, first key, keys, tile index (-1: none),
    #                 first tile row, first segment, segments (0: the keys are one slice from the first key)
    segments: Tensor  # int64 (m, 2): first key, keys; the runs of consecutive keys of blocks with scattered keys
    tiles: list[Tensor]  # additive (B'|1, H'|1, BLOCK_Q rows or fewer, keys), contiguous


def _kernel_chunks(spec: _Spec, plan: _Plan, b: int, hq: int, dtype: torch.dtype) -> Iterator[_KernelBlocks]:
    """Each plan block as kernel blocks of ``KERNEL_ROWS`` rows sharing its keys and tile (the
    kernel trims a block with one slice of keys to those its rows may attend), in chunks of
    at most ``KERNEL_TILE_BYTES`` of tiles."""
    float_masks = _FloatMasks(spec, b, hq, dtype, torch.device("cpu"))
    rows: list[tuple[int, ...]] = []
    segments: list[tuple[int, int]] = []
    tiles: list[Tensor] = []
    index: dict[int, tuple[Tensor, int]] = {}  # per tile object (kept alive, so ids stay unique): its index
    tile_bytes = 0

    def chunk() -> _KernelBlocks:
        return _KernelBlocks(
            torch.tensor(rows, dtype=torch.int64).reshape(-1, 8),
            torch.tensor(segments, dtype=torch.int64).reshape(-1, 2),
            tiles,
        )

    for r, q0, bq, keys in _query_blocks(plan, spec.nq):
        if isinstance(keys, slice):
            first, length, seg0, nseg = keys.start, keys.stop - keys.start, 0, 0
        else:
            runs = _runs_of(keys)
            first, length, seg0, nseg = -1, len(keys), len(segments), len(runs)
            segments += runs
        tile, _ = float_masks(q0, bq, keys, plan.needs_mask[r], empty_rows=False)
        t = -1
        if tile is not None:
            if id(tile) not in index:  # a reusable tile serves every block at its offset
                full = tile.expand(tile.shape[0], tile.shape[1], bq, length).contiguous()  # (B'|1, H'|1, bq, R)
                if tile_bytes and tile_bytes + full.nbytes > KERNEL_TILE_BYTES:
                    yield chunk()
                    rows, segments, tiles, index, tile_bytes = [], [], [], {}, 0
                    if nseg:  # this block's segments go with it into the new chunk
                        seg0 = 0
                        segments += runs
                tiles.append(full)
                tile_bytes += full.nbytes
                index[id(tile)] = (tile, len(tiles) - 1)
            t = index[id(tile)][1]
        rows += [
            (q0 + s0, min(KERNEL_ROWS, bq - s0), first, length, t, s0, seg0, nseg) for s0 in range(0, bq, KERNEL_ROWS)
        ]
    if rows:
        yield chunk()


def _runs_of(keys: Tensor) -> list[tuple[int, int]]:
    """Sorted key positions as runs of consecutive ones: ``[(first, length), ...]``."""
    breaks = (torch.nonzero(keys[1:] - keys[:-1] != 1).flatten() + 1).tolist()  # where a run starts anew
    starts, ends = [0, *breaks], [*breaks, len(keys)]
    firsts = keys[starts].tolist()
    return [(f, e - s) for f, s, e in zip(firsts, starts, ends)]


def _kernel_inputs(q: Tensor, k: Tensor, v: Tensor, spec: _Spec) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v as the kernel takes them: in the accumulation dtype, the last dim contiguous."""
    return tuple(_last_dim_contiguous(t.to(spec.acc)) for t in (q, k, v))


def _last_dim_contiguous(t: Tensor) -> Tensor:
    """``t`` as BLAS reads it: unit stride along the last dim, rows at least a row apart (an input
    expanded along the sequence, with row stride 0, is copied)."""
    return t if t.stride(-1) == 1 and t.stride(-2) >= t.shape[-1] else t.contiguous()


def _forward_kernel(
    q: Tensor, k: Tensor, v: Tensor, spec: _Spec, chunks: Iterable[_KernelBlocks], complete: bool
) -> tuple[Tensor, Tensor]:
    b, hq, nq, _ = q.shape
    out = (torch.empty if complete else torch.zeros)(b, hq, nq, v.shape[3], dtype=q.dtype)
    lse = torch.full((b, hq, nq), float("-inf"), dtype=spec.acc)  # rows in no block: no key at all
    for kb in chunks:
        cpu_kernel.forward(q, k, v, out, lse, kb.blocks, kb.segments, kb.tiles, spec.scale)
    return out, lse


def _backward_kernel(
    q, k, v, out, lse, grad_out, grad_lse, spec: _Spec, chunks: Iterable[_KernelBlocks], grads: _Grads
) -> None:
    grad_out = _last_dim_contiguous(grad_out.to(q.dtype))
    if grad_lse is not None:
        grad_lse = grad_lse.to(lse.dtype).contiguous()
    for kb in chunks:
        cpu_kernel.backward(
            q,
            k,
            v,
            out,
            lse,
            grad_out,
            grad_lse,
            grads.dq,
            grads.dk,
            grads.dv,
            kb.blocks,
            kb.segments,
            kb.tiles,
            spec.scale,
        )
