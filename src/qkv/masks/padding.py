"""Padded batches: sequence ``b`` holds ``lengths[b]`` real keys, the rest is padding."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from qkv import checks
from qkv.errors import AttentionError
from qkv.masks.base import Mask, brief
from qkv.masks.tiling import Tiling


class Padding(Mask):
    """Key ``j`` may be attended iff ``j < lengths[b]``: see `padding`."""

    def __init__(self, lengths: Tensor):
        self.lengths = lengths  # (B,) int64

    def check(self, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
        if self.lengths.shape[0] != batch:
            raise AttentionError(
                f"padding: lengths has {self.lengths.shape[0]} entries but the batch has {batch} sequences; "
                "give one length per sequence"
            )

    def rule(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int) -> Tensor:
        return kv_idx < self.lengths.to(kv_idx.device)[b]

    def classify_rows(self, t: Tiling, start: int, stop: int) -> Tensor:
        k0, k1 = t.cols()
        length = self.lengths.to(k0.device)[:, None]  # (B,) -> (B, 1)
        kinds = Tiling.kinds(k1[None, :] <= length, k0[None, :] >= length)  # (B, nKb)
        return kinds[:, None, None, :].expand(t.batch, 1, stop - start, -1).contiguous()  # (B, nKb) -> (B, 1, R, nKb)

    def __repr__(self) -> str:
        return f"padding(lengths={brief(self.lengths, limit=16)})"


def padding(lengths: Tensor | Sequence[int]) -> Mask:
    """Sequence ``b`` holds ``lengths[b]`` real keys: key ``j`` may be attended iff ``j < lengths[b]``.

    ``lengths`` is a 1-D integer tensor or list with one entry per sequence of the
    batch. Queries are not masked: a padded query row still attends to the real keys
    (its output is ignored downstream, and it never becomes an all-masked row).

    >>> padding([2, 3]).to_dense(2, 1, 1, 4)[:, 0, 0].int()
    tensor([[1, 1, 0, 0],
            [1, 1, 1, 0]], dtype=torch.int32)
    """
    lengths = checks.integer_tensor("lengths", lengths, "1-D (B,), one length per sequence", dims=(1,), where="padding")
    if lengths.numel() == 0:
        raise AttentionError("padding: lengths must hold one length per sequence, got an empty list")
    if int(lengths.min()) < 0:
        raise AttentionError(f"padding: lengths must be >= 0, got {lengths.tolist()}")
    return Padding(lengths)


__all__ = ["Padding", "padding"]
