"""The triton kernels compiled ahead of time for an sm90 GPU (H100 / H200), without one.

The interpreter runs the kernels' arithmetic but not triton's compiler; compiling for a
target catches what only the compiler sees (types across branches and loops, shared
memory). Every block size the backend chooses must fit in an sm90 GPU's shared memory.
Run as a script in a fresh process: the kernels must be defined without TRITON_INTERPRET.
Slow (a float32 kernel takes half a minute to compile): marked slow.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SM90_SHARED_MEMORY = 232448  # bytes per block on an H100 / H200
POINTERS = {
    "Q": "*{dt}", "K": "*{dt}", "V": "*{dt}", "OUT": "*{dt}", "DO": "*{dt}", "DQ": "*{dt}", "DK": "*{dt}",
    "DV_out": "*{dt}", "BIAS": "*{dt}", "LSE": "*fp32", "DELTA": "*fp32", "DS": "*fp32", "SLOPES": "*fp32",
    "TILE_MASKS": "*i8", "TILE_INDEX": "*i32", "KV_NUM": "*i32", "KV_IDX": "*i32", "FULL_NUM": "*i32",
    "FULL_IDX": "*i32", "Q_NUM": "*i32", "Q_IDX": "*i32",
}  # fmt: skip
FLOATS = {"qk_scale", "scale", "CAP2"}
UPPER_INTS = {"H", "HKV", "G", "NQ", "NK", "D", "DV", "OFFSET", "BAND_LO", "BAND_HI"}  # strides are lowercase
# (dtype, head dim): half precision at every width, float32 at the widest (the most shared memory)
CASES = [("fp16", 64), ("fp16", 128), ("fp16", 256), ("bf16", 256), ("fp32", 256)]


def kind_of(name: str, dt: str, constants: dict[str, object]) -> str:
    """An argument's type in triton's signature; an unknown upper-case name (a new pointer?) is an error."""
    if name in constants:
        return "constexpr"
    if name in POINTERS:
        return POINTERS[name].format(dt=dt)
    if name in FLOATS:
        return "fp32"
    if name in UPPER_INTS or name.islower():
        return "i32"
    raise KeyError(f"{name}: add it to POINTERS, FLOATS or UPPER_INTS")


def compile_for_sm90(fn: object, dt: str, constants: dict[str, object]) -> object:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = fn.arg_names  # type: ignore[attr-defined]
    signature = {name: kind_of(name, dt, constants) for name in names}
    source = ASTSource(fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in constants.items()})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})


def main() -> None:
    import torch

    from qkv.backends import triton as tb
    from qkv.backends.triton import kernels

    assert not kernels.INTERPRETED, "run without TRITON_INTERPRET"
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    for dt, head_dim in CASES:
        block_m, block_n = tb.block_sizes(head_dim, False, dtypes[dt])
        constants = {
            "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": head_dim, "BLOCK_DV": head_dim,
            "HAS_BIAS": True, "HAS_BAND": True, "HAS_TILES": True, "EVEN_N": False,
            "PRECISION": "ieee" if dt == "fp32" else "tf32", "SOFTCAP": True, "HAS_ALIBI": True,
        }  # fmt: skip
        launched = ((kernels._forward, {}), (kernels._backward_dq, {"STORE_DS": True}), (kernels._backward_dkdv, {}))
        for fn, more in launched:
            shared = compile_for_sm90(fn, dt, {**constants, **more}).metadata.shared  # type: ignore[attr-defined]
            print(f"{fn.__name__} {dt} D={head_dim} {block_m}x{block_n}: {shared} bytes of shared memory")
            assert shared <= SM90_SHARED_MEMORY, f"{fn.__name__} {dt} D={head_dim}: {shared} bytes"


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
