"""Tiles: a ``(B, H, Nq, Nk)`` problem cut into ``block_q x block_k`` blocks, and what each tile holds.

A fast kernel walks the attention matrix tile by tile. For each tile it asks the
mask one question, answered by a `TileKind`: skip it (EMPTY), run it without a
per-element mask (FULL), or apply the mask elementwise (PARTIAL). `Tiling`
describes the cut and gives a mask's `~qkv.masks.Mask.classify_tiles` what it
needs to answer from block boundaries alone; `Tiling.evaluate` answers for any
rule by evaluating it, a few query blocks at a time.

>>> t = Tiling(batch=1, heads=1, num_queries=5, num_keys=8, block_q=2, block_k=4)
>>> t.grid                                   # ceil(5 / 2) tile rows, ceil(8 / 4) tile columns
(3, 2)
>>> t.rows()                                 # first query, one past the last, per tile row
(tensor([0, 2, 4]), tensor([2, 4, 5]))
>>> t.offset                                 # Nk - Nq: query i sits at key position i + 3
3
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from qkv.masks.grid import Device, checked_output, index_grid

if TYPE_CHECKING:
    from qkv.masks.base import Mask

Rule = Callable[[Tensor, Tensor, Tensor, Tensor, int, int], Tensor]
"""``rule(b, h, q_idx, kv_idx, num_queries, num_keys) -> bool tensor``: `qkv.masks.Mask.rule`."""

# At most this many (b, h, i, j) elements are evaluated at once by `Tiling.evaluate`.
CHUNK_ELEMENTS = 1 << 21


class TileKind(enum.IntEnum):
    """What a (query block, key block) tile holds. Ordered: ``EMPTY < PARTIAL < FULL``."""

    EMPTY = 0  # no (query, key) pair in the tile may attend
    PARTIAL = 1  # some may, some may not: apply the mask elementwise
    FULL = 2  # every pair may attend


@dataclass(frozen=True)
class Tiling:
    """A ``(batch, heads, Nq, Nk)`` problem cut into ``block_q x block_k`` tiles.

    `qkv.masks.Mask.tile_kinds` checks its arguments, then hands a `Tiling` to
    `~qkv.masks.Mask.classify_tiles`; tile ``(r, c)`` covers query rows
    ``[r*block_q, min((r+1)*block_q, Nq))`` and keys ``[c*block_k, min((c+1)*block_k, Nk))``.
    """

    batch: int
    heads: int
    num_queries: int
    num_keys: int
    block_q: int
    block_k: int
    device: Device = None

    @property
    def offset(self) -> int:
        """``Nk - Nq``: query ``i`` sits at key position ``i' = i + offset``."""
        return self.num_keys - self.num_queries

    @property
    def grid(self) -> tuple[int, int]:
        """``(nQb, nKb)``: the number of tile rows and columns."""
        return -(-self.num_queries // self.block_q), -(-self.num_keys // self.block_k)

    def rows(self, start: int = 0, stop: int | None = None) -> tuple[Tensor, Tensor]:
        """First query and one past the last query of each tile row, ``(nQb,)`` each (of tile rows
        ``[start, stop)`` only, when given: what `~qkv.masks.Mask.classify_rows` answers for).

        >>> Tiling(1, 1, num_queries=5, num_keys=8, block_q=2, block_k=4).rows(1, 3)
        (tensor([2, 4]), tensor([4, 5]))
        """
        stop = self.grid[0] if stop is None else stop
        first = torch.arange(start * self.block_q, stop * self.block_q, self.block_q, device=self.device)
        return first, (first + self.block_q).clamp(max=self.num_queries)

    def cols(self) -> tuple[Tensor, Tensor]:
        """First key and one past the last key of each tile column, ``(nKb,)`` each."""
        return _bounds(self.num_keys, self.block_k, self.device)

    def query_blocks(self, x: Tensor, fill: int | bool) -> Tensor:
        """A per-query tensor ``(..., Nq)`` cut into tile rows: ``(..., nQb, block_q)``, padded with ``fill``.

        >>> t = Tiling(1, 1, num_queries=3, num_keys=4, block_q=2, block_k=2)
        >>> t.query_blocks(torch.tensor([True, False, True]), fill=False).any(-1)   # any True per tile row
        tensor([True, True])
        """
        return _blocks(x, self.block_q, fill)

    def key_blocks(self, x: Tensor, fill: int | bool) -> Tensor:
        """A per-key tensor ``(..., Nk)`` cut into tile columns: ``(..., nKb, block_k)``, padded with ``fill``."""
        return _blocks(x, self.block_k, fill)

    @staticmethod
    def kinds(full: Tensor, empty: Tensor) -> Tensor:
        """int8 `TileKind` values from two bool answers per tile (a tile is never both).

        >>> Tiling.kinds(torch.tensor([True, False, False]), torch.tensor([False, False, True]))
        tensor([2, 1, 0], dtype=torch.int8)
        """
        kinds = torch.where(full, int(TileKind.FULL), int(TileKind.PARTIAL))
        return torch.where(empty, int(TileKind.EMPTY), kinds).to(torch.int8)

    def kinds_of(self, mask: Mask) -> Tensor:
        """``mask.tile_kinds`` on this tiling (through the public method, which subclasses may override)."""
        return mask.tile_kinds(
            self.batch, self.heads, self.num_queries, self.num_keys, self.block_q, self.block_k, self.device
        )

    def evaluate(self, rule: Rule, start: int = 0, stop: int | None = None) -> Tensor:
        """Tile kinds of any rule, by evaluating it a few query blocks at a time.

        Memory stays near ``CHUNK_ELEMENTS`` booleans; the result is ``(B', H', nQb, nKb)``
        with ``B'`` (``H'``) 1 when the rule's output did not grow along that axis (tile rows
        ``[start, stop)`` only, ``(B', H', stop - start, nKb)``, when given).

        >>> t = Tiling(1, 1, num_queries=4, num_keys=4, block_q=2, block_k=2)
        >>> t.evaluate(lambda b, h, q, k, nq, nk: k <= q)[0, 0]      # causal: 0 EMPTY, 1 PARTIAL, 2 FULL
        tensor([[1, 0],
                [2, 1]], dtype=torch.int8)
        """
        b, h, _, k = index_grid(self.batch, self.heads, self.num_queries, self.num_keys, self.device)
        n_kb = self.grid[1]
        per_block = self.batch * self.heads * self.block_q * max(1, n_kb * self.block_k)  # one query block's rows
        rows = self.block_q * max(1, CHUNK_ELEMENTS // per_block)  # whole query blocks per evaluation
        counts = []
        stop = self.grid[0] if stop is None else stop
        end = min(self.num_queries, stop * self.block_q)
        for first in range(start * self.block_q, end, rows):
            n_rows = min(rows, end - first)
            q = torch.arange(first, first + n_rows, device=self.device).view(1, 1, n_rows, 1)  # (R,) -> (1, 1, R, 1)
            allowed = rule(b, h, q, k, self.num_queries, self.num_keys)
            allowed = checked_output(allowed, (self.batch, self.heads, n_rows, self.num_keys))  # (B', H', R, Nk)
            b_size, h_size = allowed.shape[:2]
            n_rb = -(-n_rows // self.block_q)
            padded = allowed.new_zeros(b_size, h_size, n_rb * self.block_q, n_kb * self.block_k)
            padded[:, :, :n_rows, : self.num_keys] = allowed
            # (B', H', R', Nk') -> (B', H', R'/bq, bq, nKb, bk), R' and Nk' padded to whole blocks
            tiles = padded.view(b_size, h_size, n_rb, self.block_q, n_kb, self.block_k)
            counts.append(tiles.sum(dim=(3, 5)))  # (B', H', R/bq, nKb): allowed pairs per tile
        if not counts:
            return torch.zeros(1, 1, 0, n_kb, dtype=torch.int8, device=self.device)
        b_size, h_size = max(c.shape[0] for c in counts), max(c.shape[1] for c in counts)
        count = torch.cat([c.expand(b_size, h_size, -1, -1) for c in counts], dim=2)  # (B', H', nQb, nKb)
        (q0, q1), (k0, k1) = self.rows(start, stop), self.cols()
        area = (q1 - q0)[:, None] * (k1 - k0)[None, :]  # (nQb, nKb): pairs per tile
        return self.kinds(count == area, count == 0)


def _bounds(n: int, block: int, device: Device) -> tuple[Tensor, Tensor]:
    start = torch.arange(0, n, block, device=device)  # (nb,)
    return start, (start + block).clamp(max=n)


def _blocks(x: Tensor, block: int, fill: int | bool) -> Tensor:
    """``(..., N) -> (..., ceil(N / block), block)``, the last block padded with ``fill``."""
    pad = -x.shape[-1] % block
    if pad:
        x = torch.cat([x, x.new_full((*x.shape[:-1], pad), fill)], dim=-1)  # (..., N) -> (..., N + pad)
    return x.view(*x.shape[:-1], x.shape[-1] // block, block)  # (..., nb * block) -> (..., nb, block)


__all__ = ["CHUNK_ELEMENTS", "Rule", "TileKind", "Tiling"]
