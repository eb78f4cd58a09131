"""``model-attention``: one head of a real model, read from the query word's row of its attention probabilities.

The text goes through MiniLM (a BERT encoder, 6 layers × 12 heads, every token
sees every token) or SmolLM2-135M (a Llama decoder, 30 layers × 9 heads, causal:
a token sees only itself and the tokens before it), or a model of the learner's own
(``qkv learn --model PATH``: a folder transformers loads runs there on qkv attention,
and the model list and sliders grow to it). ``model.attentions(text)``
gives the exact probabilities ``(L, H, N, N)`` that `qkv.interpret.record`
recomputes beside the model's forward pass; the widget reads layer ``layer``,
head ``head``, row ``query`` (the first token that spells the query word).

Default view: MiniLM, layer 5, head 11, query "it" in "The cat sat on the mat
because it was tired.". Measured when the default was chosen: this head puts
0.71 of "it"'s weight on "cat", a clear majority. Layer 5, head 4 also ranks
"cat" first, but with only 0.42 of the weight (and 0.38 on "mat" in head 3): it
is the weaker example, so the default is head 11. The numbers shown are always
recomputed for the arguments given.

Caveats the views carry:

- special tokens count: ``top_key`` is the largest weight over *all* keys, and
  many heads park most of their weight on ``[CLS]`` / ``[SEP]`` (a "sink" that
  carries little information), which is an honest answer, not an error;
- a weight says where a head reads from, not what that reading changes (see the
  ``weights-vs-effect`` widget);
- the model runs in its weights' precision (float32); the entropy is computed in
  ``env.dtype`` from those probabilities.

Helpers used by the other real-model widgets: `find_word` (the token of a word),
`check_length` (at most `MAX_TOKENS` tokens) and `offer_models` (the learner's own
models offered beside the packaged ones).

>>> find_word(["[CLS]", "the", "cat", "##s", "it", "[SEP]"], "It", "query")
4
>>> find_word(["The", " cat", " sat"], "cat", "target")
1
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from qkv.learn.errors import LearnError
from qkv.learn.widget import Control, Env, Result, Widget, register

__all__ = [
    "MAX_TOKENS",
    "ModelAttention",
    "check_length",
    "find_word",
    "normalize_token",
    "offer_models",
    "run_attentions",
    "shape_of",
]

MAX_TOKENS = 32  # tokens of a text, special tokens included: keeps every matrix small and every pass fast
LAYERS = {"minilm": 6, "smollm2": 30}
HEADS = {"minilm": 12, "smollm2": 9}


def normalize_token(token: str) -> str:
    """A token as a word: word-piece markers (``##``, ``Ġ``, ``▁``) and spaces dropped, lower case."""
    token = token.strip()
    for marker in ("##", "Ġ", "▁"):
        if token.startswith(marker):
            token = token[len(marker) :]
    return token.strip().lower()


def find_word(tokens: list[str], word: str, name: str) -> int:
    """The index of the first token that spells ``word`` (case and word-piece markers ignored).

    Raises `LearnError` naming ``name`` and listing the words of the text when none does.
    """
    wanted = normalize_token(word)
    if not wanted or " " in word.strip():
        raise LearnError(f"{name}: expected one word of the text, got {word!r}")
    for i, token in enumerate(tokens):
        if normalize_token(token) == wanted:
            return i
    words = [normalize_token(t) for t in tokens]
    raise LearnError(f"{name}: {word!r} is not a word (token) of the text; the tokens are {words}")


def check_length(name: str, n: int) -> None:
    """`LearnError` when a text has more than `MAX_TOKENS` tokens."""
    if n > MAX_TOKENS:
        raise LearnError(f"{name}: expected at most {MAX_TOKENS} tokens, got {n}; shorten the text")


def run_attentions(env: Env, model_name: str, text: str, name: str = "text") -> Any:
    """``env.model(model_name).attentions(text)`` under the model's lock, after checking the length."""
    model = env.model(model_name)
    check_length(name, len(model.encode(text)))
    with env.lock(model_name):
        return model.attentions(text)


def shape_of(env: Env, name: str) -> tuple[int, int]:
    """(layers, heads) of ``env.model(name)``, loading it if it is not loaded yet."""
    from qkv.loader import attention_shape

    return attention_shape(env.model(name))


def offer_models(
    controls: tuple[Control, ...],
    packaged: Sequence[str],
    env: Env,
    shape: Callable[[Env, str], tuple[int, int]] = shape_of,
) -> tuple[Control, ...]:
    """``controls`` (a ``model`` select of the ``packaged`` models, ``layer`` and ``head`` sliders) as offered with
    ``env``: every model of ``env.models`` that is not a packaged one offered too, the sliders reaching the largest.

    ``shape(env, name)`` gives a model's (layers, heads), loading it; one that does not load, or that ``shape``
    refuses with a `LearnError` (a model the widget cannot use, in the error's words), is named in the model's
    help instead of offered. Without such models, ``controls`` as they are.
    """
    shapes = {name: (LAYERS[name], HEADS[name]) for name in packaged}
    failed = []
    for name in env.models:
        if name not in LAYERS:
            try:
                shapes[name] = shape(env, name)
            except LearnError as error:  # it loads, but the widget cannot use it: the reason, as shape words it
                failed.append(str(error))
            except Exception as error:  # the loader's own error: a ModelError, or the explorer's (a 503)
                failed.append(f"{name} did not load ({error})")
    if len(shapes) == len(packaged) and not failed:
        return controls
    own = [f"{name}: {s[0]} × {s[1]} heads" for name, s in shapes.items() if name not in packaged]
    grown = {
        "layer": {"high": max(s[0] for s in shapes.values()) - 1, "help": "each model's own layers from 0"},
        "head": {"high": max(s[1] for s in shapes.values()) - 1, "help": "each model's own heads from 0"},
    }
    offered = []
    for control in controls:
        if control.name == "model":
            control = replace(control, choices=tuple(shapes), help="; ".join([control.help, *own, *failed]))
        elif control.name in grown:
            control = replace(control, **grown[control.name])
        offered.append(control)
    return tuple(offered)


def _round(x: float, digits: int = 5) -> float:
    return round(float(x), digits)


@register
class ModelAttention(Widget):
    """Where one head of MiniLM or SmolLM2 sends the query word's attention."""

    name = "model-attention"
    title = "Attention in a real model"
    controls = (
        Control(
            "model",
            "select",
            "model",
            "minilm",
            choices=("minilm", "smollm2"),
            help="MiniLM: a BERT encoder (6 × 12 heads); SmolLM2: a Llama decoder (30 × 9 heads, causal)",
        ),
        Control("text", "text", "text", "The cat sat on the mat because it was tired.", high=200),
        Control("layer", "slider", "layer", 5, low=0, high=29, step=1, help="MiniLM has layers 0-5, SmolLM2 0-29"),
        Control("head", "slider", "head", 11, low=0, high=11, step=1, help="MiniLM has heads 0-11, SmolLM2 0-8"),
        Control("query", "text", "query word", "it", high=40),
    )
    facts = ("tokens", "query_index", "top_key", "top_token", "top_weight", "entropy", "head_top_tokens")
    models = ("minilm", "smollm2")

    def controls_in(self, env: Env) -> tuple[Control, ...]:
        """With a model of the learner's own in ``env.models`` (``qkv learn --model PATH``): that one offered too,
        the sliders reaching its layers and heads; one that does not load is named in the model's help instead."""
        return offer_models(self.controls, self.models, env)

    def compute(self, args: dict[str, Any], env: Env) -> Result:
        model_name, layer, head = args["model"], args["layer"], args["head"]
        layers, heads = (LAYERS[model_name], HEADS[model_name]) if model_name in LAYERS else shape_of(env, model_name)
        if layer >= layers:
            raise LearnError(f"layer: {model_name} has layers 0 to {layers - 1}, got {layer}")
        if head >= heads:
            raise LearnError(f"head: {model_name} has heads 0 to {heads - 1}, got {head}")
        att = run_attentions(env, model_name, args["text"])
        tokens = list(att.tokens)
        q = find_word(tokens, args["query"], "query")
        layer_weights = att.weights[layer].to(env.dtype)  # (H, N, N)
        row = layer_weights[head, q]  # (N,)
        top = int(row.argmax())
        logs = torch.where(row > 0, row.log(), torch.zeros_like(row))  # 0 · log 0 = 0 (causal zeros)
        entropy = float(-(row * logs).sum())
        per_head = layer_weights[:, q]  # (H, N): the query's row in every head of this layer
        head_top = per_head.argmax(-1)  # (H,)
        head_top_tokens = [tokens[int(j)] for j in head_top]
        kind = "causal: row i sees keys 0..i" if att.causal else "bidirectional: every token sees every token"
        sink = ""
        if att.special[top]:
            sink = f" The top key {tokens[top]!r} is a special token: heads often park weight there (a 'sink')."
        views: list[dict[str, Any]] = [
            {
                "kind": "tokens",
                "title": f"{model_name} layer {layer} head {head}: where {tokens[q]!r} looks",
                "tokens": tokens,
                "weights": [_round(w) for w in row.tolist()],
                "focus": q,
                "caption": f"Exact softmax probabilities of the query's row ({kind}); they sum to 1.{sink}",
            },
            {
                "kind": "matrix",
                "title": f"{model_name} layer {layer} head {head}: every query row",
                "rows": tokens,
                "cols": tokens,
                "values": [[_round(w) for w in r] for r in layer_weights[head].tolist()],
                "caption": "Row i: how much token i attends to each token j.",
            },
            {
                "kind": "table",
                "title": f"Every head of layer {layer}: what {tokens[q]!r} attends to most",
                "columns": ["head", "top token", "weight"],
                "rows": [
                    [h, head_top_tokens[h], _round(per_head[h, int(head_top[h])])] for h in range(per_head.shape[0])
                ],
                "caption": "Special tokens count as keys. A weight is where a head reads, not proof of what it does.",
            },
        ]
        facts = {
            "tokens": tokens,
            "query_index": q,
            "top_key": top,
            "top_token": tokens[top],
            "top_weight": _round(row[top], 6),
            "entropy": _round(entropy, 6),
            "head_top_tokens": head_top_tokens,
        }
        return Result(views=views, facts=facts)
