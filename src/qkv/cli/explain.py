"""`qkv explain TEXT`: for each token of a text, the tokens it attends to most, on a real model.

One layer's attention probabilities (the last layer by default), averaged over
its heads unless ``--head`` picks one, in a terminal table; ``--json`` prints
them machine-readable, ``--html`` / ``--png`` write a view and a picture.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from qkv.models import LanguageModel, TextEncoder

DEFAULT_MODEL = "minilm"
TOP = 3


def add_parser(commands) -> None:
    explain = commands.add_parser(
        "explain",
        help="what each token of a text attends to, on a real model",
        description=(
            "For each token of TEXT, the tokens it attends to most in one layer of a real model "
            "(the last layer by default), averaged over the layer's heads unless --head picks one."
        ),
    )
    explain.add_argument("text", metavar="TEXT", help="the text to look at, e.g. 'The cat sat on the mat.'")
    explain.add_argument(
        "--model", default=DEFAULT_MODEL, metavar="NAME|PATH",
        help="minilm (default), smollm2, a BERT folder or a Llama .gguf file",
    )
    explain.add_argument("--layer", type=int, metavar="L", help="layer to show, 0-based; negative counts from the end "
                         "(default: the last layer)")
    explain.add_argument(
        "--head", type=int, metavar="H", help="one head of that layer (default: the mean of all heads)"
    )
    explain.add_argument("--top", type=int, default=TOP, metavar="K", help=f"attended tokens listed per token ({TOP})")
    explain.add_argument(
        "--include-special", action="store_true",
        help="rank special tokens ([CLS], [SEP], <|im_start|>, ...) too; by default they are left out of the top "
        "lists and their total weight gets its own column",
    )
    explain.add_argument("--json", action="store_true", help="print machine-readable JSON instead of the table")
    explain.add_argument("--html", metavar="FILE", help="also write an interactive HTML view of every layer and head")
    explain.add_argument("--png", metavar="FILE", help="also write a heatmap picture of the layer / head shown")
    explain.set_defaults(run=run)


@dataclass(frozen=True)
class Choice:
    """The layer and head shown: ``head`` None means the mean over the layer's heads."""

    layer: int
    head: int | None


def choose(num_layers: int, num_heads: int, layer: int | None, head: int | None) -> Choice:
    """Resolve ``--layer`` / ``--head`` (negative counts from the end); a clear error when out of range.

    >>> choose(6, 12, None, None), choose(6, 12, -2, 3)
    (Choice(layer=5, head=None), Choice(layer=4, head=3))
    >>> choose(6, 12, 6, None)
    Traceback (most recent call last):
    ...
    qkv.models.packages.ModelError: --layer: expected 0 to 5 (the model has 6 layers; -1 is the last), got 6
    """
    from qkv.models import ModelError

    if layer is None:
        layer = num_layers - 1
    if not -num_layers <= layer < num_layers:
        raise ModelError(
            f"--layer: expected 0 to {num_layers - 1} (the model has {num_layers} layers; -1 is the last), got {layer}"
        )
    if head is not None and not -num_heads <= head < num_heads:
        raise ModelError(
            f"--head: expected 0 to {num_heads - 1} (each layer has {num_heads} heads; -1 is the last), got {head}"
        )
    return Choice(layer % num_layers, None if head is None else head % num_heads)


def shown_tokens(tokens: list[str], kind: str) -> list[str]:
    """Tokens as a reader wants them: no BPE leading space, visible newlines and tabs.

    WordPiece continuation pieces keep their ``##`` (the table also names the whole word).

    >>> shown_tokens([" cat", "\\n\\n", "##ing", " "], "bpe")
    ['cat', '\\\\n\\\\n', '##ing', '␣']
    """
    out = []
    for token in tokens:
        text = token.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
        if kind == "bpe" and text.startswith(" ") and text.strip():
            text = text[1:]
        out.append(text if text.strip() else "␣" * max(len(text), 1))
    return out


def word_spans(text: str, offsets: list[tuple[int, int]], word_ids: list[int | None]) -> list[str | None]:
    """For a token that is a piece of a longer word (``una ##ffa ##ble``), that word; else None.

    >>> word_spans("unaffable cat", [(0, 0), (0, 3), (3, 6), (6, 9), (10, 13)], [None, 0, 0, 0, 1])
    [None, 'unaffable', 'unaffable', 'unaffable', None]
    """
    spans: dict[int, tuple[int, int, int]] = {}
    for (start, end), word in zip(offsets, word_ids):
        if word is None:
            continue
        s, e, count = spans.get(word, (start, end, 0))
        spans[word] = (min(s, start), max(e, end), count + 1)
    out: list[str | None] = []
    for word in word_ids:
        if word is None or spans[word][2] < 2:
            out.append(None)
        else:
            s, e, _ = spans[word]
            out.append(text[s:e].strip())
    return out


def top_attended(
    row: list[float], special: list[bool], *, k: int, include_special: bool, upto: int | None = None
) -> list[tuple[int, float]]:
    """The ``k`` keys with most weight in ``row`` (positions, weights), specials left out unless asked.

    ``upto``: only keys ``j <= upto`` are candidates (a causal model's row ``i`` sees no later token).

    >>> top_attended([0.5, 0.1, 0.3, 0.1], [True, False, False, True], k=2, include_special=False)
    [(2, 0.3), (1, 0.1)]
    >>> top_attended([0.9, 0.1, 0.0, 0.0], [False] * 4, k=3, include_special=False, upto=1)
    [(0, 0.9), (1, 0.1)]
    """
    last = len(row) - 1 if upto is None else upto
    candidates = [(j, w) for j, w in enumerate(row[: last + 1]) if include_special or not special[j]]
    return sorted(candidates, key=lambda jw: (-jw[1], jw[0]))[:k]


def one_line(error: Exception) -> Exception:
    """The same error with its message on one line (the command line prints one line per error).

    >>> from qkv.models import ModelError
    >>> str(one_line(ModelError("install it with:\\n    pip install x\\n(no deps)")))
    'install it with: pip install x (no deps)'
    """
    return type(error)(" ".join(str(error).split()))


def run_with_one_line_errors(
    command: Callable[[argparse.Namespace, Console], int], args: argparse.Namespace, console: Console
) -> int:
    """``command(args, console)``, with a `ModelError` it raises put on one line (`one_line`)."""
    from qkv.models import ModelError

    try:
        return command(args, console)
    except ModelError as error:
        raise one_line(error) from None


def load_with_spinner(name: str, status: Console) -> TextEncoder | LanguageModel:
    """`qkv.models.load` of ``name``, with a spinner on ``status`` while it loads."""
    from qkv.models import load

    with status.status(f"loading {name} ...", spinner="dots"):
        return load(name)


def picture_format(path: str) -> str:
    """The picture format ``--png`` writes, from the file's extension; `ModelError` listing the ones that work.

    >>> picture_format("cat.svg")
    'svg'
    >>> picture_format("out.jpgg")
    Traceback (most recent call last):
    ...
    qkv.models.packages.ModelError: --png: cannot write 'out.jpgg': its extension '.jpgg' names no picture
    format; expected .png, .svg, .pdf or .jpg (also ...)
    """
    from matplotlib.backend_bases import FigureCanvasBase

    from qkv.models import ModelError

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(path).suffix
    if suffix[1:].lower() not in formats:
        common = ("png", "svg", "pdf", "jpg")
        others = sorted(set(formats) - set(common))
        given = f"its extension {suffix!r} names no picture format" if suffix else "it has no extension"
        raise ModelError(
            f"--png: cannot write {path!r}: {given}; expected .png, .svg, .pdf or .jpg "
            f"(also {', '.join('.' + f for f in others)})"
        )
    return suffix[1:].lower()


def run(args: argparse.Namespace, console: Console) -> int:
    return run_with_one_line_errors(_run, args, console)


def _run(args: argparse.Namespace, console: Console) -> int:
    from qkv.models import ModelError

    if not args.text.strip():
        raise ModelError("TEXT: expected some text, got an empty string; e.g. qkv explain 'The cat sat on the mat.'")
    if args.top < 1:
        raise ModelError(f"--top: expected a positive number of tokens, got {args.top}")
    if args.png:
        picture_format(args.png)  # before the model loads: a typo costs nothing
    status = Console(stderr=True)
    model = load_with_spinner(args.model, status)
    attn = model.attentions(args.text)
    choice = choose(attn.num_layers, attn.num_heads, args.layer, args.head)
    layer = attn.weights[choice.layer]  # (H, N, N)
    matrix = layer.mean(0) if choice.head is None else layer[choice.head]  # (N, N)
    rows = matrix.tolist()

    if args.html or args.png:
        sys.stdout.flush()  # the table first, then where the pictures went (stderr)
        _write_pictures(args, attn, choice, matrix, model.tokenizer.kind, status)
    if args.json:
        print(json.dumps(_as_json(attn, choice, rows, args), ensure_ascii=False))
        return 0

    encoding = model.tokenizer.backend.encode(args.text)
    tokens = shown_tokens(attn.tokens, model.tokenizer.kind)
    words = word_spans(args.text, [tuple(o) for o in encoding.offsets], encoding.word_ids)
    console.print(f"What each token attends to in {args.text!r}", style="bold", highlight=False)
    console.print(f"model: {_describe(model)}", highlight=False)
    console.print(f"shown: {_label(attn, choice)}", highlight=False)
    console.print(_table(attn, tokens, words, rows, args))
    for line in [*heads_note(attn, choice, tokens, args.include_special), *_notes(attn, rows, args)]:
        console.print(line, style="dim", highlight=False)
    return 0


PRONOUNS = ("it", "its", "he", "him", "his", "she", "her", "they", "them", "their")


def heads_note(attn, choice: Choice, tokens: list[str], include_special: bool = False) -> list[str]:
    """What the heads of the shown layer do, so one view is not read as the model's reason.

    For the first pronoun of the text (else the last word), the token each head of the layer puts
    its largest weight on, counted; and the caveat that weights show where a head looks, not why.
    """
    layer = attn.weights[choice.layer]  # (H, N, N)
    words = [i for i, s in enumerate(attn.special) if not s]
    if not words:
        return []
    lowered = [tokens[i].strip().lower() for i in range(len(tokens))]
    query = next((i for i in words if lowered[i] in PRONOUNS), words[-1])
    upto = query if attn.causal else None
    tops = [
        top_attended(layer[h, query].tolist(), attn.special, k=1, include_special=include_special, upto=upto)
        for h in range(layer.shape[0])
    ]
    votes: dict[str, list[int]] = {}
    for h, top in enumerate(tops):
        if top:
            votes.setdefault(tokens[top[0][0]], []).append(h)
    ranked = sorted(votes.items(), key=lambda kv: (-len(kv[1]), kv[1][0]))
    parts = [f"{word!r} in {len(hs)} (head{'s' if len(hs) > 1 else ''} {', '.join(map(str, hs))})" for word, hs in ranked]
    shown = "this view" if choice.head is None else f"head {choice.head}"
    return [
        f"Heads disagree: for {tokens[query]!r}, the {layer.shape[0]} heads of layer {choice.layer} put their largest "
        f"weight on {'; '.join(parts[:4])}{'; and others' if len(parts) > 4 else ''}.",
        f"A weight says where {shown} looks, not why the model decides: compare heads and layers (--head, --layer), "
        "and see `qkv learn --text reading` for a head's weights beside the effect of switching it off.",
    ]


def _describe(model) -> str:
    from qkv.models import PACKAGES

    package = PACKAGES.get(model.name)
    return f"{model.name} ({package.description})" if package is not None else f"{model.name} ({model.kind})"


def _label(attn, choice: Choice) -> str:
    heads = f"mean of its {attn.num_heads} heads" if choice.head is None else f"head {choice.head} of {attn.num_heads}"
    return f"layer {choice.layer} of 0-{attn.num_layers - 1}, {heads}"


def _table(attn, tokens: list[str], words: list[str | None], rows, args) -> Table:
    specials = any(attn.special)
    table = Table(header_style="bold")
    table.add_column("#", justify="right", style="dim")
    table.add_column("token", style="bold")
    table.add_column(f"attends most to (top {args.top}, weight)")
    if specials and not args.include_special:
        table.add_column("on specials", justify="right")
    for i, row in enumerate(rows):
        label = Text(tokens[i], style="dim" if attn.special[i] else "bold")
        if attn.special[i]:
            label.append(" special", style="dim italic")
        elif words[i] is not None:
            label.append(f" ({words[i]})", style="dim")
        top = top_attended(
            row, attn.special, k=args.top, include_special=args.include_special, upto=i if attn.causal else None
        )
        cell = Text()
        for rank, (j, w) in enumerate(top):
            if rank:
                cell.append("   ")
            name = tokens[j] + ("" if j != i else " (itself)")
            cell.append(name, style="bold cyan" if rank == 0 else "cyan")
            cell.append(f" {w:.2f}", style="default")
        cells = [str(i), label, cell]
        if specials and not args.include_special:
            cells.append(f"{sum(w for w, s in zip(row, attn.special) if s):.2f}")
        table.add_row(*cells)
    return table


def _notes(attn, rows, args) -> list[str]:
    notes = ["Weights are softmax probabilities: each row sums to 1 over all tokens."]
    if attn.causal:
        notes.append(f"{attn.model} is a causal language model: a token sees only itself and the tokens before it.")
        first = sum(row[0] for row in rows[1:]) / max(len(rows) - 1, 1)
        if first > 0.3:
            notes.append(
                f"The tokens after the first give it {first:.0%} of their weight on average: causal models use the "
                "first token as an 'attention sink' (Xiao et al., 2023), much as BERT uses [SEP]."
            )
    names = sorted({t for t, s in zip(attn.tokens, attn.special) if s})
    if names and not args.include_special:
        mean = sum(sum(w for w, s in zip(row, attn.special) if s) for row in rows) / len(rows)
        notes.append(
            f"{' and '.join(names)} are special tokens the tokenizer adds. Many heads park weight on them "
            f"({mean:.0%} of all weight here, the 'on specials' column), so they are left out of the top lists; "
            "--include-special ranks them too."
        )
    notes.append(
        f"Other views: --layer 0..{attn.num_layers - 1}, --head 0..{attn.num_heads - 1}, --json, --html FILE, "
        "--png FILE."
    )
    return notes


def _as_json(attn, choice: Choice, rows, args) -> dict:
    top = [
        {
            "index": i,
            "token": attn.tokens[i],
            "attends_to": [
                {"index": j, "token": attn.tokens[j], "weight": round(w, 6)}
                for j, w in top_attended(
                    row, attn.special, k=args.top, include_special=args.include_special, upto=i if attn.causal else None
                )
            ],
        }
        for i, row in enumerate(rows)
    ]
    return {
        "model": attn.model,
        "text": attn.text,
        "layer": choice.layer,
        "head": choice.head,
        "heads": "mean" if choice.head is None else [choice.head],
        "num_layers": attn.num_layers,
        "num_heads": attn.num_heads,
        "causal": attn.causal,
        "tokens": attn.tokens,
        "ids": attn.ids,
        "special": attn.special,
        "include_special": args.include_special,
        "weights": [[round(w, 6) for w in row] for row in rows],
        "top": top,
    }


def _write_pictures(args, attn, choice: Choice, matrix, kind: str, status: Console) -> None:
    from qkv.models import ModelError

    try:
        from qkv import viz
    except ImportError as error:
        raise ModelError(f"--html / --png: the pictures need qkv.viz, which could not be imported ({error})") from None
    tokens = shown_tokens(attn.tokens, kind)
    for flag, path in (("--html", args.html), ("--png", args.png)):
        if path:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ModelError(f"{flag}: cannot make the folder for {path}: {error.strerror}") from None
    try:
        if args.html:
            heads = None if choice.head is None else [choice.head]
            title = f"{attn.model}: {attn.text}"
            viz.head_view(list(attn.weights), tokens, layer=choice.layer, heads=heads, title=title).save(args.html)
            status.print(f"wrote {args.html} (every layer and head; hover a token)", highlight=False)
        if args.png:
            figure = viz.heatmap(matrix, tokens, title=f"{attn.model}: {_label(attn, choice)}")
            try:
                figure.savefig(args.png, bbox_inches="tight", dpi=150, format=picture_format(args.png))
            except (ValueError, RuntimeError) as error:  # a format this matplotlib lists but cannot write here
                raise ModelError(f"--png: cannot write {args.png!r} ({error}); try a .png or .svg file") from None
            status.print(f"wrote {args.png}", highlight=False)
    except OSError as error:
        raise ModelError(f"--html / --png: cannot write {error.filename}: {error.strerror}") from None
