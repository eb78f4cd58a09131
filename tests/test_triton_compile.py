"""The triton kernels compiled ahead of time for an sm90 GPU (H100 / H200), without one.

The interpreter runs the kernels' arithmetic but not triton's compiler; compiling for a
target catches what only the compiler sees (types across branches and loops, shared
memory). Every block size the backend chooses must fit in an sm90 GPU's shared memory.
Run as a script in a fresh process: the kernels must be defined without TRITON_INTERPRET.
Each kernel is compiled as its launcher launches it (scripts/triton_ptx.py: the launch is caught and
specialized by triton's own binder). Slow (a float32 kernel takes half a minute to compile): marked slow.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SM90_SHARED_MEMORY = 232448  # bytes per block on an H100 / H200
# (dtype, head dim): half precision at every width, float32 at the widest (the most shared memory)
CASES = [("fp16", 64), ("fp16", 128), ("fp16", 256), ("bf16", 256), ("fp32", 256)]


def main() -> None:
    from qkv.backends import triton as tb
    from qkv.backends.triton import kernels
    from scripts.triton_ptx import DTYPES, KERNELS, Call, compile_launch, launches

    assert not kernels.INTERPRETED, "run without TRITON_INTERPRET"
    for dt, head_dim in CASES:
        # every option on: a bias and its gradient, a band and stored tiles, softcap, ALiBi, a ragged last block
        call = Call(dt, head_dim, "document+causal", bias=True, bias_grad=True, softcap=True, alibi=True, nk=200)
        caught = launches(call)
        for name in KERNELS:
            args, kwargs = caught[name]
            shared = compile_launch(getattr(kernels, name), args, kwargs).metadata.shared
            block_m, block_n = tb.block_sizes(head_dim, False, DTYPES[dt])
            print(f"{name} {dt} D={head_dim} {block_m}x{block_n}: {shared} bytes of shared memory")
            assert shared <= SM90_SHARED_MEMORY, f"{name} {dt} D={head_dim}: {shared} bytes"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed (pip install qkv[gpu])")
def test_the_kernels_compile_for_sm90_within_its_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_triton_compile"], cwd=root, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("bytes of shared memory") == 3 * len(CASES)


if __name__ == "__main__":
    main()
