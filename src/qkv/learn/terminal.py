"""A lesson in the terminal: tutor text, widgets drawn as text, questions answered by typing.

`run_lesson` walks the build-up route: each step's text, then (for a step that
asks) the prediction question *before* the widget's result, then the widget as
the terminal can draw it (matrices as shaded grids, bars, tables, tokens), the
reveal; then the summary, myths, pitfalls and the knowledge check. Answers go
through the same `Tutor` as the page, so they land in the same progress file.
End of input (Ctrl-D) stops the lesson; what was answered stays recorded.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from qkv.learn import markup
from qkv.learn.course import Lesson, Question
from qkv.learn.errors import LearnError
from qkv.learn.tutor import Tutor

__all__ = ["draw_views", "run_lesson"]

SHADES = " ░▒▓█"
BAR_WIDTH = 30


class _Stop(Exception):
    """The learner closed the input."""


def _shade(value: float | None, low: float, high: float) -> str:
    if value is None:
        return "·"
    span = (high - low) or 1.0
    return SHADES[min(len(SHADES) - 1, max(0, int((value - low) / span * (len(SHADES) - 1) + 0.5)))]


def _matrix(view: dict[str, Any]) -> Table:
    values = view["values"]
    finite = [v for row in values for v in row if v is not None]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    table = Table(title=view.get("title"), show_lines=False, box=None, pad_edge=False)
    table.add_column("")
    for col in view.get("cols", []):
        table.add_column(str(col)[:6], justify="center")
    for label, row in zip(view.get("rows", [""] * len(values)), values):
        cells = [
            f"{_shade(v, low, high)}{'' if v is None else f'{v:.2f}'}" if len(row) <= 8 else _shade(v, low, high)
            for v in row
        ]
        table.add_row(str(label)[:10], *cells)
    return table


def _bars(view: dict[str, Any]) -> Table:
    table = Table(title=view.get("title"), box=None)
    series = view.get("series") or ["", ""]
    compare = view.get("compare")
    values = [v for v in view["values"] + (compare or []) if v is not None]
    top = max((abs(v) for v in values), default=1.0) or 1.0
    table.add_column("")
    table.add_column(series[0] or "value")
    if compare is not None:
        table.add_column(series[1] if len(series) > 1 else "compare")
    for i, label in enumerate(view["labels"]):
        cells = [f"{'█' * round(abs(view['values'][i]) / top * BAR_WIDTH)} {view['values'][i]:.4g}"]
        if compare is not None:
            cells.append(f"{'█' * round(abs(compare[i]) / top * BAR_WIDTH)} {compare[i]:.4g}")
        table.add_row(str(label), *cells)
    return table


def _lines(view: dict[str, Any]) -> Table:
    table = Table(title=view.get("title"), box=None)
    table.add_column(view.get("x_label", "x"))
    for s in view["series"]:
        table.add_column(s["name"])
    for i, x in enumerate(view["x"]):
        table.add_row(
            f"{x:g}", *(f"{s['values'][i]:.4g}" if s["values"][i] is not None else "·" for s in view["series"])
        )
    return table


def _tokens(view: dict[str, Any]) -> Text:
    text = Text()
    if view.get("title"):
        text.append(view["title"] + "\n", style="bold")
    for i, (token, w) in enumerate(zip(view["tokens"], view["weights"])):
        style = "bold underline" if i == view.get("focus") else ""
        text.append(f"{token}", style=style)
        text.append(f"({w:.2f}) " if w is not None else " ")
    return text


def _table(view: dict[str, Any]) -> Table:
    table = Table(title=view.get("title"))
    for c in view["columns"]:
        table.add_column(str(c))
    for row in view["rows"]:
        table.add_row(*(f"{c:.4g}" if isinstance(c, float) else str(c) for c in row))
    return table


def draw_views(console: Console, views: list[dict[str, Any]]) -> None:
    """Draw a widget's views as text."""
    drawers: dict[str, Callable[[dict[str, Any]], Any]] = {
        "matrix": _matrix,
        "bars": _bars,
        "lines": _lines,
        "tokens": _tokens,
        "table": _table,
        "text": lambda v: markup.plain(v["text"]),
    }
    for view in views:
        drawer = drawers.get(view.get("kind", ""))
        if drawer is not None:
            console.print(drawer(view))
        if view.get("caption"):
            console.print(Text(markup.plain(view["caption"]), style="dim"))


def _say(console: Console, text: str) -> None:
    console.print(markup.plain(text), highlight=False)


def _ask(
    console: Console,
    read: Callable[[str], str],
    tutor: Tutor,
    lesson: Lesson,
    q: Question,
    args: dict[str, Any] | None,
    tokens: list[str] | None,
) -> dict[str, Any]:
    """Ask until the answer is well-formed (a malformed one is refused and asked again); returns the verdict."""
    _say(console, f"\n? {q.prompt}")
    options = list(q.options)
    random.shuffle(options)
    if q.kind == "choice":
        for i, o in enumerate(options, 1):
            _say(console, f"  {i}. {o.text}")
    elif q.kind == "token" and tokens:
        console.print("  " + "  ".join(f"{i}:{t}" for i, t in enumerate(tokens)), highlight=False)
    while True:
        try:
            raw = read("  your answer: ").strip()
        except EOFError:
            raise _Stop from None
        answer: Any = raw
        try:
            if q.kind == "choice":
                answer = options[int(raw) - 1].id if raw.isdigit() and 1 <= int(raw) <= len(options) else raw
            elif q.kind == "number":
                answer = float(raw)
            else:
                answer = int(raw)
        except ValueError:
            console.print(f"  (type {'a number' if q.kind == 'number' else 'the index of a token'})")
            continue
        try:
            verdict = tutor.answer(lesson.id, q.id, answer, args)
        except LearnError as error:
            console.print(f"  ({error})", highlight=False)
            continue
        mark = "[bold]✓ right[/bold]" if verdict["correct"] else "[bold]✗ not quite[/bold]"
        console.print(f"  {mark}: ", end="")
        _say(console, verdict["feedback"])
        if verdict.get("reveal"):
            _say(console, verdict["reveal"])
        return verdict


def run_lesson(tutor: Tutor, ident: str, console: Console, read: Callable[[str], str] = input) -> int:
    """Run lesson ``ident`` in the terminal; returns 0 (finished or stopped at end of input)."""
    lesson = tutor.course.lesson(ident)
    console.rule(f"[bold]{lesson.order}. {lesson.title}[/bold]")
    _say(console, lesson.overview)
    try:
        for i, step in enumerate(lesson.steps, 1):
            console.print(f"\n[bold]Step {i}/{len(lesson.steps)} — {step.title}[/bold]", highlight=False)
            _say(console, step.text)
            result = tutor.widget(step.widget, step.args) if step.widget else None
            if step.predict:
                tokens = (result or {}).get("facts", {}).get("tokens")
                _ask(console, read, tutor, lesson, lesson.question(step.predict), step.args or None, tokens)
            if result is not None:
                draw_views(console, result["views"])
            tutor.position(lesson.id, "build-up", i)
        console.print("\n[bold]Summary[/bold]")
        for line in lesson.summary:
            _say(console, f"- {line}")
        for myth in lesson.myths:
            _say(console, f"\nMyth: {myth.belief}\nReality: {myth.reality}")
        for pitfall in lesson.pitfalls:
            console.print(f"\n[bold]Pitfall: {pitfall.title}[/bold]", highlight=False)
            console.print(Text("wrong:\n" + pitfall.wrong + "\nright:\n" + pitfall.right))
            _say(console, pitfall.why)
        console.print("\n[bold]Knowledge check[/bold]")
        pending = list(lesson.checks)
        while pending:
            wrong = []
            for q in pending:
                facts = tutor.widget(q.widget, q.args)["facts"] if q.kind == "token" and q.widget else {}
                verdict = _ask(console, read, tutor, lesson, q, None, facts.get("tokens"))
                if not verdict["correct"]:
                    wrong.append(q)
                elif verdict["newly_mastered"]:
                    unlocked = ", ".join(tutor.course.concepts[c].title for c in verdict["unlocked"]) or "nothing new"
                    console.print(f"\n[bold]Lesson mastered.[/bold] Unlocked: {unlocked}", highlight=False)
            if wrong:
                console.print(f"\n{len(wrong)} to try again (options reshuffled).")
            pending = wrong
    except _Stop:
        console.print("\n(stopped; your answers so far are kept)")
    return 0
