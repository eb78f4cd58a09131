"""`summarize_rows`: the top keys of each query row and its weight on chosen keys, streamed a block of rows at a time.

What a table of "token i attends most to ..." needs, for one view of a layer (one
head, or the mean of some heads), without ever holding the layer's ``(H, N, N)``
weights: each block of rows is computed (`AttentionCall.blocks`), reduced to its
top ``k`` keys and a few sums, and dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.errors import AttentionError
from qkv.interpret._common import int_list
from qkv.interpret.calls import BLOCK_ELEMENTS, AttentionCall


@dataclass(frozen=True)
class RowSummary:
    """Per shown query row of one view: its top keys and its total weight on named key sets.

    Attributes:
        rows: ``(R,)`` the query positions summarized.
        top_index: ``(R, k)`` the keys with most weight, largest first (equal weights: the earlier key first);
            ``-1`` past the candidates a row has (a causal row ``i`` has ``i + 1``).
        top_weight: ``(R, k)`` their weights (0 where the index is -1).
        sums: for each name given to `summarize_rows`, ``(R,)`` the row's weight on those keys.
    """

    rows: Tensor
    top_index: Tensor
    top_weight: Tensor
    sums: dict[str, Tensor]

    def top(self, r: int) -> list[tuple[int, float]]:
        """Row ``r``'s top keys as ``(key, weight)`` pairs (the -1 entries left out)."""
        return [(int(j), float(w)) for j, w in zip(self.top_index[r], self.top_weight[r]) if j >= 0]


def summarize_rows(
    call: AttentionCall,
    *,
    k: int,
    heads: Sequence[int] | None = None,
    rows: Sequence[int] | Tensor | None = None,
    candidates: Tensor | None = None,
    sums: Mapping[str, Tensor] | None = None,
    batch: int = 0,
    block_elements: int = BLOCK_ELEMENTS,
) -> RowSummary:
    """Top ``k`` keys and key-set sums of each query row of the mean over ``heads`` (default: every head).

    Args:
        call: a recorded call (``record(model, keep="calls")``): a `RecordedCall` of qkv's modules,
            or a `qkv.hf.record.TransformersCall` of a transformers model.
        k: how many keys per row.
        heads: the heads averaged (one head: that head's weights); default all.
        rows: the query rows (default all).
        candidates: ``(Nk,)`` bool, the keys that may rank (default all); a causal call's
            row ``i`` ranks only keys ``j <= i + Nk - Nq`` in any case.
        sums: ``name -> (Nk,)`` bool key sets whose total weight each row reports.
        batch: which batch item.
        block_elements: the most weights computed at once (see `RecordedCall.blocks`).

    >>> import torch
    >>> from qkv.interpret import record, summarize_rows
    >>> from qkv.nn import MultiHeadAttention
    >>> mha = MultiHeadAttention(8, 2, backend="sdpa").eval()
    >>> with record(mha, keep="calls") as rec:
    ...     _ = mha(torch.randn(1, 5, 8), causal=True)
    >>> first = torch.tensor([True, False, False, False, False])
    >>> s = summarize_rows(rec.calls[0], k=2, sums={"first": first})
    >>> s.top(0), s.sums["first"][0].item()               # the first token sees only itself
    ([(0, 1.0)], 1.0)
    >>> w = rec.calls[0].weights()[0].mean(0)              # (H, N, N) -> (N, N), for a short input
    >>> torch.equal(s.top_weight[4], w[4].topk(2).values)
    True
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise AttentionError(f"k: expected a positive int (keys per row), got {k!r}")
    nq, nk = call.num_queries, call.num_keys
    allowed = torch.ones(nk, dtype=torch.bool) if candidates is None else _key_set("candidates", candidates, nk)
    key_sets = {name: _key_set(f"sums[{name!r}]", s, nk) for name, s in (sums or {}).items()}
    head_list = None if heads is None else int_list("heads", heads)
    positions = torch.arange(nk)
    indices: list[Tensor] = []
    weights: list[Tensor] = []
    totals: dict[str, list[Tensor]] = {name: [] for name in key_sets}
    row_blocks: list[Tensor] = []
    for block_rows, w in call.blocks(heads=head_list, rows=rows, block_elements=block_elements):
        view = w[batch].mean(0).float().cpu()  # (B, H', C, Nk) -> (C, Nk)
        block_rows = block_rows % nq
        ok = allowed[None, :].expand(len(block_rows), nk)  # (C, Nk)
        if call.causal:
            ok = ok & (positions[None, :] <= block_rows[:, None] + (nk - nq))  # (C, Nk)
        ranked = view.masked_fill(~ok, float("-inf"))
        values, order = ranked.topk(min(k, nk), dim=-1)  # (C, Nk) -> (C, k)
        order, by_key = order.sort(dim=-1)  # the k keys in key order ...
        values, by_weight = values.gather(-1, by_key).sort(dim=-1, descending=True, stable=True)
        order = order.gather(-1, by_weight)  # ... then largest first, ties keeping the earlier key first
        missing = torch.isneginf(values)
        indices.append(order.masked_fill(missing, -1))
        weights.append(values.masked_fill(missing, 0.0))
        for name, keys in key_sets.items():
            totals[name].append(view[:, keys].sum(-1))  # (C, Nk) -> (C,)
        row_blocks.append(block_rows)
    width = min(k, nk)
    return RowSummary(
        rows=torch.cat(row_blocks) if row_blocks else torch.zeros(0, dtype=torch.long),
        top_index=torch.cat(indices) if indices else torch.zeros(0, width, dtype=torch.long),
        top_weight=torch.cat(weights) if weights else torch.zeros(0, width),
        sums={name: torch.cat(parts) if parts else torch.zeros(0) for name, parts in totals.items()},
    )


def _key_set(name: str, keys: object, nk: int) -> Tensor:
    if not isinstance(keys, Tensor) or keys.dtype != torch.bool or tuple(keys.shape) != (nk,):
        shape = tuple(keys.shape) if isinstance(keys, Tensor) else type(keys).__name__
        raise AttentionError(f"{name}: expected a bool tensor of shape ({nk},), one flag per key, got {shape}")
    return keys.cpu()


__all__ = ["RowSummary", "summarize_rows"]
