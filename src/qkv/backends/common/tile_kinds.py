"""Tile kinds, the planning backends' common vocabulary: what a (query block, key block) tile holds.

A tile is EMPTY (no pair may attend: never visited), PARTIAL (some may: the mask is
applied elementwise) or FULL (every pair may: no mask). The codes are those of
`qkv.masks.TileKind`, ordered so that combining two masks' tiles is elementwise:
AND is the minimum, OR the maximum.

>>> m = torch.tensor([[True, True, False], [True, True, True]])[None, None]   # (1, 1, Nq=2, Nk=3)
>>> dense_tile_kinds(m, 2, 3, block_q=2, block_k=2)[0, 0]
tensor([[2, 1]], dtype=torch.int8)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

EMPTY, PARTIAL, FULL = 0, 1, 2


def dense_tile_kinds(mask: Tensor, nq: int, nk: int, block_q: int, block_k: int) -> Tensor:
    """Tile kinds of a dense bool mask ``(B', H', Nq|1, Nk|1)`` -> int8 ``(B', H', nQb, nKb)``.

    An axis of size 1 broadcasts (a padding mask ``(B, 1, 1, Nk)`` is the same for every
    query): its tiles are those of its one row or column, repeated (an expanded view).
    """
    b, h, mq, mk = mask.shape
    bq, bk = (block_q if mq > 1 else 1), (block_k if mk > 1 else 1)
    nqb, nkb = math.ceil(mq / bq), math.ceil(mk / bk)
    pad = (0, nkb * bk - mk, 0, nqb * bq - mq)
    any_true = torch.nn.functional.pad(mask, pad, value=False)
    all_true = torch.nn.functional.pad(mask, pad, value=True)
    any_true = any_true.view(b, h, nqb, bq, nkb, bk).any(5).any(3)  # (B', H', nQb|1, nKb|1)
    all_true = all_true.view(b, h, nqb, bq, nkb, bk).all(5).all(3)  # (B', H', nQb|1, nKb|1)
    kinds = torch.where(all_true, FULL, torch.where(any_true, PARTIAL, EMPTY)).to(torch.int8)
    return kinds.expand(b, h, math.ceil(nq / block_q), math.ceil(nk / block_k))  # (B', H', nQb, nKb)


__all__ = ["EMPTY", "FULL", "PARTIAL", "dense_tile_kinds"]
