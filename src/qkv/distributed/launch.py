"""`spawn`: run a function in ``W`` local processes joined in one process group (tests, demos, laptops).

Each process joins a fresh group on a free port of 127.0.0.1 with a timeout on
every collective, runs ``fn(rank, world_size, *args)`` and sends back its return
value, or its error: when any rank raises, `spawn` raises a RuntimeError with the
message of the rank that failed first (the others usually fail because it left),
names the others, and ends the processes that are left. A run that outlasts ``timeout`` is ended the same way.
"""

from __future__ import annotations

import datetime
import multiprocessing
import queue
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child(
    rank: int, world_size: int, port: int, backend: str, timeout: float, fn: Callable[..., Any],
    args: Sequence[Any], results: Any,
) -> None:  # fmt: skip
    import torch.distributed as dist

    try:
        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout),
        )  # fmt: skip
        results.put((rank, time.time(), True, fn(rank, world_size, *args)))
    except BaseException as exc:  # noqa: BLE001  (sent back before the group closes: the first failure is the cause)
        results.put((rank, time.time(), False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(
    fn: Callable[..., Any],
    world_size: int,
    args: Sequence[Any] = (),
    *,
    backend: str = "gloo",
    timeout: float = 60.0,
    start_method: str = "spawn",
) -> list[Any]:
    """``fn(rank, world_size, *args)`` in ``world_size`` processes; their return values in rank order.

    ``fn`` must be importable by the children (a module-level function) and return
    something picklable. ``timeout`` (seconds) bounds every collective of the group and
    the whole run. ``start_method`` is a `multiprocessing` start method: ``"spawn"``
    (safe everywhere) or ``"forkserver"`` (quicker when called many times).
    """
    context: Any = multiprocessing.get_context(start_method)
    results = context.Queue()
    port = free_port()
    processes = [
        context.Process(target=_child, args=(rank, world_size, port, backend, timeout, fn, tuple(args), results))
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    answers: dict[int, tuple[float, bool, Any]] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(answers) < world_size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"spawn: the {world_size} processes did not finish within {timeout:g} s")
            try:
                rank, when, ok, value = results.get(timeout=min(left, 1.0))
            except queue.Empty:
                dead = [r for r, p in enumerate(processes) if r not in answers and p.exitcode not in (None, 0)]
                if dead and results.empty():
                    code = processes[dead[0]].exitcode
                    raise RuntimeError(f"spawn: rank {dead[0]} exited with code {code} and no result") from None
                continue
            answers[rank] = (when, ok, value)
            if not ok:
                time.sleep(0.5)  # the other ranks' failures, to name the first one
                while not results.empty():
                    r, w, o, val = results.get()
                    answers[r] = (w, o, val)
                failed = sorted((r for r, (_, o, _) in answers.items() if not o), key=lambda r: answers[r][0])
                others = sorted(failed[1:])
                raise RuntimeError(
                    f"spawn: rank {failed[0]} failed: {answers[failed[0]][2]}"
                    + (f"\n(failed too: ranks {', '.join(map(str, others))})" if others else "")
                )
    finally:
        for process in processes:
            process.join(timeout=5.0 if len(answers) == world_size else 0.1)
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=5.0)
    return [answers[rank][2] for rank in range(world_size)]


__all__ = ["free_port", "spawn"]
