"""Run a learner's functions in a child process with a time limit and a memory limit.

The learner's code never runs in the calling process: `run_calls` starts
``python -I _child.py`` in a fresh session (its own process group) in a temporary
directory, sends the inputs as an ``.npz`` file, waits at most ``timeout`` seconds of
wall-clock time (then kills the whole process group), and reads the outputs back with
``allow_pickle=False``: nothing the child writes is unpickled or executed here. The
child limits its own address space (``RLIMIT_AS``), CPU time and file sizes before it
imports the learner's file. Whatever the learner's code prints is captured and returned
(truncated), never mixed into the results.

>>> import numpy as np, pathlib, tempfile
>>> path = pathlib.Path(tempfile.mkdtemp()) / "double.py"
>>> _ = path.write_text("def double(x):\\n    return 2 * x\\n")
>>> run = run_calls(path, ["double"], [Call([Step("double", [np.arange(3.0)])])])
>>> run.outcomes[0].values[0].tolist(), run.library
([0.0, 2.0, 4.0], 'numpy')
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Call", "ChildRun", "Outcome", "Step", "run_calls", "child_environment", "kill_group"]

CHILD = Path(__file__).with_name("_child.py")
MAX_RESULT_BYTES = 256 << 20


@dataclass
class Step:
    """``fn(*args, **kwargs)``; an argument ``Out(step, j)`` is output ``j`` of an earlier step of the call."""

    fn: str
    args: list[Any]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Out:
    """Output ``index`` of step ``step`` of the same call (a KV cache handed on, a split handed to merge)."""

    step: int
    index: int


@dataclass
class Call:
    """One or more steps run one after the other in the child; the outcome is the last step's outputs."""

    steps: list[Step]


@dataclass
class Outcome:
    """What one call gave: ``values`` (each output as a NumPy array, or None where it was not an array)."""

    values: list[np.ndarray | None] | None = None
    kinds: list[str] = field(default_factory=list)  # the type name of each non-array output
    steps: list[list[np.ndarray | None]] = field(default_factory=list)  # every step's outputs
    tuple: bool = False
    error: dict[str, Any] | None = None  # the learner's exception: type, message, file, line, function, code

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ChildRun:
    """The child's whole run: one `Outcome` per call, or ``error`` when it never got to the calls."""

    outcomes: list[Outcome]
    library: str | None = None
    printed: str = ""
    error: dict[str, Any] | None = None  # import error, missing function, timeout, memory, crash
    seconds: float = 0.0


def child_environment(workdir: str) -> dict[str, str]:
    """A small environment for the child: one thread per library, its own HOME and TMPDIR."""
    env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "SYSTEMROOT") if k in os.environ}
    env.update(dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"), "1"))
    env.update(HOME=workdir, TMPDIR=workdir, PYTHONDONTWRITEBYTECODE="1")
    return env


def kill_group(process: subprocess.Popen) -> None:
    """Kill the child and everything it started (its process group)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _encode(value: Any, arrays: dict[str, np.ndarray], prefix: str) -> dict[str, Any]:
    if isinstance(value, Out):
        return {"out": [value.step, value.index]}
    if isinstance(value, np.ndarray):
        key = f"{prefix}_{len(arrays)}"
        arrays[key] = value
        return {"a": key}
    return {"v": value}


def _last_progress(stderr: str) -> int | None:
    marks = [line.split()[1] for line in stderr.splitlines() if line.startswith("qkv-progress ")]
    return int(marks[-1]) if marks and marks[-1].isdigit() else None


def run_calls(
    file: str | os.PathLike[str],
    functions: list[str],
    calls: list[Call],
    *,
    timeout: float = 10.0,
    memory_mb: int = 2048,
) -> ChildRun:
    """Import ``file`` in a child process and run ``calls``; the learner's code runs nowhere else."""
    arrays: dict[str, np.ndarray] = {}
    request = {
        "file": str(Path(file).resolve()),
        "functions": functions,
        "calls": [
            {
                "steps": [
                    {
                        "fn": s.fn,
                        "args": [_encode(a, arrays, f"c{c}") for a in s.args],
                        "kwargs": {k: _encode(v, arrays, f"c{c}") for k, v in s.kwargs.items()},
                    }
                    for s in call.steps
                ]
            }
            for c, call in enumerate(calls)
        ],
    }
    with tempfile.TemporaryDirectory(prefix="qkv-check-") as workdir:
        Path(workdir, "request.json").write_text(json.dumps(request), encoding="utf-8")
        np.savez(Path(workdir, "inputs.npz"), **arrays)  # type: ignore[arg-type]  # numpy's stub takes bool here
        cpu = int(timeout) + 2  # CPU seconds: a backstop; the wall clock below is the limit that speaks
        started = time.monotonic()
        with open(Path(workdir, "stdout.txt"), "wb") as out, open(Path(workdir, "stderr.txt"), "wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-I", str(CHILD), workdir, str(int(memory_mb)), str(cpu)],
                cwd=workdir,
                env=child_environment(workdir),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group: a timeout kills all it started
            )
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                kill_group(process)  # also whatever the learner's code left running
        seconds = time.monotonic() - started
        stderr = Path(workdir, "stderr.txt").read_bytes()[-100_000:].decode("utf-8", "replace")
        result_path = Path(workdir, "result.json")
        if code is None:
            at = _last_progress(stderr)
            where = f" (in case {at + 1} of {len(calls)})" if at is not None else " (while importing your file)"
            message = f"timed out: no result after {timeout:g} s{where}; an infinite loop?"
            return ChildRun([], error={"type": "Timeout", "message": message, "timeout": True}, seconds=seconds)
        if not result_path.exists() or result_path.stat().st_size > MAX_RESULT_BYTES:
            return ChildRun([], error=_death(code, memory_mb, stderr), seconds=seconds)
        result = json.loads(result_path.read_text(encoding="utf-8"))
        with np.load(Path(workdir, "outputs.npz"), allow_pickle=False) as data:
            saved = {key: data[key] for key in data.files}
    return _read(result, saved, seconds)


def _death(code: int, memory_mb: int, stderr: str) -> dict[str, Any]:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        if -code == signal.SIGXCPU:
            return {"type": "Timeout", "message": "used up its CPU time; an infinite loop?", "timeout": True}
        return {"type": "Crash", "message": f"the child process was killed by {name} (memory limit {memory_mb} MB?)"}
    tail = " ".join(stderr.strip().splitlines()[-1:])[:300]
    if "MemoryError" in stderr or "can't allocate" in stderr:
        return {"type": "MemoryError", "message": f"ran out of memory (limit {memory_mb} MB)", "memory": True}
    return {"type": "Crash", "message": f"the child process exited ({code}) without a result: {tail}".strip()}


def _read(result: dict[str, Any], saved: dict[str, np.ndarray], seconds: float) -> ChildRun:
    run = ChildRun([], library=result.get("library"), printed=result.get("stdout", ""), seconds=seconds)
    if result["status"] == "import-error":
        run.error = result["error"]
        return run
    if result["status"] == "missing":
        defined = ", ".join(result.get("defined") or []) or "none"
        run.error = {
            "type": "Missing",
            "message": f"your file defines no function {', '.join(result['missing'])} (it defines: {defined})",
        }
        return run
    for record in result["calls"]:
        steps = [[saved.get(ref.get("a")) if "a" in ref else None for ref in refs] for refs in record["outputs"]]
        outcome = Outcome(steps=steps, tuple=bool(record.get("tuple")))
        if record["ok"]:
            last = record["outputs"][-1] if record["outputs"] else []
            outcome.values = steps[-1] if steps else []
            outcome.kinds = [ref.get("type", "array") for ref in last]
        else:
            outcome.error = record["error"]
        run.outcomes.append(outcome)
    return run
