"""Graded exercises: write attention yourself; the grader compares it with the spec and names the mistake.

``qkv learn exercise NAME`` writes a starter file, ``qkv learn check FILE.py`` grades it:
the learner's function runs only in a child process with time and memory limits, on
generated cases, against the float64 specification; a failure is matched against a
catalogue of classic mistakes (each a small variant of the spec) to say which one it is.

- `catalogue`: the exercises (name, statement, functions, hints, lesson).
- `spec`: their float64 specification; `mistakes`: the catalogue of mistakes.
- `cases`: the generated cases; `invariants`: properties beyond values.
- `runner`: the child process and its limits; `grader`: `check` and its `Report`.
- `in_model`: the learner's attention inside MiniLM or SmolLM2.
"""

from __future__ import annotations

from typing import Any

from qkv.learn.exercises.catalogue import EXERCISES, Exercise, exercise, names

__all__ = ["EXERCISES", "Exercise", "Report", "check", "exercise", "names"]


def __getattr__(name: str) -> Any:  # the grader imports torch: only when it is asked for
    if name in ("check", "Report"):
        from qkv.learn.exercises import grader

        return getattr(grader, name)
    raise AttributeError(name)
