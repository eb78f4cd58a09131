"""The triton kernels compiled for an sm90 GPU (H100 / H200) as the launchers launch them, without one.

    python3 scripts/triton_ptx.py [--jobs N] [--only SUBSTRING]

For each call of a small matrix (dtypes, head dims, bias with and without its gradient, band, stored
tiles, softcap, ALiBi, even and ragged key counts, grouped-query or not: every constexpr branch of the
kernels, both ways), `qkv.backends.triton.kernels.forward` and ``backward`` run with CPU tensors while
their kernels' launches are caught; each caught launch is then specialized as triton's launcher
specializes it (strides of 1 folded in, 16-divisible ints and pointers marked) and compiled for sm90.
One line per kernel and call: a hash of its PTX without debug information (``.loc``/``.file`` lines,
comments, the labels debug ranges use and the ``.debug_*`` sections), the registers, stack, spills and
shared memory of the compiled code. Two runs of different sources that print the same lines compile to
the same instructions. Run it without TRITON_INTERPRET (the kernels must be defined for a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import re
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qkv import masks
from qkv.backends import triton as tb
from qkv.backends.triton import kernels
from qkv.backends.triton.plan import build_plan

KERNELS = ("_forward", "_backward_dq", "_backward_dkdv")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class Call:
    """One attention call whose three kernel launches are compiled."""

    dt: str
    head_dim: int
    mask: str = "none"  # none | causal (band) | window (band) | document (stored tiles) | document+causal (both)
    bias: bool = False
    bias_grad: bool = False  # backward keeps the score gradient (STORE_DS)
    softcap: bool = False
    alibi: bool = False
    nq: int = 256
    nk: int = 256  # not a multiple of the key block: EVEN_N off
    heads: tuple[int, int] = (2, 2)  # (query heads, key heads): G = 1 folds into the kernels, G = 2 does not

    @property
    def name(self) -> str:
        on = [f for f in ("bias", "bias_grad", "softcap", "alibi") if getattr(self, f)]
        return f"{self.dt} D={self.head_dim} {self.mask} {'+'.join(on) or '-'} N={self.nq}x{self.nk} H={self.heads}"


# every branch both ways: HAS_BIAS, HAS_BAND, HAS_TILES, SOFTCAP, HAS_ALIBI, EVEN_N, STORE_DS, PRECISION, BLOCK_D
CALLS = [
    Call("fp16", 64),
    Call("fp16", 128, "causal", bias=True, bias_grad=True, nk=200, heads=(4, 2)),
    Call("fp16", 64, "document+causal", softcap=True, alibi=True, nq=200, nk=200),
    Call("bf16", 128, "window", bias=True, softcap=True, heads=(4, 2)),
    Call("fp32", 64, "document", bias=True, bias_grad=True, alibi=True, nk=200),
    Call("fp32", 128, "document+causal", bias=True, bias_grad=True, softcap=True, alibi=True, nk=200, heads=(4, 2)),
    Call("bf16", 256, "causal", alibi=True, heads=(4, 1)),
]


def _mask(kind: str, nk: int) -> tuple[object, bool]:
    ids = torch.tensor([0] * (nk // 2) + [1] * (nk - nk // 2))
    return {
        "none": (None, False),
        "causal": (None, True),
        "window": (masks.sliding_window(9), False),
        "document": (masks.document(ids), False),
        "document+causal": (masks.document(ids), True),
    }[kind]


class _Caught:
    """Stands for a kernel in `kernels` while a launcher runs: ``kernel[grid](*args, **kwargs)`` is kept."""

    def __init__(self, name: str, launches: dict[str, tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
        self.name, self.launches = name, launches

    def __getitem__(self, grid: object) -> Callable[..., None]:
        def launch(*args: Any, **kwargs: Any) -> None:
            self.launches[self.name] = (args, kwargs)

        return launch


@contextlib.contextmanager
def _caught() -> Iterator[dict[str, tuple[tuple[Any, ...], dict[str, Any]]]]:
    launches: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    real = {name: getattr(kernels, name) for name in KERNELS}
    for name in KERNELS:
        setattr(kernels, name, _Caught(name, launches))
    try:
        yield launches
    finally:
        for name, fn in real.items():
            setattr(kernels, name, fn)


def launches(call: Call) -> dict[str, tuple[tuple[Any, ...], dict[str, Any]]]:
    """The arguments the launchers pass to each kernel for ``call`` (CPU tensors; nothing runs)."""
    torch.manual_seed(0)
    dtype = DTYPES[call.dt]
    (hq, hkv), b = call.heads, 1
    q = torch.randn(b, hq, call.nq, call.head_dim, dtype=dtype)
    k = torch.randn(b, hkv, call.nk, call.head_dim, dtype=dtype)
    v = torch.randn(b, hkv, call.nk, call.head_dim, dtype=dtype)
    bias = torch.randn(1, hq, call.nq, call.nk, dtype=dtype) if call.bias else None
    mask, causal = _mask(call.mask, call.nk)
    block_m, block_n = tb.block_sizes(call.head_dim, False, dtype)
    plan = build_plan(mask, causal, (b, hq, call.nq, call.nk), block_m, block_n)
    softcap = 30.0 if call.softcap else None
    slopes = torch.rand(hq) if call.alibi else None
    scale = call.head_dim**-0.5
    with _caught() as caught:
        kernels.forward(q, k, v, bias, plan, scale, softcap, slopes)
        out = torch.randn(b, hq, call.nq, call.head_dim, dtype=dtype)
        lse = torch.randn(b, hq, call.nq)
        kernels.backward(
            q, k, v, bias, plan, scale, out, lse, torch.randn_like(out), None, call.bias_grad, softcap, slopes
        )
    assert set(caught) == set(KERNELS), sorted(caught)
    return caught


def compile_launch(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``fn`` compiled for sm90 as ``fn[grid](*args, **kwargs)`` would compile it (triton's own binder, options
    and specialization), without a GPU."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    kwargs = {**kwargs, "debug": fn.debug or knobs.runtime.debug}
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def stripped_ptx(ptx: str) -> str:
    """The PTX without what only debugging reads: line info, comments, debug-range labels, debug sections."""
    lines, in_debug = [], False
    for line in ptx.splitlines():
        text = line.split("//", 1)[0].rstrip()
        if in_debug:
            in_debug = text.strip() != "}"
            continue
        if re.match(r"\s*\.section\s+\.debug_", text):
            in_debug = "}" not in text
            continue
        if re.match(r"\s*\.(loc|file)\s", text) or re.match(r"\$L__(tmp|func_begin|func_end)\d+:$", text.strip()):
            continue
        if text.strip():
            lines.append(text)
    return "\n".join(lines) + "\n"


def ptxas_info(log: str) -> dict[str, int]:
    """What ``ptxas -v`` says of the kernel: registers, stack frame, spill stores and loads (bytes)."""
    found = {
        "regs": r"Used (\d+) registers",
        "stack": r"(\d+) bytes stack frame",
        "spill_stores": r"(\d+) bytes spill stores",
        "spill_loads": r"(\d+) bytes spill loads",
    }
    return {key: int(m.group(1)) if (m := re.search(rx, log)) else -1 for key, rx in found.items()}


def report(job: tuple[int, str], keep: str | None = None) -> str:
    """One line for kernel ``name`` of call ``index``: the PTX hash and the compiled code's resources."""
    index, name = job
    call = CALLS[index]
    args, kwargs = launches(call)[name]
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # triton prints ptxas's log there (TRITON_DUMP_PTXAS_LOG)
        compiled = compile_launch(getattr(kernels, name), args, kwargs)
    ptx = stripped_ptx(compiled.asm["ptx"])
    if keep:
        Path(keep, f"{index}{name}.ptx").write_text(ptx)
    info = ptxas_info(log.getvalue())
    digest = hashlib.sha256(ptx.encode()).hexdigest()[:16]
    used = " ".join(f"{key}={value}" for key, value in info.items())
    return f"{name:14} [{call.name}] ptx={digest} lines={ptx.count(chr(10))} {used} shared={compiled.metadata.shared}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles at once")
    parser.add_argument("--only", default="", help="only the kernels and calls whose line names this")
    parser.add_argument("--keep", default=None, help="a folder to write each stripped PTX into (to diff)")
    options = parser.parse_args()
    assert not kernels.INTERPRETED, "run without TRITON_INTERPRET"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9's default, without its warning
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # no cached kernel: ptxas runs, and its log is read
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    jobs = [(i, name) for i in range(len(CALLS)) for name in KERNELS if options.only in f"{name} {CALLS[i].name}"]
    if options.keep:
        Path(options.keep).mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max(1, options.jobs)) as pool:
        for line in pool.map(report, jobs, [options.keep] * len(jobs)):
            print(line, flush=True)
    print(f"{len(jobs)} kernels compiled for sm90", file=sys.stderr)


if __name__ == "__main__":
    main()
