"""Attention across processes: ring attention over `torch.distributed`, exact through the log-sum-exp.

The sequence axis is split among the ``W`` ranks of a process group; each rank
holds its part of q, k and v, and `ring_attention` returns its part of the
output of the single-process call, to the last bit of what the log-sum-exp
merge allows (float64 inputs agree with the float64 spec to ~1e-15)::

    torchrun --nproc-per-node 4 train.py

    import datetime, torch, torch.distributed as dist, qkv
    from qkv import distributed, masks

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))   # nccl on GPUs
    q, k, v = (distributed.shard(t) for t in (q_full, k_full, v_full))       # (B, H, N/W, D) each
    out = distributed.ring_attention(q, k, v, mask=masks.sliding_window(1024), causal=True)
    full = distributed.gather(out)                                           # (B, H, N, D) on every rank

- `shard(x, dim=-2, layout="zigzag", group=None)`: this rank's part (no communication).
- `gather(x_local, dim=-2, layout="zigzag", group=None)`: the full tensor on every rank (differentiable).
- `ring_attention(q, k, v, mask=None, score_mod=None, layout="zigzag", group=None, *, causal=False,
  scale=None, return_lse=False)`: masks and score mods in GLOBAL positions; differentiable.
- `tile_counts(n, world_size, mask, layout=...)`, `balance(counts)`: each rank's work, computed.
- `spawn(fn, world_size, args)`: ``fn(rank, world_size, *args)`` in local processes (tests, demos).

Layouts (`qkv.distributed.layout`): the sequence is cut with `torch.tensor_split`'s
sizes; ``zigzag`` gives rank ``r`` chunks ``r`` and ``2W - 1 - r`` of ``2W``, so causal
work balances; ``contiguous`` gives it chunk ``r`` of ``W``.

A rank whose arguments are wrong makes every rank raise the same `qkv.AttentionError`
with that rank's message before any rank waits in the ring; every collective runs
under the group's ``timeout``. `python -m qkv.distributed.demo` shows it all on two
CPU processes; ``docs/distributed.md`` is the guide.

>>> from qkv import distributed, masks
>>> distributed.tile_counts(2048, 2, masks.causal(), layout="zigzag")
[264, 264]
"""

from qkv.distributed.attention import ring_attention
from qkv.distributed.launch import spawn
from qkv.distributed.layout import LAYOUTS
from qkv.distributed.plan import balance, tile_counts
from qkv.distributed.shard import gather, shard

__all__ = ["LAYOUTS", "balance", "gather", "ring_attention", "shard", "spawn", "tile_counts"]
