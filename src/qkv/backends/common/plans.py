"""Plans kept per mask object while the mask cannot have changed: the one rule both planning backends follow.

A plan (which tiles a call visits, their stored masks) depends on the mask and the call's
sizes. Building one costs a pass over the mask's rule, so a model that calls attention with
the same mask in every layer should build it once. A mask that depends only on ``i' - j``
(``offset_invariant``: causal, windows, bands) cannot change. A mask holding tensors (document
ids, lengths, a block layout) can, in place, between two calls: its plan is kept under its
`state`, which reads every tensor's version counter (torch bumps it on every in-place write,
views included), so a changed tensor gives a new key and a new plan. A mask whose state cannot
be read (a rule in a Python function, which may read anything) is planned on every call.

>>> import torch
>>> from qkv import masks
>>> ids = torch.tensor([0, 0, 1, 1])
>>> mask = masks.document(ids)
>>> before = state(mask)
>>> before == state(mask)
True
>>> ids[3] = 2                         # in place: the version counter moves
>>> before == state(mask)
False
>>> state(masks.from_function(lambda b, h, i, j: i >= j)) is None
True
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from torch import Tensor

T = TypeVar("T")
KEPT_PER_MASK = 8  # call keys kept per mask, the oldest dropped first
_PLAIN = (int, float, bool, str, type(None))


def state(mask: object, tensors: list[Tensor] | None = None) -> tuple[object, ...] | None:
    """What a mask object's rule reads, as a key: its plain attributes' values and, for each tensor, its identity,
    storage and version counter (each tensor also appended to ``tensors``); nested masks and tuples of them read
    alike. None when some attribute is neither (a function, another object): then nothing says the mask is
    unchanged."""
    if isinstance(mask, Tensor):
        if tensors is not None:
            tensors.append(mask)
        return ("tensor", id(mask), mask.data_ptr(), mask._version, tuple(mask.shape))
    if isinstance(mask, _PLAIN):
        return ("value", mask)
    if isinstance(mask, tuple | list):
        parts = [state(part, tensors) for part in mask]
        return None if any(p is None for p in parts) else ("seq", *parts)
    if not hasattr(mask, "allowed") or not hasattr(mask, "__dict__"):
        return None
    fields = []
    for name, value in sorted(vars(mask).items()):
        part = state(value, tensors)
        if part is None:
            return None
        fields.append((name, part))
    return (type(mask), *fields)


_Kept = tuple[Any, list[Tensor]]  # a plan and the tensors its key names


class PlanCache:
    """Plans per mask object (held weakly) and call key; no mask at all shares one table."""

    def __init__(self, per_mask: int = KEPT_PER_MASK) -> None:
        self.per_mask = per_mask
        self._tables: weakref.WeakKeyDictionary[object, dict[tuple[object, ...], _Kept]] = weakref.WeakKeyDictionary()
        self._no_mask: dict[tuple[object, ...], _Kept] = {}

    def get(self, mask: object, key: tuple[object, ...], build: Callable[[], T]) -> T:
        """The plan of ``mask`` for ``key``, built by ``build()`` unless one is kept for the mask as it is now."""
        held: list[Tensor] = []  # kept with the plan: no other tensor can take their ids while it is kept
        if mask is None:
            table = self._no_mask
        else:
            if isinstance(mask, Tensor):
                return build()  # a dense mask: planning it is reading it
            if not getattr(mask, "offset_invariant", False):
                now = state(mask, held)
                if now is None:
                    return build()
                key = (*key, now)
            try:
                table = self._tables.setdefault(mask, {})
            except TypeError:  # an object that takes no weak reference
                return build()
        if key not in table:
            if len(table) >= self.per_mask:
                table.pop(next(iter(table)))
            table[key] = (build(), held)
        plan: T = table[key][0]
        return plan

    def clear(self) -> None:
        self._tables.clear()
        self._no_mask.clear()


__all__ = ["KEPT_PER_MASK", "PlanCache", "state"]
