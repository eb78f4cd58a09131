"""The learner's progress: one JSON file, written atomically, shared by the page and the terminal.

The file lives under the user's data directory: ``$QKV_HOME/learn-progress.json``
where ``QKV_HOME`` is set, else ``$XDG_DATA_HOME/qkv/`` (``~/.local/share/qkv/``).
Every change takes an exclusive lock on a file beside it (``fcntl.flock``, so a
second tab, a second server and ``qkv learn --text`` see one history), reads the
current state, changes a copy and replaces the file in one ``os.replace``: a
crash mid-write leaves the old file, never half of a new one. A file that is not
valid progress is never overwritten: the error names it and how to start over.

What it keeps::

    {"version": 1,
     "lessons":  {ID: {"answers": {QUESTION: {"correct", "tries", "at"}}, "mastered_at", "route", "step"}},
     "concepts": {ID: {"mastered_at", "review": {"due", "stage"} | null, "practised_at"?}},
     "exercises": {NAME: {"passed", "tries", "at", "last"}}}     (absent until an exercise is checked)

Review is spaced: a concept whose question was answered wrongly comes back due
after one day; answered right when due, it comes back after three days, then a
week, then it is done. A wrong answer while it is pending starts it over.

>>> import tempfile, pathlib
>>> store = Progress(pathlib.Path(tempfile.mkdtemp()) / "p.json")
>>> store.read()["lessons"]
{}
>>> _ = store.answer("soft-lookup", "q1", concept="soft-lookup", correct=False, now=0.0)
>>> store.read()["concepts"]["soft-lookup"]["review"]
{'due': 86400.0, 'stage': 0}
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qkv.home import data_home
from qkv.learn.errors import LearnError

__all__ = ["REVIEW_DAYS", "Progress", "progress_path"]

VERSION = 1
DAY = 86400.0
REVIEW_DAYS = (1, 3, 7)  # days until a concept answered wrongly is due, then due again after each right answer
FILE_NAME = "learn-progress.json"
_THREAD_LOCK = threading.Lock()  # flock is per open file; threads of one process also queue here


def progress_path() -> Path:
    """Where progress is kept: ``$QKV_HOME``, else ``$XDG_DATA_HOME/qkv``, else ``~/.local/share/qkv``."""
    return data_home() / FILE_NAME


def _empty() -> dict[str, Any]:
    return {"version": VERSION, "lessons": {}, "concepts": {}}


class Progress:
    """The progress file at ``path`` (default `progress_path`): read it, change it under a lock."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else progress_path()

    # -- reading and writing -----------------------------------------------------------------

    def read(self) -> dict[str, Any]:
        """The current state (an empty one where there is no file yet)."""
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return _empty()
        except OSError as error:
            raise LearnError(f"progress: cannot read {self.path} ({error.strerror})", status=503) from None
        return self._parse(raw)

    def _parse(self, raw: str) -> dict[str, Any]:
        fix = f"fix it, or start over with `qkv learn --reset` (which removes {self.path})"
        try:
            state = json.loads(raw)
        except json.JSONDecodeError:
            raise LearnError(f"progress: {self.path} is not valid JSON; {fix}", status=503) from None
        if (
            not isinstance(state, dict)
            or state.get("version") != VERSION
            or not isinstance(state.get("lessons"), dict)
            or not isinstance(state.get("concepts"), dict)
        ):
            raise LearnError(f"progress: {self.path} is not a qkv progress file (version {VERSION}); {fix}", status=503)
        return state

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with _THREAD_LOCK, open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, state: dict[str, Any]) -> None:
        fd, temp = tempfile.mkstemp(prefix=".progress-", suffix=".json", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(state, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def update(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        """Apply ``change(state)`` to a copy of the current state and save it; returns what ``change`` returns.

        If ``change`` raises, nothing is written.
        """
        with self._locked():
            state = copy.deepcopy(self.read())
            result = change(state)
            self._write(state)
            return result

    def reset(self) -> None:
        """Forget everything (removes the file)."""
        with self._locked():
            self.path.unlink(missing_ok=True)

    # -- what the course records -------------------------------------------------------------

    def position(self, lesson: str, route: str, step: int) -> None:
        """Remember where the learner is in ``lesson``."""

        def change(state: dict[str, Any]) -> None:
            entry = _lesson(state, lesson)
            entry["route"], entry["step"] = route, step

        self.update(change)

    def answer(
        self,
        lesson: str,
        question: str,
        *,
        concept: str,
        correct: bool,
        checks: Iterable[str] = (),
        concepts: Iterable[str] = (),
        now: float | None = None,
    ) -> dict[str, Any]:
        """Record one answer; returns ``{"mastered": bool, "newly_mastered": bool}`` for ``lesson``.

        ``checks`` are the lesson's knowledge-check question ids and ``concepts`` the concepts it
        teaches: once every check has been answered right at least once, they are mastered.
        """
        now = time.time() if now is None else now
        checks, concepts = list(checks), list(concepts)

        def change(state: dict[str, Any]) -> dict[str, Any]:
            entry = _lesson(state, lesson)
            record = entry["answers"].setdefault(question, {"correct": False, "tries": 0, "at": now})
            record["tries"] += 1
            record["at"] = now
            record["correct"] = bool(record["correct"] or correct)
            record["last"] = bool(correct)
            _review(state, concept, correct, now)
            was = entry.get("mastered_at") is not None
            done = bool(checks) and all(entry["answers"].get(c, {}).get("correct") for c in checks)
            if done and not was:
                entry["mastered_at"] = now
                for c in concepts:
                    state["concepts"].setdefault(c, {"mastered_at": None, "review": None})["mastered_at"] = now
            return {"mastered": done or was, "newly_mastered": done and not was}

        return self.update(change)

    def mistake(self, concept: str, *, now: float | None = None) -> None:
        """A mistake in ``concept`` made elsewhere (an exercise): it comes back for review."""
        self.update(lambda state: _review(state, concept, False, time.time() if now is None else now))

    def exercise(
        self, name: str, *, concept: str, passed: bool, diagnosed: bool = False, now: float | None = None
    ) -> dict[str, Any]:
        """Record one check of exercise ``name``; returns its entry.

        A pass marks ``concept`` as practised (``practised_at``); a failure whose mistake was
        diagnosed (``diagnosed``) sends ``concept`` back for review, like a wrong answer.
        """
        now = time.time() if now is None else now

        def change(state: dict[str, Any]) -> dict[str, Any]:
            entry = state.setdefault("exercises", {}).setdefault(name, {"passed": False, "tries": 0, "at": now})
            entry["tries"] += 1
            entry["at"] = now
            entry["passed"] = bool(entry["passed"] or passed)
            entry["last"] = bool(passed)
            if passed:
                state["concepts"].setdefault(concept, {"mastered_at": None, "review": None})["practised_at"] = now
            elif diagnosed:
                _review(state, concept, False, now)
            return dict(entry)

        return self.update(change)


def _lesson(state: dict[str, Any], lesson: str) -> dict[str, Any]:
    entry = state["lessons"].setdefault(lesson, {})
    entry.setdefault("answers", {})
    entry.setdefault("mastered_at", None)
    entry.setdefault("route", "build-up")
    entry.setdefault("step", 0)
    return entry


def _review(state: dict[str, Any], concept: str, correct: bool, now: float) -> None:
    entry = state["concepts"].setdefault(concept, {"mastered_at": None, "review": None})
    review = entry.get("review")
    if not correct:
        entry["review"] = {"due": now + REVIEW_DAYS[0] * DAY, "stage": 0}
    elif review is not None and now >= review["due"]:
        stage = review["stage"] + 1
        entry["review"] = None if stage >= len(REVIEW_DAYS) else {"due": now + REVIEW_DAYS[stage] * DAY, "stage": stage}
