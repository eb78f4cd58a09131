"""Rules on the distance ``d = i' - j`` between a query and a key: `causal`, `sliding_window`, `local`, `dilated`.

``i' = i + (Nk - Nq)`` is the query's position among the keys (bottom-right
alignment), so the same rule serves a full sequence and a KV-cache step. Each
rule allows a band of diagonals, ``lo <= d <= hi`` (every ``step``-th one), and
classifies a tile from the range of ``d`` it holds.
"""

from __future__ import annotations

from torch import Tensor

from qkv import checks
from qkv.masks.base import Mask
from qkv.masks.grid import query_position
from qkv.masks.tiling import Tiling


class _Diagonal(Mask):
    """Allowed iff ``d = i' - j`` lies in ``[lo, hi]`` and ``(d - lo) % step == 0``."""

    lo: int
    hi: int | None  # None: no upper end
    step: int = 1
    offset_invariant = True

    def rule(
        self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        d = query_position(q_idx, num_queries, num_keys) - kv_idx  # i' - j, broadcast (..., Nq', Nk')
        ok = d >= self.lo
        if self.hi is not None:
            ok = ok & (d <= self.hi)
        if self.step > 1:
            ok = ok & ((d - self.lo) % self.step == 0)
        return ok

    def classify_tiles(self, t: Tiling) -> Tensor:
        (q0, q1), (k0, k1) = t.rows(), t.cols()
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
        return Tiling.kinds(full, empty)[None, None]  # (nQb, nKb) -> (1, 1, nQb, nKb)


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
