"""`qkv experiment list | NAME [--quick] [--out DIR]`: the mechanism's claims, each one rerunnable."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table


def add_parser(commands) -> None:
    experiment = commands.add_parser(
        "experiment", help="run an experiment that tests a claim about attention ('list' names them)"
    )
    experiment.add_argument("name", metavar="NAME", help="an experiment's name, or 'list'")
    experiment.add_argument("--quick", action="store_true", help="the small run (about two minutes on two cores)")
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
    result = experiments.run(args.name, quick=args.quick, out=args.out, progress=True, seed=args.seed)
    console.print(result.report(), highlight=False)
    return 0
