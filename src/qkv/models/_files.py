"""A model's small files read with one `ModelError` for each way they can be wrong.

Weight files come from downloads that stop half-way and folders that hold the
wrong thing; whatever the cause, the error names the file and says what is
wrong with it, never a parser's own exception.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "config.json"
>>> _ = path.write_text('{"hidden_size": 8,')
>>> try:
...     read_json_object(path)
... except ModelError as error:
...     print(str(error).replace(str(path), "config.json"))
config.json: expected a JSON object, but the file is not valid JSON (line 1 column 19: Expecting property name \
enclosed in double quotes); the file may be cut short: download it again
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from qkv.models.packages import ModelError

__all__ = ["config_integer", "config_number", "corrupt", "read_json_object"]


def corrupt(path: str | os.PathLike[str], kind: str, detail: object) -> ModelError:
    """The `ModelError` of a file that is not a readable ``kind``: names the file, what is wrong and the fix."""
    detail = " ".join(str(detail).split()) or "no detail"
    return ModelError(f"{path}: not a readable {kind} (truncated or corrupt: {detail}); download it again")


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object in ``path``; `ModelError` naming the file if it is unreadable, not JSON or not an object."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise ModelError(f"{path}: cannot be read ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise ModelError(f"{path}: expected a UTF-8 JSON file, got bytes that are not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelError(
            f"{path}: expected a JSON object, but the file is not valid JSON (line {error.lineno} column "
            f"{error.colno}: {error.msg}); the file may be cut short: download it again"
        ) from None
    except (ValueError, RecursionError):  # a number of thousands of digits, or nesting deeper than Python's stack
        raise ModelError(f"{path}: expected a JSON object of ordinary size, got huge numbers or nesting") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object {{...}}, got a JSON {type(data).__name__}")
    return data


def config_integer(raw: dict[str, Any], key: str, *, where: str, default: int | None = None, minimum: int = 1) -> int:
    """``raw[key]`` (``default`` when absent or null), an integer of at least ``minimum``; else a `ModelError`.

    >>> config_integer({"hidden_size": 0}, "hidden_size", where="config.json")
    Traceback (most recent call last):
    ...
    qkv.errors.ModelError: config.json: hidden_size: expected an integer of at least 1, got 0
    """
    value = raw.get(key)
    if value is None:
        value = default
    if value is None:
        raise ModelError(f"{where}: expected the key {key!r}, which the model needs; got keys {sorted(raw)}")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelError(f"{where}: {key}: expected an integer of at least {minimum}, got {value!r:.80}")
    return value


def config_number(raw: dict[str, Any], key: str, *, where: str, default: float) -> float:
    """``raw[key]`` (``default`` when absent or null), a finite positive number; else a `ModelError`."""
    value = raw.get(key)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ModelError(f"{where}: {key}: expected a positive number, got {value!r:.80}")
    return float(value)
