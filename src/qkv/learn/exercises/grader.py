"""`check`: grade a learner's solution against the float64 spec and name the mistake it made.

The learner's file runs only in a child process (`qkv.learn.exercises.runner`), on the
exercise's generated cases and its invariant checks. Here, in float64, each case's
outputs are compared with the spec under a stated tolerance, group by group; when a
case fails, every catalogued mistake (`qkv.learn.exercises.mistakes`, variants of the
spec computed here, never by calling the learner's code) is run on the same cases, and
the mistake — or pair of mistakes — whose outputs match the learner's on every case is
named with its explanation and lesson. When none matches, the report says so.

A `Report` is JSON-ready: ``report.to_json()`` is
``{"exercise", "passed", "cases": [...], "diagnosis": {"mistake", "explanation", "lesson", ...} | null, ...}``.
"""

from __future__ import annotations

import ast
import itertools
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qkv.learn.errors import LearnError
from qkv.learn.exercises import spec
from qkv.learn.exercises.cases import Case, cases
from qkv.learn.exercises.catalogue import EXERCISES, Exercise
from qkv.learn.exercises.catalogue import exercise as find_exercise
from qkv.learn.exercises.invariants import invariants
from qkv.learn.exercises.mistakes import Mistake, for_exercise, variant
from qkv.learn.exercises.runner import Call, Outcome, Step, run_calls

__all__ = ["TOLERANCE", "Report", "check", "detect_exercise"]

TOLERANCE = {"float64": (1e-6, 1e-6), "float32": (1e-3, 1e-3)}  # (atol, rtol): |got - spec| <= atol + rtol·|spec|
MAX_SOURCE = 1 << 20
MARKER = re.compile(r"^#\s*qkv exercise:\s*([a-z0-9-]+)\s*$", re.MULTILINE)


@dataclass
class Report:
    """The verdict on one solution; `to_json` gives the public JSON form."""

    exercise: str
    passed: bool
    cases: list[dict[str, Any]] = field(default_factory=list)
    diagnosis: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # an exception, a timeout, a missing function: with the learner's file, line
    note: str | None = None
    library: str | None = None
    printed: str = ""
    seconds: float = 0.0
    in_model: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "exercise": self.exercise,
            "passed": self.passed,
            "cases": self.cases,
            "diagnosis": self.diagnosis,
            "error": self.error,
            "note": self.note,
            "library": self.library,
            "printed": self.printed,
            "tolerance": {k: {"atol": a, "rtol": r} for k, (a, r) in TOLERANCE.items()},
            "seconds": round(self.seconds, 3),
            "in_model": self.in_model,
        }


# -- which file, which exercise ----------------------------------------------------------------------


def detect_exercise(source: str) -> str | None:
    """The exercise a source is for: its ``# qkv exercise: NAME`` line, else the one whose functions it defines."""
    found = MARKER.search(source)
    if found and found.group(1) in EXERCISES:
        return found.group(1)
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    matches = [e.name for e in EXERCISES.values() if set(e.functions) <= defined]
    if len(matches) > 1:  # e.g. a file with attention and masked_attention: the one with more functions
        top = max(len(EXERCISES[m].functions) for m in matches)
        matches = [m for m in matches if len(EXERCISES[m].functions) == top]
    return matches[0] if len(matches) == 1 else None


def _source_of(path_or_source: str | os.PathLike[str]) -> tuple[Path | None, str]:
    if isinstance(path_or_source, os.PathLike) or (
        isinstance(path_or_source, str) and "\n" not in path_or_source and path_or_source.endswith(".py")
    ):
        path = Path(path_or_source)
        if not path.is_file():
            raise LearnError(f"file: {str(path)!r} is not a file; expected a Python file such as softmax.py")
        if path.stat().st_size > MAX_SOURCE:
            raise LearnError(f"file: {path} is {path.stat().st_size} bytes; expected a solution under 1 MB")
        try:
            return path, path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise LearnError(f"file: cannot read {path} as UTF-8 text ({error})") from None
    if not isinstance(path_or_source, str):
        given = type(path_or_source).__name__
        raise LearnError(f"path_or_source: expected a file path or Python source text, got {given}")
    if len(path_or_source) > MAX_SOURCE:
        raise LearnError(f"source: {len(path_or_source)} characters; expected a solution under 1 MB")
    return None, path_or_source


# -- comparing ----------------------------------------------------------------------------------------


def _torch(value: Any) -> Any:
    return torch.from_numpy(np.array(value)) if isinstance(value, np.ndarray) else value


def _numpy(value: Any) -> list[np.ndarray]:
    values = list(value) if isinstance(value, tuple) else [value]
    return [v.detach().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in values]


def _expected(ex: Exercise, case: Case) -> list[np.ndarray]:
    fn = getattr(spec, case.fn)
    return _numpy(fn(*[_torch(a) for a in case.args], **{k: _torch(v) for k, v in case.kwargs.items()}))


def _shape(a: np.ndarray) -> str:
    return "(" + ", ".join(str(s) for s in a.shape) + ")"


def _compare(got: Outcome, want: list[np.ndarray], dtype: str) -> dict[str, Any] | None:
    """None where ``got`` matches the spec's ``want``; else what is wrong, the max error and where."""
    if not got.ok:
        return {"message": _error_line(got.error), "error": got.error}
    values = got.values or []
    if len(want) > 1 and len(values) != len(want):
        return {"message": f"returned {len(values)} value(s); expected a tuple of {len(want)}"}
    if len(want) == 1 and got.tuple:
        return {"message": f"returned a tuple of {len(values)}; expected one array"}
    atol, rtol = TOLERANCE[dtype]
    for i, (g, w) in enumerate(zip(values, want)):
        which = f"output {i + 1}: " if len(want) > 1 else ""
        if g is None:
            return {"message": f"{which}returned {got.kinds[i]}, not an array"}
        if g.shape != w.shape:
            return {"message": f"{which}shape {_shape(g)}; expected {_shape(w)}"}
        if w.dtype == bool:
            if g.dtype != bool:
                return {"message": f"{which}dtype {g.dtype}; expected a bool mask (True = may attend)"}
            wrong = np.argwhere(g != w)
            if len(wrong):
                at = tuple(int(x) for x in wrong[0])
                return {
                    "message": f"{which}{len(wrong)} of {w.size} entries differ; first at {list(at)}: "
                    f"{bool(g[at])} where the spec has {bool(w[at])}",
                    "where": list(at),
                }
            continue
        if g.dtype.kind not in "fc":
            return {"message": f"{which}dtype {g.dtype}; expected floating-point numbers"}
        g64 = g.astype(np.float64)
        if np.isnan(g64).any():
            at = tuple(int(x) for x in np.argwhere(np.isnan(g64))[0])
            return {
                "message": f"{which}NaN at {list(at)} where the spec has {w[at]:.6g}",
                "where": list(at),
                "max_error": None,
            }
        err = np.abs(g64 - w)
        bad = err > atol + rtol * np.abs(w)
        if bad.any():
            at = tuple(int(x) for x in np.unravel_index(np.argmax(np.where(np.isfinite(err), err, np.inf)), err.shape))
            return {
                "message": f"{which}max error {float(err[at]):.3g} at {list(at)}: got {g64[at]:.6g}, spec {w[at]:.6g} "
                f"({int(bad.sum())} of {w.size} entries outside atol {atol:g} + rtol {rtol:g})",
                "max_error": float(err[at]),
                "where": list(at),
                "got": float(g64[at]),
                "expected": float(w[at]),
            }
    return None


def _error_line(error: dict[str, Any] | None) -> str:
    if not error:
        return "failed"
    at = ""
    if error.get("file"):
        at = f" at {Path(error['file']).name}:{error['line']}"
        if error.get("function"):
            at += f" in {error['function']}"
        if error.get("code"):
            at += f" ({error['code']})"
    return f"raised {error['type']}{at}: {error['message']}"


def _same(a: list[np.ndarray | None], b: list[np.ndarray], dtype: str) -> bool:
    """Whether two outputs agree (NaN where the other has NaN) under the case's tolerance."""
    if len(a) != len(b):
        return False
    atol, rtol = TOLERANCE[dtype]
    for x, y in zip(a, b):
        if x is None or x.shape != y.shape or (x.dtype == bool) != (y.dtype == bool):
            return False
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        if not np.allclose(x64, y64, atol=atol, rtol=rtol, equal_nan=True):
            return False
    return True


# -- the diagnosis ------------------------------------------------------------------------------------


def _variant_outputs(name: str, flags: dict[str, Any], case: Case) -> list[np.ndarray] | None:
    try:
        fn = variant(name, flags)[case.fn]
        with np.errstate(all="ignore"):
            out = fn(*[_torch(a) for a in case.args], **{k: _torch(v) for k, v in case.kwargs.items()})
        return _numpy(out)
    except (RuntimeError, ValueError, IndexError, TypeError):
        return None  # the variant cannot run on this case (q @ k needs Nk == D): nor, likely, could the learner's


def _diagnose(name: str, found: list[Case], outcomes: list[Outcome], failing: list[int]) -> dict[str, Any] | None:
    forms = for_exercise(name)
    candidates: list[tuple[list[Mistake], dict[str, Any]]] = [([m], f) for m, f in forms]
    pairs = [
        ([m1, m2], {**f1, **f2})
        for (m1, f1), (m2, f2) in itertools.combinations(forms, 2)
        if m1.id != m2.id and not set(f1) & set(f2)
    ]
    cache: dict[tuple, list[np.ndarray] | None] = {}

    def matches(flags: dict[str, Any], lenient: bool) -> list[int] | None:
        key = tuple(sorted(flags.items()))
        reproduced = []
        for case, outcome in zip(found, outcomes):
            ck = (key, case.index)
            if ck not in cache:
                cache[ck] = _variant_outputs(name, flags, case)
            v = cache[ck]
            if not outcome.ok:
                if v is None or lenient:
                    continue
                return None
            if v is None or not _same(outcome.values or [], v, case.dtype):
                return None
            if case.index in failing:
                reproduced.append(case.index)
        return reproduced or None

    for lenient in (False, True):
        for group in (candidates, pairs):
            hits = [(ms, f, r) for ms, f in group if (r := matches(f, lenient))]
            if hits:
                return _diagnosis(hits, found, lenient)
    return None


def _diagnosis(hits: list, found: list[Case], lenient: bool) -> dict[str, Any]:
    mistakes, _, reproduced = hits[0]
    smallest = min((found[i] for i in reproduced), key=Case.size)
    first = mistakes[0]
    also = []
    for ms, _, _ in hits[1:]:
        ident = " + ".join(m.id for m in ms)
        if ident != " + ".join(m.id for m in mistakes) and ident not in also:
            also.append(ident)
    return {
        "mistake": " + ".join(m.id for m in mistakes),
        "title": " and ".join(m.title for m in mistakes),
        "explanation": " ".join(m.explanation for m in mistakes),
        "lesson": first.lesson,
        "concepts": list(dict.fromkeys(m.concept for m in mistakes)),
        "mistakes": [m.to_json() for m in mistakes],
        "case": smallest.describe(),
        "reproduced": len(reproduced),
        "also": also,
        "caveat": (
            "it reproduces your output on every case where your function returned a value (others raised)"
            if lenient
            else f"it reproduces your output on all {len(found)} cases"
        ),
    }


# -- check --------------------------------------------------------------------------------------------


def _calls(found: list[Case]) -> list[Call]:
    return [Call([Step(c.fn, list(c.args), dict(c.kwargs))]) for c in found]


def check(
    path_or_source: str | os.PathLike[str],
    exercise: str | None = None,
    *,
    timeout: float = 10.0,
    memory_mb: int = 2048,
    in_model: str | None = None,
) -> Report:
    """Grade a solution (a file path, or Python source text) in a child process; name the mistake if it fails.

    ``exercise`` defaults to the file's ``# qkv exercise: NAME`` line or the functions it defines.
    ``timeout`` (wall-clock seconds) and ``memory_mb`` limit the child. ``in_model`` ("smollm2" or
    "minilm", attention exercise only) also runs the learner's attention inside the real model.
    Bad arguments raise `LearnError`; nothing the learner's code does raises here.
    """
    path, source = _source_of(path_or_source)
    name = exercise if exercise is not None else detect_exercise(source)
    if name is None:
        raise LearnError(
            "exercise: cannot tell which exercise this file is (no '# qkv exercise: NAME' line and no exercise's "
            f"functions); pass --exercise, one of {list(EXERCISES)}"
        )
    ex = find_exercise(name)
    if not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
        raise LearnError(f"timeout: expected seconds in (0, 600], got {timeout!r}")
    if not isinstance(memory_mb, int) or memory_mb < 256:
        raise LearnError(f"memory_mb: expected an integer of at least 256, got {memory_mb!r}")
    if in_model is not None:
        from qkv.learn.exercises.in_model import check_model_name

        check_model_name(in_model, ex.name)
    with tempfile.TemporaryDirectory(prefix="qkv-solution-") as tmp:
        if path is None:
            path = Path(tmp) / "solution.py"
            path.write_text(source, encoding="utf-8")
        report = _grade(ex, path, timeout=float(timeout), memory_mb=memory_mb)
        if in_model is not None:
            from qkv.learn.exercises.in_model import run_in_model

            report.in_model = run_in_model(
                path, in_model, timeout=max(60.0, float(timeout)), memory_mb=max(memory_mb, 4096)
            )
    return report


def _grade(ex: Exercise, path: Path, *, timeout: float, memory_mb: int) -> Report:
    found = cases(ex.name)
    checks = invariants(ex.name)
    calls = _calls(found) + [call for inv in checks for call in inv.calls]
    run = run_calls(path, list(ex.functions), calls, timeout=timeout, memory_mb=memory_mb)
    report = Report(ex.name, False, library=run.library, printed=run.printed, seconds=run.seconds)
    if run.error is not None:
        report.error = run.error
        report.note = _error_line(run.error) if run.error.get("file") else run.error["message"]
        return report
    outcomes, rest = run.outcomes[: len(found)], run.outcomes[len(found) :]
    failing: list[int] = []
    groups: dict[str, dict[str, Any]] = {}
    for case, outcome in zip(found, outcomes):
        entry = groups.setdefault(
            case.group, {"group": case.group, "kind": "values", "passed": True, "total": 0, "failed": 0}
        )
        entry["total"] += 1
        problem = _compare(outcome, _expected(ex, case), case.dtype)
        if problem is not None:
            failing.append(case.index)
            entry["failed"] += 1
            if entry["passed"]:
                entry["passed"] = False
                entry["first_failure"] = {"case": case.describe(), "dtype": case.dtype, **problem}
    report.cases = list(groups.values())
    for inv in checks:
        mine, rest = rest[: len(inv.calls)], rest[len(inv.calls) :]
        report.cases.append(_invariant(inv, mine))
    report.passed = all(c["passed"] for c in report.cases)
    if failing:
        report.diagnosis = _diagnose(ex.name, found, outcomes, failing)
        errors = [o.error for o in outcomes if not o.ok]
        if errors:
            report.error = errors[0]
        if report.diagnosis is None and len(errors) == len(failing):  # every failure raised: that is the news
            report.note = f"your code {_error_line(errors[0])}"
        elif report.diagnosis is None:
            report.note = (
                "no catalogued mistake reproduces your outputs (nor any pair of them): compare the first "
                "failing case with the spec by hand"
            )
    return report


def _invariant(inv, outcomes: list[Outcome]) -> dict[str, Any]:
    entry = {"group": inv.name, "kind": "invariant", "claim": inv.claim, "passed": False}
    broken = next((o for o in outcomes if not o.ok), None)
    if broken is not None:
        entry["detail"] = _error_line(broken.error)
        return entry
    if inv.view == "all":
        view = outcomes[0].values or []
    elif inv.view == "steps":
        view = [step[0] if step else None for step in outcomes[0].steps]
    else:
        view = [(o.values or [None])[0] for o in outcomes]
    if any(v is None for v in view) and inv.view != "steps":
        entry["detail"] = "an output was not an array"
        return entry
    try:
        with np.errstate(all="ignore"):
            ok, detail = inv.test([np.asarray(v) if v is not None else None for v in view])
    except (ValueError, IndexError, TypeError) as error:  # shapes too wrong for the property to be asked
        ok, detail = False, f"the outputs have the wrong shape for this check ({error})"
    entry.update(passed=bool(ok), detail=detail)
    return entry
