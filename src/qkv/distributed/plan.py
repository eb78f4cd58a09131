"""Which blocks each rank computes: its query chunks against every rank's key chunks, the empty ones skipped.

A rank's queries and each rank's keys are one or two contiguous chunks of the
global sequence (`qkv.distributed.layout`). Every (query chunk, key chunk) pair
is a `Piece`, unless the mask rules the pair out entirely: then it is skipped
and costs nothing. A pair the mask allows entirely runs with no mask at all; a
causal pair on the diagonal runs with ``masks.causal()`` itself (which fused
kernels take as a flag); any other pair runs with the mask seen at the pair's
global offsets (`qkv.distributed.views.GlobalMask`), whose empty tiles
`qkv.attention` skips in turn.

`tile_counts` counts the ``block x block`` tiles each rank computes, the measure of
its work that the balance of a layout is read from:

>>> from qkv import masks
>>> zigzag = tile_counts(4096, 4, masks.causal(), layout="zigzag")
>>> contiguous = tile_counts(4096, 4, masks.causal(), layout="contiguous")
>>> zigzag, contiguous
([520, 520, 520, 520], [136, 392, 648, 904])
>>> balance(zigzag), round(balance(contiguous), 2)
(1.0, 1.74)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from qkv.distributed.layout import check_layout, local_spans
from qkv.distributed.views import GlobalMask, GlobalMod
from qkv.errors import AttentionError
from qkv.masks import Mask, TileKind, causal
from qkv.mods import ScoreMod


@dataclass(frozen=True)
class Problem:
    """The global attention problem the ranks share."""

    batch: int
    heads: int
    num_queries: int  # global Nq
    num_keys: int  # global Nk
    world_size: int
    layout: str


@dataclass(frozen=True)
class Piece:
    """One block a rank computes: rows ``[q0, q1)`` of its q against rows ``[k0, k1)`` of a source rank's k, v."""

    q_rows: tuple[int, int]
    k_rows: tuple[int, int]
    mask: Mask | None  # None: every pair of the block may attend
    mod: ScoreMod | None


def with_causal(mask: Mask | None, is_causal: bool) -> Mask | None:
    """``causal=True`` as a mask: ``masks.causal()``, or ``masks.causal() & mask``."""
    if not is_causal:
        return mask
    return causal() if mask is None else causal() & mask


# Views of masks whose rule depends only on i' - j are kept, the most recent VIEWS_KEPT of them, so a model that
# calls ring attention again with the same mask and sizes reuses them, and qkv.attention's own plans of them too.
# (A view holds its mask, so the mask's id cannot be reused while its views are kept.)
_VIEWS: OrderedDict[tuple[int, ...], GlobalMask] = OrderedDict()
VIEWS_KEPT = 256


def _view(mask: Mask, key: tuple[int, int, int, int, int, int]) -> GlobalMask:
    if not mask.offset_invariant:
        return GlobalMask(mask, *key)
    slot = (id(mask), *key)
    view = _VIEWS.get(slot)
    if view is None or view.mask is not mask:
        view = _VIEWS[slot] = GlobalMask(mask, *key)
        if len(_VIEWS) > VIEWS_KEPT:
            _VIEWS.popitem(last=False)
    _VIEWS.move_to_end(slot)
    return view


def _block_kind(kinds: torch.Tensor) -> TileKind:
    """One tile's kinds over ``(B', H')``: EMPTY or FULL only when every batch row and head agrees."""
    if bool((kinds == int(TileKind.EMPTY)).all()):
        return TileKind.EMPTY
    if bool((kinds == int(TileKind.FULL)).all()):
        return TileKind.FULL
    return TileKind.PARTIAL


def pieces(
    problem: Problem, rank: int, source: int, mask: Mask | None, mod: ScoreMod | None,
    device: torch.device | str | None = None,
) -> list[Piece]:  # fmt: skip
    """The blocks rank ``rank`` computes against the keys held by rank ``source``."""
    p = problem
    out = []
    for q_local, (q_start, q_stop) in local_spans(p.num_queries, p.world_size, rank, p.layout):
        for k_local, (k_start, k_stop) in local_spans(p.num_keys, p.world_size, source, p.layout):
            nq, nk = q_stop - q_start, k_stop - k_start
            if nq == 0 or nk == 0:
                continue
            local_mask: Mask | None = None
            if mask is not None:
                view = _view(mask, (q_start, k_start, nq, nk, p.num_queries, p.num_keys))
                kind = _block_kind(view.tile_kinds(p.batch, p.heads, nq, nk, nq, nk, device))
                if kind == TileKind.EMPTY:
                    continue
                if kind == TileKind.PARTIAL:
                    local_mask = mask if view.is_the_mask_itself else view
            local_mod: ScoreMod | None = None
            if mod is not None:
                delta = q_start - k_start + p.num_keys - p.num_queries
                same = mod.offset_invariant and delta == nk - nq
                local_mod = mod if same else GlobalMod(mod, q_start, k_start, p.num_queries, p.num_keys)
            out.append(Piece((q_local, q_local + nq), (k_local, k_local + nk), local_mask, local_mod))
    return out


def tile_counts(
    n: int,
    world_size: int,
    mask: Mask | None = None,
    *,
    layout: str = "zigzag",
    causal: bool = False,
    block: int = 64,
    batch: int = 1,
    heads: int = 1,
) -> list[int]:
    """The number of ``block x block`` tiles each rank computes for self-attention over ``n`` positions.

    A tile counts when some (query, key) pair in it may attend for some batch row or
    head: the blocks a rank skips and the tiles `qkv.attention` skips inside them do
    not count. Computed from the mask's structure; nothing is timed and no process
    group is needed.

    >>> tile_counts(1000, 2, causal=True)
    [68, 68]
    """
    layout = check_layout(layout)
    for name, value in (("n", n), ("world_size", world_size), ("block", block), ("batch", batch), ("heads", heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "n" else 1):
            raise AttentionError(f"tile_counts: {name} must be a positive int, got {value!r}")
    if mask is not None and not isinstance(mask, Mask):
        raise AttentionError(f"tile_counts: mask must be a qkv.masks.Mask or None, got {type(mask).__name__}")
    rule = with_causal(mask, causal)
    problem = Problem(batch, heads, n, n, world_size, layout)
    counts = []
    for rank in range(world_size):
        total = 0
        for source in range(world_size):
            for piece in pieces(problem, rank, source, rule, None):
                nq, nk = piece.q_rows[1] - piece.q_rows[0], piece.k_rows[1] - piece.k_rows[0]
                if piece.mask is None:
                    total += -(-nq // block) * -(-nk // block)
                else:
                    kinds = piece.mask.tile_kinds(batch, heads, nq, nk, block, block)
                    total += int((kinds != int(TileKind.EMPTY)).flatten(0, 1).any(0).sum())
        counts.append(total)
    return counts


def balance(counts: list[int]) -> float:
    """``max / mean`` of per-rank work: 1.0 is perfect balance; ``W`` is one rank doing everything.

    >>> balance([3, 1])
    1.5
    """
    mean = sum(counts) / len(counts)
    return max(counts) / mean if mean else 1.0


__all__ = ["Piece", "Problem", "balance", "pieces", "tile_counts", "with_causal"]
