"""The `Mask` protocol, what every mask answers, and the combinators ``&``, ``|``, ``~``.

A mask implements one method, `Mask.rule`, and may implement four more:

- ``rule(b, h, q_idx, kv_idx, num_queries, num_keys)``, required: the index rule, True = may attend;
- ``check(batch, heads, num_queries, num_keys)``: refuse a call the mask cannot describe;
- ``classify_tiles(tiling)``: tile kinds from block boundaries, instead of by evaluating the rule;
- ``classify_rows(tiling, start, stop)``: the same for a few tile rows (what long calls ask);
- ``offset_invariant``: True when the rule depends only on ``i' - j``.

From these the base class derives what validation and the backends call:
`Mask.allowed` (the rule expanded and checked), `Mask.to_dense` (the spec),
`Mask.tile_kinds` (arguments checked, then `Mask.classify_tiles`) and
`Mask.sparse_tiles` (the kept tiles as block lists, a few tile rows at a time: ``O(N)`` memory).

>>> import torch
>>> from qkv import masks
>>> class EvenKeys(masks.Mask):
...     def rule(self, b, h, q_idx, kv_idx, num_queries, num_keys):
...         return kv_idx % 2 == 0
>>> (EvenKeys() & masks.causal()).to_dense(1, 1, 3, 3)[0, 0].int()
tensor([[1, 0, 0],
        [1, 0, 0],
        [1, 0, 1]], dtype=torch.int32)
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from functools import reduce

import torch
from torch import Tensor

from qkv import checks
from qkv.backends.common.tile_runs import TileRuns
from qkv.errors import AttentionError
from qkv.masks.grid import Device, broadcast_shape, checked_output, index_grid
from qkv.masks.tiling import TileKind, Tiling

# `Mask.sparse_tiles` asks `Mask.classify_rows` for about this many tiles at a time.
CHUNK_TILES = 1 << 18
# `Mask.classify_rows` may slice a subclass's `Mask.classify_tiles` on grids of at most this many tiles.
DENSE_TILES = 1 << 16


def check_grid(batch: object, heads: object, num_queries: object, num_keys: object) -> None:
    """The four sizes of a call: ``batch, heads >= 1`` and ``num_queries, num_keys >= 0``."""
    checks.integer("batch", batch, minimum=1, where="mask")
    checks.integer("heads", heads, minimum=1, where="mask")
    checks.integer("num_queries", num_queries, minimum=0, where="mask")
    checks.integer("num_keys", num_keys, minimum=0, where="mask")


def brief(t: Tensor, limit: int = 8) -> str:
    """A tensor argument in a repr: its values when short, else its dtype and shape.

    >>> brief(torch.tensor([3, 5])), brief(torch.zeros(4, 4, dtype=torch.bool))
    ('[3, 5]', '<bool (4, 4)>')
    """
    if t.numel() <= limit:
        return str(t.tolist())
    return f"<{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}>"


class Mask:
    """A rule saying which (query, key) pairs may attend: ``True`` = may attend.

    Write a mask of your own by subclassing and implementing `rule`; `allowed`,
    `to_dense` and `tile_kinds` then work by evaluating it. Implement `check` to
    refuse calls the mask cannot describe (a table of the wrong size), and
    `classify_tiles` to answer tile kinds from block boundaries instead of by
    evaluation; see ``docs/masks.md`` for a complete example. (A subclass written
    against earlier versions, overriding `allowed` itself, still works.)
    """

    _precedence = 4  # for reprs: ``|`` 1, ``&`` 2, ``~`` 3, a factory call 4

    @property
    def offset_invariant(self) -> bool:
        """True when the rule depends only on ``i' - j`` (not on b, h or absolute positions).

        Kernels may then reuse one block's mask for every block at the same offset.
        """
        return False

    # -- the protocol: what a mask implements ---------------------------------

    def rule(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int) -> Tensor:
        """The index rule, elementwise: a bool tensor, True = may attend. Implement this.

        ``b, h, q_idx, kv_idx`` are LongTensors that broadcast against each other,
        e.g. ``(B,1,1,1), (1,H,1,1), (1,1,Nq',1), (1,1,1,Nk')``; ``q_idx`` and ``kv_idx``
        are absolute positions in ``[0, Nq)`` and ``[0, Nk)`` (a query's place among
        the keys is ``i' = q_idx + (num_keys - num_queries)``). Return the answer in
        the smallest shape that broadcasts to theirs: a rule that ignores ``b`` and
        ``h`` returns ``(Nq', Nk')``, and its tile kinds keep ``B' = H' = 1``.
        """
        if type(self).allowed is Mask.allowed:
            raise NotImplementedError(f"{type(self).__name__}: a Mask subclass implements rule()")
        return self.allowed(b, h, q_idx, kv_idx, num_queries, num_keys)

    def check(self, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
        """Raise `qkv.AttentionError` if the mask cannot describe a ``(batch, heads, Nq, Nk)`` call.

        Called once per attention call, before any backend runs, and by `to_dense`
        and `tile_kinds`. The default accepts every shape.

        >>> from qkv import masks
        >>> masks.padding([3, 5]).check(batch=3, heads=1, num_queries=4, num_keys=4)
        Traceback (most recent call last):
        ...
        qkv.errors.AttentionError: padding: lengths has 2 entries but the batch has 3 sequences; ...
        """

    def classify_tiles(self, tiling: Tiling) -> Tensor:
        """The `TileKind` of every tile of ``tiling``: int8 ``(B', H', nQb, nKb)``.

        The arguments are checked already (`tile_kinds` calls this). The default
        evaluates `rule` a few query blocks at a time (`Tiling.evaluate`); a mask
        that can answer from block boundaries (`Tiling.rows`, `Tiling.cols`)
        overrides it (or overrides `classify_rows`, which this then calls for
        every row). PARTIAL is always a safe answer.
        """
        if type(self).classify_rows is not Mask.classify_rows:
            return self.classify_rows(tiling, 0, tiling.grid[0])
        return tiling.evaluate(self.rule)

    def classify_rows(self, tiling: Tiling, start: int, stop: int) -> Tensor:
        """The `TileKind` of the tiles of tile rows ``[start, stop)``: int8 ``(B', H', stop - start, nKb)``.

        What `sparse_tiles` asks, a few rows at a time, so that a long call never
        holds the ``nQb x nKb`` map. The default slices `classify_tiles` on a small
        grid (at most ``DENSE_TILES`` tiles) where a subclass overrides it, and
        else evaluates `rule` on those rows (`Tiling.evaluate`); a mask that can
        answer from block boundaries (``tiling.rows(start, stop)``, `Tiling.cols`)
        overrides it, and then serves `classify_tiles` too.
        """
        n_qb, n_kb = tiling.grid
        if type(self).classify_tiles is not Mask.classify_tiles and n_qb * n_kb <= DENSE_TILES:
            return self.classify_tiles(tiling)[:, :, start:stop]
        return tiling.evaluate(self.rule, start, stop)

    # -- derived: what validation and the backends call ------------------------

    def allowed(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int) -> Tensor:
        """`rule`, checked and expanded to the broadcast shape of the indices (possibly a view).

        >>> import torch
        >>> from qkv import masks
        >>> b, h = torch.tensor(0), torch.tensor(0)
        >>> masks.causal().allowed(b, h, torch.tensor([[0], [1]]), torch.arange(3), num_queries=2, num_keys=3).int()
        tensor([[1, 1, 0],
                [1, 1, 1]], dtype=torch.int32)
        """
        out = self.rule(b, h, q_idx, kv_idx, num_queries, num_keys)
        grid = broadcast_shape(b.shape, h.shape, q_idx.shape, kv_idx.shape)
        if not isinstance(out, Tensor) or out.dtype != torch.bool:
            checked_output(out, (1, 1, 1, 1))  # raises, naming what the rule returned
        try:
            return out.expand(broadcast_shape(grid, out.shape))
        except RuntimeError:
            raise AttentionError(
                f"mask: the rule returned shape {tuple(out.shape)}, which does not broadcast to the "
                f"index grid {tuple(grid)}"
            ) from None

    def to_dense(self, batch: int, heads: int, num_queries: int, num_keys: int, device: Device = None) -> Tensor:
        """The bool ``(batch, heads, Nq, Nk)`` tensor: `rule` on the full grid, the spec of the mask.

        Axes the mask does not depend on are expanded views (no memory).

        >>> from qkv import masks
        >>> masks.causal().to_dense(1, 1, 2, 4)[0, 0].int()       # a KV cache: 2 new queries, 4 keys
        tensor([[1, 1, 1, 0],
                [1, 1, 1, 1]], dtype=torch.int32)
        >>> masks.padding([1, 3]).to_dense(2, 8, 4, 4).shape
        torch.Size([2, 8, 4, 4])
        """
        check_grid(batch, heads, num_queries, num_keys)
        self.check(batch, heads, num_queries, num_keys)
        b, h, q, k = index_grid(batch, heads, num_queries, num_keys, device)
        full = (batch, heads, num_queries, num_keys)
        return checked_output(self.rule(b, h, q, k, num_queries, num_keys), full).expand(*full)

    def tile_kinds(
        self, batch: int, heads: int, num_queries: int, num_keys: int, block_q: int, block_k: int, device: Device = None
    ) -> Tensor:
        """The `TileKind` of every tile: int8 ``(B', H', ceil(Nq / block_q), ceil(Nk / block_k))``.

        ``B'`` is 1 or ``batch`` and ``H'`` is 1 or ``heads`` (1 where the mask does
        not depend on that axis). Tile ``(r, c)`` covers query rows
        ``[r*block_q, min((r+1)*block_q, Nq))`` and keys ``[c*block_k, min((c+1)*block_k, Nk))``.
        EMPTY tiles hold no allowed pair and FULL tiles no forbidden one; PARTIAL is
        always a safe answer (combinators may give it for a tile that is in fact uniform).

        >>> from qkv import masks
        >>> masks.causal().tile_kinds(1, 1, 6, 6, block_q=2, block_k=2)[0, 0]
        tensor([[1, 0, 0],
                [2, 1, 0],
                [2, 2, 1]], dtype=torch.int8)
        """
        tiling = Tiling(batch, heads, num_queries, num_keys, block_q, block_k, device)
        return self.classify_tiles(self._checked(tiling, "tile_kinds"))

    def sparse_tiles(
        self,
        batch: int,
        heads: int,
        num_queries: int,
        num_keys: int,
        block_q: int,
        block_k: int,
        device: Device = None,
        *,
        causal: bool = False,
    ) -> TileRuns:
        """The tiles a kernel visits as block lists: per query block, runs of key blocks, FULL or PARTIAL.

        The same answer as `tile_kinds`, merged over batch and heads (a tile is kept
        if some ``(b, h)`` may attend in it, FULL if every one attends all of it),
        without the ``nQb x nKb`` map: `classify_rows` is asked for ``CHUNK_TILES``
        tiles at a time and only the runs are kept, so a sliding window or a causal
        mask costs ``O(N)`` memory at any length. ``causal=True`` gives the tiles of
        ``self & causal()``. See `qkv.backends.common.tile_runs.TileRuns`.

        >>> from qkv import masks
        >>> plan = masks.sliding_window(4).sparse_tiles(1, 1, 8, 8, block_q=2, block_k=2)
        >>> [plan.row(r) for r in range(4)]        # (first key block, key blocks, 1 PARTIAL / 2 FULL)
        [[(0, 1, 1)], [(0, 1, 2), (1, 1, 1)], [(0, 1, 1), (1, 1, 2), (2, 1, 1)], [(1, 1, 1), (2, 1, 2), (3, 1, 1)]]
        """
        tiling = Tiling(batch, heads, num_queries, num_keys, block_q, block_k, device)
        return self._sparse(self._checked(tiling, "sparse_tiles"), causal)

    def _checked(self, tiling: Tiling, where: str) -> Tiling:
        """``tiling`` once its sizes are checked for ``where`` (`tile_kinds`, `sparse_tiles`) and by `check`."""
        check_grid(tiling.batch, tiling.heads, tiling.num_queries, tiling.num_keys)
        checks.integer("block_q", tiling.block_q, minimum=1, where=where)
        checks.integer("block_k", tiling.block_k, minimum=1, where=where)
        self.check(tiling.batch, tiling.heads, tiling.num_queries, tiling.num_keys)
        return tiling

    def _sparse(self, tiling: Tiling, causal: bool) -> TileRuns:
        """`sparse_tiles` after its checks: `classify_rows` a chunk at a time (a mask may answer analytically)."""
        mask: Mask = self
        if causal:
            from qkv.masks.diagonal import Causal  # diagonal imports this module

            mask = And([self, Causal()])
        n_qb, n_kb = tiling.grid
        batch = tiling.batch
        step = max(1, CHUNK_TILES // max(1, n_kb * batch))
        pieces = [
            TileRuns.from_kinds(mask.classify_rows(tiling, start, min(start + step, n_qb)))
            for start in range(0, n_qb, step)
        ]
        return TileRuns.cat(pieces, n_kb)

    # -- combinators ------------------------------------------------------------

    def __and__(self, other: Mask) -> Mask:
        return And([self, _check_operand("&", other)])

    def __or__(self, other: Mask) -> Mask:
        return Or([self, _check_operand("|", other)])

    def __invert__(self) -> Mask:
        return Not(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _check_operand(op: str, other: object) -> Mask:
    if not isinstance(other, Mask):
        raise AttentionError(
            f"mask {op} {type(other).__name__}: both operands must be qkv.masks.Mask; "
            "turn a rule into a mask with masks.from_function(fn)"
        )
    return other


def _paren(mask: Mask, level: int) -> str:
    return f"({mask!r})" if mask._precedence < level else repr(mask)


class _Combination(Mask):
    """``m1 op m2 op ...``: the parts joined by one operator; `And` and `Or` set which."""

    _symbol: str  # the operator in the repr
    _combine: Callable[[Tensor, Tensor], Tensor]  # two parts' rules -> their combination, elementwise
    _combine_tiles: Callable[[Tensor, Tensor], Tensor]  # two parts' tile kinds -> the combination's

    def __init__(self, parts: Sequence[Mask]):
        # a nested combination of the same kind is flattened: (a & b) & c -> a & b & c
        self.parts: tuple[Mask, ...] = tuple(q for p in parts for q in (p.parts if isinstance(p, type(self)) else (p,)))

    @property
    def offset_invariant(self) -> bool:
        return all(part.offset_invariant for part in self.parts)

    def check(self, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
        for part in self.parts:
            part.check(batch, heads, num_queries, num_keys)

    def rule(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int) -> Tensor:
        return reduce(self._combine, (p.rule(b, h, q_idx, kv_idx, num_queries, num_keys) for p in self.parts))

    def classify_tiles(self, tiling: Tiling) -> Tensor:
        return reduce(self._combine_tiles, (tiling.kinds_of(p) for p in self.parts))  # broadcasts over B', H'

    def classify_rows(self, tiling: Tiling, start: int, stop: int) -> Tensor:
        return reduce(self._combine_tiles, (p.classify_rows(tiling, start, stop) for p in self.parts))

    def __repr__(self) -> str:
        return f" {self._symbol} ".join(_paren(p, self._precedence) for p in self.parts)


class And(_Combination):
    """``m1 & m2 & ...``: allowed where every part allows."""

    _precedence = 2
    _symbol = "&"
    _combine = staticmethod(operator.and_)
    # EMPTY if any part is EMPTY, FULL if all are FULL: the minimum, as EMPTY < PARTIAL < FULL
    _combine_tiles = staticmethod(torch.minimum)


class Or(_Combination):
    """``m1 | m2 | ...``: allowed where any part allows."""

    _precedence = 1
    _symbol = "|"
    _combine = staticmethod(operator.or_)
    # FULL if any part is FULL, EMPTY if all are EMPTY: the maximum
    _combine_tiles = staticmethod(torch.maximum)


class Not(Mask):
    """``~m``: allowed where ``m`` forbids."""

    _precedence = 3

    def __init__(self, mask: Mask):
        self.mask = mask

    @property
    def offset_invariant(self) -> bool:
        return self.mask.offset_invariant

    def check(self, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
        self.mask.check(batch, heads, num_queries, num_keys)

    def rule(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int) -> Tensor:
        return ~self.mask.rule(b, h, q_idx, kv_idx, num_queries, num_keys)

    def classify_tiles(self, tiling: Tiling) -> Tensor:
        return int(TileKind.FULL) - tiling.kinds_of(self.mask)  # EMPTY <-> FULL, PARTIAL stays

    def classify_rows(self, tiling: Tiling, start: int, stop: int) -> Tensor:
        return int(TileKind.FULL) - self.mask.classify_rows(tiling, start, stop)

    def __invert__(self) -> Mask:
        return self.mask

    def __repr__(self) -> str:
        return "~" + _paren(self.mask, self._precedence)


__all__ = ["CHUNK_TILES", "DENSE_TILES", "And", "Mask", "Not", "Or", "brief", "check_grid"]
