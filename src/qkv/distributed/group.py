"""The process group: who we are, agreeing on errors before any rank waits, and the ring's point-to-point steps.

Every collective here runs under the group's timeout (``timeout=`` of
`torch.distributed.init_process_group`), so a rank that never arrives makes the
others fail instead of waiting for ever. Before a ring starts, `agree` makes
every rank learn every other rank's metadata *and* whether it failed its checks:
a rank whose arguments are wrong makes every rank raise the same
`qkv.AttentionError`, carrying that rank's message.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from qkv.errors import AttentionError

Group = object
"""A `torch.distributed` process group, or None for the default group."""


def world(where: str, group: Group | None) -> tuple[int, int]:
    """``(rank, world_size)`` of this process in ``group``, or an AttentionError if no group is set up."""
    if not dist.is_available() or not dist.is_initialized():
        raise AttentionError(
            f"{where}: no torch.distributed process group is initialised; start the processes with "
            "torchrun (or qkv.distributed.spawn) and call torch.distributed.init_process_group(backend, "
            "timeout=datetime.timedelta(seconds=60)) first"
        )
    return dist.get_rank(group), dist.get_world_size(group)  # type: ignore[arg-type]


def global_rank(group: Group | None, rank: int) -> int:
    """The default group's rank of ``group``'s rank ``rank``."""
    return rank if group is None else dist.get_global_rank(group, rank)  # type: ignore[arg-type]


def device_of(group: Group | None) -> torch.device:
    """Where the group's collectives take their tensors: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":  # type: ignore[arg-type]
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def describe(error: BaseException) -> str:
    """An exception as one line for the other ranks: its message, with its type unless it is an AttentionError."""
    if isinstance(error, AttentionError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def agree(where: str, error: str | None, numbers: Sequence[float], group: Group | None) -> list[list[float]]:
    """Every rank's ``numbers`` (one all-gather), or the same AttentionError on every rank if any rank failed.

    ``error`` is this rank's failure (None if its checks passed); ``numbers`` its
    metadata, the same count on every rank (pass zeros after a failure). When some
    rank failed, the first failing rank's message is broadcast and every rank raises
    ``"{where} on rank R: {message}"``.
    """
    rank, size = world(where, group)
    device = device_of(group)
    row = torch.tensor([1.0 if error is not None else 0.0, *numbers], dtype=torch.float64, device=device)
    rows = [torch.empty_like(row) for _ in range(size)]
    dist.all_gather(rows, row, group=group)
    table = [r.tolist() for r in rows]
    failed = [r for r in range(size) if table[r][0] != 0.0]
    if failed:
        first = failed[0]
        message: list[object] = [error if rank == first else None]
        source = global_rank(group, first)
        dist.broadcast_object_list(message, src=source, group=group, device=device)  # type: ignore[arg-type]
        others = f" (ranks {', '.join(map(str, failed[1:]))} failed too)" if len(failed) > 1 else ""
        raise AttentionError(f"{where} on rank {first}: {message[0]}{others}")
    return [r[1:] for r in table]


class Exchange:
    """One ring step in flight: ``sends`` go to the next rank while same-shaped blocks come from the previous.

    Started on construction (`torch.distributed.batch_isend_irecv`); `wait` returns
    the received tensors. Empty tensors are not sent (both sides know the sizes).
    """

    def __init__(
        self, sends: Sequence[Tensor], recv_shapes: Sequence[tuple[int, ...]], dtypes: Sequence[torch.dtype],
        group: Group | None,
    ) -> None:  # fmt: skip
        rank, size = world("ring", group)
        after, before = global_rank(group, (rank + 1) % size), global_rank(group, (rank - 1) % size)
        device = sends[0].device
        self.received = [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in zip(recv_shapes, dtypes)]
        self._sent = [t.contiguous() for t in sends if t.numel()]  # kept alive until the sends complete
        ops = [dist.P2POp(dist.isend, t, after, group) for t in self._sent]  # type: ignore[arg-type]
        ops += [dist.P2POp(dist.irecv, t, before, group) for t in self.received if t.numel()]  # type: ignore[arg-type]
        self._works = dist.batch_isend_irecv(ops) if ops else []

    def wait(self) -> list[Tensor]:
        for work in self._works:
            work.wait()
        self._works, self._sent = [], []
        return self.received


__all__ = ["Exchange", "Group", "agree", "describe", "device_of", "global_rank", "world"]
