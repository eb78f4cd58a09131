"""`qkv learn`: the course, in the browser (the explorer's Learn page) or in the terminal.

    qkv learn                 serve the explorer and open its Learn page
    qkv learn --list          the lessons: id, title, state
    qkv learn --text ID       one lesson in the terminal (questions answered by typing)
    qkv learn --reset         forget all progress (asks first; --yes does not ask)
    qkv learn exercise NAME   write an exercise's starter file (`--list` names them)
    qkv learn check FILE.py   grade it against the float64 spec and name the mistake

Progress is one file (``$QKV_HOME/learn-progress.json``, else under the XDG data
directory) shared by the page and the terminal.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table


def add_parser(commands) -> None:
    learn = commands.add_parser(
        "learn",
        help="the course: attention step by step, every number computed live (page or terminal)",
        description=(
            "A guided course on attention: lessons with live widgets on real models, predictions before reveals, "
            "knowledge checks, an architecture graph that unlocks as you master concepts, and spaced review."
        ),
    )
    what = learn.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="list the lessons with their state")
    what.add_argument("--text", metavar="ID", help="run one lesson in the terminal")
    what.add_argument("--reset", action="store_true", help="forget all progress (asks first)")
    learn.add_argument("--yes", action="store_true", help="with --reset: do not ask")
    learn.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    learn.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    learn.add_argument("--model", default="minilm", metavar="NAME|PATH", help="the explorer's starting model")
    learn.add_argument("--no-browser", action="store_true", help="print the URL without opening a browser")
    learn.set_defaults(run=run)
    from qkv.cli import learn_exercises

    learn_exercises.add_parsers(learn.add_subparsers(dest="learn_command", metavar="exercise|check"))


def run(args: argparse.Namespace, console: Console) -> int:
    from qkv.learn import LearnError
    from qkv.learn.tutor import Tutor

    try:
        if args.list:
            return _list(Tutor(), console)
        if args.text is not None:
            from qkv.learn.terminal import run_lesson

            tutor = Tutor()
            tutor.course.lesson(args.text)  # an unknown id fails before anything is printed
            return run_lesson(tutor, args.text, console)
        if args.reset:
            return _reset(Tutor(), console, ask=not args.yes)
    except LearnError as error:
        print(f"qkv: error: {error}", file=sys.stderr)
        return 2
    from qkv.cli.explore import serve_explorer

    return serve_explorer(args, console, page="learn", open_browser=not args.no_browser)


def _list(tutor, console: Console) -> int:
    course = tutor.course_json()
    table = Table(title="qkv learn: the path", box=None)
    for column in ("#", "id", "title", "state", "minutes"):
        table.add_column(column)
    for les in course["lessons"]:
        state = les["state"] + (" (review due)" if les["due"] else "")
        table.add_row(str(les["order"]), les["id"], les["title"], state, str(les["minutes"]))
    console.print(table)
    console.print(f"progress: {tutor.progress.path}", style="dim", highlight=False)
    return 0


def _reset(tutor, console: Console, *, ask: bool) -> int:
    path = tutor.progress.path
    if not path.exists():
        console.print(f"no progress to forget ({path} does not exist)", highlight=False)
        return 0
    if ask:
        try:
            reply = input(f"Forget all progress in {path}? [y/N] ")
        except EOFError:
            reply = ""
        if reply.strip().lower() not in ("y", "yes"):
            console.print("kept your progress")
            return 0
    tutor.reset()
    console.print(f"progress forgotten ({path} removed)", highlight=False)
    return 0
