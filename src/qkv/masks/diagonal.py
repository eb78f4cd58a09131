"""Rules on the distance ``d = i' - j`` between a query and a key: `causal`, `sliding_window`, `local`, `dilated`.

``i' = i + (Nk - Nq)`` is the query's position among the keys (bottom-right
alignment), so the same rule serves a full sequence and a KV-cache step. Each
rule allows a band of diagonals, ``lo <= d <= hi`` (every ``step``-th one), and
classifies a tile from the range of ``d`` it holds.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qkv import checks
from qkv.backends.common.tile_runs import TileRuns
from qkv.masks.base import Mask
from qkv.masks.grid import query_position
from qkv.masks.tiling import TileKind, Tiling


class _Diagonal(Mask):
    """Allowed iff ``d = i' - j`` lies in ``[lo, hi]`` and ``(d - lo) % step == 0``."""

    lo: int
    hi: int | None  # None: no upper end
    step: int = 1
    offset_invariant = True

    def rule(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int) -> Tensor:
        d = query_position(q_idx, num_queries, num_keys) - kv_idx  # i' - j, broadcast (..., Nq', Nk')
        ok = d >= self.lo
        if self.hi is not None:
            ok = ok & (d <= self.hi)
        if self.step > 1:
            ok = ok & ((d - self.lo) % self.step == 0)
        return ok

    def classify_rows(self, t: Tiling, start: int, stop: int) -> Tensor:
        (q0, q1), (k0, k1) = t.rows(start, stop), t.cols()
        # Contiguous rows and keys: a tile holds every integer d in [d_min, d_max].
        d_min = (q0 + t.offset)[:, None] - (k1 - 1)[None, :]  # (nQb, nKb)
        d_max = (q1 - 1 + t.offset)[:, None] - k0[None, :]  # (nQb, nKb)
        hi = d_max if self.hi is None else d_max.clamp(max=self.hi)
        lo = d_min.clamp(min=self.lo)
        first = self.lo + (lo - self.lo + self.step - 1) // self.step * self.step  # first allowed d >= lo
        empty = first > hi
        inside = (d_min >= self.lo) & (d_max == hi)
        full = inside & ~empty
        if self.step > 1:
            full = full & (d_min == d_max)  # a strided rule fills only a single-element tile
        return Tiling.kinds(full, empty)[None, None]  # (R, nKb) -> (1, 1, R, nKb), R = stop - start tile rows

    def _sparse(self, t: Tiling, causal: bool) -> TileRuns:
        """The band's runs from block boundaries, ``O(nQb)``: per query block PARTIAL tiles, FULL ones, PARTIAL ones."""
        if self.step > 1:
            return super()._sparse(t, causal)
        lo, hi = (max(self.lo, 0) if causal else self.lo), self.hi
        n_qb, n_kb = t.grid
        bk, nk = t.block_k, t.num_keys
        q0, q1 = t.rows()
        top, bottom = q0 + t.offset, q1 - 1 + t.offset  # (nQb,): i' of each block's first and last row
        # key block c holds d in [top - (k1(c) - 1), bottom - c·bk], k1(c) = min((c + 1)·bk, Nk)
        c_lo = torch.zeros_like(top) if hi is None else torch.div(top - hi, bk, rounding_mode="floor").clamp(min=0)
        c_hi = torch.div(bottom - lo, bk, rounding_mode="floor").clamp(max=n_kb - 1)  # last with d_max >= lo
        if hi is None:
            f_lo = c_lo
        else:
            f_lo = torch.maximum(c_lo, -torch.div(hi - bottom, bk, rounding_mode="floor"))  # first with d_max <= hi
        f_hi = torch.div(top - lo + 1, bk, rounding_mode="floor") - 1  # last full-width block with d_min >= lo
        last_full = top - (nk - 1) >= lo  # (nQb,): the last (maybe narrower) key block has d_min >= lo
        f_hi = torch.where(last_full, n_kb - 1, f_hi.clamp(max=n_kb - 2)).clamp(max=c_hi)  # d_min falls with c
        f_lo = f_lo.clamp(max=c_hi + 1)
        f_hi = torch.maximum(f_hi, f_lo - 1)  # no full block: an empty middle run
        kept = c_lo <= c_hi  # (nQb,)
        part = int(TileKind.PARTIAL)
        starts = torch.stack([c_lo, f_lo, f_hi + 1], 1)  # (nQb, 3): the three runs' first key blocks
        ends = torch.stack([f_lo, f_hi + 1, c_hi + 1], 1)  # (nQb, 3): one past their last
        kinds = torch.tensor([part, int(TileKind.FULL), part]).expand(n_qb, 3)
        keep = (ends > starts) & kept[:, None]  # (nQb, 3)
        runs = torch.stack([starts[keep], (ends - starts)[keep], kinds[keep]], 1).to(torch.int32).cpu()
        offsets = torch.nn.functional.pad(keep.sum(1).cumsum(0), (1, 0)).cpu()  # (nQb + 1,)
        return TileRuns(offsets, runs, n_kb)


class Causal(_Diagonal):
    """``j <= i'``: see `causal`."""

    lo, hi = 0, None

    def __repr__(self) -> str:
        return "causal()"


class SlidingWindow(_Diagonal):
    """``i' - window < j <= i'``: see `sliding_window`."""

    def __init__(self, window: int):
        self.window = window
        self.lo, self.hi = 0, window - 1

    def __repr__(self) -> str:
        return f"sliding_window({self.window})"


class Local(_Diagonal):
    """``|i' - j| <= radius``: see `local`."""

    def __init__(self, radius: int):
        self.radius = radius
        self.lo, self.hi = -radius, radius

    def __repr__(self) -> str:
        return f"local({self.radius})"


class Dilated(_Diagonal):
    """``i' - j = m * dilation`` for ``m`` in ``[0, window)``: see `dilated`."""

    def __init__(self, window: int, dilation: int):
        self.window, self.dilation = window, dilation
        self.lo, self.hi, self.step = 0, (window - 1) * dilation, dilation

    def __repr__(self) -> str:
        return f"dilated({self.window}, dilation={self.dilation})"


def causal() -> Mask:
    """Query ``i`` may attend key ``j`` iff ``j <= i'``, with ``i' = i + (Nk - Nq)`` (bottom-right)::

        Nq = Nk = 4         Nq = 2, Nk = 4 (KV cache)
          k0 k1 k2 k3         k0 k1 k2 k3
      q0  x  .  .  .      q0  x  x  x  .
      q1  x  x  .  .      q1  x  x  x  x
      q2  x  x  x  .
      q3  x  x  x  x

    >>> causal().to_dense(1, 1, 3, 3)[0, 0].int()
    tensor([[1, 0, 0],
            [1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    """
    return Causal()


def sliding_window(window: int) -> Mask:
    """Causal window of ``window`` keys ending at the query itself: ``i' - window < j <= i'``.

    ``sliding_window(1)`` attends only to the query's own position; a window at
    least ``Nk`` long equals `causal`.

    >>> sliding_window(3).to_dense(1, 1, 2, 5)[0, 0].int()     # i' = 3, 4
    tensor([[0, 1, 1, 1, 0],
            [0, 0, 1, 1, 1]], dtype=torch.int32)
    """
    return SlidingWindow(checks.integer("window", window, minimum=1, where="sliding_window"))


def local(radius: int) -> Mask:
    """Bidirectional band: ``|i' - j| <= radius`` (``local(0)`` is the diagonal ``j == i'``).

    >>> local(1).to_dense(1, 1, 4, 4)[0, 0].int()
    tensor([[1, 1, 0, 0],
            [1, 1, 1, 0],
            [0, 1, 1, 1],
            [0, 0, 1, 1]], dtype=torch.int32)
    """
    return Local(checks.integer("radius", radius, minimum=0, where="local"))


def dilated(window: int, dilation: int) -> Mask:
    """Causal and strided: ``window`` keys ``dilation`` apart, ``i' - j = m * dilation`` for ``0 <= m < window``.

    ``dilated(w, 1)`` equals ``sliding_window(w)``.

    >>> dilated(2, dilation=2).to_dense(1, 1, 5, 5)[0, 0].int()
    tensor([[1, 0, 0, 0, 0],
            [0, 1, 0, 0, 0],
            [1, 0, 1, 0, 0],
            [0, 1, 0, 1, 0],
            [0, 0, 1, 0, 1]], dtype=torch.int32)
    """
    window = checks.integer("window", window, minimum=1, where="dilated")
    return Dilated(window, checks.integer("dilation", dilation, minimum=1, where="dilated"))


__all__ = ["Causal", "Dilated", "Local", "SlidingWindow", "causal", "dilated", "local", "sliding_window"]
