"""The crossovers table: the measured numbers the backends' cost estimates are built from.

The defaults ship beside this file (``crossovers.toml``, with the measurements behind
each number). A machine's own measurements, written by ``qkv bench --write-crossovers``,
live in ``crossovers.toml`` in the user's qkv directory (`user_path`: ``$QKV_HOME``,
else ``$XDG_DATA_HOME/qkv``, else ``~/.local/share/qkv``) and override the defaults key
by key. A user file that cannot be read, or holds an unknown key or a value out of
range, is ignored with a warning that names it and the fix: dispatch then uses the
defaults. The table is read once per process (`current`); `reload` reads it again.

>>> table = load(user=None)
>>> table.dense_enough, table.probe_block
(0.6, 128)
>>> table.source
'defaults'
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qkv.home import data_home

DEFAULTS = Path(__file__).with_name("crossovers.toml")
FILE_NAME = "crossovers.toml"


@dataclass(frozen=True)
class Crossovers:
    """The table's values (see ``crossovers.toml`` for what each one is and how it was measured)."""

    probe_block: int
    dense_enough: float
    dense_enough_kernel: float
    kernel_min_scores: int
    causal_kernel_min_rows: int
    causal_kernel_max_scores: int
    causal_kernel_cost: float
    eager: float
    dense_bias: float
    source: str = "defaults"  # where the values came from: "defaults", or the user file that overrode some


FRACTIONS = ("dense_enough", "dense_enough_kernel")  # shares of the key tiles: in (0, 1)
COUNTS = ("probe_block", "kernel_min_scores", "causal_kernel_min_rows", "causal_kernel_max_scores")
KEYS = tuple(f.name for f in dataclasses.fields(Crossovers) if f.name != "source")


def user_path() -> Path:
    """Where ``qkv bench --write-crossovers`` writes: ``$QKV_HOME``, else ``$XDG_DATA_HOME/qkv``, else
    ``~/.local/share/qkv``; then ``crossovers.toml``."""
    return data_home() / FILE_NAME


def problems(values: dict[str, object]) -> list[str]:
    """What is wrong with a table's values (an empty list: nothing).

    >>> problems({"dense_enough": 1.5, "speed": 2})
    ['unknown key speed', 'dense_enough must be a number above 0 and below 1, got 1.5']
    """
    found = [f"unknown key {key}" for key in values if key not in KEYS]
    for key, value in values.items():
        if key in COUNTS and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            found.append(f"{key} must be a whole number of at least 1, got {value!r}")
        elif key in FRACTIONS and not _between(value, 0.0, 1.0):
            found.append(f"{key} must be a number above 0 and below 1, got {value!r}")
        elif key in KEYS and key not in COUNTS + FRACTIONS and not _between(value, 0.0, math.inf):
            found.append(f"{key} must be a number above 0, got {value!r}")
    return found


def _between(value: object, low: float, high: float) -> bool:
    """A number (not a bool, not NaN) strictly between ``low`` and ``high``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low < value < high


def _read(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        return tomllib.load(f)


def load(user: Path | None | str = "default") -> Crossovers:
    """The defaults, overridden by the user file (`user_path` unless given; None: the defaults only)."""
    try:
        values = _read(DEFAULTS)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise RuntimeError(f"qkv's crossovers table {DEFAULTS} cannot be read ({error}); reinstall qkv") from None
    if problems(values) or set(values) != set(KEYS):
        raise RuntimeError(f"qkv's crossovers table {DEFAULTS} is broken ({problems(values)}); reinstall qkv")
    path = user_path() if user == "default" else (None if user is None else Path(user))
    if path is None or not path.exists():
        return Crossovers(**values)
    try:
        override = _read(path)
    except (OSError, tomllib.TOMLDecodeError) as error:
        return _ignored(path, f"it cannot be read: {error}", values)
    wrong = problems(override)
    if wrong:
        return _ignored(path, "; ".join(wrong), values)
    return Crossovers(**{**values, **override}, source=str(path))


def _ignored(path: Path, why: str, defaults: dict[str, Any]) -> Crossovers:
    warnings.warn(
        f"qkv: ignoring the crossovers file {path} ({why}); backend='auto' uses the defaults. "
        "Rerun `qkv bench --write-crossovers` to measure it again, or delete the file.",
        RuntimeWarning,
        stacklevel=3,
    )
    return Crossovers(**defaults)


_current: Crossovers | None = None


def current() -> Crossovers:
    """The table dispatch uses: read on first use, then kept for the process."""
    global _current
    if _current is None:
        _current = load()
    return _current


def reload() -> Crossovers:
    """Read the table again (after the user file changed, or ``QKV_HOME`` did)."""
    global _current
    _current = None
    return current()


def write(values: dict[str, float | int], path: Path | None = None, note: str = "") -> Path:
    """Write measured values (a subset of the keys) as the user file, atomically; returns its path."""
    wrong = problems(dict(values))
    if wrong:
        raise ValueError(f"crossovers: {'; '.join(wrong)}")
    path = path or user_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Crossovers measured on this machine by `qkv bench --write-crossovers`; they override qkv's defaults."]
    lines += [f"# {line}" for line in note.splitlines()]
    lines += [f"{key} = {values[key]!r}" for key in KEYS if key in values]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".crossovers-", suffix=".toml")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path
