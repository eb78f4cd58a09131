"""`qkv learn exercise` and `qkv learn check`: write an exercise's starter file, grade a solution.

    qkv learn exercise --list              the exercises
    qkv learn exercise NAME [--force]      write NAME's starter file here (never overwrites without --force)
    qkv learn exercise NAME --hint N       the N-th hint of its ladder
    qkv learn check FILE.py [--exercise NAME] [--json] [--in-model smollm2|minilm] [--no-record]

The check runs the file only in a child process with a time and a memory limit. A
failure whose mistake is diagnosed sends that concept back for review in the course's
progress file (``--no-record`` leaves the progress as it is).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def add_parsers(sub) -> None:
    """Add ``exercise`` and ``check`` under ``qkv learn`` (each sets ``run`` on its namespace)."""
    ex = sub.add_parser(
        "exercise",
        help="write an exercise's starter file (--list names them)",
        description="Write the starter file of an exercise (its function's signature and docstring) to a folder.",
    )
    ex.add_argument("name", nargs="?", metavar="NAME", help="the exercise (see --list)")
    ex.add_argument("--list", action="store_true", help="list the exercises")
    ex.add_argument("--force", action="store_true", help="overwrite an existing file")
    ex.add_argument("--dir", default=".", metavar="DIR", help="where to write it (default: here)")
    ex.add_argument("--hint", type=int, metavar="N", help="print hint N of the exercise instead")
    ex.set_defaults(run=run_exercise)
    check = sub.add_parser(
        "check",
        help="grade a solution against the float64 spec and name the mistake",
        description=(
            "Run FILE.py's function in a child process (time and memory limits) on generated cases, compare it with "
            "the float64 specification, check the invariants, and name the classic mistake that reproduces a failure."
        ),
    )
    check.add_argument("file", metavar="FILE.py", help="the solution")
    check.add_argument("--exercise", metavar="NAME", help="which exercise (default: from the file)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--in-model", choices=("smollm2", "minilm"), help="also run your attention inside a real model")
    check.add_argument("--timeout", type=float, default=10.0, metavar="S", help="time limit in seconds (default 10)")
    check.add_argument("--memory", type=int, default=2048, metavar="MB", help="memory limit in MB (default 2048)")
    check.add_argument("--no-record", action="store_true", help="do not send a diagnosed concept back for review")
    check.set_defaults(run=run_check)


def _fail(message: str) -> int:
    print(f"qkv: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def run_exercise(args: argparse.Namespace, console: Console) -> int:
    from qkv.learn import LearnError
    from qkv.learn.exercises.catalogue import EXERCISES, exercise

    if args.list:
        table = Table(title="qkv learn exercises", box=None)
        for column in ("name", "write", "lesson"):
            table.add_column(column)
        for e in EXERCISES.values():
            table.add_row(e.name, escape(e.signature), e.lesson)
        console.print(table)
        console.print("start one with: qkv learn exercise NAME", style="dim")
        return 0
    if args.name is None:
        return _fail("exercise: name one (qkv learn exercise NAME), or list them with --list")
    try:
        e = exercise(args.name)
    except LearnError as error:
        return _fail(str(error))
    if args.hint is not None:
        if not 1 <= args.hint <= len(e.hints):
            return _fail(f"--hint: {e.name} has hints 1 to {len(e.hints)}, got {args.hint}")
        console.print(f"hint {args.hint} of {len(e.hints)}: {escape(e.hints[args.hint - 1])}", highlight=False)
        return 0
    folder = Path(args.dir)
    if not folder.is_dir():
        return _fail(f"--dir: {str(folder)!r} is not a folder")
    target = folder / e.file_name
    if target.exists() and not args.force:
        return _fail(f"{target} exists; keep working in it, or pass --force to start over (it is overwritten)")
    try:
        target.write_text(e.starter(), encoding="utf-8")
    except OSError as error:
        return _fail(f"cannot write {target} ({error.strerror})")
    console.print(f"wrote {target}: {escape(e.title)}", highlight=False)
    console.print(escape(e.statement), highlight=False)
    console.print(f"check it with: qkv learn check {target}    lesson: qkv learn --text {e.lesson}", style="dim")
    return 0


def run_check(args: argparse.Namespace, console: Console) -> int:
    from qkv.learn import LearnError
    from qkv.learn.exercises.grader import check

    try:
        report = check(args.file, args.exercise, timeout=args.timeout, memory_mb=args.memory, in_model=args.in_model)
    except LearnError as error:
        return _fail(str(error))
    recorded = [] if args.no_record else _record(report)
    if args.json:
        print(json.dumps(report.to_json(), indent=1, default=str))
    else:
        _show(report, console, recorded)
    return 0 if report.passed else 1


def _record(report) -> list[str]:
    """Send each diagnosed mistake's concept back for review; a progress problem is a warning, not a failure."""
    if report.passed or not report.diagnosis:
        return []
    from qkv.learn import LearnError
    from qkv.learn.progress import Progress

    concepts = report.diagnosis.get("concepts") or []
    try:
        progress = Progress()
        for concept in concepts:
            progress.mistake(concept)
    except (LearnError, OSError) as error:
        print(f"qkv: warning: the mistake was not recorded in your progress ({error})", file=sys.stderr)
        return []
    return concepts


def _show(report, console: Console, recorded: list[str]) -> None:
    title = f"{report.exercise}: " + ("[green]passed[/green]" if report.passed else "[red]not yet[/red]")
    console.print(title + f"  [dim]({report.library or 'no'} arrays, {report.seconds:.2f} s)[/dim]")
    if report.cases:
        table = Table(box=None, show_header=True)
        for column in ("", "check", "result"):
            table.add_column(column)
        for c in report.cases:
            mark = "[green]ok[/green]" if c["passed"] else "[red]FAIL[/red]"
            if c["kind"] == "values":
                what = f"{c['total'] - c['failed']}/{c['total']} cases"
                failure = c.get("first_failure")
                if failure:
                    what += f": {escape(failure['case'])}\n  {escape(failure['message'])}"
            else:
                what = escape(c.get("detail") or c["claim"])
            table.add_row(mark, escape(c["group"]), what)
        console.print(table)
    if report.error and not report.cases:
        console.print(f"[red]{escape(report.note or report.error.get('message', ''))}[/red]", highlight=False)
    elif report.error:
        from qkv.learn.exercises.grader import _error_line

        console.print(f"your code {escape(_error_line(report.error))}", highlight=False)
    d = report.diagnosis
    if d:
        console.print(f"\n[bold]diagnosis: {escape(d['title'])}[/bold] [dim]({escape(d['mistake'])})[/dim]")
        console.print(escape(d["explanation"]), highlight=False)
        console.print(f"[dim]{escape(d['caveat'])}; smallest case: {escape(d['case'])}[/dim]", highlight=False)
        if d.get("also"):
            console.print(f"[dim]also consistent: {escape(', '.join(d['also']))}[/dim]")
        console.print(f"read: qkv learn --text {d['lesson']}")
        if recorded:
            console.print(f"[dim]review scheduled for: {', '.join(recorded)}[/dim]")
    elif not report.passed and report.note and report.cases:
        console.print(f"\ndiagnosis: {escape(report.note)}", highlight=False)
    if report.printed:
        console.print(f"[dim]your code printed:[/dim] {escape(report.printed[:500])}", highlight=False)
    if report.in_model:
        from qkv.learn.exercises.in_model import show

        show(report.in_model, console)
