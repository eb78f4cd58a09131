"""The triton backend's plan of a call: for each query block the key blocks its kernel visits, and how it masks them.

A call's ``(B, Hq, Nq, Nk)`` attention matrix is cut into ``block_m x block_n`` tiles.
Each tile is EMPTY (never visited), FULL (visited with no per-element mask) or
PARTIAL (visited, masked elementwise). The kernels read the plan as block lists,
FlexAttention's layout:

- ``kv_num_blocks (B', H', nQb)`` / ``kv_indices (B', H', nQb, W)``: per query block the
  PARTIAL key blocks, ascending (entries past the count are padding);
- ``full_kv_num_blocks`` / ``full_kv_indices``: the same for its FULL key blocks;
- ``q_num_blocks`` / ``q_indices`` and ``full_q_num_blocks`` / ``full_q_indices``: the same
  lists transposed (per key block, its query blocks), for the key and value gradients.

``B'`` and ``H'`` are 1 where the mask does not depend on the batch or the head.
A PARTIAL tile is masked by one or both of:

- a `Band`, a rule on the distance ``d = i' - j`` (``i' = i + Nk - Nq``, bottom-right
  aligned) evaluated in the kernel: causal is ``0 <= d``, a sliding window ``0 <= d < w``,
  a local band ``|d| <= r``; any offset-invariant mask that allows one interval of ``d``
  is read as a band;
- stored tile masks: for any other mask, each partial tile's bool mask, ``tile_masks
  (T, block_m, block_n)``, found through ``tile_index (B', H', nQb, nKb)`` (-1: none stored).

Rows past ``Nq`` and keys past ``Nk`` in the last blocks are the kernels' to bound.
This module needs torch alone (no triton): the plan is tested on any machine.

>>> plan = build_plan(None, True, (1, 1, 6, 6), block_m=2, block_n=2)
>>> plan.kinds[0, 0]
tensor([[1, 0, 0],
        [2, 1, 0],
        [2, 2, 1]], dtype=torch.int8)
>>> plan.full_kv_num_blocks[0, 0].tolist(), plan.full_kv_indices[0, 0].tolist()
([0, 1, 2], [[0, 0], [0, 0], [0, 1]])
>>> plan.kv_num_blocks[0, 0].tolist(), plan.band
([1, 1, 1], Band(lo=0, hi=1073741824))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.backends.common.tile_kinds import EMPTY, FULL, PARTIAL, dense_tile_kinds

NO_BOUND = 1 << 30  # a band end that is never reached


@dataclass(frozen=True)
class Band:
    """Allowed iff ``lo <= i' - j <= hi`` (``NO_BOUND`` for an open end)."""

    lo: int
    hi: int

    def __and__(self, other: Band) -> Band:
        return Band(max(self.lo, other.lo), min(self.hi, other.hi))


CAUSAL = Band(0, NO_BOUND)


@dataclass(frozen=True)
class TilePlan:
    """What the kernels of one call visit; see the module docstring for each array."""

    block_m: int
    block_n: int
    kinds: Tensor  # int8 (B', H', nQb, nKb)
    kv_num_blocks: Tensor  # int32 (B', H', nQb)
    kv_indices: Tensor  # int32 (B', H', nQb, W)
    full_kv_num_blocks: Tensor  # int32 (B', H', nQb)
    full_kv_indices: Tensor  # int32 (B', H', nQb, W)
    q_num_blocks: Tensor  # int32 (B', H', nKb)
    q_indices: Tensor  # int32 (B', H', nKb, W')
    full_q_num_blocks: Tensor  # int32 (B', H', nKb)
    full_q_indices: Tensor  # int32 (B', H', nKb, W')
    band: Band | None  # the in-kernel rule of partial tiles, or None
    tile_masks: Tensor | None  # int8 (T, block_m, block_n): stored masks of partial tiles, or None
    tile_index: Tensor | None  # int32 (B', H', nQb, nKb): index into tile_masks, -1 where none is stored

    @property
    def tiles_visited(self) -> int:
        """Non-empty tiles, counted over ``(B', H')``."""
        return int((self.kv_num_blocks.sum() + self.full_kv_num_blocks.sum()).item())

    @property
    def kept_fraction(self) -> float:
        """The share of tiles the kernels visit."""
        return self.tiles_visited / max(1, self.kinds.numel())

    def to(self, device: torch.device) -> TilePlan:
        """The same plan with its arrays on ``device``."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return TilePlan(
            self.block_m, self.block_n, self.kinds.to(device),
            self.kv_num_blocks.to(device), self.kv_indices.to(device),
            self.full_kv_num_blocks.to(device), self.full_kv_indices.to(device),
            self.q_num_blocks.to(device), self.q_indices.to(device),
            self.full_q_num_blocks.to(device), self.full_q_indices.to(device),
            self.band, move(self.tile_masks), move(self.tile_index),
        )  # fmt: skip


def block_lists(selected: Tensor, width: int | None = None) -> tuple[Tensor, Tensor]:
    """Per row of ``selected (..., R, C)`` (bool), how many columns are selected and which, ascending,
    in ``width`` entries (default: the largest count, at least 1).

    >>> counts, indices = block_lists(torch.tensor([[True, False, True], [False, False, False]]))
    >>> counts.tolist(), indices.tolist()
    ([2, 0], [[0, 2], [0, 0]])
    """
    counts = selected.sum(-1, dtype=torch.int32)  # (..., R)
    if width is None:
        width = max(1, int(counts.max().item()) if counts.numel() else 1)
    order = torch.sort((~selected).to(torch.int8), dim=-1, stable=True).indices  # selected columns first, ascending
    indices = order[..., :width].to(torch.int32)  # (..., R, W)
    # entries past the count repeat column 0: never read, kept in range all the same
    keep = torch.arange(width, device=selected.device) < counts[..., None]
    return counts.contiguous(), torch.where(keep, indices, 0).to(torch.int32).contiguous()


def band_tile_kinds(band: Band, nq: int, nk: int, block_m: int, block_n: int) -> Tensor:
    """Tile kinds of a band ``lo <= i' - j <= hi`` -> int8 ``(1, 1, nQb, nKb)``, from block edges alone.

    >>> band_tile_kinds(CAUSAL, 2, 4, 2, 2)[0, 0]       # two new queries after a cache of two keys
    tensor([[2, 1]], dtype=torch.int8)
    """
    offset = nk - nq
    q0 = torch.arange(0, nq, block_m)
    q1 = torch.clamp(q0 + block_m, max=nq) - 1
    k0 = torch.arange(0, nk, block_n)
    k1 = torch.clamp(k0 + block_n, max=nk) - 1
    d_min = (q0 + offset)[:, None] - k1[None, :]  # (nQb, nKb)
    d_max = (q1 + offset)[:, None] - k0[None, :]  # (nQb, nKb)
    full = (d_min >= band.lo) & (d_max <= band.hi)
    empty = (d_max < band.lo) | (d_min > band.hi) | (band.lo > band.hi)
    kinds = torch.where(full & ~empty, FULL, torch.where(empty, EMPTY, PARTIAL))
    return kinds.to(torch.int8)[None, None]  # (nQb, nKb) -> (1, 1, nQb, nKb)


def _unexpanded(t: Tensor) -> Tensor:
    """Axes that are broadcast views (stride 0) back to size 1."""
    for dim in range(t.dim()):
        if t.shape[dim] > 1 and t.stride(dim) == 0:
            t = t.narrow(dim, 0, 1)
    return t


def band_of(mask: object, nq: int, nk: int, device: torch.device | None = None) -> Band | None:
    """The band an offset-invariant mask object is, or None (not offset invariant, or not one interval of ``d``).

    Every distance a call holds, ``d`` in ``[1 - Nq, Nk - 1]``, occurs in its last row
    (``d = Nk - 1 - j``) or its last column (``d = i - Nq + 1``): the rule is read there.

    >>> class Window:                         # the protocol of qkv.masks.Mask: rule and offset invariance
    ...     offset_invariant = True
    ...     def allowed(self, b, h, q_idx, kv_idx, nq, nk):
    ...         d = q_idx + (nk - nq) - kv_idx
    ...         return (d >= 0) & (d < 3)
    >>> band_of(Window(), 8, 8)
    Band(lo=0, hi=2)
    """
    if not getattr(mask, "offset_invariant", False) or nq == 0 or nk == 0:
        return None
    zero = torch.zeros((), dtype=torch.long, device=device)
    last_row = mask.allowed(  # type: ignore[attr-defined]
        zero, zero, torch.tensor(nq - 1, device=device), torch.arange(nk, device=device), nq, nk
    ).cpu()
    last_col = mask.allowed(  # type: ignore[attr-defined]
        zero, zero, torch.arange(nq, device=device), torch.tensor(nk - 1, device=device), nq, nk
    ).cpu()
    # allowed by distance, d from 1 - Nq up to Nk - 1
    by_distance = torch.cat([last_col.reshape(nq)[:-1], last_row.reshape(nk).flip(0)])
    d = torch.arange(1 - nq, nk)[by_distance]
    if d.numel() == 0:
        return Band(1, 0)  # nothing allowed
    lo, hi = int(d.min()), int(d.max())
    if d.numel() != hi - lo + 1:
        return None  # holes: not one band
    return Band(-NO_BOUND if lo == 1 - nq else lo, NO_BOUND if hi == nk - 1 else hi)


def _stored_tiles(
    mask: object,
    partial: Tensor,
    shape: tuple[int, int, int, int],
    block_m: int,
    block_n: int,
    device: torch.device | None,
) -> tuple[Tensor, Tensor]:
    """``(tile_masks (T, bm, bn) int8, tile_index (B', H', nQb, nKb) int32)`` of the tiles ``partial`` selects."""
    _, _, nq, nk = shape
    where = partial.nonzero()  # (T, 4): b', h', query block, key block
    index = torch.full(partial.shape, -1, dtype=torch.int32)
    index[partial] = torch.arange(where.shape[0], dtype=torch.int32)
    rows = torch.arange(block_m)
    cols = torch.arange(block_n)
    q_idx = (where[:, 2, None] * block_m + rows).clamp(max=max(nq - 1, 0))  # (T, bm): past Nq read as the last row
    kv_idx = (where[:, 3, None] * block_n + cols).clamp(max=max(nk - 1, 0))  # (T, bn)
    if isinstance(mask, Tensor):
        b_i, h_i = where[:, 0, None, None], where[:, 1, None, None]  # (T, 1, 1)
        m = mask.expand(mask.shape[0], mask.shape[1], nq, nk)
        tiles = m[b_i.clamp(max=m.shape[0] - 1), h_i.clamp(max=m.shape[1] - 1), q_idx[:, :, None], kv_idx[:, None, :]]
    else:
        where, q_idx, kv_idx = where.to(device), q_idx.to(device), kv_idx.to(device)
        b_i, h_i = where[:, 0, None, None, None], where[:, 1, None, None, None]  # (T, 1, 1, 1)
        tiles = (
            mask.allowed(  # type: ignore[attr-defined]
                b_i, h_i, q_idx[:, None, :, None], kv_idx[:, None, None, :], nq, nk
            )
            .reshape(-1, block_m, block_n)
            .cpu()
        )  # (T, 1, bm, bn) -> (T, bm, bn)
    return tiles.to(torch.int8).contiguous(), index


def build_plan(
    mask: object,
    causal: bool,
    shape: tuple[int, int, int, int],
    block_m: int,
    block_n: int,
    device: torch.device | None = None,
) -> TilePlan:
    """The plan of a call of ``shape = (B, Hq, Nq, Nk)``: ``mask`` None, a dense bool tensor
    ``(B|1, Hq|1, Nq|1, Nk|1)`` or a mask object (`qkv.masks.Mask`'s protocol); ``causal`` bottom-right.

    A mask object is evaluated on ``device`` (where its tensors live); the plan is built
    on the CPU, whatever torch's default device (``torch.set_default_device``), and moved there.
    """
    with torch.device("cpu"):
        return _build_plan(mask, causal, shape, block_m, block_n, device)


def _build_plan(
    mask: object,
    causal: bool,
    shape: tuple[int, int, int, int],
    block_m: int,
    block_n: int,
    device: torch.device | None,
) -> TilePlan:
    b, h, nq, nk = shape
    band = CAUSAL if causal else None
    kinds: Tensor | None = None  # from the mask: the tiles it rules out and those it needs stored masks for
    stored_mask: object = None
    if isinstance(mask, Tensor):
        mask = _unexpanded(mask.cpu())
        kinds, stored_mask = dense_tile_kinds(mask, nq, nk, block_m, block_n), mask
    elif mask is not None:
        mask_band = band_of(mask, nq, nk, device)
        if mask_band is not None:
            band = mask_band if band is None else band & mask_band
        else:
            kinds = mask.tile_kinds(b, h, nq, nk, block_m, block_n, device=device)  # type: ignore[attr-defined]
            kinds = kinds.to(device="cpu", dtype=torch.int8)
            stored_mask = mask
    nqb, nkb = math.ceil(nq / block_m), math.ceil(nk / block_n)
    all_kinds = torch.full((1, 1, nqb, nkb), FULL, dtype=torch.int8)
    if kinds is not None:
        all_kinds = kinds.contiguous()
    if band is not None:
        all_kinds = torch.minimum(all_kinds, band_tile_kinds(band, nq, nk, block_m, block_n))
    tile_masks = tile_index = None
    if stored_mask is not None and kinds is not None:
        # stored only where the mask itself is partial and the tile is visited; the band adds its own rule
        partial = (kinds == PARTIAL).expand_as(all_kinds) & (all_kinds != EMPTY)
        tile_masks, tile_index = _stored_tiles(stored_mask, partial, shape, block_m, block_n, device)
        if band is not None and tile_masks.shape[0] == 0:
            tile_masks = tile_index = None
    # the partial and full lists of a direction share one width (so the kernels read both with one set of strides)
    width = max(1, int((all_kinds == PARTIAL).sum(-1).max().item()), int((all_kinds == FULL).sum(-1).max().item()))
    kv_num, kv_idx = block_lists(all_kinds == PARTIAL, width)
    full_num, full_idx = block_lists(all_kinds == FULL, width)
    width = max(1, int((all_kinds == PARTIAL).sum(-2).max().item()), int((all_kinds == FULL).sum(-2).max().item()))
    q_num, q_idx = block_lists((all_kinds == PARTIAL).transpose(-1, -2), width)
    full_q_num, full_q_idx = block_lists((all_kinds == FULL).transpose(-1, -2), width)
    plan = TilePlan(
        block_m, block_n, all_kinds, kv_num, kv_idx, full_num, full_idx, q_num, q_idx, full_q_num, full_q_idx,
        band if (band is not None and bool((all_kinds == PARTIAL).any())) else None, tile_masks, tile_index,
    )  # fmt: skip
    return plan if device is None or torch.device(device).type == "cpu" else plan.to(torch.device(device))


__all__ = ["CAUSAL", "NO_BOUND", "Band", "TilePlan", "band_of", "band_tile_kinds", "block_lists", "build_plan"]
