"""Blockwise attention: online over query blocks, skipping the key tiles a mask rules out.

For each block of ``BLOCK_Q`` queries the backend asks the mask which
``BLOCK_K``-wide key tiles are empty, full or partial, gathers only the keys
of non-empty tiles (a view when they are contiguous, as for causal, sliding
window and document masks), and computes that block exactly: scores, score
modifier, per-element mask only where some tile is partial, softmax with its
log-sum-exp, and the product with V. Nothing of size ``Nq × Nk`` is ever
materialized: memory is ``O(BLOCK_Q × keys kept)`` per block.

On the CPU, calls whose score modifier is none or additive (a dense bias,
ALiBi) run in qkv's own kernel (`cpu_kernel`, ``cpu_kernel.cpp``; half
precision computed in float32): each plan block becomes kernel blocks of
``KERNEL_ROWS`` queries that share its keys (a slice, or runs of consecutive keys
where the kept tiles are scattered) and its additive mask tile; the kernel
computes, per block, only the keys its rows may attend, with the BLAS products
torch links, all blocks of a call in one parallel pass, forward and backward.

Where the kernel is not built, each block runs in torch's fused flash kernel
(forward and backward), and with other score modifiers in plain torch ops.
Where consecutive blocks keep key windows that slide in step with them (a
sliding window, a local band) and share one mask tile, a run of them is one
fused-kernel call over overlapping strided views of q, k and v: no copies, and
the kernel's fixed cost is paid once per run instead of once per block.

The backward pass is a custom autograd function that recomputes each block's
probabilities from the saved log-sum-exp (as FlashAttention does) and adds
the key and value gradients into place, so training memory stays ``O(N)``.

Masks arrive either as dense bool tensors or as structured mask objects with
the protocol of `qkv.masks.Mask` (``tile_kinds`` and ``allowed``); score
modifiers as dense float tensors or callables with the protocol of
`qkv.mods.ScoreMod`. This package imports neither: it relies on the protocol only.

Files: `plan` (the call's arguments, its tile plan, its gradients), `tiles` (each
block's additive float tile), `kernel` and `cpu_kernel` (qkv's CPU kernel and its
build), `fused` (torch's fused CPU kernels), `portable` (plain torch ops), and here
the autograd function that picks among them.
"""

from __future__ import annotations

import math
from typing import Unpack

import torch
from torch import Tensor

from qkv.backends.blockwise import fused, kernel, portable
from qkv.backends.blockwise.fused import _backward_fused, _forward_fused
from qkv.backends.blockwise.kernel import KERNEL_ROWS, _backward_kernel, _forward_kernel, _kernel_inputs, _kernel_work
from qkv.backends.blockwise.plan import EMPTY, _causal_tile_kinds, _Grads, _memo, _mod_tensors, _plan, _Spec
from qkv.backends.blockwise.portable import _backward, _forward
from qkv.backends.common import accumulation_dtype, crossovers
from qkv.backends.common.interface import Arguments, Call, Offer, Planner

NAME = "blockwise"
TAKES_MASK_OBJECTS = True  # structured masks arrive as they are; others get dense bool tensors
TAKES_SCORE_MODS = True
# qkv's CPU kernel, torch's fused CPU kernels per block, plain torch ops: each is faster than the next
# wherever it serves (so they are tried in this order, not ranked by estimate), and the last serves every call
EXECUTORS = (kernel, fused, portable)
GENERAL = "computes this call exactly at O(N) memory, skipping the key tiles the mask rules out"


def refuse(call: Call) -> str | None:
    if call.dropout_p > 0.0:
        return "dropout is not implemented blockwise"
    return None


def estimate(call: Call) -> Offer:
    """The chosen executor's cost per key tile (against torch's kernel on the dense call), times the tiles kept."""
    executor, (per_tile, _) = _executor(call)
    table = crossovers.current()
    if call.score_mod:  # the modifier runs on the fly; torch's kernel would need it as a dense bias
        return Offer(
            per_tile,
            (
                f"computes the score modifier {call.bias!r} on the fly, exactly, at O(N) memory, "
                "skipping the key tiles the mask rules out"
            ),
        )
    if call.structured_mask:
        kept = kept_fraction(call, table.probe_block)
        if kept * per_tile > 1.0:
            return Offer(kept * per_tile, GENERAL)
        return Offer(
            kept * per_tile,
            (f"the mask keeps {kept:.0%} of the key tiles; blockwise computes only those, exactly, at O(N) memory"),
        )
    if call.causal and call.mask is None and call.bias is None and executor is kernel:
        nq, nk = call.q.shape[2], call.k.shape[2]
        if min(nq, nk) >= table.causal_kernel_min_rows and nq * nk <= table.causal_kernel_max_scores:
            return Offer(
                table.causal_kernel_cost,
                (
                    f"causal attention on the CPU: the blockwise kernel computes only the keys each block of "
                    f"{KERNEL_ROWS} queries may attend, faster than torch's fused kernel for "
                    f"{table.causal_kernel_min_rows} to {math.isqrt(table.causal_kernel_max_scores)} queries"
                ),
            )
    return Offer(per_tile, GENERAL)


def kept_fraction(call: Call, block: int) -> float:
    """The share of ``block x block`` (query, key) tiles that a structured mask (and causal) keeps."""
    b, hq, nq, nk = call.shape
    mask = call.mask
    if hasattr(mask, "sparse_tiles"):  # block lists: O(N) memory at any length
        tiles = mask.sparse_tiles(b, hq, nq, nk, block, block, device=call.q.device, causal=call.causal)
        grid = tiles.num_query_blocks * tiles.num_key_blocks
        return int(tiles.runs[:, 1].sum()) / grid if grid else 1.0
    kinds = mask.tile_kinds(b, hq, nq, nk, block, block, device=call.q.device)  # type: ignore[attr-defined]
    if call.causal:
        kinds = torch.minimum(kinds, _causal_tile_kinds(nq, nk, block, block, call.q.device))  # AND: the minimum
    return float((kinds != EMPTY).float().mean()) if kinds.numel() else 1.0


def _executor(call: Call) -> tuple[Planner, Offer]:
    """The executor that runs this call (the first of `EXECUTORS` that does not refuse it) and its estimate."""
    for executor in EXECUTORS:
        if executor.refuse(call) is None:
            return executor, executor.estimate(call)
    raise AssertionError("the portable executor computes every call")  # pragma: no cover


def attention(q: Tensor, k: Tensor, v: Tensor, **arguments: Unpack[Arguments]) -> tuple[Tensor, Tensor | None]:
    call = Call(q, k, v, **arguments)
    mask, bias, causal, scale = call.mask, call.bias, call.causal, call.scale
    nq, nk = q.shape[2], k.shape[2]
    executor = _executor(call)[0].NAME
    spec = _Spec(mask, bias, causal, scale, nq, nk, accumulation_dtype(q.dtype))
    shape = (q.shape[0], q.shape[1], nq, nk)
    plan = _memo(mask, ("plan", causal, shape, q.device), lambda: _plan(mask, causal, shape, q.device))
    bias_tensor = bias if isinstance(bias, Tensor) else None
    mod_tensors = [] if bias is None or bias_tensor is not None else _mod_tensors(bias)
    out, lse = _BlockwiseAttention.apply(q, k, v, bias_tensor, spec, plan, executor, *mod_tensors)
    return out.to(q.dtype), (lse if call.return_lse else None)


class _BlockwiseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias_tensor, spec, plan, executor, *mod_tensors):
        ctx.kernel, ctx.fused = executor == kernel.NAME, executor == fused.NAME
        if ctx.kernel:  # out in the accumulation dtype: half precision inputs are computed in float32
            work = _kernel_work(spec, plan, *q.shape[:2], spec.acc)
            out, lse = _forward_kernel(*_kernel_inputs(q, k, v, spec), spec, work, plan.covers_every_row)
        else:
            out, lse = (_forward_fused if ctx.fused else _forward)(q, k, v, spec, plan)
        ctx.save_for_backward(q, k, v, bias_tensor, out, lse, *mod_tensors)
        ctx.spec, ctx.plan = spec, plan
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, bias_tensor, out, lse, *mod_tensors = ctx.saved_tensors
        spec, plan = ctx.spec, ctx.plan
        acc = spec.acc
        # every block with keys writes its rows of dq; only blocks without any key leave zeros behind
        dq_alloc = torch.empty_like if plan.covers_every_row else torch.zeros_like
        grads = _Grads(
            dq=dq_alloc(q, dtype=acc),
            dk=torch.zeros_like(k, dtype=acc),
            dv=torch.zeros_like(v, dtype=acc),
            dbias=torch.zeros_like(bias_tensor, dtype=acc)
            if bias_tensor is not None and ctx.needs_input_grad[3]
            else None,
            dmods=[torch.zeros_like(t) for t in mod_tensors],
        )
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out
        if ctx.kernel and grads.dbias is None:
            work = _kernel_work(spec, plan, *q.shape[:2], acc)
            _backward_kernel(*_kernel_inputs(q, k, v, spec), out, lse, grad_out, grad_lse, spec, work, grads)
        elif not ctx.kernel and ctx.fused and grad_lse is None and grads.dbias is None:
            _backward_fused(q, k, v, out, lse, grad_out, spec, plan, grads)
        else:
            _backward(q, k, v, out, lse, grad_out, grad_lse, spec, plan, grads, mod_tensors)
        dbias = None if grads.dbias is None else grads.dbias.to(bias_tensor.dtype)
        return (grads.dq.to(q.dtype), grads.dk.to(k.dtype), grads.dv.to(v.dtype), dbias, None, None, None, *grads.dmods)
