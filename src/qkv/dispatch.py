"""Choosing a backend: the one asked for, or for ``"auto"`` the fastest that computes the same function."""

from __future__ import annotations

from dataclasses import dataclass

from qkv.backends import BACKENDS
from qkv.errors import AttentionError
from qkv.validation import AttentionCall

# Fastest first. Each backend says for itself which calls it cannot compute exactly.
AUTO_ORDER = ("sdpa", "blockwise", "eager")

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
    rejected = []
    for name in AUTO_ORDER:
        why_not = BACKENDS[name].unsupported(call.q, call.k, call.v, **kwargs)
        if why_not is None:
            return Dispatch(name, WHY_CHOSEN[name], tuple(rejected))
        rejected.append((name, why_not))
    raise AssertionError("the eager backend computes every call")  # pragma: no cover
