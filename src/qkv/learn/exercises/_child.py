"""The child process that runs a learner's code (started by `qkv.learn.exercises.runner`; never imported).

It limits itself first (memory, CPU time, file size: soft = hard, so the learner's code
cannot raise them), then imports the learner's file, hands it the parent's inputs as
NumPy arrays or torch tensors (whichever library the file imports), and writes what the
functions returned to ``outputs.npz`` (read back with ``allow_pickle=False``) and
``result.json``. It imports nothing of qkv: a NumPy solution starts in a fraction of a
second. Whatever the learner prints is captured, not mixed into the results.

    python -I _child.py WORKDIR MEMORY_MB CPU_SECONDS
"""

import importlib.util
import io
import json
import os
import resource
import sys
import traceback
from types import ModuleType
from typing import Any

MAX_ELEMENTS = 4_000_000  # per call, all outputs together
MAX_PRINTED = 4000  # characters of the learner's own output kept


def _limit(memory_mb: int, cpu_s: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 20, 256 << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _where(error: BaseException, path: str) -> dict[str, Any]:
    """The error, and the deepest line of the learner's own file it passed through."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if os.path.abspath(f.filename) == path]
    info: dict[str, Any] = {"type": type(error).__name__, "message": str(error)[:2000]}
    if isinstance(error, MemoryError) or "can't allocate memory" in str(error):
        info["message"] = "ran out of memory (" + (str(error)[:300] or "MemoryError") + ")"
        info["memory"] = True
    if isinstance(error, SyntaxError) and error.lineno:
        info.update(file=error.filename or path, line=error.lineno, function=None, code=(error.text or "").strip())
    elif frames:
        f = frames[-1]
        info.update(file=f.filename, line=f.lineno, function=f.name, code=(f.line or "").strip())
    return info


def load_learner(path: str) -> ModuleType:
    """Import the learner's file as the module ``learner_solution`` (runs its top level)."""
    spec = importlib.util.spec_from_file_location("learner_solution", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules["learner_solution"] = module
    spec.loader.exec_module(module)
    return module


def _library(module) -> str:
    """Which array library the learner's file uses: an explicit ``ARRAYS = "torch"``, else what it imports."""
    chosen = getattr(module, "ARRAYS", None)
    if chosen in ("numpy", "torch", "jax", "tensorflow"):
        return chosen
    roots = set()
    for value in vars(module).values():
        is_module = type(value).__name__ == "module"
        name = getattr(value, "__name__", None) if is_module else getattr(value, "__module__", None)
        if isinstance(name, str):
            roots.add(name.split(".")[0])
    for lib in ("torch", "jax", "tensorflow"):
        if lib in roots:
            return lib
    return "numpy"


def _converter(lib: str):
    import numpy as np

    if lib == "torch":
        import torch

        return lambda a: torch.from_numpy(np.array(a))
    if lib == "jax":
        import jax.numpy as jnp

        return jnp.asarray
    if lib == "tensorflow":
        import tensorflow as tf

        return tf.convert_to_tensor
    return lambda a: np.array(a)  # a fresh copy: modifying it in place does not change the next case


def _to_numpy(value):
    import numpy as np

    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16" or str(value.dtype) == "torch.float16":
            value = value.float()
        return value.numpy()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):  # tensorflow
        try:
            return np.asarray(value.numpy())
        except Exception:  # noqa: BLE001 - not an eager tensor: fall back to __array__ below
            pass
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "__array__") or hasattr(value, "__dlpack__") or isinstance(value, (list, float, int, bool)):
        return np.asarray(value)
    return None


def main() -> int:
    workdir, memory_mb, cpu_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    _limit(memory_mb, cpu_s)
    progress = sys.stderr
    with open(os.path.join(workdir, "request.json"), encoding="utf-8") as f:
        request = json.load(f)
    import numpy as np

    with np.load(os.path.join(workdir, "inputs.npz"), allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    path = os.path.abspath(request["file"])
    result: dict[str, Any] = {"status": "ok", "calls": [], "library": None, "stdout": ""}
    captured = io.StringIO()
    saved: dict[str, Any] = {}

    def finish() -> int:
        result["stdout"] = captured.getvalue()[:MAX_PRINTED]
        np.savez(os.path.join(workdir, "outputs.npz"), **saved)
        with open(os.path.join(workdir, "result.json"), "w", encoding="utf-8") as f:
            json.dump(result, f)
        return 0

    sys.stdout = sys.stderr = captured
    try:
        module = load_learner(path)
    except BaseException as error:  # noqa: BLE001 - whatever the file does on import is reported, not raised
        result.update(status="import-error", error=_where(error, path))
        return finish()
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    missing = [name for name in request["functions"] if not callable(getattr(module, name, None))]
    if missing:
        defined = sorted(
            n for n, v in vars(module).items() if callable(v) and getattr(v, "__module__", "") == "learner_solution"
        )
        result.update(status="missing", missing=missing, defined=defined)
        return finish()
    lib = result["library"] = _library(module)
    try:
        convert = _converter(lib)
    except BaseException as error:  # noqa: BLE001
        result.update(status="import-error", error=_where(error, path))
        return finish()

    out_of_memory = None
    for c, call in enumerate(request["calls"]):
        print(f"qkv-progress {c}", file=progress, flush=True)
        if out_of_memory is not None:  # the limit was hit once: the rest would only hit it again
            result["calls"].append({"ok": False, "outputs": [], "error": out_of_memory, "step": 0})
            continue
        outputs: list[list] = []
        record: dict[str, Any] = {"ok": True, "outputs": outputs}

        def resolve(ref, outputs=outputs):  # this call's outputs, bound now
            if "a" in ref:
                return convert(arrays[ref["a"]])
            if "out" in ref:
                s, j = ref["out"]
                return convert(saved[outputs[s][j]["a"]])
            return ref["v"]

        try:
            total = 0
            for s, step in enumerate(call["steps"]):
                args = [resolve(a) for a in step["args"]]
                kwargs = {k: resolve(v) for k, v in step["kwargs"].items()}
                sys.stdout = sys.stderr = captured
                try:
                    value = getattr(module, step["fn"])(*args, **kwargs)
                finally:
                    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
                values = list(value) if isinstance(value, tuple) else [value]
                refs: list[dict[str, Any]] = []
                for j, item in enumerate(values):
                    array = _to_numpy(item)
                    if array is None or array.dtype == object:
                        refs.append({"type": type(item).__name__, "repr": repr(item)[:200]})
                        continue
                    total += array.size
                    if total > MAX_ELEMENTS:
                        raise ValueError(f"returned {array.size} numbers from one call; far more than expected")
                    key = f"c{c}s{s}o{j}"
                    saved[key] = array
                    refs.append({"a": key, "tuple": isinstance(value, tuple)})
                outputs.append(refs)
                record["tuple"] = isinstance(value, tuple)
        except BaseException as error:  # noqa: BLE001 - the learner's exception is the result
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            record.update(ok=False, error=_where(error, path), step=len(outputs))
            if record["error"].get("memory"):
                out_of_memory = record["error"]
        result["calls"].append(record)
    print("qkv-progress done", file=progress, flush=True)
    return finish()


if __name__ == "__main__":
    sys.exit(main())
