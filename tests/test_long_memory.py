"""Long calls at linear memory: the blockwise plan keeps block lists, never an nQb x nKb map.

The plan's bytes are measured from its tensors; a 128k-token forward runs in a child
process whose peak resident memory (``VmHWM``, reset first: a child's ``ru_maxrss`` starts at its
parent's peak) is compared with what it started at.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from qkv import masks
from qkv.backends.blockwise import plan as bplan
from qkv.backends.common.tile_runs import TileRuns

SIZES = (16384, 32768, 65536)


def _mask(name: str, n: int) -> tuple[object, bool]:
    """``(mask, causal)`` of a pattern at ``n`` tokens."""
    if name == "sliding_window":
        return masks.sliding_window(256), False
    if name == "causal":
        return None, True
    if name == "document":  # packed sequences of 4096 tokens, causal within each
        return masks.document(torch.arange(n) // 4096), True
    if name == "block_sparse":  # a band of 128-token blocks
        i = torch.arange(n // 128)
        return masks.block_sparse((i[:, None] - i[None, :]).abs() <= 1, 128), False
    if name == "prefix":  # prefix-LM: 1024 prefix keys seen by every query, causal after them
        return masks.causal() | masks.padding([1024]), False
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["sliding_window", "causal", "document", "block_sparse", "prefix"])
def test_the_plan_grows_linearly_with_the_sequence(name):
    held = []
    for n in SIZES:
        mask, causal = _mask(name, n)
        plan = bplan._plan(mask, causal, (1, 1, n, n), torch.device("cpu"))
        assert isinstance(plan.tiles, TileRuns)
        held.append(plan.nbytes)
    for small, large in zip(held, held[1:]):
        assert large <= 2.1 * small, held  # doubling N about doubles the plan
    assert held[-1] <= 64 * SIZES[-1], held  # a few runs per query block: bytes per token, not per tile


def test_the_block_lists_are_the_tile_kinds():
    n = 1000
    for mask in [
        masks.sliding_window(100),
        masks.local(70),
        masks.document(torch.arange(n) // 300) & masks.causal(),
        masks.causal() | masks.padding([128]),
        masks.dilated(4, dilation=40),
    ]:
        plan = bplan._plan(mask, False, (1, 1, n, n), torch.device("cpu"))
        kinds = mask.tile_kinds(1, 1, n, n, bplan.BLOCK_Q, bplan.BLOCK_K)
        assert torch.equal(plan.tiles.to_kinds(), TileRuns.from_kinds(kinds).to_kinds()), mask


def test_the_sliding_window_plan_is_analytic_and_small_at_256k():
    n = 262144
    plan = bplan._plan(masks.sliding_window(256), False, (1, 1, n, n), torch.device("cpu"))
    assert plan.nbytes < 1 << 20  # about 180 KB; the nQb x nKb map alone would be 32 MiB
    assert all(isinstance(keys, slice) for keys in plan.keys)


CHILD = textwrap.dedent(
    """
    import sys, torch
    import qkv
    from qkv import masks
    from qkv.bench import peak_extra_mib
    n, d = int(sys.argv[1]), 32
    q, k, v = (torch.randn(1, 1, n, d) for _ in range(3))
    q.requires_grad_(True)

    def run():
        out = qkv.attention(q, k, v, mask=masks.sliding_window(256), backend="blockwise")
        out.sum().backward()

    print(int(peak_extra_mib(run)))
    """
)


def test_a_128k_sliding_window_forward_and_backward_run_in_little_memory():
    n = 131072
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(n)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    extra_mib = int(done.stdout.split()[-1])
    # out, dq, dk, dv and the saved lse are 16 MiB each at most; a dense mask would be 16 GiB
    assert extra_mib < 256, extra_mib
