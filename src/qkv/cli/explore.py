"""`qkv explore`: the live explorer, a web page served from this machine.

Loads the starting model, binds the address (loopback unless ``--host`` says
otherwise), prints the URL and serves until Ctrl+C.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

DEFAULT_MODEL = "minilm"


def add_parser(commands) -> None:
    explore = commands.add_parser(
        "explore",
        help="open the live explorer: real attention weights and a mechanism lab in your browser",
        description=(
            "Serve the qkv explorer: type a sentence and see a real model's attention (every layer and head, "
            "entropy, distance, rollout), or turn the knobs of scaled dot-product attention in the lab."
        ),
    )
    explore.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: only this machine; 0.0.0.0 opens it to the network)",
    )
    explore.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    explore.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="NAME|PATH",
        help="the model the page starts with: minilm (default), smollm2, a BERT folder or a Llama .gguf file",
    )
    explore.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    return serve_explorer(args, console)


def serve_explorer(args: argparse.Namespace, console: Console, *, page: str = "", open_browser: bool = False) -> int:
    """Bind, load ``args.model``, print the URL of ``page`` (opening it in a browser if asked) and serve."""
    from qkv.explorer import ExplorerError, create_app
    from qkv.explorer.server import bind, is_loopback, serve, url_of
    from qkv.models import ModelError

    if not 0 <= args.port <= 65535:
        raise ModelError(f"--port: expected 0 to 65535, got {args.port}")
    try:  # first, so a busy port fails before a model is loaded
        sock = bind(args.host, args.port)
    except OSError as error:
        raise ModelError(
            f"--host/--port: cannot listen on {args.host}:{args.port} ({error.strerror or error}); "
            "pick another port with --port, or 0 for a free one"
        ) from None
    app = create_app(model=args.model, allowed_hosts=_hosts(args.host) if is_loopback(args.host) else None)
    status = Console(stderr=True)
    try:
        with status.status(f"loading {args.model} ...", spinner="dots"):
            loaded = app.state.registry.get(args.model)
    except ExplorerError as error:  # the loader's message: not installed, not a model, ...
        sock.close()
        raise ModelError(" ".join(error.message.split())) from None
    url = url_of(sock)
    if args.host in ("0.0.0.0", "::"):
        url = url.replace(f"//{args.host}", "//127.0.0.1").replace("//[::]", "//[::1]")
    url += page
    console.print(
        f"qkv explorer: [bold]{url}[/bold]  ({loaded.name} loaded in {loaded.load_seconds:.1f} s; Ctrl+C stops it)",
        highlight=False,
        soft_wrap=True,
    )
    if not is_loopback(args.host):
        console.print(
            f"[yellow]Listening on {args.host}: anyone who can reach this machine can use the explorer.[/yellow]",
            soft_wrap=True,
        )
    sys.stdout.flush()
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        serve(app, sock)
    except KeyboardInterrupt:  # pragma: no cover - uvicorn handles Ctrl+C itself
        pass
    finally:
        sock.close()
    return 0


def _hosts(host: str) -> list[str]:
    """Host headers accepted when serving on loopback: the loopback names (a guard against DNS rebinding)."""
    return sorted({host, "127.0.0.1", "localhost", "::1"})


if __name__ == "__main__":  # pragma: no cover - `python -m qkv.cli.explore` until `qkv explore` is registered
    parser = argparse.ArgumentParser(prog="qkv")
    add_parser(parser.add_subparsers(dest="command", required=True))
    from qkv.errors import AttentionError

    try:
        sys.exit(run(parser.parse_args(["explore", *sys.argv[1:]]), Console()))
    except AttentionError as error:
        print(f"qkv: error: {error}", file=sys.stderr)
        sys.exit(2)
