"""The index grid a rule is evaluated on, and what a rule must return on it.

A mask's rule (and a score mod) is called on broadcasting LongTensors
``b (B,1,1,1), h (1,H,1,1), q_idx (1,1,Nq,1), kv_idx (1,1,1,Nk)`` and returns a
bool tensor that broadcasts to their shape. These helpers build that grid and
check a rule's answer, so every mask and mod reads them the same way.

>>> b, h, q, k = index_grid(2, 4, 3, 5)
>>> b.shape, h.shape, q.shape, k.shape
(torch.Size([2, 1, 1, 1]), torch.Size([1, 4, 1, 1]), torch.Size([1, 1, 3, 1]), torch.Size([1, 1, 1, 5]))
"""

from __future__ import annotations

import torch
from torch import Tensor

from qkv.errors import AttentionError

Device = torch.device | str | None


def index_grid(
    batch: int, heads: int, num_queries: int, num_keys: int, device: Device = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Broadcasting index tensors ``b (B,1,1,1), h (1,H,1,1), q_idx (1,1,Nq,1), kv_idx (1,1,1,Nk)``."""
    b = torch.arange(batch, device=device).view(batch, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)
    h = torch.arange(heads, device=device).view(1, heads, 1, 1)  # (H,) -> (1, H, 1, 1)
    q = torch.arange(num_queries, device=device).view(1, 1, num_queries, 1)  # (Nq,) -> (1, 1, Nq, 1)
    k = torch.arange(num_keys, device=device).view(1, 1, 1, num_keys)  # (Nk,) -> (1, 1, 1, Nk)
    return b, h, q, k


def query_position(q_idx: Tensor, num_queries: int, num_keys: int) -> Tensor:
    """``i' = i + (Nk - Nq)``: a query's position among the keys (the bottom-right alignment of ``causal=True``).

    With a KV cache (``Nq < Nk``) the new queries are the last positions.

    >>> query_position(torch.arange(2), num_queries=2, num_keys=5)
    tensor([3, 4])
    """
    return q_idx + (num_keys - num_queries)


def as_4d(t: Tensor) -> Tensor:
    """Leading singleton axes up to 4-D (broadcasting aligns shapes on the right).

    >>> as_4d(torch.zeros(3, 5)).shape
    torch.Size([1, 1, 3, 5])
    """
    return t[(None,) * (4 - t.dim())]  # (..., Nq', Nk') -> (1, ..., Nq', Nk'), 4 axes


def broadcast_shape(*shapes: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
    """``torch.broadcast_shapes`` for the few small shapes of a block (a tenth of its cost per call);
    shapes that do not broadcast get torch's own error.

    >>> broadcast_shape((2, 1, 1, 1), (1, 1, 3, 1), (1, 1, 1, 4))
    (2, 1, 3, 4)
    """
    rank = max(len(shape) for shape in shapes)
    out = [1] * rank
    for shape in shapes:
        for axis, size in enumerate(shape, rank - len(shape)):
            if size != 1:
                if out[axis] not in (1, size):
                    return tuple(torch.broadcast_shapes(*shapes))  # type: ignore[no-untyped-call]  # raises, naming the sizes
                out[axis] = size
    return tuple(out)


def checked_output(allowed: object, full: tuple[int, int, int, int]) -> Tensor:
    """A rule's output as a 4-D bool tensor expanded to ``(B'|1, H'|1, R, Nk)``, or an AttentionError.

    ``full`` is ``(B, H, R, Nk)``: the grid the rule was asked about, ``R`` query rows.
    """
    want = f"(B={full[0]}, H={full[1]}, rows={full[2]}, Nk={full[3]})"
    if not isinstance(allowed, Tensor):
        raise AttentionError(
            f"mask: the rule must return a bool tensor broadcastable to {want}, got {type(allowed).__name__}"
        )
    if allowed.dtype != torch.bool or allowed.dim() > 4:
        raise AttentionError(
            f"mask: the rule must return a bool tensor broadcastable to {want}, "
            f"got dtype {allowed.dtype} and shape {tuple(allowed.shape)}"
        )
    allowed = as_4d(allowed)
    if any(size not in (1, n) for size, n in zip(allowed.shape, full)):
        raise AttentionError(
            f"mask: the rule returned shape {tuple(allowed.shape)}, which does not broadcast to {want}"
        )
    return allowed.expand(*allowed.shape[:2], *full[2:])


__all__ = ["Device", "as_4d", "broadcast_shape", "checked_output", "index_grid", "query_position"]
