"""Choosing a backend: the one asked for, or for ``"auto"`` the fastest that computes the same function."""

from __future__ import annotations

from dataclasses import dataclass

from qkv.backends import BACKENDS
from qkv.backends.blockwise import cpu_kernel
from qkv.errors import AttentionError
from qkv.masks import Mask, TileKind, causal
from qkv.mods import ScoreMod
from qkv.validation import AttentionCall

# Fastest first. Each backend says for itself which calls it cannot compute exactly.
AUTO_ORDER = ("sdpa", "blockwise", "eager")
STRUCTURED_ORDER = ("blockwise", "sdpa", "eager")
# A structured mask that keeps more of the (128 x 128) key tiles than this runs
# faster as a dense mask in torch's fused kernel than blockwise...
DENSE_ENOUGH = 0.6
# ...and on the CPU with qkv's blockwise kernel, once the call has this many scores (the
# plan's fixed cost is then small), only one that keeps more than this. Measured, document
# masks keeping 74% and 89% of the keys: blockwise 1.5-1.9x faster than the dense mask at
# N = 1024-2048, 0.75-0.95x at N = 256-512.
DENSE_ENOUGH_KERNEL = 0.9
KERNEL_MIN_SCORES = 1024 * 1024
# Plain causal attention on the CPU from this many queries (and keys) up to this many scores:
# the blockwise kernel skips the upper triangle in blocks of 32 rows, torch's fused kernel in
# coarser ones, which pays off on short and middling sequences. Measured (B=2, H=8, D=64),
# blockwise over sdpa: N=128 1.25x forward, 1.31x forward+backward; N=512 1.56x, 1.79x;
# N=2048 1.01x, 1.14x; at N=64 0.9x forward, at N=4096 0.9x forward, 1.0x forward+backward.
CAUSAL_KERNEL_MIN_ROWS = 128
CAUSAL_KERNEL_MAX_SCORES = 2048 * 2048
PROBE_BLOCK = 128

WHY_CHOSEN = {
    "sdpa": "torch's fused scaled_dot_product_attention computes this call exactly and is the fastest available",
    "blockwise": "computes this call exactly at O(N) memory, skipping the key tiles the mask rules out",
    "eager": "materializes the probabilities; it computes every call",
    "reference": "the float64 specification",
}


@dataclass(frozen=True)
class Dispatch:
    """Which backend runs a call, why, and why the faster ones were passed over.

    >>> import torch, qkv
    >>> q = torch.randn(1, 2, 4, 8)
    >>> qkv.explain_dispatch(q, q, q).backend
    'sdpa'
    >>> d = qkv.explain_dispatch(q, q, q, return_lse=True)
    >>> d.backend, d.rejected[0][0]
    ('blockwise', 'sdpa')
    """

    backend: str
    reason: str
    rejected: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        lines = [f"backend {self.backend!r}: {self.reason}"]
        lines += [f"  not {name!r}: {why}" for name, why in self.rejected]
        return "\n".join(lines)


def choose(call: AttentionCall, backend: object, return_lse: bool) -> Dispatch:
    """The backend for a checked call; raises `AttentionError` for an unknown or unable backend."""
    if not isinstance(backend, str) or (backend != "auto" and backend not in BACKENDS):
        known = ", ".join(repr(name) for name in ("auto", *BACKENDS))
        raise AttentionError(f"backend: unknown backend {backend!r}; choose one of {known}")
    kwargs = call.kwargs(return_lse)
    if backend != "auto":
        why_not = BACKENDS[backend].unsupported(call.q, call.k, call.v, **kwargs)
        if why_not is not None:
            raise AttentionError(
                f"backend: {backend!r} cannot compute this call exactly: {why_not}; "
                "use backend='auto' to let qkv choose one that can"
            )
        return Dispatch(backend, "requested by the caller")
    order, why_order = _auto_order(call)
    rejected = []
    for name in order:
        why_not = BACKENDS[name].unsupported(call.q, call.k, call.v, **kwargs)
        if why_not is None:
            reason = why_order if why_order is not None and name == order[0] else WHY_CHOSEN[name]
            return Dispatch(name, reason, tuple(rejected))
        rejected.append((name, why_not))
    raise AssertionError("the eager backend computes every call")  # pragma: no cover


def kept_fraction(call: AttentionCall) -> float:
    """The share of ``128 x 128`` (query, key) tiles that a structured mask (and causal) keeps."""
    b, hq, nq, nk = call.shape
    mask = call.mask
    if call.causal:
        mask = causal() if mask is None else mask & causal()
    kinds = mask.tile_kinds(b, hq, nq, nk, PROBE_BLOCK, PROBE_BLOCK, device=call.q.device)
    return float((kinds != TileKind.EMPTY).float().mean()) if kinds.numel() else 1.0


def _auto_order(call: AttentionCall) -> tuple[tuple[str, ...], str | None]:
    """The order ``auto`` tries backends in for this call, and why when it is not the usual one."""
    if isinstance(call.bias, ScoreMod):
        return STRUCTURED_ORDER, (
            f"computes the score modifier {call.bias!r} on the fly, exactly, at O(N) memory, "
            "skipping the key tiles the mask rules out"
        )
    if isinstance(call.mask, Mask):
        kept = kept_fraction(call)
        if kept <= _dense_enough(call):
            return STRUCTURED_ORDER, (
                f"the mask keeps {kept:.0%} of the key tiles; blockwise computes only those, exactly, "
                "at O(N) memory"
            )
        return AUTO_ORDER, None
    if _causal_in_kernel(call):
        return STRUCTURED_ORDER, (
            "causal attention on the CPU: the blockwise kernel computes only the keys each block of "
            "32 queries may attend, faster than torch's fused kernel for 128 to 2048 queries"
        )
    return AUTO_ORDER, None


def _causal_in_kernel(call: AttentionCall) -> bool:
    b, hq, nq, nk = call.shape
    return (
        call.causal
        and call.mask is None
        and call.bias is None
        and min(nq, nk) >= CAUSAL_KERNEL_MIN_ROWS
        and nq * nk <= CAUSAL_KERNEL_MAX_SCORES
        and _cpu_kernel_serves(call)
    )


def _cpu_kernel_serves(call: AttentionCall) -> bool:
    """Would blockwise run this call in qkv's CPU kernel (on the CPU, with the kernel built)?"""
    return call.q.device.type == "cpu" and cpu_kernel.available()


def _dense_enough(call: AttentionCall) -> float:
    """The most of the tiles a structured mask may keep for ``auto`` to run it blockwise."""
    b, hq, nq, nk = call.shape
    if nq * nk >= KERNEL_MIN_SCORES and _cpu_kernel_serves(call):
        return DENSE_ENOUGH_KERNEL
    return DENSE_ENOUGH
