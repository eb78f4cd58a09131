"""`qkv explain TEXT`: for each token of a text, the tokens it attends to most, on a real model.

One layer's attention probabilities (the last layer by default), averaged over
its heads unless ``--head`` picks one, in a terminal table; ``--json`` prints
them machine-readable, ``--html`` / ``--png`` write a view and a picture.

Only what is shown is computed: the forward pass keeps the shown layer's queries
and keys (`qkv.interpret.record` with ``keep="calls"``), and the weights are
computed a block of query rows at a time and reduced to each row's top tokens, so
a text of thousands of tokens never holds a ``(heads, N, N)`` tensor. ``--rows A:B``
limits the rows shown. What would still be large (``--json-weights``, ``--html``,
``--png`` of a long text) is estimated first and refused, with the estimate and a
way out, when it is over `VIEW_BUDGET`; a text longer than the model's context is
refused before the model runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from qkv.interpret.attentions import TokenizedText

if TYPE_CHECKING:
    from torch import Tensor

    from qkv.hf.loaded import TransformersModel
    from qkv.interpret import RecordedCall, RowSummary
    from qkv.models import LanguageModel, TextEncoder

DEFAULT_MODEL = "minilm"
TOP = 3
# The most memory (bytes) --json-weights, --html or --png may take for the weights they show.
VIEW_BUDGET = 256 * 2**20
# Bytes per weight shown, as each output holds it: JSON text ("0.123456, "); the HTML view (float64 copy,
# bytes, base64, the float32 weights); the picture (matplotlib's float64 copies and its resampled image).
BYTES_PER_WEIGHT = {"--json-weights": 10, "--html": 16, "--png": 40}
# The picture's longest side in pixels at most: matplotlib draws the image through float64 RGBA buffers of the
# picture's size (32 bytes a pixel), so a 28-inch heatmap at 150 dpi would take 600 MB however few its rows.
PICTURE_PIXELS = 2400
BROKEN_PIPE = 141  # 128 + SIGPIPE, what shells report for a writer whose reader went away (`| head`)


def add_parser(commands) -> None:
    explain = commands.add_parser(
        "explain",
        help="what each token of a text attends to, on a real model",
        description=(
            "For each token of TEXT, the tokens it attends to most in one layer of a real model "
            "(the last layer by default), averaged over the layer's heads unless --head picks one. "
            "Long texts work: only the shown layer (and head, and --rows) is computed, a block of rows at a time."
        ),
    )
    explain.add_argument(
        "text",
        metavar="TEXT",
        nargs="?",
        help="the text to look at, e.g. 'The cat sat on the mat.'; '-' reads it from standard input",
    )
    explain.add_argument("--file", metavar="F", help="read the text from file F ('-': standard input) instead of TEXT")
    explain.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="NAME|PATH",
        help="minilm (default), smollm2, a BERT or Llama folder or .gguf file, or any transformers model folder "
        "(run by transformers with attn_implementation='qkv' where qkv has no implementation of its own)",
    )
    explain.add_argument(
        "--layer",
        type=int,
        metavar="L",
        help="layer to show, 0-based; negative counts from the end (default: the last layer)",
    )
    explain.add_argument(
        "--head", type=int, metavar="H", help="one head of that layer (default: the mean of all heads)"
    )
    explain.add_argument(
        "--rows",
        metavar="A:B",
        help="show only the tokens at positions A to B-1 (0-based; one number: that token; negative counts from the "
        "end, written with '=': --rows=-20: is the last 20); each still sees every token it attends to",
    )
    explain.add_argument("--top", type=int, default=TOP, metavar="K", help=f"attended tokens listed per token ({TOP})")
    explain.add_argument(
        "--include-special",
        action="store_true",
        help="rank special tokens ([CLS], [SEP], <|im_start|>, ...) too; by default they are left out of the top "
        "lists and their total weight gets its own column",
    )
    explain.add_argument(
        "--json",
        action="store_true",
        help="print machine-readable JSON instead of the table: the tokens and each shown token's top list",
    )
    explain.add_argument(
        "--json-weights",
        action="store_true",
        help="with --json, also every weight of the shown rows (rows × tokens; refused when too large)",
    )
    explain.add_argument(
        "--html",
        metavar="FILE",
        help="also write an interactive HTML view (every layer and head of a short text; "
        "the shown layer of a long one)",
    )
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
    qkv.errors.ModelError: --layer: expected 0 to 5 (the model has 6 layers; -1 is the last), got 6
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


def load_any_with_spinner(name: str, status: Console) -> TextEncoder | LanguageModel | TransformersModel:
    """`qkv.loader.load` of ``name`` (qkv's own implementation, else transformers'), with a spinner on ``status``."""
    from qkv.loader import load

    with status.status(f"loading {name} ...", spinner="dots"):
        return load(name)


def picture_format(path: str) -> str:
    """The picture format ``--png`` writes, from the file's extension; `ModelError` listing the ones that work.

    >>> picture_format("cat.svg")
    'svg'
    >>> picture_format("out.jpgg")
    Traceback (most recent call last):
    ...
    qkv.errors.ModelError: --png: cannot write 'out.jpgg': its extension '.jpgg' names no picture
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


def read_text(text: str | None, file: str | None, stdin: Callable[[], str] | None = None) -> str:
    """The text to explain: TEXT, the file ``--file F``, or standard input for ``-`` (either way).

    >>> read_text("The cat.", None)
    'The cat.'
    >>> read_text(None, None)
    Traceback (most recent call last):
    ...
    qkv.errors.ModelError: TEXT: expected a text, --file F, or - to read standard input;
    e.g. qkv explain 'The cat sat on the mat.'
    """
    from qkv.models import ModelError

    if text is not None and file is not None:
        raise ModelError("TEXT / --file: give the text or --file F, not both")
    source = file if file is not None else text
    if source is None:
        raise ModelError(
            "TEXT: expected a text, --file F, or - to read standard input; e.g. qkv explain 'The cat sat on the mat.'"
        )
    if source == "-" and (file is not None or text == "-"):
        try:
            return (stdin or sys.stdin.read)()
        except UnicodeDecodeError as error:
            raise ModelError(f"standard input: expected UTF-8 text ({error.reason} at byte {error.start})") from None
    if file is None:
        return source
    try:
        return Path(file).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ModelError(f"--file: {file!r} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise ModelError(f"--file: cannot read {file!r}: {error.strerror}") from None


def row_bounds(spec: str) -> tuple[int | None, int | None] | int:
    """``--rows`` as written: ``(A, B)`` of ``A:B`` (None where left out), or the one position of ``A``.

    >>> row_bounds("10:20"), row_bounds("-20:"), row_bounds("7")
    ((10, 20), (-20, None), 7)
    """
    from qkv.models import ModelError

    parts = spec.split(":")
    try:
        values = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        values = []
    if len(parts) == 1 and values and values[0] is not None:
        return values[0]
    if len(parts) != 2 or len(values) != 2:
        raise ModelError(
            f"--rows: expected A:B (0-based token positions, B excluded; negative counts from the end), "
            f"e.g. 0:50 or --rows=-20:, got {spec!r}"
        )
    return values[0], values[1]


def parse_rows(spec: str | None, n: int) -> range:
    """The token positions ``--rows`` names among ``n`` tokens, as Python slices them (one number: one token).

    >>> parse_rows(None, 5), parse_rows("1:3", 5), parse_rows("-2:", 5), parse_rows("4", 5), parse_rows(":99", 5)
    (range(0, 5), range(1, 3), range(3, 5), range(4, 5), range(0, 5))
    >>> parse_rows("3:1", 5)
    Traceback (most recent call last):
    ...
    qkv.errors.ModelError: --rows: '3:1' names no token of the 5 (positions 0 to 4); expected A:B with A < B,
    e.g. 0:50 or --rows=-20:
    """
    from qkv.models import ModelError

    if spec is None:
        return range(n)
    bounds = row_bounds(spec)
    if isinstance(bounds, int):
        if not -n <= bounds < n:
            raise ModelError(f"--rows: token {bounds} is out of range for a text of {n} tokens (0 to {n - 1})")
        return range(bounds % n, bounds % n + 1)
    shown = range(n)[slice(*bounds)]
    if not shown:
        raise ModelError(
            f"--rows: {spec!r} names no token of the {n} (positions 0 to {n - 1}); expected A:B with A < B, "
            "e.g. 0:50 or --rows=-20:"
        )
    return shown


def megabytes(size: float) -> str:
    """A byte count as people read it.

    >>> megabytes(3.5 * 2**20), megabytes(7.3 * 2**30)
    ('3.5 MB', '7.3 GB')
    """
    return f"{size / 2**30:.1f} GB" if size >= 2**30 else f"{size / 2**20:.1f} MB"


def check_context(n: int, limit: int, name: str, causal: bool) -> None:
    """Refuse a text of ``n`` tokens beyond the model's ``limit``, naming the limit and ways out."""
    from qkv.models import ModelError

    if n <= limit:
        return
    words = limit * 3 // 4  # English runs about 4 tokens per 3 words
    longer = "" if causal else "; or --model smollm2 (8192 tokens)"
    raise ModelError(
        f"text: expected at most {limit} tokens ({name}'s {'context length' if causal else 'positions'}), got {n:,}; "
        f"explain a part of it (about {words:,} words at most, e.g. --file with one section){longer}"
    )


@dataclass(frozen=True)
class Explained(TokenizedText):
    """The tokens of the explained text (`TokenizedText`): what the table, the notes and the JSON name."""

    causal: bool
    num_layers: int
    num_heads: int
    implementation: str = ""  # what ran the model: "qkv's own BERT", "transformers GPT2LMHeadModel with ..."


def _tokens(model, text: str, num_layers: int, num_heads: int, runs_on: str = "") -> tuple[Explained, object]:
    """The text's ids, readable tokens and special-token flags (as `qkv.models.LoadedModel.attentions` marks them)."""
    ids = model.tokenizer.encode(text)
    encoding = model.tokenizer.backend.encode(text)
    info = Explained.read(
        model.tokenizer,
        text,
        ids,
        model=model.name,
        encoding=encoding,
        causal=model.causal,
        num_layers=num_layers,
        num_heads=num_heads,
        implementation=runs_on,
    )
    return info, encoding


def _view_bytes(flag: str, heads: int, rows: int, keys: int) -> int:
    return BYTES_PER_WEIGHT[flag] * heads * rows * keys


def check_view(flag: str, what: str, heads: int, rows: int, keys: int, ways_out: str) -> None:
    """Refuse an output whose estimated memory is over `VIEW_BUDGET`, with the estimate and ways out.

    >>> check_view("--png", "head 0", 1, 100, 100, "--rows A:B")
    >>> check_view("--png", "head 0", 1, 7000, 7000, "--rows A:B")
    Traceback (most recent call last):
    ...
    qkv.errors.ModelError: --png: head 0 over 7,000 rows × 7,000 tokens would take about 1.8 GB to draw
    (qkv explain allows 256.0 MB); --rows A:B
    """
    from qkv.models import ModelError

    size = _view_bytes(flag, heads, rows, keys)
    if size > VIEW_BUDGET:
        verb = "to write" if flag == "--json-weights" else "to draw"
        raise ModelError(
            f"{flag}: {what} over {rows:,} rows × {keys:,} tokens would take about {megabytes(size)} {verb} "
            f"(qkv explain allows {megabytes(VIEW_BUDGET)}); {ways_out}"
        )


def _shown_keys(causal: bool, rows: range, n: int) -> int:
    """How many keys the pictures of ``rows`` show: a causal model's rows see nothing past the last of them."""
    return rows.stop if causal else n


def run(args: argparse.Namespace, console: Console) -> int:
    try:
        return run_with_one_line_errors(_run, args, console)
    except BrokenPipeError:  # `qkv explain ... | head`: the reader has what it wanted
        _quiet_stdout()
        return BROKEN_PIPE


def _quiet_stdout() -> None:
    """Point standard output at the null device, so that its final flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file behind sys.stdout (a test's capture)
        pass


def _run(args: argparse.Namespace, console: Console) -> int:
    from qkv.loader import attention_shape, implementation
    from qkv.models import ModelError

    started = time.perf_counter()
    text = read_text(args.text, args.file)
    if not text.strip():
        raise ModelError("TEXT: expected some text, got an empty string; e.g. qkv explain 'The cat sat on the mat.'")
    if args.top < 1:
        raise ModelError(f"--top: expected a positive number of tokens, got {args.top}")
    if args.json_weights and not args.json:
        raise ModelError("--json-weights: it adds the weights to the JSON; give --json too")
    if args.png:
        picture_format(args.png)  # before the model loads: a typo costs nothing
    if args.rows is not None:
        row_bounds(args.rows)  # its syntax, before the model loads
    status = Console(stderr=True)
    model = load_any_with_spinner(args.model, status)
    num_layers, num_heads = attention_shape(model)
    n = len(model.tokenizer.backend.encode(text).ids)
    check_context(n, model.context_length, model.name, model.causal)
    choice = choose(num_layers, num_heads, args.layer, args.head)
    info, encoding = _tokens(model, text, num_layers, num_heads, implementation(model))
    rows = parse_rows(args.rows, n)
    every_layer = _plan_views(args, info, choice, rows)

    forward_started = time.perf_counter()
    with status.status(f"running {model.name} on {n:,} tokens ...", spinner="dots"):
        calls = _forward(model, info.ids, None if every_layer else [choice.layer])
    forward_seconds = time.perf_counter() - forward_started
    call = next(c for c in calls if c.layer == choice.layer)
    heads = None if choice.head is None else [choice.head]
    summary = _summarize(call, info, heads, rows, args)

    if args.html or args.png:
        sys.stdout.flush()  # the table first, then where the pictures went (stderr)
        _write_pictures(args, info, choice, calls, rows, model.tokenizer.kind, status)
    if args.json:
        _print_json(info, choice, summary, call, heads, rows, args)
    else:
        tokens = shown_tokens(info.tokens, model.tokenizer.kind)
        words = word_spans(text, [tuple(o) for o in encoding.offsets], encoding.word_ids)
        shown = f"{info.text!r}" if len(info.text) <= 200 else f"{info.text[:80]!r}... ({len(info.text):,} characters)"
        console.print(f"What each token attends to in {shown}", style="bold", highlight=False)
        console.print(f"model: {_describe(model)}", highlight=False)
        console.print(f"implementation: {implementation(model)}", highlight=False)
        console.print(f"shown: {_label(info, choice)}{_rows_label(rows, n)}", highlight=False)
        console.print(_table(info, tokens, words, summary, args))
        query = note_query(tokens, info.special, rows)
        notes = (
            []
            if query is None
            else heads_note(
                call.weights(rows=[query])[0, :, 0].float().cpu(),
                query,
                choice,
                tokens,
                info.special,
                info.causal,
                args.include_special,
            )
        )
        for line in [*notes, *_notes(info, summary, args)]:
            console.print(line, style="dim", highlight=False)
    status.print(
        _timing(n, rows, time.perf_counter() - started, forward_seconds, model.load_seconds),
        highlight=False,
        soft_wrap=True,
    )
    return 0


def _timing(n: int, rows: range, total: float, forward: float, load: float) -> str:
    """The statistics line: tokens, rows, seconds, and the peak memory of the process where the system tells it."""
    line = f"explained {n:,} tokens ({len(rows):,} shown) in {total:.1f} s: model loaded in {load:.1f} s, "
    line += f"forward pass {forward:.1f} s"
    from qkv.bench import peak_resident_bytes

    peak = peak_resident_bytes()
    if peak is not None:
        line += f"; peak memory {megabytes(peak)}"
    return line


def _plan_views(args: argparse.Namespace, info: Explained, choice: Choice, rows: range) -> bool:
    """Check what --json-weights, --html and --png would take; whether the HTML view can hold every layer."""
    n = len(info.ids)
    heads = info.num_heads if choice.head is None else 1
    where = f"layer {choice.layer}'s " + (f"{heads} heads" if choice.head is None else f"head {choice.head}")
    keys = _shown_keys(info.causal, rows, n)
    fewer = "fewer rows with --rows A:B (e.g. --rows 0:200)"
    if args.json_weights:
        shown = "the mean of " + where if choice.head is None else where
        way_out = f"{fewer}, or leave out --json-weights (the top lists stay)"
        check_view("--json-weights", shown, 1, len(rows), n, way_out)
    if args.png:
        check_view(
            "--png",
            where if choice.head is not None else "the mean of " + where,
            1,
            len(rows),
            keys,
            f"{fewer}, or a shorter text",
        )
    if not args.html:
        return False
    every = info.num_layers * info.num_heads
    if _view_bytes("--html", every, len(rows), keys) <= VIEW_BUDGET:
        return True
    one_head = "" if choice.head is not None else "one head with --head H, "
    check_view("--html", where, heads, len(rows), keys, f"{one_head}{fewer}, or a shorter text")
    return False


def _forward(model, ids: list[int], layers: list[int] | None) -> list[RecordedCall]:
    """Run the model on ``ids``, keeping the attention calls of ``layers`` (default all) but no weights."""
    import torch

    from qkv.interpret import record

    if hasattr(model, "record_calls"):  # a transformers model: `qkv.hf.loaded` keeps its calls alike
        return model.record_calls(ids, layers)
    device = next(model.model.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)  # (1, N)
    forward = getattr(model.model, "hidden_states", model.model)  # a decoder: skip the LM head
    with torch.no_grad(), record(model.model, layers=layers, keep="calls") as rec:
        forward(input_ids)
    return rec.calls


def _summarize(call: RecordedCall, info: Explained, heads: list[int] | None, rows: range, args) -> RowSummary:
    import torch

    from qkv.interpret import summarize_rows

    special = torch.tensor(info.special, dtype=torch.bool)
    first = torch.zeros(len(info.ids), dtype=torch.bool)
    first[0] = True
    return summarize_rows(
        call,
        k=args.top,
        heads=heads,
        rows=list(rows),
        candidates=None if args.include_special else ~special,
        sums={"special": special, "first": first},
    )


PRONOUNS = ("it", "its", "he", "him", "his", "she", "her", "they", "them", "their")


def note_query(tokens: list[str], special: list[bool], rows: range | None = None) -> int | None:
    """The token the heads note looks at: the first pronoun among the shown rows, else their last word.

    >>> note_query(["[CLS]", "the", "cat", "because", "it", "[SEP]"], [True, False, False, False, False, True])
    4
    """
    shown = range(len(tokens)) if rows is None else rows
    words = [i for i in shown if not special[i]]
    if not words:
        return None
    return next((i for i in words if tokens[i].strip().lower() in PRONOUNS), words[-1])


def heads_note(
    per_head: Tensor,
    query: int,
    choice: Choice,
    tokens: list[str],
    special: list[bool],
    causal: bool,
    include_special: bool = False,
) -> list[str]:
    """What the heads of the shown layer do, so one view is not read as the model's reason.

    ``per_head (H, N)``: row ``query`` of each head of the layer. For that token,
    the token each head puts its largest weight on, counted; and the caveat that
    weights show where a head looks, not why.
    """
    upto = query if causal else None
    tops = [
        top_attended(per_head[h].tolist(), special, k=1, include_special=include_special, upto=upto)
        for h in range(per_head.shape[0])
    ]
    votes: dict[str, list[int]] = {}
    for h, top in enumerate(tops):
        if top:
            votes.setdefault(tokens[top[0][0]], []).append(h)
    ranked = sorted(votes.items(), key=lambda kv: (-len(kv[1]), kv[1][0]))
    parts = [
        f"{word!r} in {len(hs)} (head{'s' if len(hs) > 1 else ''} {', '.join(map(str, hs))})" for word, hs in ranked
    ]
    shown = "this view" if choice.head is None else f"head {choice.head}"
    return [
        f"Heads disagree: for {tokens[query]!r}, the {per_head.shape[0]} heads of layer {choice.layer} put their "
        f"largest weight on {'; '.join(parts[:4])}{'; and others' if len(parts) > 4 else ''}.",
        f"A weight says where {shown} looks, not why the model decides: compare heads and layers (--head, --layer), "
        "and see `qkv learn --text reading` for a head's weights beside the effect of switching it off.",
    ]


def _describe(model) -> str:
    from qkv.models import PACKAGES

    package = PACKAGES.get(model.name)
    return f"{model.name} ({package.description})" if package is not None else f"{model.name} ({model.kind})"


def _label(info: Explained, choice: Choice) -> str:
    heads = f"mean of its {info.num_heads} heads" if choice.head is None else f"head {choice.head} of {info.num_heads}"
    return f"layer {choice.layer} of 0-{info.num_layers - 1}, {heads}"


def _rows_label(rows: range, n: int) -> str:
    return "" if len(rows) == n else f"; tokens {rows.start} to {rows.stop - 1} of {n}"


def _table(info: Explained, tokens: list[str], words: list[str | None], summary: RowSummary, args) -> Table:
    specials = any(info.special)
    table = Table(header_style="bold")
    table.add_column("#", justify="right", style="dim")
    table.add_column("token", style="bold")
    table.add_column(f"attends most to (top {args.top}, weight)")
    if specials and not args.include_special:
        table.add_column("on specials", justify="right")
    on_specials = summary.sums["special"].tolist()
    for r, i in enumerate(summary.rows.tolist()):
        label = Text(tokens[i], style="dim" if info.special[i] else "bold")
        if info.special[i]:
            label.append(" special", style="dim italic")
        elif words[i] is not None:
            label.append(f" ({words[i]})", style="dim")
        cell = Text()
        for rank, (j, w) in enumerate(summary.top(r)):
            if rank:
                cell.append("   ")
            name = tokens[j] + ("" if j != i else " (itself)")
            cell.append(name, style="bold cyan" if rank == 0 else "cyan")
            cell.append(f" {w:.2f}", style="default")
        cells = [str(i), label, cell]
        if specials and not args.include_special:
            cells.append(f"{on_specials[r]:.2f}")
        table.add_row(*cells)
    return table


def _notes(info: Explained, summary: RowSummary, args) -> list[str]:
    notes = ["Weights are softmax probabilities: each row sums to 1 over all tokens."]
    if info.causal:
        notes.append(f"{info.model} is a causal language model: a token sees only itself and the tokens before it.")
        later = summary.rows > 0
        first = float(summary.sums["first"][later].mean()) if bool(later.any()) else 0.0
        if first > 0.3:
            notes.append(
                f"The tokens after the first give it {first:.0%} of their weight on average: causal models use the "
                "first token as an 'attention sink' (Xiao et al., 2023), much as BERT uses [SEP]."
            )
    names = sorted({t for t, s in zip(info.tokens, info.special) if s})
    if names and not args.include_special:
        mean = float(summary.sums["special"].mean())
        notes.append(
            f"{' and '.join(names)} are special tokens the tokenizer adds. Many heads park weight on them "
            f"({mean:.0%} of all weight here, the 'on specials' column), so they are left out of the top lists; "
            "--include-special ranks them too."
        )
    notes.append(
        f"Other views: --layer 0..{info.num_layers - 1}, --head 0..{info.num_heads - 1}, --rows A:B, --json, "
        "--html FILE, --png FILE."
    )
    return notes


def _print_json(
    info: Explained, choice: Choice, summary: RowSummary, call: RecordedCall, heads: list[int] | None, rows: range, args
) -> None:
    """The JSON document, written as it is made: the weights (``--json-weights``) a block of rows at a time."""
    top = [
        {
            "index": i,
            "token": info.tokens[i],
            "attends_to": [{"index": j, "token": info.tokens[j], "weight": round(w, 6)} for j, w in summary.top(r)],
        }
        for r, i in enumerate(summary.rows.tolist())
    ]
    document = {
        "model": info.model,
        "implementation": info.implementation,
        "text": info.text,
        "layer": choice.layer,
        "head": choice.head,
        "heads": "mean" if choice.head is None else [choice.head],
        "num_layers": info.num_layers,
        "num_heads": info.num_heads,
        "num_tokens": len(info.ids),
        "rows": [rows.start, rows.stop],
        "causal": info.causal,
        "tokens": info.tokens,
        "ids": info.ids,
        "special": info.special,
        "include_special": args.include_special,
        "top": top,
    }
    text = json.dumps(document, ensure_ascii=False)
    if not args.json_weights:
        sys.stdout.write(text + "\n")
        return
    sys.stdout.write(text[:-1] + ', "weights": [')
    first = True
    for _, w in call.blocks(heads=heads, rows=list(rows)):
        for row in w[0].mean(0).tolist():  # (B, H', C, N) -> (C, N)
            sys.stdout.write(("" if first else ", ") + json.dumps([round(x, 6) for x in row]))
            first = False
    sys.stdout.write("]}\n")


def _write_pictures(
    args, info: Explained, choice: Choice, calls: list[RecordedCall], rows: range, kind: str, status: Console
) -> None:
    from qkv.models import ModelError

    try:
        from qkv import viz
    except ImportError as error:
        raise ModelError(f"--html / --png: the pictures need qkv.viz, which could not be imported ({error})") from None
    tokens = shown_tokens(info.tokens, kind)
    keys = _shown_keys(info.causal, rows, len(info.ids))
    row_tokens, key_tokens = tokens[rows.start : rows.stop], tokens[:keys]
    shown_rows = list(rows)
    for flag, path in (("--html", args.html), ("--png", args.png)):
        if path:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ModelError(f"{flag}: cannot make the folder for {path}: {error.strerror}") from None
    call = next(c for c in calls if c.layer == choice.layer)
    heads = None if choice.head is None else [choice.head]
    try:
        if args.html:
            every = len(calls) > 1
            shown = calls if every else [call]
            # every layer and head (a short text), or the shown layer's heads; the rows shown, their keys
            weights = [c.weights(heads=None if every else heads, rows=shown_rows)[..., :keys] for c in shown]
            names = [f"layer {c.layer}" for c in shown]
            title = f"{info.model}: {info.text if len(info.text) <= 200 else info.text[:200] + '...'}"
            view = viz.head_view(
                weights,
                row_tokens,
                key_tokens=key_tokens,
                layer=choice.layer if every else 0,
                heads=heads if every else None,
                layer_names=names,
                title=title,
            )
            view.save(args.html)
            what = "every layer and head" if every else f"layer {choice.layer} only: the text is long"
            status.print(f"wrote {args.html} ({what}; hover a token)", highlight=False)
            del weights, view
        if args.png:
            matrix = call.weights(heads=heads, rows=shown_rows)[0].mean(0)[:, :keys]  # (1, H', R, N) -> (R, K)
            figure = viz.heatmap(
                matrix, row_tokens, key_tokens=key_tokens, title=f"{info.model}: {_label(info, choice)}"
            )
            try:
                dpi = min(150.0, PICTURE_PIXELS / max(figure.get_size_inches()))
                figure.savefig(args.png, bbox_inches="tight", dpi=dpi, format=picture_format(args.png))
            except (ValueError, RuntimeError) as error:  # a format this matplotlib lists but cannot write here
                raise ModelError(f"--png: cannot write {args.png!r} ({error}); try a .png or .svg file") from None
            status.print(f"wrote {args.png}", highlight=False)
    except OSError as error:
        raise ModelError(f"--html / --png: cannot write {error.filename}: {error.strerror}") from None
