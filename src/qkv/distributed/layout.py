"""How a sequence is cut among ranks: the ``zigzag`` and ``contiguous`` layouts, as spans of global positions.

A sequence of ``N`` positions is cut into ``P`` chunks with `torch.tensor_split`'s
sizes: the first ``N % P`` chunks hold ``N // P + 1`` positions, the others ``N // P``.

- ``contiguous``: ``P = W`` chunks, rank ``r`` holds chunk ``r``.
- ``zigzag``: ``P = 2W`` chunks, rank ``r`` holds chunks ``r`` and ``2W - 1 - r``, in that
  order, so that under a causal mask every rank has as many early (cheap) rows as late
  (dear) ones and the work balances.

>>> spans(10, world_size=2, layout="zigzag")            # 4 chunks of sizes 3, 3, 2, 2
[((0, 3), (8, 10)), ((3, 6), (6, 8))]
>>> spans(10, world_size=2, layout="contiguous")
[((0, 5),), ((5, 10),)]
>>> [local_length(10, 2, r, "zigzag") for r in range(2)]
[5, 5]
"""

from __future__ import annotations

from qkv.errors import AttentionError

LAYOUTS = ("zigzag", "contiguous")
"""The layouts `qkv.distributed` knows."""

Span = tuple[int, int]
"""Global positions ``[start, stop)`` of one chunk."""


def check_layout(layout: object) -> str:
    """``layout`` if it is one of `LAYOUTS`, else an AttentionError naming the choices.

    >>> check_layout("ring")
    Traceback (most recent call last):
    ...
    qkv.errors.AttentionError: layout: expected 'zigzag' or 'contiguous', got 'ring'
    """
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise AttentionError(f"layout: expected 'zigzag' or 'contiguous', got {layout!r}")
    return layout


def chunks(n: int, parts: int) -> list[Span]:
    """``n`` positions cut into ``parts`` chunks with `torch.tensor_split`'s sizes.

    >>> chunks(7, 3)
    [(0, 3), (3, 5), (5, 7)]
    """
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for index in range(parts):
        stop = start + base + (1 if index < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def spans(n: int, world_size: int, layout: str) -> list[tuple[Span, ...]]:
    """For every rank, the global spans it holds, in the order its local tensor holds them."""
    layout = check_layout(layout)
    if layout == "contiguous":
        return [(span,) for span in chunks(n, world_size)]
    cut = chunks(n, 2 * world_size)
    return [(cut[r], cut[2 * world_size - 1 - r]) for r in range(world_size)]


def local_length(n: int, world_size: int, rank: int, layout: str) -> int:
    """How many of the ``n`` positions rank ``rank`` holds."""
    return sum(stop - start for start, stop in spans(n, world_size, layout)[rank])


def local_spans(n: int, world_size: int, rank: int, layout: str) -> list[tuple[int, Span]]:
    """``(local start, global span)`` of each chunk rank ``rank`` holds: where it sits locally and globally.

    >>> local_spans(10, 2, 0, "zigzag")
    [(0, (0, 3)), (3, (8, 10))]
    """
    out, local = [], 0
    for start, stop in spans(n, world_size, layout)[rank]:
        out.append((local, (start, stop)))
        local += stop - start
    return out


def check_lengths(name: str, lengths: list[int], layout: str) -> int:
    """The global length ``N = sum(lengths)`` if every rank holds its layout's share, else an AttentionError.

    ``lengths[r]`` is how many positions rank ``r`` holds along the sequence axis of ``name``.

    >>> check_lengths("q", [5, 5], "zigzag")
    10
    >>> check_lengths("q", [6, 4], "zigzag")
    Traceback (most recent call last):
    ...
    qkv.errors.AttentionError: q: rank 0 holds 6 and rank 1 holds 4 positions, but the zigzag layout of N = 10 ...
    """
    world_size, n = len(lengths), sum(lengths)
    want = [local_length(n, world_size, r, layout) for r in range(world_size)]
    if lengths != want:
        held = " and ".join(f"rank {r} holds {got}" for r, got in enumerate(lengths) if got != want[r])
        wanted = ", ".join(str(w) for w in want)
        raise AttentionError(
            f"{name}: {held} positions, but the {layout} layout of N = {n} over {world_size} ranks gives them "
            f"{wanted} (tensor_split sizes); cut the full tensor with qkv.distributed.shard(x, layout={layout!r})"
        )
    return n


__all__ = ["LAYOUTS", "Span", "check_layout", "check_lengths", "chunks", "local_length", "local_spans", "spans"]
