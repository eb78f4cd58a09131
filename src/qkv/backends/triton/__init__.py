"""The triton backend: block-sparse flash attention in Triton kernels, forward and backward, on qkv's tile plans.

Each call is planned first (`qkv.backends.triton.plan`, torch alone): the mask is cut into
``block_m x block_n`` tiles, EMPTY tiles are never visited, FULL ones run with no
per-element mask, PARTIAL ones apply the mask, as a rule on ``i' - j`` evaluated in the
kernel (causal, sliding windows, local bands: any offset-invariant mask that allows one
interval of distances) or as stored bool tiles (every other mask: documents, block
sparse layouts, padding, ``masks.from_function`` rules, dense bool tensors). The kernels
(`qkv.backends.triton.kernels`) run an online softmax in float32 over the tiles each
query block lists and return out and the log-sum-exp; the backward pass recomputes
the probabilities tile by tile from q, k and the lse (FlashAttention-2), with no
``Nq x Nk`` memory (except the score gradient a bias that needs its gradient asks for).

What it computes: float16 and float32 inputs (bfloat16 on a GPU only), head dimensions
up to 256 (padded to a power of two inside), any ``Nq`` and ``Nk`` (causal bottom-right
aligned), strided inputs, grouped-query attention without repeating k and v, a dense
additive bias (with its gradient), soft-capping and ALiBi computed in the kernel
(`qkv.backends.triton.score_mods`), other additive score modifiers (relative position
biases) as dense biases. A row with no allowed key gives out 0 and lse -inf.

Where it runs: CUDA tensors with triton installed (``pip install 'qkv[gpu]'``), or CPU
tensors under triton's interpreter (``TRITON_INTERPRET=1``, set before triton is
imported), which is how it is tested without a GPU. ``backend="auto"`` picks it on a GPU
for banded masks (sliding windows, local bands), where it was measured faster than torch's
kernels (docs/gpu.md); other calls run it when named: ``backend="triton"``.

>>> import torch
>>> from qkv.backends import triton as tb
>>> q = torch.randn(1, 2, 8, 16, dtype=torch.float64)
>>> from qkv.backends.common.interface import Call
>>> tb.refuse(Call(q, q, q))
'the triton kernels compute float16, bfloat16 and float32 inputs, not torch.float64'
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import sys
import weakref
from typing import Any, Unpack

import torch
from torch import Tensor

from qkv.backends.common.interface import Arguments, Call, Offer
from qkv.backends.common.plans import PlanCache
from qkv.backends.triton import score_mods
from qkv.backends.triton.plan import TilePlan, build_plan
from qkv.backends.triton.score_mods import KernelMod, kernel_mod

NAME = "triton"
TAKES_MASK_OBJECTS = True  # structured masks arrive as they are: their tiles are planned, not densified
TAKES_SCORE_MODS = True  # soft-capping and ALiBi run in the kernel, other additive ones as dense biases
MAX_HEAD_DIM = 256
# Cost per visited tile against torch's fused kernel computing every score of the call, on a GPU. Measured on
# an H200 (qkv bench --section gpu, bfloat16, D = 128, 16 heads, N = 2048 and 8192): dense attention at 0.40 to
# 0.55 of FlashAttention's speed, forward and forward + backward, so about 2 per tile visited.
TILE_COST = 2.0
BANDED_ONLY = (
    "on a GPU it was measured faster than torch's kernels for banded masks (sliding windows, local bands); "
    "other calls are not yet chosen for it: name it with backend='triton'"
)


@functools.cache
def available() -> bool:
    """Is triton installed? (asked once per process)"""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Do the kernels run in triton's interpreter (CPU tensors)? Decided when they are first imported."""
    loaded = sys.modules.get("qkv.backends.triton.kernels")
    if loaded is not None:
        return bool(loaded.INTERPRETED)
    return os.environ.get("TRITON_INTERPRET") == "1"


def refuse(call: Call) -> str | None:
    """Why the triton kernels cannot compute ``call`` exactly here, or None."""
    q, v = call.q, call.v
    device = q.device.type
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the triton kernels compute float16, bfloat16 and float32 inputs, not {q.dtype}"
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        return f"the triton kernels take head dimensions up to {MAX_HEAD_DIM}, got {max(q.shape[-1], v.shape[-1])}"
    if call.dropout_p > 0.0:
        return "dropout is not implemented in the triton kernels"
    bias = call.bias
    of_score = bias is not None and not isinstance(bias, Tensor) and not getattr(bias, "additive", False)
    if of_score and kernel_mod(bias, q.shape[1]) is None:
        return f"the score modifier {bias!r} is neither soft-capping nor additive, which the triton kernels take"
    mask = call.mask
    if mask is not None and not isinstance(mask, Tensor) and not hasattr(mask, "tile_kinds"):
        return f"the mask {mask!r} has no tile kinds (the protocol of qkv.masks.Mask)"
    if not available():
        return "triton is not installed (pip install 'qkv[gpu]')"
    if device not in ("cpu", "cuda"):
        return f"the triton kernels run on CUDA tensors, not on {device}"
    if device == "cpu" and not interpreting():
        return "the triton kernels run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1"
    if q.dtype == torch.bfloat16 and device == "cpu":
        return "bfloat16 runs on a GPU only (triton's interpreter lacks it)"
    return None


def estimate(call: Call) -> Offer:
    """On a GPU, for a banded mask object (one whose plan is a band of distances: sliding windows, local bands,
    ``masks.causal()``): `TILE_COST` per tile it keeps. Every other call: infinite, so ``auto`` never runs it."""
    q, v, mask = call.q, call.v, call.mask
    if not _on_gpu(q) or refuse(call) is not None:
        return Offer(math.inf, "it runs on CUDA GPUs (on the CPU only in triton's interpreter, slowly)")
    if not call.structured_mask or not getattr(mask, "offset_invariant", False) or call.bias is not None:
        return Offer(math.inf, BANDED_ONLY)
    plan = plan_for(mask, call.causal, call.shape, max(q.shape[-1], v.shape[-1]), q.device, q.dtype)
    if plan.tile_masks is not None:
        return Offer(math.inf, BANDED_ONLY)
    kept = _KEPT.get(plan)
    if kept is None:
        kept = _KEPT[plan] = plan.kept_fraction  # one read from the GPU per plan kept
    return Offer(
        TILE_COST * kept,
        (f"the mask keeps {kept:.0%} of the key tiles; the triton kernels visit only those, on the GPU"),
    )


_KEPT: weakref.WeakKeyDictionary[TilePlan, float] = weakref.WeakKeyDictionary()


def _on_gpu(t: Tensor) -> bool:
    """Does a call on ``t`` run the compiled kernels (a CUDA tensor, not the interpreter)?"""
    return t.device.type == "cuda" and not interpreting()


def block_sizes(head_dim: int, interpreted: bool, dtype: torch.dtype = torch.float16) -> tuple[int, int]:
    """``(block_m, block_n)``: query rows and keys per tile (small in the interpreter).

    Fixed, not tuned per call (docs/gpu.md); the choices keep every kernel within the 227 KiB of shared memory
    of an sm90 GPU (compiled for it ahead of time: tests/test_triton_compile.py).
    """
    if interpreted:
        return 32, 32
    if head_dim > 128:
        return (32, 32) if dtype == torch.float32 else (64, 32)
    return 64, 64


# Plans are kept per mask object and call size while the mask cannot have changed (`qkv.backends.common.plans`).
PLANS_KEPT = 16
_PLANS = PlanCache(PLANS_KEPT)


def plan_for(
    mask: object,
    causal: bool,
    shape: tuple[int, int, int, int],
    head_dim: int,
    device: torch.device,
    dtype: torch.dtype = torch.float16,
) -> TilePlan:
    """The tile plan the kernels of a call read (kept for the next call where the mask cannot change)."""
    block_m, block_n = block_sizes(head_dim, device.type == "cpu", dtype)
    b, h, nq, nk = shape
    # a rule of h and i' - j alone (or none) gives every sequence of the batch the same plan
    batch = None if mask is None or getattr(mask, "offset_invariant", False) else b
    key = (causal, batch, h, nq, nk, block_m, block_n, str(device))
    return _PLANS.get(mask, key, lambda: build_plan(mask, causal, shape, block_m, block_n, device))


def attention(q: Tensor, k: Tensor, v: Tensor, **arguments: Unpack[Arguments]) -> tuple[Tensor, Tensor | None]:
    """``(out (B, Hq, Nq, Dv), lse (B, Hq, Nq) or None)``; arguments as `qkv.attention` passes them to every
    backend. Raises `RuntimeError` for a call `refuse` refuses."""
    call = Call(q, k, v, **arguments)
    why_not = refuse(call)
    if why_not is not None:
        raise RuntimeError(f"backend 'triton': {why_not}")
    mask, bias, causal, scale, return_lse = call.mask, call.bias, call.causal, call.scale, call.return_lse
    b, hq, nq, nk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    mod = KernelMod()
    if bias is not None and not isinstance(bias, Tensor):
        found = kernel_mod(bias, hq)
        if found is None:  # an additive modifier (refuse let no other through): its dense bias
            bias = score_mods.dense_bias(bias, (b, hq, nq, nk), q.device, q.dtype)
        else:
            mod, bias = found, None
    if nq == 0 or nk == 0:  # no query, or no key: every row is empty
        out = torch.zeros(b, hq, nq, v.shape[-1], dtype=q.dtype, device=q.device)
        lse = torch.full((b, hq, nq), -math.inf, dtype=torch.float32, device=q.device)
        return out + 0 * (q.sum() + k.sum() + v.sum()), (lse if return_lse else None)
    plan = plan_for(mask, causal, (b, hq, nq, nk), max(q.shape[-1], v.shape[-1]), q.device, q.dtype)
    out, lse = _TritonAttention.apply(q, k, v, bias, plan, float(scale), mod)  # type: ignore[no-untyped-call]
    return out, (lse if return_lse else None)


class _TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, plan: TilePlan, scale: float, mod: KernelMod
    ) -> tuple[Tensor, Tensor]:
        from qkv.backends.triton import kernels

        out, lse = kernels.forward(q, k, v, bias, plan, scale, mod.softcap, mod.slopes)
        ctx.save_for_backward(q, k, v, bias, out, lse)
        ctx.plan, ctx.scale, ctx.mod = plan, scale, mod
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor | None, grad_lse: Tensor | None) -> tuple[Tensor | None, ...]:
        from qkv.backends.triton import kernels

        q, k, v, bias, out, lse = ctx.saved_tensors
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out
        bias_grad = bias is not None and ctx.needs_input_grad[3]
        dq, dk, dv, dscores = kernels.backward(
            q, k, v, bias, ctx.plan, ctx.scale, out, lse, grad_out, grad_lse, bias_grad, ctx.mod.softcap, ctx.mod.slopes
        )
        dbias = None
        if dscores is not None:
            dims = [d for d in range(4) if bias.shape[d] == 1 and dscores.shape[d] != 1]
            dbias = (dscores.sum(dim=dims, keepdim=True) if dims else dscores).to(bias.dtype)
        return dq, dk, dv, dbias, None, None, None


__all__ = ["NAME", "TAKES_MASK_OBJECTS", "TAKES_SCORE_MODS", "attention", "estimate", "refuse"]
