"""Ring attention on local CPU processes, checked against one process: ``python -m qkv.distributed.demo``.

Spawns ``--world-size`` gloo processes (2 by default) on 127.0.0.1, or joins the
group ``torchrun --nproc-per-node W -m qkv.distributed.demo`` set up (it reads
``RANK`` and ``WORLD_SIZE``). For causal and sliding-window attention, in both
layouts, it prints the largest difference to the single-process result (same
dtype, and float64), the tiles each rank computes and their balance (max/mean),
and the time of the ring's forward and forward+backward passes beside one process's.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from qkv import masks
from qkv.distributed import balance, ring_attention, shard, spawn, tile_counts
from qkv.distributed.layout import LAYOUTS
from qkv.functional import attention

REPEATS = 3  # times are the best of this many runs


def _timed(fn: Any, group_wide: bool = True) -> tuple[Any, float]:
    best = float("inf")
    for _ in range(REPEATS):
        if group_wide:
            dist.barrier()
        started = time.perf_counter()
        value = fn()
        if group_wide:
            dist.barrier()
        best = min(best, time.perf_counter() - started)
    return value, best


def _max_all(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _forward(parts: list[torch.Tensor], layout: str, kwargs: dict[str, Any]) -> torch.Tensor:
    q, k, v = parts
    out = ring_attention(q, k, v, layout=layout, **kwargs)
    assert isinstance(out, torch.Tensor)
    return out


def _forward_backward(parts: list[torch.Tensor], grad: torch.Tensor, layout: str, kwargs: dict[str, Any]) -> None:
    leaves = [t.clone().requires_grad_() for t in parts]
    (_forward(leaves, layout, kwargs) * grad).sum().backward()  # type: ignore[no-untyped-call]


def _single(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = attention(q, k, v, mask=kwargs.get("mask"), causal=kwargs.get("causal", False))
    assert isinstance(out, torch.Tensor)
    return out


def run(rank: int, world_size: int, n: int, heads: int, dim: int, window: int) -> list[dict[str, Any]]:
    """Every case on this rank; the rows of the report (the same on every rank)."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, dim, generator=generator) for _ in range(3))  # (B, H, N, D) each
    grad = torch.randn(1, heads, n, dim, generator=generator)
    cases: list[tuple[str, dict[str, Any]]] = [
        ("causal", {"causal": True}),
        (f"sliding_window({window})", {"mask": masks.sliding_window(window)}),
    ]
    rows = []
    for name, kwargs in cases:
        one = _single(q, k, v, kwargs)
        exact = _single(q.double(), k.double(), v.double(), kwargs)
        one_seconds = 0.0
        if rank == 0:  # one process's time, the other ranks waiting
            _, one_seconds = _timed(partial(_single, q, k, v, kwargs), group_wide=False)
        dist.barrier()
        for layout in LAYOUTS:
            parts = [shard(t, layout=layout) for t in (q, k, v)]
            out, forward = _timed(partial(_forward, parts, layout, kwargs))
            _, both = _timed(partial(_forward_backward, parts, shard(grad, layout=layout), layout, kwargs))
            counts = tile_counts(n, world_size, kwargs.get("mask"), layout=layout, causal=kwargs.get("causal", False))
            rows.append({
                "case": name, "layout": layout,
                "error": _max_all(float((out - shard(one, layout=layout)).abs().max())),
                "error64": _max_all(float((out.double() - shard(exact, layout=layout)).abs().max())),
                "tiles": counts, "balance": balance(counts),
                "forward": forward, "forward+backward": both, "one process": one_seconds,
                "threads": torch.get_num_threads(),
            })  # fmt: skip
    return rows


def report(rows: list[dict[str, Any]], world_size: int, n: int, heads: int, dim: int) -> str:
    lines = [
        (
            f"ring attention on {world_size} gloo processes (CPU, {rows[0]['threads']} threads each): "
            f"B=1, H={heads}, N={n}, D={dim}, float32"
        ),
        "max error: against one process's qkv.attention (float32), and against it in float64",
        "tiles: 64 x 64 tiles each rank computes (skipped blocks and tiles not counted); balance = max / mean",
        f"times: best of {REPEATS}; one process ran on rank 0 alone, with that rank's threads",
        "",
        (
            f"{'case':<22}{'layout':<12}{'max error':>11}{'vs float64':>12}  {'tiles per rank':<22}{'balance':>8}"
            f"{'ring fwd':>10}{'fwd+bwd':>9}{'1 process':>11}"
        ),
    ]
    for row in rows:
        tiles = ", ".join(map(str, row["tiles"]))
        lines.append(
            f"{row['case']:<22}{row['layout']:<12}{row['error']:>11.1e}{row['error64']:>12.1e}  {tiles:<22}"
            f"{row['balance']:>8.2f}{row['forward']:>9.3f}s{row['forward+backward']:>8.3f}s{row['one process']:>10.3f}s"
        )
    return "\n".join(lines)


def _spawned(rank: int, world_size: int, *args: int) -> list[dict[str, Any]]:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    return run(rank, world_size, *args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qkv.distributed.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=4096, help="sequence length N (default 4096)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--window", type=int, default=512, help="the sliding window (default 512)")
    parser.add_argument("--world-size", type=int, default=2, help="processes to spawn (ignored under torchrun)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for every collective and the run")
    args = parser.parse_args(argv)
    sizes = (args.length, args.heads, args.dim, args.window)
    started = time.perf_counter()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # under torchrun: the group is ours to join
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout))
        rank, world_size = dist.get_rank(), dist.get_world_size()
        try:
            rows = run(rank, world_size, *sizes)
        finally:
            dist.destroy_process_group()
        if rank != 0:
            return 0
    else:
        world_size = args.world_size
        rows = spawn(_spawned, world_size, sizes, timeout=args.timeout)[0]
    print(report(rows, world_size, args.length, args.heads, args.dim))
    print(f"\ntotal {time.perf_counter() - started:.1f} s (process start-up included)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
