"""Masks and score mods written in global positions, seen from one block of a rank's work.

Ring attention computes, on each rank, blocks of (its queries) x (another rank's
keys). The user's mask and score mod speak of global positions ``i in [0, Nq)``,
``j in [0, Nk)`` of the whole sequence; a block holds local queries ``[0, nq)``
and keys ``[0, nk)`` that sit at global ``q_start + i`` and ``k_start + j``.
`GlobalMask` and `GlobalMod` are the user's rule at those offsets, in the public
protocols of `qkv.masks.Mask` and `qkv.mods.ScoreMod`, so `qkv.attention` runs
them (and skips their empty tiles) like any other mask and mod.

Tile kinds stay structured where they can: a mask whose rule depends only on
``i' - j`` (``mask.offset_invariant``: causal, sliding window, local, dilated and
their combinations) is the same rule on a virtual problem whose bottom-right
alignment ``Nk - Nq`` equals the block's global ``i' - j`` at its corner, so the
mask classifies the block's tiles analytically. Other masks (document, padding,
block-sparse, from_function) are evaluated at the block's positions once per
call, at a grid of ``GRID`` x ``GRID`` counts from which any coarser tiling is summed.

>>> import torch
>>> from qkv import masks
>>> m = masks.causal()
>>> view = GlobalMask(m, q_start=4, k_start=2, num_queries=2, num_keys=3, global_queries=6, global_keys=6)
>>> view.to_dense(1, 1, 2, 3)[0, 0].int()           # rows 4, 5 and keys 2, 3, 4 of the 6 x 6 triangle
tensor([[1, 1, 1],
        [1, 1, 1]], dtype=torch.int32)
>>> torch.equal(view.to_dense(1, 1, 2, 3), m.to_dense(1, 1, 6, 6)[:, :, 4:6, 2:5])
True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from qkv.errors import AttentionError
from qkv.masks import Mask, TileKind, Tiling
from qkv.mods import ScoreMod

GRID = 32
"""Evaluated masks count allowed pairs per ``GRID x GRID`` cell; tilings in multiples of it are sums of cells."""

CHUNK_ELEMENTS = 1 << 21
"""At most this many (b, h, i, j) elements of a rule are evaluated at once."""

Device = torch.device | str | None


def _grid(batch: int, heads: int, rows: Tensor, num_keys: int, device: Device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Broadcasting indices ``b (B,1,1,1), h (1,H,1,1), q (1,1,R,1), k (1,1,1,Nk)``."""
    b = torch.arange(batch, device=device).view(batch, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)
    h = torch.arange(heads, device=device).view(1, heads, 1, 1)  # (H,) -> (1, H, 1, 1)
    q = rows.to(device).view(1, 1, -1, 1)  # (R,) -> (1, 1, R, 1)
    k = torch.arange(num_keys, device=device).view(1, 1, 1, num_keys)  # (Nk,) -> (1, 1, 1, Nk)
    return b, h, q, k


def _compact(t: Tensor) -> Tensor:
    """An expanded ``(B, H, R, Nk)`` result with its broadcast batch and head axes cut back to size 1."""
    if t.shape[0] > 1 and t.stride(0) == 0:
        t = t[:1]
    if t.shape[1] > 1 and t.stride(1) == 0:
        t = t[:, :1]
    return t


def _ceil(n: int, block: int) -> int:
    return -(-n // block)


class GlobalMask(Mask):
    """``mask`` (global positions of an ``(Nq, Nk)`` problem) on the block of queries
    ``[q_start, q_start + num_queries)`` and keys ``[k_start, k_start + num_keys)``."""

    def __init__(
        self, mask: Mask, q_start: int, k_start: int, num_queries: int, num_keys: int,
        global_queries: int, global_keys: int,
    ) -> None:  # fmt: skip
        self.mask = mask
        self.q_start, self.k_start = q_start, k_start
        self.num_queries, self.num_keys = num_queries, num_keys
        self.global_queries, self.global_keys = global_queries, global_keys
        self._counts: dict[tuple[int, int, int, str], Tensor] = {}

    @property
    def delta(self) -> int:
        """The global ``i' - j`` of the block's corner (local query 0, local key 0)."""
        return self.q_start - self.k_start + self.global_keys - self.global_queries

    @property
    def offset_invariant(self) -> bool:
        return self.mask.offset_invariant

    @property
    def is_the_mask_itself(self) -> bool:
        """True when ``mask`` on the local ``(nq, nk)`` problem already is this view (an offset-invariant
        rule whose local alignment ``nk - nq`` equals the block's ``delta``: a causal diagonal block)."""
        return self.mask.offset_invariant and self.delta == self.num_keys - self.num_queries

    def rule(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int) -> Tensor:
        return self.mask.rule(b, h, q_idx + self.q_start, kv_idx + self.k_start, self.global_queries, self.global_keys)

    def check(self, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
        """Only the block's own sizes (the mask was checked against the global problem before the ring)."""
        if (num_queries, num_keys) != (self.num_queries, self.num_keys):
            raise AttentionError(
                f"mask: this view of {self.mask!r} covers {self.num_queries} queries and {self.num_keys} keys, "
                f"asked for {num_queries} x {num_keys}"
            )

    def classify_tiles(self, tiling: Tiling) -> Tensor:
        t = tiling
        if self.mask.offset_invariant:
            return self._shifted_kinds(t.batch, t.heads, t.block_q, t.block_k, t.device)
        return self._counted_kinds(t.batch, t.heads, t.block_q, t.block_k, t.device)

    def _shifted_kinds(self, batch: int, heads: int, block_q: int, block_k: int, device: Device) -> Tensor:
        """The mask's own tile kinds on a virtual problem with ``Nk' - Nq' = delta`` (rows and keys past
        the block only widen its last tiles: EMPTY and FULL stay true, PARTIAL is always safe)."""
        nq, nk = self.num_queries, self.num_keys
        virtual_q = max(nq, nk - self.delta)
        kinds = self.mask.tile_kinds(batch, heads, virtual_q, virtual_q + self.delta, block_q, block_k, device)
        return kinds[..., : _ceil(nq, block_q), : _ceil(nk, block_k)].contiguous()  # (B', H', nQb, nKb)

    def _counted_kinds(self, batch: int, heads: int, block_q: int, block_k: int, device: Device) -> Tensor:
        """Tile kinds summed from the per-cell counts of allowed pairs."""
        nq, nk = self.num_queries, self.num_keys
        bq, bk = min(block_q, max(nq, 1)), min(block_k, max(nk, 1))
        cell = math.gcd(bq if bq < nq else 0, bk if bk < nk else 0, GRID)
        counts = self._cell_counts(batch, heads, cell, device)  # (B', H', ceil(nq / cell), ceil(nk / cell))
        nqb, nkb = _ceil(nq, bq), _ceil(nk, bk)
        fq, fk = (_ceil(bq, cell), _ceil(bk, cell))
        pad = (0, nkb * fk - counts.shape[3], 0, nqb * fq - counts.shape[2])
        counts = torch.nn.functional.pad(counts, pad)
        # (B', H', nQb * fq, nKb * fk) -> (B', H', nQb, fq, nKb, fk) -> (B', H', nQb, nKb)
        counts = counts.view(*counts.shape[:2], nqb, fq, nkb, fk).sum(dim=(3, 5))
        rows = (torch.arange(nqb, device=counts.device) * bq).neg().add(nq).clamp(max=bq)  # (nQb,) rows per tile
        cols = (torch.arange(nkb, device=counts.device) * bk).neg().add(nk).clamp(max=bk)  # (nKb,)
        area = rows[:, None] * cols[None, :]  # (nQb, nKb)
        kinds = torch.where(counts == area, int(TileKind.FULL), int(TileKind.PARTIAL))
        return torch.where(counts == 0, int(TileKind.EMPTY), kinds).to(torch.int8)

    def _cell_counts(self, batch: int, heads: int, cell: int, device: Device) -> Tensor:
        """Allowed pairs per ``cell x cell`` square of the block, int64 ``(B', H', ceil(nq/cell), ceil(nk/cell))``."""
        key = (batch, heads, cell, str(torch.empty(0, device=device).device))
        if key in self._counts:
            return self._counts[key]
        nq, nk = self.num_queries, self.num_keys
        n_kc = _ceil(nk, cell)
        step = cell * max(1, CHUNK_ELEMENTS // max(1, batch * heads * cell * n_kc * cell))
        parts = []
        for start in range(0, nq, step):
            stop = min(nq, start + step)
            b, h, q, k = _grid(batch, heads, torch.arange(start, stop), nk, device)
            allowed = _compact(self.allowed(b, h, q, k, nq, nk))  # (B'|1, H'|1, R, Nk), checked
            n_rc = _ceil(stop - start, cell)
            padded = allowed.new_zeros(*allowed.shape[:2], n_rc * cell, n_kc * cell)
            padded[:, :, : stop - start, :nk] = allowed
            # (B', H', R', Nk') -> (B', H', R'/cell, cell, Nk'/cell, cell) -> (B', H', R'/cell, Nk'/cell)
            parts.append(padded.view(*padded.shape[:2], n_rc, cell, n_kc, cell).sum(dim=(3, 5)))
        if not parts:
            counts = torch.zeros(1, 1, 0, n_kc, dtype=torch.long, device=device)
        else:
            size_b, size_h = max(p.shape[0] for p in parts), max(p.shape[1] for p in parts)
            counts = torch.cat([p.expand(size_b, size_h, -1, -1) for p in parts], dim=2)
        self._counts[key] = counts
        return counts

    def __repr__(self) -> str:
        return (
            f"{self.mask!r} at queries [{self.q_start}, {self.q_start + self.num_queries}) "
            f"and keys [{self.k_start}, {self.k_start + self.num_keys}) of {self.global_queries} x {self.global_keys}"
        )


class GlobalMod(ScoreMod):
    """``mod`` (global positions of an ``(Nq, Nk)`` problem) on a block whose first query sits at
    ``q_start`` and first key at ``k_start``."""

    def __init__(self, mod: ScoreMod, q_start: int, k_start: int, global_queries: int, global_keys: int) -> None:
        self.mod = mod
        self.q_start, self.k_start = q_start, k_start
        self.global_queries, self.global_keys = global_queries, global_keys

    def __call__(
        self, score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        return self.mod(score, b, h, q_idx + self.q_start, kv_idx + self.k_start, self.global_queries, self.global_keys)

    @property
    def additive(self) -> bool:
        return self.mod.additive

    @property
    def offset_invariant(self) -> bool:
        return self.mod.offset_invariant

    def bias(
        self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int, dtype: torch.dtype
    ) -> Tensor:
        return self.mod.bias(
            b, h, q_idx + self.q_start, kv_idx + self.k_start, self.global_queries, self.global_keys, dtype
        )

    def __repr__(self) -> str:
        size = f"{self.global_queries} x {self.global_keys}"
        return f"{self.mod!r} at query {self.q_start} and key {self.k_start} of {size}"


__all__ = ["GRID", "GlobalMask", "GlobalMod"]
