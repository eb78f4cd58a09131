"""`qkv experiment list | NAME [--quick] [--out DIR]`: the mechanism's claims, each one rerunnable."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from qkv.errors import AttentionError


def add_parser(commands) -> None:
    experiment = commands.add_parser(
        "experiment", help="run an experiment that tests a claim about attention ('list' names them)"
    )
    experiment.add_argument("name", metavar="NAME", help="an experiment's name, or 'list'")
    experiment.add_argument("--quick", action="store_true", help="the small run (under a minute on two idle cores)")
    experiment.add_argument("--out", default="qkv-experiments", metavar="DIR", help="where NAME.json and NAME.png go")
    experiment.add_argument("--seed", type=int, default=None, help="random seed (default: the experiment's own)")
    experiment.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    from qkv import experiments

    if args.name == "list":
        table = Table(title="qkv experiments: qkv experiment NAME [--quick] [--out DIR]")
        table.add_column("name")
        table.add_column("claim it tests")
        for e in experiments.list_experiments():
            table.add_row(e.name, e.claim)
        console.print(table)
        return 0
    experiments.get(args.name)  # an unknown name is refused before anything is made
    out = writable_folder(args.out)
    try:
        result = experiments.run(args.name, quick=args.quick, out=out, progress=True, seed=args.seed)
    except OSError as error:  # the folder went away or filled up while the experiment ran
        raise AttentionError(f"--out: cannot write the results into {str(out)!r}: {error.strerror or error}") from None
    console.print(result.report(), highlight=False)
    return 0


def writable_folder(out: str) -> Path:
    """``out`` as a folder the results can be written to, made if needed; else the one-line error that says why.

    >>> writable_folder("/dev/null/results")
    Traceback (most recent call last):
    ...
    qkv.errors.AttentionError: --out: cannot make the folder '/dev/null/results' for the results (Not a directory); ...
    """
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise AttentionError(f"--out: {out!r} is a file, not a folder; give a folder, e.g. --out qkv-experiments")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AttentionError(
            f"--out: cannot make the folder {out!r} for the results ({error.strerror or error}); "
            "give a folder you can write to, e.g. --out qkv-experiments"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise AttentionError(
            f"--out: cannot write into {out!r} (permission denied); give a folder you can write to, "
            "e.g. --out qkv-experiments"
        )
    return folder
