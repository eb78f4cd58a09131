"""A tile plan as block lists: per query block, the runs of key blocks it visits and what each run holds.

A structured mask leaves most tiles of a long call EMPTY. Instead of an
``nQb x nKb`` map of tile kinds, `TileRuns` keeps, per query block, the runs of
consecutive key blocks that are not EMPTY, each FULL (no per-element mask) or
PARTIAL (apply the mask elementwise): the idea of FlexAttention's
``kv_num_blocks`` / ``kv_indices`` and its full-block lists, run-length coded, so
a sliding window or a causal mask costs a few runs per query block, ``O(N)`` in
all. `TileRuns.from_kinds` builds it from tile kinds a few query blocks at a
time; `TileRuns.cat` joins such pieces.

>>> kinds = torch.tensor([[2, 1, 0, 0], [0, 2, 2, 1]], dtype=torch.int8)[None, None]   # (1, 1, nQb, nKb)
>>> plan = TileRuns.from_kinds(kinds)
>>> plan.offsets.tolist(), plan.runs.tolist()     # (first key block, key blocks, kind) per run
([0, 2, 4], [[0, 1, 2], [1, 1, 1], [1, 2, 2], [3, 1, 1]])
>>> plan.row(1)
[(1, 2, 2), (3, 1, 1)]
>>> torch.equal(plan.to_kinds(), kinds)
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.backends.common.tile_kinds import EMPTY, FULL, PARTIAL


@dataclass(frozen=True)
class TileRuns:
    """Per query block ``r``, the runs ``runs[offsets[r]:offsets[r + 1]]`` of key blocks it visits.

    A run is ``(first key block, key blocks, kind)``, kind FULL (every ``(b, h)`` may
    attend every pair of its tiles) or PARTIAL (some pair may not, for some ``(b, h)``);
    runs of a query block are sorted and disjoint, key blocks in no run are EMPTY for
    every ``(b, h)``. Batch and head axes are merged: a kernel applies a PARTIAL tile's
    per-element mask, which differs per ``(b, h)`` where the mask does.
    """

    offsets: Tensor  # int64 (nQb + 1,)
    runs: Tensor  # int32 (number of runs, 3): first key block, key blocks, kind
    num_key_blocks: int

    @property
    def num_query_blocks(self) -> int:
        return self.offsets.shape[0] - 1

    @property
    def nbytes(self) -> int:
        """Bytes held by the plan's tensors."""
        return self.offsets.nbytes + self.runs.nbytes

    def row(self, r: int) -> list[tuple[int, int, int]]:
        """Query block ``r``'s runs as ``(first key block, key blocks, kind)`` tuples."""
        lo, hi = int(self.offsets[r]), int(self.offsets[r + 1])
        return [tuple(run) for run in self.runs[lo:hi].tolist()]  # type: ignore[misc]

    @staticmethod
    def from_kinds(kinds: Tensor) -> TileRuns:
        """Runs of tile kinds ``(B', H', R, nKb)`` (any int dtype): a tile is kept if it is not EMPTY for
        some ``(b, h)``, FULL if it is FULL for all; consecutive kept tiles of one kind form a run."""
        rows, nkb = kinds.shape[2], kinds.shape[3]
        somewhere = (kinds != EMPTY).flatten(0, 1).any(0)  # (R, nKb)
        everywhere = (kinds == FULL).flatten(0, 1).all(0)  # (R, nKb)
        code = torch.where(everywhere, FULL, torch.where(somewhere, PARTIAL, EMPTY)).to(torch.int8).cpu()  # (R, nKb)
        edges = torch.nn.functional.pad(code, (1, 1), value=EMPTY)  # (R, nKb + 2)
        change = edges[:, 1:] != edges[:, :-1]  # (R, nKb + 1): a run starts or ends between c - 1 and c
        kept = code != EMPTY
        starts = (change[:, :-1] & kept).nonzero()  # (runs, 2): row, first key block, row-major order
        ends = (change[:, 1:] & kept).nonzero()  # (runs, 2): row, last key block, in the same order
        first, last = starts[:, 1], ends[:, 1]
        runs = torch.stack([first, last - first + 1, code[starts[:, 0], first].long()], dim=1).to(torch.int32)
        counts = torch.bincount(starts[:, 0], minlength=rows)  # (R,): runs per query block
        offsets = torch.nn.functional.pad(counts.cumsum(0), (1, 0))  # (R + 1,)
        return TileRuns(offsets, runs, nkb)

    @staticmethod
    def cat(pieces: Sequence[TileRuns], num_key_blocks: int) -> TileRuns:
        """Pieces of consecutive query blocks, in order, as one plan."""
        if not pieces:
            return TileRuns(torch.zeros(1, dtype=torch.int64), torch.zeros(0, 3, dtype=torch.int32), num_key_blocks)
        offsets, base = [torch.zeros(1, dtype=torch.int64)], 0
        for p in pieces:
            offsets.append(p.offsets[1:] + base)
            base += int(p.offsets[-1])
        return TileRuns(torch.cat(offsets), torch.cat([p.runs for p in pieces]), num_key_blocks)

    def to_kinds(self) -> Tensor:
        """The dense int8 ``(1, 1, nQb, nKb)`` map (for small grids and tests)."""
        kinds = torch.zeros(self.num_query_blocks, self.num_key_blocks, dtype=torch.int8)
        for r in range(self.num_query_blocks):
            for first, count, kind in self.row(r):
                kinds[r, first : first + count] = kind
        return kinds[None, None]


__all__ = ["EMPTY", "FULL", "PARTIAL", "TileRuns"]
