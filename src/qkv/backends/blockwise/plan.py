"""The blockwise backend's plan of a call: its arguments, which key tiles each query block keeps, its gradients."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.backends.common.plans import PlanCache
from qkv.backends.common.tile_kinds import EMPTY, FULL, PARTIAL, dense_tile_kinds
from qkv.backends.common.tile_runs import TileRuns

BLOCK_Q = 64
BLOCK_K = 32


def _causal_tile_kinds(
    nq: int, nk: int, block_q: int, block_k: int, device: torch.device, start: int = 0, stop: int | None = None
) -> Tensor:
    """Analytic tile kinds of the bottom-right causal mask -> int8 ``(1, 1, nQb, nKb)`` (tile rows
    ``[start, stop)`` only, ``(1, 1, stop - start, nKb)``, when given)."""
    offset = nk - nq
    stop = math.ceil(nq / block_q) if stop is None else stop
    q_first = (
        torch.arange(start * block_q, stop * block_q, block_q, device=device)[:, None] + offset
    )  # aligned first row of each block
    q_last = torch.clamp(q_first - offset + block_q, max=nq) - 1 + offset  # aligned last row
    k_first = torch.arange(0, nk, block_k, device=device)[None, :]
    k_last = torch.clamp(k_first + block_k, max=nk) - 1
    kinds = torch.where(k_last <= q_first, FULL, torch.where(k_first <= q_last, PARTIAL, EMPTY))
    return kinds.to(torch.int8)[None, None]  # (R, nKb) -> (1, 1, R, nKb)


# A plan is built this many tiles at a time where it is built from tile kinds (dense masks, no mask).
CHUNK_TILES = 1 << 18


@dataclass
class _Plan:
    """What one forward pass does: the key tiles of each query block, as block lists (never an nQb x nKb map)."""

    tiles: TileRuns  # per query block, its runs of key blocks, FULL or PARTIAL
    keys: list[Tensor | slice | None]  # per query block: the key positions kept (None: no key at all)
    needs_mask: list[bool]  # per query block: does any kept tile need a per-element mask?

    @property
    def covers_every_row(self) -> bool:
        """Does every query block keep some key (so each writes all its rows of out and dq)?"""
        return all(keys is not None for keys in self.keys)

    @property
    def nbytes(self) -> int:
        """Bytes held by the plan's tensors: its block lists and the key indices of scattered blocks."""
        return self.tiles.nbytes + sum(k.nbytes for k in self.keys if isinstance(k, Tensor))


def _offset_invariant(rule: object) -> bool:
    """No mask (or modifier), or one that depends on the indices only through ``h`` and ``i' - j``."""
    return rule is None or (not isinstance(rule, Tensor) and getattr(rule, "offset_invariant", False))


def _query_blocks(plan: _Plan, nq: int) -> Iterator[tuple[int, int, int, Tensor | slice]]:
    """``(r, q0, bq, keys)`` of each query block that keeps some key: its index, first row, rows, keys."""
    for r, keys in enumerate(plan.keys):
        if keys is not None:
            q0 = r * BLOCK_Q
            yield r, q0, min(BLOCK_Q, nq - q0), keys


def _additive(bias: object) -> bool:
    """Is ``bias`` a score modifier that only adds ``f(b, h, i, j)`` to the scores?"""
    return bias is not None and not isinstance(bias, Tensor) and getattr(bias, "additive", False)


def _mod_tensors(mod: object) -> list[Tensor]:
    """Tensors inside a score modifier that need gradients (e.g. a relative-position table)."""
    found: list[Tensor] = []
    stack = [mod]
    seen: set[int] = set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Tensor):
            if obj.requires_grad:
                found.append(obj)
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return found


def _tile_runs(mask: object, causal: bool, shape: tuple[int, int, int, int], device: torch.device) -> TileRuns:
    """The call's kept tiles as block lists: from the mask's own `sparse_tiles` where it has one,
    else from tile kinds built ``CHUNK_TILES`` at a time."""
    b, h, nq, nk = shape
    if mask is not None and not isinstance(mask, Tensor) and hasattr(mask, "sparse_tiles"):
        return mask.sparse_tiles(b, h, nq, nk, BLOCK_Q, BLOCK_K, device=device, causal=causal)
    nqb, nkb = math.ceil(nq / BLOCK_Q), math.ceil(nk / BLOCK_K)
    whole = (
        None
        if mask is None or isinstance(mask, Tensor)
        else mask.tile_kinds(b, h, nq, nk, BLOCK_Q, BLOCK_K, device=device)
    )
    step = max(1, CHUNK_TILES // max(1, nkb))
    pieces = []
    for start in range(0, nqb, step):
        stop = min(start + step, nqb)
        if isinstance(mask, Tensor):
            rows = (
                mask if mask.shape[2] == 1 else mask[:, :, start * BLOCK_Q : stop * BLOCK_Q]
            )  # (B', H', R·bq|1, Nk|1)
            kinds = dense_tile_kinds(rows, min(stop * BLOCK_Q, nq) - start * BLOCK_Q, nk, BLOCK_Q, BLOCK_K)
        elif whole is not None:  # a mask object with tile kinds only: its map, a few rows at a time
            kinds = whole[:, :, start:stop].to(torch.int8)
        else:
            kinds = torch.full((1, 1, stop - start, nkb), FULL, dtype=torch.int8, device=device)
        if causal:
            kinds = torch.minimum(kinds, _causal_tile_kinds(nq, nk, BLOCK_Q, BLOCK_K, kinds.device, start, stop))
        pieces.append(TileRuns.from_kinds(kinds))
    return TileRuns.cat(pieces, nkb)


def _plan(mask: object, causal: bool, shape: tuple[int, int, int, int], device: torch.device) -> _Plan:
    nk = shape[3]
    tiles = _tile_runs(mask, causal, shape, device)
    # Per query block, at once: first and last kept tile, how many are kept, and whether any kept
    # tile needs a per-element mask; one .tolist() each instead of a loop of small tensor ops.
    runs = tiles.runs.long()  # (runs, 3): first key block, key blocks, kind
    per_row = tiles.offsets.diff()  # (nQb,): runs per query block
    row = torch.repeat_interleave(torch.arange(tiles.num_query_blocks), per_row)  # (runs,): each run's query block
    has = per_row > 0
    lo, hi = tiles.offsets[:-1].clamp(max=max(len(runs) - 1, 0)), (tiles.offsets[1:] - 1).clamp(min=0)
    first = torch.where(has, runs[lo, 0], 0).tolist() if len(runs) else [0] * len(per_row)
    last = torch.where(has, runs[hi, 0] + runs[hi, 1] - 1, -1).tolist() if len(runs) else [-1] * len(per_row)
    count = torch.zeros(len(per_row), dtype=torch.long).index_add_(0, row, runs[:, 1]).tolist()
    partial = torch.zeros(len(per_row), dtype=torch.long).index_add_(0, row, (runs[:, 2] == PARTIAL).long()).tolist()
    row_runs = runs[:, :2].tolist()
    offsets = tiles.offsets.tolist()
    keys: list[Tensor | slice | None] = []
    for r in range(tiles.num_query_blocks):
        if count[r] == 0:
            keys.append(None)
        elif last[r] - first[r] + 1 == count[r]:  # contiguous tiles: a view of k and v
            keys.append(slice(first[r] * BLOCK_K, min((last[r] + 1) * BLOCK_K, nk)))
        else:
            kept = row_runs[offsets[r] : offsets[r + 1]]
            index = torch.cat([torch.arange(c * BLOCK_K, min((c + n) * BLOCK_K, nk)) for c, n in kept])
            keys.append(index.to(device))
    needs_mask = [p > 0 and c > 0 for p, c in zip(partial, count)]
    return _Plan(tiles, keys, needs_mask)


# Plans (and the kernel's blocks) are kept per mask object and call shape while the mask cannot have changed
# (`qkv.backends.common.plans`): a model that calls attention with the same mask and shapes again builds them once.
MEMO_PER_MASK = 8  # call shapes kept per mask, the oldest dropped first
_PLANS = PlanCache(MEMO_PER_MASK)


def _memo(mask: object, key: tuple, build: Callable[[], object]) -> object:
    return _PLANS.get(mask, key, build)


@dataclass
class _Spec:
    """The call's arguments the blocks need (everything but q, k, v)."""

    mask: object
    bias: object
    causal: bool
    scale: float
    nq: int
    nk: int
    acc: torch.dtype


@dataclass
class _Grads:
    dq: Tensor
    dk: Tensor
    dv: Tensor
    dbias: Tensor | None
    dmods: list[Tensor]

    def add_kv(self, keys: Tensor | slice, dk_sel: Tensor, dv_sel: Tensor) -> None:
        if isinstance(keys, slice):
            self.dk.narrow(2, keys.start, keys.stop - keys.start).add_(dk_sel)
            self.dv.narrow(2, keys.start, keys.stop - keys.start).add_(dv_sel)
        else:
            self.dk.index_add_(2, keys, dk_sel)
            self.dv.index_add_(2, keys, dv_sel)


def _take(t: Tensor, keys: Tensor | slice, dim: int = 2) -> Tensor:
    """Keys of ``t`` along ``dim``: a view for a slice, a gather for an index."""
    if isinstance(keys, slice):
        return t.narrow(dim, keys.start, keys.stop - keys.start)
    return t.index_select(dim, keys)


def _block_of(t: Tensor, q0: int, bq: int, keys: Tensor | slice) -> Tensor:
    """Rows ``[q0, q0 + bq)`` and the kept keys of a ``(B', H', Nq|1, Nk|1)`` mask or bias."""
    rows = t.narrow(2, q0, bq) if t.shape[2] != 1 else t
    return _take(rows, keys, dim=3) if t.shape[3] != 1 else rows


def _key_positions(keys: Tensor | slice, device: torch.device) -> Tensor:
    if isinstance(keys, slice):
        return torch.arange(keys.start, keys.stop, device=device)
    return keys


def _block_allowed(
    spec: _Spec, b: int, hq: int, q_idx: Tensor, kv_idx: Tensor, q0: int, bq: int, keys: Tensor | slice
) -> Tensor:
    """Per-element mask of one block, broadcastable to ``(B, Hq, bq, R)``."""
    allowed = None
    if isinstance(spec.mask, Tensor):
        allowed = _block_of(spec.mask, q0, bq, keys)
    elif spec.mask is not None:
        device = q_idx.device
        b_idx = torch.arange(b, device=device)[:, None, None, None]  # (B, 1, 1, 1)
        h_idx = torch.arange(hq, device=device)[None, :, None, None]  # (1, Hq, 1, 1)
        allowed = spec.mask.allowed(b_idx, h_idx, q_idx, kv_idx, spec.nq, spec.nk)
    if spec.causal:
        tri = kv_idx <= q_idx + (spec.nk - spec.nq)  # (1, 1, bq, R)
        allowed = tri if allowed is None else allowed & tri
    return allowed
