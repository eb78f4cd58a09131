"""Longformer-style global positions: a global token attends to every key and every query attends to it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from qkv import checks
from qkv.errors import AttentionError
from qkv.masks.base import Mask, brief
from qkv.masks.grid import query_position
from qkv.masks.tiling import Tiling


class GlobalTokens(Mask):
    """Allowed iff ``i'`` or ``j`` is a global position: see `global_tokens`."""

    def __init__(self, indices: Tensor):
        self.indices = indices  # (G,) int64, sorted, unique

    def _is_global(self, positions: Tensor) -> Tensor:
        return torch.isin(positions, self.indices.to(positions.device))

    def rule(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int) -> Tensor:
        return self._is_global(query_position(q_idx, num_queries, num_keys)) | self._is_global(kv_idx)

    def classify_rows(self, t: Tiling, start: int, stop: int) -> Tensor:
        first, end = start * t.block_q, min(stop * t.block_q, t.num_queries)  # the rows' queries
        g_q = self._is_global(torch.arange(first, end, device=t.device) + t.offset)  # (R·bq,)
        g_k = self._is_global(torch.arange(t.num_keys, device=t.device))  # (Nk,)
        q_all, q_any = t.query_blocks(g_q, True).all(-1), t.query_blocks(g_q, False).any(-1)  # (R,)
        k_all, k_any = t.key_blocks(g_k, True).all(-1), t.key_blocks(g_k, False).any(-1)  # (nKb,)
        full = q_all[:, None] | k_all[None, :]  # (R, nKb): all rows or all columns global
        empty = ~q_any[:, None] & ~k_any[None, :]  # (R, nKb): no global row or column
        return Tiling.kinds(full, empty)[None, None]  # (R, nKb) -> (1, 1, R, nKb)

    def __repr__(self) -> str:
        return f"global_tokens({brief(self.indices, limit=16)})"


def global_tokens(indices: Tensor | Sequence[int]) -> Mask:
    """Longformer-style global positions: allowed iff ``i'`` is global or ``j`` is global.

    A global position attends to every key and every query attends to it.
    ``indices`` are key positions (a query's position is ``i' = i + (Nk - Nq)``);
    indices beyond the sequence are ignored. Combine with a local pattern::

        sliding_window(64) | global_tokens([0])

    >>> global_tokens([0]).to_dense(1, 1, 3, 3)[0, 0].int()
    tensor([[1, 1, 1],
            [1, 0, 0],
            [1, 0, 0]], dtype=torch.int32)
    >>> from qkv.masks import local
    >>> local(0) | global_tokens([0])
    local(0) | global_tokens([0])
    """
    indices = checks.integer_tensor("indices", indices, "1-D, the global positions", dims=(1,), where="global_tokens")
    if indices.numel() and int(indices.min()) < 0:
        raise AttentionError(f"global_tokens: indices must be >= 0, got {indices.tolist()}")
    return GlobalTokens(torch.unique(indices))


__all__ = ["GlobalTokens", "global_tokens"]
