"""The `ScoreMod` protocol, the additive mods built on it, and `compose`.

A score mod implements one method, ``__call__``, and may implement more:

- ``__call__(score, b, h, q_idx, kv_idx, num_queries, num_keys)``, required: the modified score;
- ``check(batch, heads, num_queries, num_keys)``: refuse a call the mod cannot serve;
- ``bias(b, h, q_idx, kv_idx, num_queries, num_keys, dtype)`` with ``additive = True``:
  a mod that is ``score + bias`` says so (subclass `AdditiveMod` and implement ``bias`` alone),
  and kernels that take an additive bias can run it;
- ``offset_invariant``: True when the mod depends on the indices only through ``h`` and ``i' - j``.

From these the base class derives `ScoreMod.additive_bias` (the dense bias, or
None) and `ScoreMod.apply` (the mod on a dense score tensor).

>>> import torch
>>> from qkv import mods
>>> class Shift(mods.AdditiveMod):                 # score + 0.5 · h
...     def bias(self, b, h, q_idx, kv_idx, num_queries, num_keys, dtype):
...         return 0.5 * h.to(dtype)
>>> Shift().additive_bias(1, 2, 1, 3)[:, :, 0]
tensor([[[0.0000, 0.0000, 0.0000],
         [0.5000, 0.5000, 0.5000]]])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from qkv import checks
from qkv.errors import AttentionError
from qkv.masks.grid import Device, as_4d, index_grid, query_position


def bias_dtype(dtype: torch.dtype) -> torch.dtype:
    """Biases are computed in float32 (float64 for float64 scores), then cast to the scores' dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class ScoreMod:
    """A change to the scaled scores, elementwise: ``score -> mod(score, b, h, q_idx, kv_idx)``.

    Subclass and implement `__call__` (or use `from_function`). A mod that only
    adds ``f(b, h, i, j)`` subclasses `AdditiveMod` and implements `bias` instead.
    Implement `check` to refuse calls the mod cannot serve (a table for another
    number of heads); see ``docs/masks.md`` for a complete example.
    """

    # -- the protocol: what a mod implements ------------------------------------

    def __call__(
        self, score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        """The modified score, in ``score``'s dtype.

        ``score`` is a float tensor and ``b, h, q_idx, kv_idx`` LongTensors that
        broadcast with it (``q_idx`` in ``[0, Nq)``, ``kv_idx`` in ``[0, Nk)``, ``h`` the
        query head), as for `qkv.masks.Mask.rule`. Differentiable in ``score``.
        """
        raise NotImplementedError(f"{type(self).__name__}: a ScoreMod subclass implements __call__")

    def check(self, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
        """Raise `qkv.AttentionError` if the mod cannot serve a ``(batch, heads, Nq, Nk)`` call.

        Called once per attention call, before any backend runs, and by
        `additive_bias`. The default accepts every shape.

        >>> from qkv import mods
        >>> mods.alibi(4).check(batch=1, heads=8, num_queries=3, num_keys=3)
        Traceback (most recent call last):
        ...
        qkv.errors.AttentionError: alibi: has 4 slopes (one per query head) but the call has 8 heads; ...
        """

    @property
    def additive(self) -> bool:
        """True when the mod is ``score + bias`` and `bias` gives the bias."""
        return False

    def bias(
        self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int, dtype: torch.dtype
    ) -> Tensor:
        """The bias of an additive mod in ``dtype``, in the smallest shape that broadcasts (no axis it ignores)."""
        raise NotImplementedError(f"{type(self).__name__}: an additive ScoreMod implements bias()")

    @property
    def offset_invariant(self) -> bool:
        """True when the mod depends on the indices only through ``h`` and ``i' - j`` (as ALiBi and
        relative position biases do): kernels may then reuse one block's values for every
        block at the same offset within a call."""
        return False

    # -- derived ------------------------------------------------------------------

    def additive_bias(
        self,
        batch: int,
        heads: int,
        num_queries: int,
        num_keys: int,
        device: Device = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor | None:
        """The dense bias ``(B'|1, H'|1, Nq, Nk)`` if the mod is ``score + bias``, else None.

        ``score + mod.additive_bias(...)`` equals ``mod(score, ...)`` on the full grid;
        it lets kernels that take an additive bias run the mod.
        """
        if not self.additive:
            return None
        checks.integer("batch", batch, minimum=1, where="additive_bias")
        checks.integer("heads", heads, minimum=1, where="additive_bias")
        checks.integer("num_queries", num_queries, minimum=0, where="additive_bias")
        checks.integer("num_keys", num_keys, minimum=0, where="additive_bias")
        self.check(batch, heads, num_queries, num_keys)
        b, h, q, k = index_grid(batch, heads, num_queries, num_keys, device)
        bias = as_4d(self.bias(b, h, q, k, num_queries, num_keys, bias_dtype(dtype)).to(dtype))
        return bias.expand(*bias.shape[:2], num_queries, num_keys)  # (B'|1, H'|1, Nq, Nk)

    def apply(self, scores: Tensor) -> Tensor:
        """The mod on a dense ``(B, H, Nq, Nk)`` score tensor (indices built for you).

        >>> import torch
        >>> from qkv import mods
        >>> mods.temperature(2.0).apply(torch.ones(1, 1, 2, 2))
        tensor([[[[0.5000, 0.5000],
                  [0.5000, 0.5000]]]])
        """
        checks.tensor("scores", scores, "(B, H, Nq, Nk)", dims=4)
        batch, heads, num_queries, num_keys = scores.shape
        b, h, q, k = index_grid(batch, heads, num_queries, num_keys, scores.device)
        return self(scores, b, h, q, k, num_queries, num_keys)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class AdditiveMod(ScoreMod):
    """``score + bias(b, h, i, j)``: subclasses implement `bias` alone."""

    def __call__(
        self, score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        bias = self.bias(b, h, q_idx, kv_idx, num_queries, num_keys, bias_dtype(score.dtype))
        return score + bias.to(score.dtype)

    @property
    def additive(self) -> bool:
        return True


class RelativeBias(AdditiveMod):
    """``score + f(h, j - i')``: a bias by query head and relative position, one value set per head.

    Subclasses set ``where`` (the factory's name, for messages) and ``per_head``
    (what they hold per head), and implement `num_heads` and `relative_bias`.
    Offset invariant, so kernels build one block's bias per offset.
    """

    where: str
    per_head: str
    offset_invariant = True

    @property
    def num_heads(self) -> int:
        """The number of query heads the bias serves."""
        raise NotImplementedError

    def relative_bias(self, h: Tensor, relative: Tensor, dtype: torch.dtype) -> Tensor:
        """The bias for query heads ``h`` at relative positions ``relative = j - i'`` (broadcasting)."""
        raise NotImplementedError

    def check(self, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
        if heads != self.num_heads:
            raise AttentionError(
                f"{self.where}: has {self.num_heads} {self.per_head} (one per query head) but the call has "
                f"{heads} heads; build it for {heads} heads"
            )

    def bias(
        self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int, dtype: torch.dtype
    ) -> Tensor:
        return self.relative_bias(h, kv_idx - query_position(q_idx, num_queries, num_keys), dtype)  # f(h, j - i')


class Compose(ScoreMod):
    """Mods applied left to right: see `compose`."""

    def __init__(self, parts: Sequence[ScoreMod]):
        self.parts: tuple[ScoreMod, ...] = tuple(
            q for p in parts for q in (p.parts if isinstance(p, Compose) else (p,))
        )

    def __call__(
        self, score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        for part in self.parts:
            score = part(score, b, h, q_idx, kv_idx, num_queries, num_keys)
        return score

    def check(self, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
        for part in self.parts:
            part.check(batch, heads, num_queries, num_keys)

    @property
    def additive(self) -> bool:
        return all(part.additive for part in self.parts)

    def bias(
        self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int, dtype: torch.dtype
    ) -> Tensor:
        biases = [p.bias(b, h, q_idx, kv_idx, num_queries, num_keys, dtype) for p in self.parts]
        return sum(biases[1:], biases[0])  # broadcasting sum

    @property
    def offset_invariant(self) -> bool:
        return all(part.offset_invariant for part in self.parts)

    def __repr__(self) -> str:
        return "compose(" + ", ".join(repr(p) for p in self.parts) + ")"


def compose(*mods: ScoreMod) -> ScoreMod:
    """Apply ``mods`` left to right: ``compose(m1, m2)(s) = m2(m1(s))``.

    Additive iff every part is; the bias is then the sum of the parts' biases.

    >>> import torch
    >>> from qkv.mods import softcap, temperature, alibi
    >>> m = compose(temperature(2.0), softcap(1.0))
    >>> m
    compose(temperature(2.0), softcap(1.0))
    >>> m.apply(torch.full((1, 1, 1, 1), 2.0))              # tanh(2.0 / 2)
    tensor([[[[0.7616]]]])
    >>> compose(alibi(2), alibi(2)).additive
    True
    """
    if not mods:
        raise AttentionError("compose: expected at least one ScoreMod, got none")
    for i, mod in enumerate(mods):
        if not isinstance(mod, ScoreMod):
            raise AttentionError(
                f"compose: argument {i} must be a qkv.mods.ScoreMod, got {type(mod).__name__}; "
                "turn a function into one with mods.from_function(fn)"
            )
    return Compose(mods)


__all__ = ["AdditiveMod", "Compose", "RelativeBias", "ScoreMod", "bias_dtype", "compose"]
