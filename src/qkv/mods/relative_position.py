"""T5's learned relative position bias (Raffel et al., 2020): a table of biases per distance bucket and head."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from qkv import checks
from qkv.errors import AttentionError
from qkv.mods.base import RelativeBias, ScoreMod


def relative_position_bucket(
    relative_position: Tensor, num_buckets: int, max_distance: int, bidirectional: bool = True
) -> Tensor:
    """T5's bucket of a relative position ``j - i'`` (Raffel et al., 2020; HF ``T5Attention``).

    With ``bidirectional``, half the buckets are for keys after the query. In each
    half, distances below ``n/2`` get a bucket each (``n`` the buckets of that half);
    larger ones share log-spaced buckets up to ``max_distance``, and farther ones
    the last bucket. Unidirectional: keys after the query all fall in bucket 0.
    Computed in float32 like the original, so pretrained tables line up exactly.

    >>> import torch
    >>> relative_position_bucket(torch.tensor([-200, -20, -3, 0, 3, 20]), 32, 128)
    tensor([15, 10,  3,  0, 19, 26])
    """
    n = num_buckets
    bucket = torch.zeros_like(relative_position)
    if bidirectional:
        n //= 2
        bucket = bucket + (relative_position > 0).long() * n
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = n // 2
    # log-spaced past max_exact (distance < max_exact is exact; the clamp only avoids log(0))
    log_ratio = torch.log(distance.clamp(min=max_exact).float() / max_exact) / math.log(max_distance / max_exact)
    far = max_exact + (log_ratio * (n - max_exact)).long()
    far = far.clamp(max=n - 1)
    return bucket + torch.where(distance < max_exact, distance, far)


class RelativePositionBias(RelativeBias):
    """``score + table[bucket(j - i'), h]``: see `relative_position_bias`."""

    where, per_head = "relative_position_bias", "table columns (num_buckets, H)"

    def __init__(self, table: Tensor, num_buckets: int, max_distance: int, bidirectional: bool):
        self.table = table  # (num_buckets, H), learnable
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional

    @property
    def num_heads(self) -> int:
        return self.table.shape[1]

    def relative_bias(self, h: Tensor, relative: Tensor, dtype: torch.dtype) -> Tensor:
        bucket = relative_position_bucket(relative, self.num_buckets, self.max_distance, self.bidirectional)
        table = self.table.to(relative.device)  # (num_buckets, H), in its own dtype: __call__ casts the bias
        return table[bucket, h]  # gather at broadcast(bucket, h) -> (1, H, Nq, Nk); differentiable in table

    def __repr__(self) -> str:
        return (
            f"relative_position_bias(table={tuple(self.table.shape)}, num_buckets={self.num_buckets}, "
            f"max_distance={self.max_distance}, bidirectional={self.bidirectional})"
        )


def relative_position_bias(table: Tensor, num_buckets: int, max_distance: int, bidirectional: bool = True) -> ScoreMod:
    """T5's learned relative position bias: ``score + table[bucket(j - i'), h]``.

    ``table`` is a float ``(num_buckets, H)`` tensor, typically an ``nn.Parameter``
    (gradients flow into it); buckets follow `relative_position_bucket`. T5 does not
    scale its scores: call attention with ``scale=1.0`` to reproduce it.

    >>> import torch
    >>> table = torch.arange(8.0).view(8, 1)                     # 8 buckets, 1 head
    >>> m = relative_position_bias(table, num_buckets=8, max_distance=16)
    >>> m.additive_bias(1, 1, 3, 3)[0, 0]                       # bucket(j - i') read from the table
    tensor([[0., 5., 6.],
            [1., 0., 5.],
            [2., 1., 0.]])
    """
    if not isinstance(table, Tensor) or not table.is_floating_point() or table.dim() != 2:
        got = f"dtype {table.dtype}, shape {tuple(table.shape)}" if isinstance(table, Tensor) else type(table).__name__
        raise AttentionError(f"relative_position_bias: table must be a float tensor (num_buckets, H), got {got}")
    checks.flag("bidirectional", bidirectional, where="relative_position_bias")
    num_buckets = checks.integer(
        "num_buckets", num_buckets, minimum=4 if bidirectional else 2, where="relative_position_bias"
    )
    if table.shape[0] != num_buckets:
        raise AttentionError(
            f"relative_position_bias: table must have num_buckets = {num_buckets} rows (num_buckets, H), "
            f"got shape {tuple(table.shape)}"
        )
    max_exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
    max_distance = checks.integer("max_distance", max_distance, minimum=max_exact + 1, where="relative_position_bias")
    return RelativePositionBias(table, num_buckets, max_distance, bidirectional)


__all__ = ["RelativePositionBias", "relative_position_bias", "relative_position_bucket"]
