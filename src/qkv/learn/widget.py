"""What a lesson widget is: named controls in, views and facts out, computed by qkv on each call.

A widget is a small object with a ``name``, a ``title``, a tuple of `Control` s
(the knobs the page draws) and ``compute(args, env)``. ``compute`` gets the
checked knob values and returns a `Result`:

- ``views``: what the page (or the terminal) draws, a list of plain dicts, one of
  the kinds in `VIEW_KINDS` (see ``docs/course-format.md``);
- ``facts``: named numbers, strings or lists the lesson's questions are graded
  against (``"top_key": 3``), computed from the same run as the views.

Widgets never return canned numbers: every value comes from running qkv on the
arguments given. ``env.dtype`` is the precision to compute in (float32 for the
page, float64 when the tests recompute a question's key); ``env.model(name)``
is a loaded `qkv.models` model ("minilm" or "smollm2"), shared and loaded once.

>>> from qkv.learn.widget import Control, check_args
>>> controls = (Control("d_k", "slider", "key dimension d_k", 8, low=1, high=64),)
>>> check_args("demo", controls, {"d_k": 16})
{'d_k': 16}
>>> check_args("demo", controls, {"d_k": 0})
Traceback (most recent call last):
...
qkv.learn.errors.LearnError: demo: d_k: expected an integer from 1 to 64, got 0
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from qkv.learn.errors import LearnError

__all__ = [
    "CONTROL_KINDS",
    "VIEW_KINDS",
    "Control",
    "Env",
    "Result",
    "Widget",
    "WIDGETS",
    "check_args",
    "register",
]

CONTROL_KINDS = ("slider", "number", "select", "toggle", "text", "mask")
VIEW_KINDS = ("matrix", "bars", "lines", "tokens", "table", "text")
MAX_TEXT = 200  # characters of a text control


@dataclass(frozen=True)
class Control:
    """One knob of a widget.

    Attributes:
        name: the argument's name (``"d_k"``), as lessons and requests spell it.
        kind: ``slider`` / ``number`` (int or float, ``low``..``high``, ``step``), ``select``
            (one of ``choices``), ``toggle`` (bool), ``text`` (a string, at most ``high`` characters,
            or `MAX_TEXT`), ``mask`` (an N×N list of bools, N up to ``high``; the page edits it cell by cell).
        label: what the page writes beside it.
        default: the value before the learner touches it.
        low, high, step: the range of numbers (for ``text`` and ``mask``: ``high`` is the size limit).
        choices: the allowed values of a ``select``.
        help: one line the page shows under it.
    """

    name: str
    kind: str
    label: str
    default: Any
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()
    help: str = ""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "label": self.label, "default": self.default}
        for key in ("low", "high", "step", "help"):
            if getattr(self, key) not in (None, ""):
                out[key] = getattr(self, key)
        if self.choices:
            out["choices"] = list(self.choices)
        return out

    def check(self, widget: str, value: Any) -> Any:
        """``value`` if it fits this control (ints stay ints), else a `LearnError` naming both."""
        where = f"{widget}: {self.name}"
        if self.kind in ("slider", "number"):
            integral = isinstance(self.default, int) and not isinstance(self.default, bool)
            if isinstance(value, float) and integral and value.is_integer():
                value = int(value)
            ok = isinstance(value, int if integral else (int, float)) and not isinstance(value, bool)
            if ok and not (integral or math.isfinite(value)):
                ok = False
            if not ok or (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                what = "an integer" if integral else "a number"
                raise LearnError(f"{where}: expected {what} from {_num(self.low)} to {_num(self.high)}, got {value!r}")
            return value if integral else float(value)
        if self.kind == "select":
            if value not in self.choices:
                raise LearnError(f"{where}: expected one of {list(self.choices)}, got {value!r}")
            return value
        if self.kind == "toggle":
            if not isinstance(value, bool):
                raise LearnError(f"{where}: expected true or false, got {value!r}")
            return value
        if self.kind == "text":
            limit = int(self.high or MAX_TEXT)
            if not isinstance(value, str):
                raise LearnError(f"{where}: expected a string, got {type(value).__name__}")
            if not value.strip() or len(value) > limit:
                raise LearnError(f"{where}: expected 1 to {limit} characters of text, got {len(value.strip())}")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise LearnError(f"{where}: contains an unpaired surrogate; send valid Unicode") from None
            return value
        if self.kind == "mask":
            if value is None and self.default is None:  # no drawn mask: the widget uses its preset
                return None
            limit = int(self.high or 16)
            rows = value if isinstance(value, list) else None
            n = len(rows) if rows is not None else 0
            if (
                rows is None
                or not 1 <= n <= limit
                or any(not isinstance(r, list) or len(r) != n or any(not isinstance(c, bool) for c in r) for r in rows)
            ):
                raise LearnError(f"{where}: expected a square list of lists of true/false, 1 to {limit} rows")
            return [list(r) for r in rows]
        raise LearnError(f"{where}: unknown control kind {self.kind!r}")  # pragma: no cover - caught at definition


def _num(x: float | None) -> str:
    if x is None:
        return "any"
    return str(int(x)) if float(x).is_integer() else str(x)


def check_args(widget: str, controls: tuple[Control, ...], args: Mapping[str, Any]) -> dict[str, Any]:
    """Every control's value: from ``args`` where given (checked), else its default; unknown names refused."""
    if not isinstance(args, Mapping):
        raise LearnError(f"{widget}: args: expected a JSON object, got {type(args).__name__}")
    names = [c.name for c in controls]
    unknown = sorted(set(args) - set(names))
    if unknown:
        raise LearnError(f"{widget}: unknown argument {unknown[0]!r}; this widget takes {names}")
    return {c.name: c.check(widget, args[c.name]) if c.name in args else c.default for c in controls}


@dataclass
class Result:
    """What a widget computed: views to draw and facts to grade questions against."""

    views: Sequence[Mapping[str, Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"views": list(self.views), "facts": self.facts}


class Env:
    """What a widget may use besides its arguments: a precision and the real models.

    ``model(name)`` loads ``"minilm"`` / ``"smollm2"`` once per Env (thread-safe) with
    `qkv.loader.load`, or with the ``loader`` given (the explorer passes its registry's).
    ``models`` names every model a widget may offer: the two packaged ones, and any other
    the loader can load (``qkv learn --model PATH`` adds that folder or file).
    ``lock(name)`` is held while a widget runs a shared model (hooks such as
    `qkv.interpret.record` must not see two passes at once).
    """

    def __init__(
        self,
        *,
        dtype: torch.dtype = torch.float32,
        loader: Callable[[str], Any] | None = None,
        locks: Callable[[str], Any] | None = None,
        models: Sequence[str] = ("minilm", "smollm2"),
    ) -> None:
        self.dtype = dtype
        self.models = tuple(dict.fromkeys(models))
        self._loader = loader
        self._lock_for = locks
        self._models: dict[str, Any] = {}
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def model(self, name: str) -> Any:
        with self._guard:
            lock = self._locks.setdefault(f"load:{name}", threading.Lock())
        with lock:
            if name not in self._models:
                if self._loader is not None:
                    self._models[name] = self._loader(name)
                else:
                    from qkv.loader import load

                    self._models[name] = load(name)
        return self._models[name]

    def lock(self, name: str) -> Any:
        if self._lock_for is not None:  # the explorer's: one pass per model across all its routes
            return self._lock_for(name)
        with self._guard:
            return self._locks.setdefault(f"run:{name}", threading.Lock())


class Widget:
    """Base class of the course's widgets: subclasses set the class attributes and write `compute`."""

    name: ClassVar[str]
    title: ClassVar[str]
    controls: ClassVar[tuple[Control, ...]] = ()
    #: the facts `compute` returns (names), so lessons can be checked against them without running
    facts: ClassVar[tuple[str, ...]] = ()
    #: needs a real model (the page says "loading the model" the first time)
    models: ClassVar[tuple[str, ...]] = ()

    def compute(self, args: dict[str, Any], env: Env) -> Result:  # pragma: no cover - abstract
        raise NotImplementedError

    def controls_in(self, env: Env) -> tuple[Control, ...]:
        """The controls offered with ``env`` (a widget on real models may offer ``env.models``)."""
        return self.controls

    def run(self, args: Mapping[str, Any], env: Env) -> Result:
        """Check ``args`` against the controls, then compute."""
        return self.compute(check_args(self.name, self.controls_in(env), args), env)

    def describe(self, env: Env | None = None) -> dict[str, Any]:
        """What the page needs to draw the widget: its controls (as offered with ``env``), facts and models."""
        controls = self.controls if env is None else self.controls_in(env)
        return {
            "name": self.name,
            "title": self.title,
            "controls": [c.as_json() for c in controls],
            "facts": list(self.facts),
            "models": list(self.models),
        }


WIDGETS: dict[str, Widget] = {}


def register(cls: type[Widget]) -> type[Widget]:
    """Class decorator: adds one instance of ``cls`` to `WIDGETS` under ``cls.name``."""
    for control in cls.controls:
        if control.kind not in CONTROL_KINDS:
            raise TypeError(f"{cls.__name__}: control {control.name!r} has unknown kind {control.kind!r}")
    if cls.name in WIDGETS:
        raise TypeError(f"widget {cls.name!r} is registered twice")
    WIDGETS[cls.name] = cls()
    return cls
