"""Running the course's own code: a lesson's snippets and its pitfalls' wrong and right code.

Only code that ships in the lesson files runs here (the page asks for a snippet
by its index, never sends code). Each run gets a fresh namespace and its
printed output is captured; one runs at a time, since capturing ``stdout`` is
process-wide.

>>> from qkv.learn.course import Snippet
>>> run_snippet(Snippet(0, "t", "", "print(2 + 2)")).output
'4\\n'
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from qkv.learn.course import Pitfall, Snippet

__all__ = ["Run", "run_pitfall", "run_snippet"]

_LOCK = threading.Lock()
MAX_OUTPUT = 20_000  # characters of output kept


@dataclass(frozen=True)
class Run:
    ok: bool
    output: str
    seconds: float
    namespace: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "output": self.output, "seconds": round(self.seconds, 3)}


def _run(code: str, name: str, namespace: dict[str, Any] | None = None) -> Run:
    namespace = {"__name__": "__lesson__"} if namespace is None else namespace
    out = io.StringIO()
    started = time.perf_counter()
    ok = True
    with _LOCK, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            exec(compile(code, name, "exec"), namespace)  # noqa: S102 - the course's own code, from the package
        except Exception:  # the snippet's own error is its output
            ok = False
            lines = traceback.format_exc().splitlines()
            start = next((i for i, line in enumerate(lines) if f'"{name}"' in line), 1)
            out.write("\n".join([lines[0], *lines[start:]]) + "\n")
    text = out.getvalue()
    if len(text) > MAX_OUTPUT:
        text = text[:MAX_OUTPUT] + f"\n... ({len(text) - MAX_OUTPUT} more characters)\n"
    return Run(ok, text, time.perf_counter() - started, namespace)


def run_snippet(snippet: Snippet) -> Run:
    """Run one snippet of the code-first route; its errors are part of the output (``ok`` False)."""
    return _run(snippet.code, f"<snippet {snippet.index}>")


def run_pitfall(pitfall: Pitfall) -> tuple[Run, Run, Run]:
    """Run ``setup + wrong`` and ``setup + right`` apart, then ``shows`` with both namespaces.

    ``shows`` runs after a fresh ``setup`` and sees ``wrong`` and ``right`` (the two namespaces as dicts);
    its assertions are the pitfall's claim that the wrong code really gives the wrong result.
    """
    wrong = _run(pitfall.setup + "\n" + pitfall.wrong, "<wrong>")
    right = _run(pitfall.setup + "\n" + pitfall.right, "<right>")
    context = _run(pitfall.setup, "<setup>").namespace  # the setup's imports and data, then the two runs
    shows = _run(pitfall.shows, "<shows>", {**context, "wrong": wrong.namespace, "right": right.namespace})
    return wrong, right, shows
