"""The `qkv` command line: one module per command, each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import contextlib
import sys

from rich.console import Console

from qkv.cli import bench, check, experiment, explain, explore, generate, learn

COMMANDS = (explain, generate, explore, learn, experiment, check, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qkv", description="Exact attention, as fast as the best kernels, that you can look inside."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command stopped with Ctrl-C


def main(argv: list[str] | None = None) -> int:
    """Run the command line; bad input ends in a one-line error and exit status 2, never a traceback.

    Ctrl-C ends any command with the one line ``qkv: interrupted`` on stderr and exit
    status 130; what a command already printed (the text generated so far) stays.
    """
    from qkv.errors import AttentionError

    try:
        args = build_parser().parse_args(argv)
        return args.run(args, Console())
    except AttentionError as error:
        print(f"qkv: error: {' '.join(str(error).split())}", file=sys.stderr)  # one line, whatever the message
        return 2
    except KeyboardInterrupt:
        with contextlib.suppress(OSError):  # a closed pipe: nothing more can be shown there anyway
            sys.stdout.flush()
        print("qkv: interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
