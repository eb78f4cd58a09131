"""`RecordedCall`: one attention call as a layer made it, to compute any of its weights later, a block at a time.

``record(model, keep="calls")`` keeps, per call, the exact ``q``, ``k``, mask, bias
and causal flag instead of the probabilities: ``O(H · N · D)`` memory instead of
``O(H · N²)``. The weights of any heads and query rows are then computed when
asked (`RecordedCall.weights`), or streamed over blocks of rows
(`RecordedCall.blocks`) so that no ``(H, N, N)`` tensor ever exists.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from qkv.errors import AttentionError
from qkv.functional import attention_weights
from qkv.interpret._common import int_list
from qkv.masks import Mask
from qkv.mods import ScoreMod

MaskLike = Tensor | Mask | None
BiasLike = Tensor | ScoreMod | None

# The weights one block of `RecordedCall.blocks` holds at most (float32: 16 MiB), unless a single row needs more.
BLOCK_ELEMENTS = 1 << 22


def _select_heads(t: Tensor | None, index: Tensor) -> Tensor | None:
    """Keep heads ``index`` of a mask/bias tensor whose head axis is not broadcast."""
    if t is not None and t.dim() == 4 and t.shape[1] != 1:
        return t.index_select(1, index.to(t.device))  # (B, H, Nq, Nk) -> (B, H', Nq, Nk)
    return t


def weights_of_call(
    q: Tensor,
    k: Tensor,
    *,
    mask: MaskLike,
    bias: BiasLike,
    causal: bool,
    scale: float | None,
    heads: list[int] | None,
    rows: list[int] | None,
) -> Tensor:
    """The probabilities ``(B, H', R, Nk)`` one attention call applied, for the chosen heads and query rows."""
    b, h, nq, _ = q.shape  # (B, H, Nq, D)
    nk = k.shape[2]
    row_index = None
    if rows is not None:
        bad = [r for r in rows if not -nq <= r < nq]
        if bad:
            raise AttentionError(f"rows: query rows {bad} are out of range for a call with Nq = {nq} queries")
        row_index = torch.tensor([r % nq for r in rows], dtype=torch.long, device=q.device)
    out_rows = nq if row_index is None else len(row_index)
    if heads is not None:  # negative counts from the end, as for rows (and on transformers models)
        bad = [x for x in heads if not -h <= x < h]
        if bad:
            raise AttentionError(f"heads: heads {bad} are out of range for a layer with {h} heads")
        heads = [x % h for x in heads]
    if h == 0:  # every head pruned
        dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        return q.new_zeros(b, 0, out_rows, nk, dtype=dtype)
    if heads is not None and not isinstance(mask, Mask) and not isinstance(bias, ScoreMod):
        # mask and bias are tensors (or None): compute only the chosen heads.
        index = torch.tensor(heads, dtype=torch.long, device=q.device)
        group = h // k.shape[1]
        q = q.index_select(1, index)  # (B, H, Nq, D) -> (B, H', Nq, D)
        k = k.index_select(1, torch.div(index, group, rounding_mode="floor"))  # (B, Hkv, Nk, D) -> (B, H', Nk, D)
        mask, bias = _select_heads(mask, index), _select_heads(bias, index)
        return attention_weights(q, k, mask=mask, bias=bias, causal=causal, scale=scale, rows=row_index)
    # Mask objects and score modifiers read the head index: compute every head, keep the chosen ones.
    w = attention_weights(q, k, mask=mask, bias=bias, causal=causal, scale=scale, rows=row_index)  # (B, H, R, Nk)
    if heads is not None:
        w = w.index_select(1, torch.tensor(heads, dtype=torch.long, device=w.device))  # (B, H, R, Nk) -> (B, H', R, Nk)
    return w


def row_blocks(rows: list[int], per_row: int, block_elements: int = BLOCK_ELEMENTS) -> Iterator[list[int]]:
    """Consecutive chunks of ``rows`` holding at most ``block_elements`` weights of ``per_row`` each (at least one
    row a chunk): how a long input's weights are gone over without holding more than one block.

    >>> list(row_blocks([0, 1, 2, 3, 4], per_row=10, block_elements=20))
    [[0, 1], [2, 3], [4]]
    """
    step = max(1, block_elements // max(1, per_row))
    for start in range(0, len(rows), step):
        yield rows[start : start + step]


class AttentionCall:
    """One recorded attention call, whatever model made it: its weights on demand, a block of rows at a time.

    `RecordedCall` is a call of qkv's own `qkv.nn.MultiHeadAttention`; `qkv.hf.record.TransformersCall`
    a call of a transformers model's attention layer on ``"qkv"``. Both give ``layer``, ``name``,
    ``causal``, ``num_heads``, ``num_queries``, ``num_keys``, ``batch_size``, ``dtype`` and
    `weights`; `blocks`, `nbytes` and the ``repr`` are the same for both, here.
    """

    layer: int  # where: the attention module's index and qualified name
    name: str
    batch_size: int  # the weights' shape (B, H, Nq, Nk)
    num_heads: int
    num_queries: int
    num_keys: int
    causal: bool
    dtype: torch.dtype

    def weights(self, *, heads: Sequence[int] | None = None, rows: Sequence[int] | Tensor | None = None) -> Tensor:
        """The exact probabilities ``(B, H', R, Nk)`` of ``heads`` (default all) and query ``rows`` (default all)."""
        raise NotImplementedError

    @property
    def itemsize(self) -> int:
        """Bytes per weight: float32, or float64 for a float64 model."""
        return 8 if self.dtype == torch.float64 else 4

    def nbytes(self, *, heads: int | None = None, rows: int | None = None) -> int:
        """Bytes the weights of ``heads`` heads and ``rows`` query rows take (all of them when None)."""
        h = self.num_heads if heads is None else heads
        r = self.num_queries if rows is None else rows
        return self.batch_size * h * r * self.num_keys * self.itemsize

    def blocks(
        self,
        *,
        heads: Sequence[int] | None = None,
        rows: Sequence[int] | Tensor | None = None,
        block_elements: int = BLOCK_ELEMENTS,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """``(row_indices, weights)`` for consecutive blocks of ``rows``: ``weights (B, H', C, Nk)``, C rows each.

        A block holds at most ``block_elements`` weights (at least one row), so going
        over every row of a long input never holds more than one block.
        """
        if isinstance(block_elements, bool) or not isinstance(block_elements, int) or block_elements < 1:
            raise AttentionError(f"block_elements: expected a positive int, got {block_elements!r}")
        row_list = list(range(self.num_queries)) if rows is None else int_list("rows", rows)
        h = self.num_heads if heads is None else len(int_list("heads", heads))
        for chunk in row_blocks(row_list, self.batch_size * max(h, 1) * self.num_keys, block_elements):
            yield torch.tensor(chunk, dtype=torch.long), self.weights(heads=heads, rows=chunk)

    def __repr__(self) -> str:
        mode = ", causal" if self.causal else ""
        where = self.name or "self"
        return (
            f"{type(self).__name__}(layer {self.layer} {where!r}, {self.num_heads} heads, "
            f"{self.num_queries} queries × {self.num_keys} keys{mode})"
        )


@dataclass(frozen=True, repr=False)
class RecordedCall(AttentionCall):
    """One attention call of a recorded layer: its exact inputs, and its weights on demand.

    Attributes:
        layer: the attention module's index (the numbering of `record` and `qkv.nn.prune_heads`).
        name: the module's qualified name (``"layers.0.self_attn"``).
        q: the queries ``(B, H, Nq, D)`` the call received (after RoPE), detached.
        k: the keys ``(B, Hkv, Nk, D)`` (after RoPE and the KV-cache update), detached.
        mask, bias, causal, scale: the rest of the call, as `qkv.attention_weights` takes them.

    >>> import torch
    >>> from qkv.interpret import record
    >>> from qkv.nn import MultiHeadAttention
    >>> mha = MultiHeadAttention(16, 4, backend="sdpa").eval()
    >>> x = torch.randn(1, 6, 16)
    >>> with record(mha, keep="calls") as rec:
    ...     _ = mha(x, causal=True)
    >>> call = rec.calls[0]
    >>> call, tuple(call.weights(heads=[1], rows=[0, -1]).shape)
    (RecordedCall(layer 0 'self', 4 heads, 6 queries × 6 keys, causal), (1, 1, 2, 6))
    >>> [(rows.tolist(), tuple(w.shape)) for rows, w in call.blocks(block_elements=4 * 6 * 4)]
    [([0, 1, 2, 3], (1, 4, 4, 6)), ([4, 5], (1, 4, 2, 6))]
    """

    layer: int
    name: str
    q: Tensor = field(repr=False)
    k: Tensor = field(repr=False)
    mask: MaskLike = field(repr=False)
    bias: BiasLike = field(repr=False)
    causal: bool
    scale: float | None

    @property
    def num_heads(self) -> int:
        return int(self.q.shape[1])

    @property
    def num_queries(self) -> int:
        return int(self.q.shape[2])

    @property
    def num_keys(self) -> int:
        return int(self.k.shape[2])

    @property
    def batch_size(self) -> int:
        return int(self.q.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """The queries' dtype (the weights are float32, float64 for float64)."""
        return self.q.dtype

    def weights(self, *, heads: Sequence[int] | None = None, rows: Sequence[int] | Tensor | None = None) -> Tensor:
        """The exact probabilities ``(B, H', R, Nk)`` of ``heads`` (default all) and query ``rows`` (default all)."""
        head_list = None if heads is None else int_list("heads", heads)
        row_list = None if rows is None else int_list("rows", rows)
        with torch.no_grad():
            return weights_of_call(
                self.q,
                self.k,
                mask=self.mask,
                bias=self.bias,
                causal=self.causal,
                scale=self.scale,
                heads=head_list,
                rows=row_list,
            )


__all__ = ["BLOCK_ELEMENTS", "AttentionCall", "RecordedCall", "row_blocks", "weights_of_call"]
