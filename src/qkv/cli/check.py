"""`qkv check`: every backend against the float64 reference on this machine."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table


def add_parser(commands) -> None:
    check = commands.add_parser("check", help="check every backend against the float64 reference")
    check.add_argument("--seed", type=int, default=0, help="random seed for the inputs (default 0)")
    check.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    import torch

    from qkv import selfcheck

    torch.manual_seed(args.seed)
    rows = selfcheck.run(seed=args.seed)
    table = Table(title="qkv backends vs the float64 reference (max |error|, fresh random inputs)")
    for column in ("case", "dtype", "backend", "error", "budget", "auto picks", ""):
        table.add_column(column)
    for row in rows:
        if row.skipped is not None:
            table.add_row(
                row.case, row.dtype, row.backend, "—", f"{row.budget:.2e}", row.auto_choice, "[dim]not run[/dim]"
            )
            continue
        table.add_row(
            row.case,
            row.dtype,
            row.backend,
            f"{row.error:.2e}",
            f"{row.budget:.2e}",
            row.auto_choice,
            "[green]ok[/green]" if row.ok else "[red]OVER BUDGET[/red]",
        )
    console.print(table)
    failed = [row for row in rows if not row.ok]
    console.print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads. The budget is 3x the error of a plain "
        "same-dtype computation plus one unit of rounding."
    )
    from qkv.backends.blockwise import cpu_kernel

    console.print(cpu_kernel.status(), markup=False)
    for backend, why in sorted({(row.backend, row.skipped) for row in rows if row.skipped}):
        console.print(f"not run: {backend}: {why}", markup=False, highlight=False)
    if failed:
        console.print(f"[red]{len(failed)} of {len(rows)} backend runs are over budget.[/red]")
        return 1
    ran = sum(row.skipped is None for row in rows)
    console.print(f"All {ran} backend runs agree with the float64 reference within budget.")
    return 0
