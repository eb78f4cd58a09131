"""Choosing a backend: the one asked for, or for ``"auto"`` the cheapest that computes the same function.

Every registered backend answers for itself (`qkv.backends.common.interface`): whether it
can compute the call exactly (``refuse``) and at what estimated cost (``estimate``), built
from the measured crossovers (`qkv.backends.common.crossovers`). ``auto`` runs the cheapest
that does not refuse; a named backend runs if it does not refuse, else its reason is the error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from torch import Tensor

from qkv.backends import BACKENDS
from qkv.backends.common.interface import Call, cheapest
from qkv.errors import AttentionError
from qkv.validation import AttentionCall


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
    v = cast(Tensor, call.v)  # None only for attention_weights, which dispatches nothing
    asked = Call(call.q, call.k, v, call.mask, call.bias, call.causal, call.scale, call.dropout_p, return_lse)
    if backend != "auto":
        why_not = BACKENDS[backend].refuse(asked)
        if why_not is not None:
            raise AttentionError(
                f"backend: {backend!r} cannot compute this call exactly: {why_not}; "
                "use backend='auto' to let qkv choose one that can"
            )
        return Dispatch(backend, "requested by the caller")
    choice = cheapest(tuple(BACKENDS.values()), asked)
    if choice is None:
        raise AttentionError("backend: no registered backend computes this call exactly; name one with backend=")
    return Dispatch(choice.name, choice.offer.reason, choice.rejected)
