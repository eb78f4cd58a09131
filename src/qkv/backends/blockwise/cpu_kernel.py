"""The blockwise backend's CPU kernel (``cpu_kernel.cpp``): built on first use, then loaded from a cache.

The kernel computes float32 and float64 blocks of queries against contiguous
key slices, five BLAS products per block and nothing bigger than one block's
scores in memory (see the C++ file for the math). It is compiled for the machine
it runs on with torch's C++ extension loader (a C++ compiler and ninja; both
come with the usual Linux toolchains), once per environment: the build lands in
``$QKV_CACHE_DIR`` (default ``~/.cache/qkv``) under a key (`build_key`) made of
everything the compiled file depends on (the source, the flags, the CPU, torch's
version and install, the Python environment, the compiler and its version), so
two virtual environments on one machine each keep their own build instead of
rebuilding each other's. Later processes load it in well under a second.

Where it cannot be built, or with ``QKV_CPU_KERNEL=0`` in the environment, the
blockwise backend runs every block through torch's own fused CPU kernels
instead: the same results, slower. `status` says which and why.

>>> from qkv.backends.blockwise import cpu_kernel
>>> isinstance(cpu_kernel.status(), str)
True
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("cpu_kernel.cpp")
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
ENABLED = os.environ.get("QKV_CPU_KERNEL", "1") != "0"  # tests switch this to run the fallback path too

_lock = threading.Lock()
_ops: object | None = None
_failure: str | None = None


def _cpu_signature() -> str:
    """What the compiled code depends on besides its source: the CPU's instruction sets."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


@functools.cache
def _compiler_signature(compiler: str) -> str:
    """The compiler torch's loader runs (``$CXX``, else ``c++``), resolved to its file, and its version line."""
    path = shutil.which(compiler) or compiler
    try:
        run = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False)
        version = (run.stdout.strip().splitlines() or [""])[0]
    except (OSError, subprocess.SubprocessError):
        version = "unknown version"
    return f"{os.path.realpath(path)} {version}"


def build_key() -> dict[str, str]:
    """What the compiled kernel depends on; a build is reused only where every part is the same.

    >>> sorted(build_key())
    ['cflags', 'compiler', 'cpu', 'python', 'source', 'torch']
    """
    return {
        "source": hashlib.sha256(SOURCE.read_bytes()).hexdigest(),
        "cflags": " ".join(CFLAGS),
        "cpu": _cpu_signature(),
        "torch": f"{torch.__version__} {Path(torch.__file__).resolve().parent}",
        "python": f"{os.path.realpath(sys.executable)} {sys.prefix} {sys.version}",
        "compiler": _compiler_signature(os.environ.get("CXX", "c++")),
    }


def build_directory(key: dict[str, str] | None = None) -> Path:
    """Where the kernel for ``key`` (default: this environment's `build_key`) is built and cached."""
    digest = hashlib.sha256()
    for name, value in sorted((build_key() if key is None else key).items()):
        digest.update(f"{name}={value}\0".encode())
    root = Path(os.environ.get("QKV_CACHE_DIR") or Path.home() / ".cache" / "qkv")
    return root / "kernels" / f"blockwise_cpu-{digest.hexdigest()[:16]}"


def _find_ninja() -> None:
    """torch runs ``ninja`` from PATH; the one pip installed beside this interpreter may not be on it."""
    scripts = sysconfig.get_path("scripts")
    if shutil.which("ninja") is None and shutil.which("ninja", path=scripts) is not None:
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")


def _load() -> object | None:
    global _ops, _failure
    with _lock:
        if _ops is not None or _failure is not None:
            return _ops
        try:
            from torch.utils import cpp_extension

            _find_ninja()
            directory = build_directory()
            directory.mkdir(parents=True, exist_ok=True)
            name = "qkv_blockwise_cpu"
            if not (directory / f"{name}.so").exists():
                print(
                    "qkv: compiling the blockwise CPU kernel for this environment (once, ~20 s) ...",
                    file=sys.stderr,
                    flush=True,
                )
            cpp_extension.load(
                name=name,
                sources=[str(SOURCE)],
                extra_cflags=CFLAGS,
                build_directory=str(directory),
                is_python_module=False,
                verbose=False,
            )
            _ops = torch.ops.qkv_blockwise
        except Exception as error:  # no compiler, no ninja, a failed build: fall back, say why
            first = str(error).strip().splitlines()
            _failure = f"{type(error).__name__}: {first[0] if first else ''}"
        return _ops


def available() -> bool:
    """True when the kernel is enabled and built (building it now if needed)."""
    return ENABLED and _load() is not None


def status() -> str:
    """One line: is the kernel in use, and if not, why."""
    if not ENABLED:
        return "blockwise CPU kernel disabled (QKV_CPU_KERNEL=0): torch's fused kernels run each block"
    if _load() is None:
        return f"blockwise CPU kernel not built ({_failure}): torch's fused kernels run each block"
    return f"blockwise CPU kernel in use (built in {build_directory()})"


def forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    blocks: Tensor,
    segments: Tensor,
    tiles: list[Tensor],
    scale: float,
) -> None:
    """Write the blocks' rows of ``out (B, Hq, Nq, Dv)`` and ``lse (B, Hq, Nq)`` in place."""
    _ops.forward(q, k, v, out, lse, blocks, segments, tiles, scale)


def backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    grad_out: Tensor,
    grad_lse: Tensor | None,
    dq: Tensor,
    dk: Tensor,
    dv: Tensor,
    blocks: Tensor,
    segments: Tensor,
    tiles: list[Tensor],
    scale: float,
) -> None:
    """Write the blocks' rows of ``dq`` and add their key and value gradients into ``dk`` and ``dv``."""
    _ops.backward(q, k, v, out, lse, grad_out, grad_lse, dq, dk, dv, blocks, segments, tiles, scale)


def key_ranges(
    q: Tensor, k: Tensor, blocks: Tensor, segments: Tensor, tiles: list[Tensor], b: int = 0, h: int = 0
) -> Tensor:
    """The keys each block computes for batch row ``b`` and head ``h``: int64 ``(n, 2)``, ``[first, end)``."""
    return _ops.key_ranges(q, k, blocks, segments, tiles, b, h)
