"""The `qkv` command line: one module per command, each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from qkv.cli import bench, check, experiment, explain, explore, generate

COMMANDS = (explain, generate, explore, experiment, check, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qkv", description="Exact attention, as fast as the best kernels, that you can look inside."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; bad input ends in a one-line error and exit status 2, never a traceback."""
    args = build_parser().parse_args(argv)
    console = Console()
    from qkv.errors import AttentionError

    try:
        return args.run(args, console)
    except AttentionError as error:
        print(f"qkv: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
