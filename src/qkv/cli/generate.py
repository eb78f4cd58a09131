"""`qkv generate PROMPT`: continue a prompt with a real language model, printing the text as it comes."""

from __future__ import annotations

import argparse
import sys
import time

from rich.console import Console

from qkv.cli.explain import load_any_with_spinner, run_with_one_line_errors

DEFAULT_MODEL = "smollm2"


def add_parser(commands) -> None:
    generate = commands.add_parser(
        "generate",
        help="continue a prompt with a real language model (SmolLM2 by default)",
        description="Continue PROMPT with a Llama-family model, decoding with a KV cache; the text is printed as it "
        "is produced. Greedy by default; --temperature > 0 samples. A folder that transformers loads as a causal "
        "language model runs there, on qkv attention.",
    )
    generate.add_argument("prompt", metavar="PROMPT", help="the text to continue")
    generate.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="NAME|PATH",
        help="smollm2 (default), a Llama .gguf file, or a model folder (config.json + weights)",
    )
    generate.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="at most N new tokens (64)")
    generate.add_argument(
        "--cache", default="contiguous", choices=("contiguous", "paged", "int8"), help="KV cache kind (contiguous)"
    )
    generate.add_argument("--chat", action="store_true", help="send PROMPT as a user message in the chat template")
    generate.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default)")
    generate.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely tokens")
    generate.add_argument("--top-p", type=float, metavar="P", help="sample among the most likely tokens up to P")
    generate.add_argument("--seed", type=int, metavar="S", help="seed for sampling")
    generate.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    return run_with_one_line_errors(_run, args, console)


def _run(args: argparse.Namespace, console: Console) -> int:
    from qkv.models import LanguageModel, ModelError

    if not args.prompt.strip():
        raise ModelError("PROMPT: expected some text, got an empty string; e.g. qkv generate 'Once upon a time'")
    if args.max_new_tokens < 1:
        raise ModelError(
            f"--max-new-tokens: expected a positive number of tokens to generate, got {args.max_new_tokens}; "
            "e.g. --max-new-tokens 32"
        )
    status = Console(stderr=True)
    model = load_any_with_spinner(args.model, status)
    cache = _check_model(model, args)
    if args.chat and not model.tokenizer.chat_template:  # type: ignore[union-attr]
        raise ModelError(
            f"--chat: {args.model!r} carries no chat template to put PROMPT in; leave --chat out to continue "
            "PROMPT as plain text"
        )
    sampling = {name: getattr(args, name) for name in ("temperature", "top_k", "top_p", "seed")}
    if isinstance(model, LanguageModel):
        sampling["cache"] = args.cache  # GenerationConfig's names
    pieces = model.stream(args.prompt, args.max_new_tokens, chat=args.chat, **sampling)  # type: ignore[union-attr]
    started = time.perf_counter()
    text = ""
    try:
        for piece in pieces:
            text += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:  # also on Ctrl-C: the text so far stays, ended by a newline, before any message on stderr
        if text:
            sys.stdout.write("\n")
        sys.stdout.flush()
    seconds = time.perf_counter() - started
    count = len(model.tokenizer.encode(text, add_special_tokens=False)) if text else 0
    # soft_wrap: each message is one line of its own, however narrow the terminal or however it is piped
    if not text.strip() and not args.chat and model.tokenizer.chat_template:
        status.print(
            "The model ended the text at once. For a question or an instruction, try --chat "
            "(the prompt then goes in as a user message of the model's chat template).",
            highlight=False,
            soft_wrap=True,
        )
    status.print(
        f"{model.name}: about {count} tokens in {seconds:.1f} s ({count / max(seconds, 1e-9):.1f} tokens/s, "
        f"{cache}, prompt included in the time)",
        style="dim",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def _check_model(model: object, args: argparse.Namespace) -> str:
    """Refuse a model that cannot generate, or a cache it does not have; the cache the status line names."""
    from qkv.models import LanguageModel, ModelError, TextEncoder

    needs = "generation needs a language model (smollm2, a Llama .gguf file, or a folder whose config.json names a "
    needs += "...ForCausalLM)"
    if isinstance(model, LanguageModel):
        return f"{args.cache} cache"
    if isinstance(model, TextEncoder):
        raise ModelError(f"--model: {args.model!r} is a {model.kind} encoder; {needs}")
    # else a transformers model (`qkv.loader.load` gave it, so transformers is there)
    if not model.can_generate:  # type: ignore[attr-defined]
        name = type(model.model).__name__  # type: ignore[attr-defined]
        raise ModelError(f"--model: {args.model!r} loads as {name}, without a language-model head; {needs}")
    if args.cache != "contiguous":
        raise ModelError(
            f"--cache: {args.cache!r} is a cache of qkv's own models; {args.model!r} runs in transformers with "
            "its own cache (DynamicCache): leave --cache out"
        )
    return "transformers' DynamicCache"
