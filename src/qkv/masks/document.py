"""Packed sequences: several documents in one row, a query attends only to keys of its own."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from qkv import checks
from qkv.errors import AttentionError
from qkv.masks.base import Mask, brief
from qkv.masks.grid import query_position
from qkv.masks.tiling import Tiling


class Document(Mask):
    """Query and key in the same segment: see `document`."""

    def __init__(self, doc_ids: Tensor):
        self.doc_ids = doc_ids  # (Nk,) or (B, Nk) int64
        self._ids = doc_ids if doc_ids.dim() == 2 else doc_ids[None]  # (B' , Nk), B' in {1, B}

    def check(self, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
        if self.doc_ids.shape[-1] != num_keys:
            raise AttentionError(
                f"document: doc_ids gives segments for {self.doc_ids.shape[-1]} keys, but Nk = {num_keys}; "
                f"doc_ids must be (Nk,) or (B, Nk), got shape {tuple(self.doc_ids.shape)}"
            )
        if self.doc_ids.dim() == 2 and self.doc_ids.shape[0] not in (1, batch):
            raise AttentionError(
                f"document: doc_ids has shape {tuple(self.doc_ids.shape)}, expected (B={batch}, Nk={num_keys}) or (Nk,)"
            )

    def rule(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int) -> Tensor:
        pos = query_position(q_idx, num_queries, num_keys)  # i', the query's position among the keys
        ids = self._ids.to(kv_idx.device)
        if ids.shape[0] == 1:
            return (pos >= 0) & (ids[0][pos.clamp(min=0)] == ids[0][kv_idx])
        return (pos >= 0) & (ids[b, pos.clamp(min=0)] == ids[b, kv_idx])

    def classify_rows(self, t: Tiling, start: int, stop: int) -> Tensor:
        ids = self._ids.to(t.device)  # (B', Nk)
        big, small = torch.iinfo(torch.long).max, torch.iinfo(torch.long).min
        first, end = start * t.block_q, min(stop * t.block_q, t.num_queries)  # the rows' queries
        pos = torch.arange(first, end, device=ids.device) + t.offset  # (R·bq,): i'
        valid = pos >= 0  # queries with i' < 0 (Nq > Nk) belong to no segment
        q_ids = ids[:, pos.clamp(min=0)]  # (B', R·bq)
        q_min = t.query_blocks(q_ids.masked_fill(~valid, big), big).amin(-1)  # (B', R)
        q_max = t.query_blocks(q_ids.masked_fill(~valid, small), small).amax(-1)  # (B', R)
        q_any = t.query_blocks(valid, False).any(-1)  # (R,)
        q_all = t.query_blocks(valid, True).all(-1)  # (R,)
        k_min = t.key_blocks(ids, big).amin(-1)  # (B', nKb)
        k_max = t.key_blocks(ids, small).amax(-1)  # (B', nKb)
        qn, qx = q_min[:, :, None], q_max[:, :, None]  # (B', R, 1)
        kn, kx = k_min[:, None, :], k_max[:, None, :]  # (B', 1, nKb)
        empty = ~q_any[None, :, None] | (qx < kn) | (kx < qn)  # disjoint id ranges
        full = q_all[None, :, None] & (qn == qx) & (kn == kx) & (qn == kn)  # one segment on both sides
        return Tiling.kinds(full, empty)[:, None]  # (B', R, nKb) -> (B', 1, R, nKb)

    def __repr__(self) -> str:
        return f"document(doc_ids={brief(self.doc_ids)})"


def document(doc_ids: Tensor | Sequence[int]) -> Mask:
    """Packed sequences: a query attends only to keys of its own segment.

    ``doc_ids`` gives the segment id of every key, ``(Nk,)`` or ``(B, Nk)``. Query
    ``i`` sits at key position ``i' = i + (Nk - Nq)`` and belongs to segment
    ``doc_ids[..., i']``; queries with ``i' < 0`` (only when ``Nq > Nk``) belong to
    none and attend to nothing. Ids need not be sorted. Combine with `causal` for
    packed decoder training: ``document(ids) & causal()``.

    >>> document([0, 0, 1, 1, 1]).to_dense(1, 1, 5, 5)[0, 0].int()
    tensor([[1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 1, 1, 1],
            [0, 0, 1, 1, 1],
            [0, 0, 1, 1, 1]], dtype=torch.int32)
    """
    doc_ids = checks.integer_tensor(
        "doc_ids", doc_ids, "(Nk,) or (B, Nk), a segment id per key", dims=(1, 2), where="document"
    )
    if doc_ids.shape[-1] == 0 or doc_ids.numel() == 0:
        raise AttentionError(f"document: doc_ids must give at least one key, got shape {tuple(doc_ids.shape)}")
    return Document(doc_ids)


__all__ = ["Document", "document"]
