"""`shard` and `gather`: a full tensor's part on this rank, and the parts put back together on every rank."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from qkv import checks
from qkv.distributed.group import Group, agree, describe, device_of, world
from qkv.distributed.layout import check_layout, check_lengths, local_spans
from qkv.errors import AttentionError

_MAX_DIMS = 8
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.int32, torch.bool)


def _axis(where: str, x: Tensor, dim: object) -> int:
    """``dim`` as a non-negative axis of ``x``, or an AttentionError."""
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise AttentionError(
            f"{where}: dim must be an axis of the {x.dim()}-D tensor (from {-x.dim()} to {x.dim() - 1}), got {dim!r}"
        )
    return dim % x.dim()


def shard(x: Tensor, dim: int = -2, layout: str = "zigzag", group: Group | None = None) -> Tensor:
    """This rank's part of the full tensor ``x`` along ``dim`` (``-2``: the sequence axis of ``(B, H, N, D)``).

    ``zigzag`` cuts ``N`` into ``2W`` chunks with `torch.tensor_split`'s sizes (the first
    ``N % 2W`` one longer) and gives rank ``r`` chunks ``r`` and ``2W - 1 - r``, in that
    order; ``contiguous`` cuts ``W`` chunks and gives rank ``r`` chunk ``r``. Every rank
    passes the same full ``x``. No communication; differentiable (the gradient flows back
    to ``x``'s positions). The result is a new contiguous tensor.

    Raises:
        AttentionError: no process group, a bad ``layout`` or ``dim``.
    """
    rank, size = world("shard", group)
    layout = check_layout(layout)
    x = checks.tensor("x", x, "(the full tensor)")
    axis = _axis("shard", x, dim)
    parts = [x.narrow(axis, start, stop - start) for _, (start, stop) in local_spans(x.shape[axis], size, rank, layout)]
    return torch.cat(parts, dim=axis) if len(parts) > 1 else parts[0].contiguous().clone()


def gather(x_local: Tensor, dim: int = -2, layout: str = "zigzag", group: Group | None = None) -> Tensor:
    """The full tensor on every rank, from every rank's part along ``dim`` (the inverse of `shard`).

    A collective: every rank of ``group`` must call it. The parts may differ in length
    along ``dim`` as the layout says (an ``N`` not divisible by ``2W`` or ``W``); every
    other axis, the dtype and the device must agree, else every rank raises the same
    `qkv.AttentionError` naming the rank that differs.

    Differentiable: the gradient of a rank's part is the sum, over the ranks, of the
    gradients their full tensors pass to its positions (the adjoint of an all-gather,
    one all-reduce), so every rank must run the backward pass.
    """
    world("gather", group)
    error, numbers = None, [0.0] * (_MAX_DIMS + 4)
    try:
        layout = check_layout(layout)
        x_local = checks.tensor("x_local", x_local, "(this rank's part)")
        axis = _axis("gather", x_local, dim)
        if x_local.dim() > _MAX_DIMS:
            raise AttentionError(f"gather: x_local has {x_local.dim()} axes; at most {_MAX_DIMS} are supported")
        if x_local.dtype not in _DTYPES:
            raise AttentionError(f"gather: x_local has dtype {x_local.dtype}, which qkv.distributed does not send")
        other = [x_local.shape[a] if a != axis else -1 for a in range(x_local.dim())]
        other += [0] * (_MAX_DIMS - len(other))
        numbers = [float(x_local.shape[axis]), float(x_local.dim()), float(axis), float(_DTYPES.index(x_local.dtype))]
        numbers += [float(s) for s in other]
    except Exception as exc:  # noqa: BLE001  (every rank learns of it before anyone waits on the gather)
        error = describe(exc)
    table = agree("gather", error, numbers, group)
    for r, row in enumerate(table):
        if row[1:] != table[0][1:]:
            raise AttentionError(
                f"gather: rank {r}'s part differs from rank 0's in its other axes, dtype or dim "
                "(only the length along dim may differ)"
            )
    lengths = [int(row[0]) for row in table]
    check_lengths("gather: x_local", lengths, layout)
    full: Tensor = _Gather.apply(x_local, axis, layout, lengths, group)  # type: ignore[no-untyped-call]
    return full


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x_local: Tensor, axis: int, layout: str, lengths: list[int], group: Group | None) -> Tensor:
        rank, size = world("gather", group)
        ctx.axis, ctx.layout, ctx.lengths, ctx.group, ctx.rank = axis, layout, lengths, group, rank
        longest = max(lengths)
        device = device_of(group)
        padded = x_local.to(device)
        if x_local.shape[axis] < longest:  # all-gather takes equal sizes: pad every part to the longest
            pad_shape = list(x_local.shape)
            pad_shape[axis] = longest - x_local.shape[axis]
            padded = torch.cat([padded, padded.new_zeros(pad_shape)], dim=axis)
        parts = [torch.empty_like(padded) for _ in range(size)]
        dist.all_gather(parts, padded.contiguous(), group=group)
        n = sum(lengths)
        pieces = []
        for r in range(size):
            for local, (start, stop) in local_spans(n, size, r, layout):
                pieces.append((start, parts[r].narrow(axis, local, stop - start)))
        pieces.sort(key=lambda item: item[0])
        return torch.cat([piece for _, piece in pieces], dim=axis).to(x_local.device)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        total = grad.to(device_of(ctx.group)).contiguous().clone()
        dist.all_reduce(total, group=ctx.group)  # every rank's full tensor used this rank's positions
        n = sum(ctx.lengths)
        size = len(ctx.lengths)
        spans = local_spans(n, size, ctx.rank, ctx.layout)
        mine = [total.narrow(ctx.axis, start, stop - start) for _, (start, stop) in spans]
        return torch.cat(mine, dim=ctx.axis).to(grad.device), None, None, None, None


__all__ = ["gather", "shard"]
