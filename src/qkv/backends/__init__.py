"""Attention backends, one module (or package) each, registered below from the most general to the
most specialised (at equal estimated cost ``auto`` runs the later one).

Each answers the interface of `qkv.backends.common.interface`: ``NAME``,
``TAKES_MASK_OBJECTS`` / ``TAKES_SCORE_MODS``, ``refuse(call)``, ``estimate(call)``
and ``attention(q, k, v, *, mask, bias, causal, scale, dropout_p, return_lse)``.
Inputs arrive checked by `qkv.functional`: dense masks and biases are 4-D and
broadcast to ``(B, Hq, Nq, Nk)``. Backends never import each other, nor
`qkv.masks` / `qkv.mods` (they rely on the protocols only); what they share
lives in `qkv.backends.common`. Adding a backend: its own module or folder
here, and one line below (docs/backends.md).
"""

from __future__ import annotations

import importlib
from typing import cast

from qkv.backends.common.interface import Backend, register

BACKENDS: dict[str, Backend] = {}
for _module in (
    "qkv.backends.reference",
    "qkv.backends.eager",
    "qkv.backends.sdpa",
    "qkv.backends.blockwise",
    "qkv.backends.triton",
):
    register(BACKENDS, cast(Backend, importlib.import_module(_module)))

__all__ = ["BACKENDS", "register"]
