"""`qkv learn exercise` and `qkv learn check`: write an exercise's starter file, grade a solution.

(Being built: see the exercises module `qkv.learn.exercises`.)
"""

from __future__ import annotations


def add_parsers(sub) -> None:
    """Add ``exercise`` and ``check`` under ``qkv learn`` (each sets ``run`` on its namespace)."""
