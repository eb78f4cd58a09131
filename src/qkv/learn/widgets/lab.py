"""The mechanism lab: scaled dot-product attention step by step on a few words, for one query.

Each word gets a fixed random embedding ``x (N, 8)`` (a function of the word and
a seed only, so a repeated word gets the same vector); per head, fixed random
projections give ``Q, K, V (N, d_k)``. Then::

    scores  = Q Kᵀ                      (N, N)
    scaled  = scores · scale / T        scale = 1/√d_k, or 1 with scaling off; T the temperature
    masked  = scaled, −∞ where the mask forbids (null in the views)
    weights = softmax(masked)           qkv.attention_weights
    out     = weights V                 qkv.attention

``weights`` and ``out`` are qkv's results (`qkv.attention_weights` and
`qkv.attention` with a `qkv.masks` mask and `qkv.mods.temperature`); the score
matrices before them are the same formula written out. Positions: ``sinusoidal``
adds `qkv.positional.SinusoidalPositionalEncoding` to ``x``; ``rotary`` turns q and
k with `qkv.positional.RotaryEmbedding` (it needs an even ``d_k``).

``repeated_rows_equal`` answers, for the head shown, whether every word that
occurs twice has two identical weight rows (largest difference below
``ROW_TOLERANCE``): true without positions and without a mask that treats the
occurrences differently; false with a causal or sliding-window mask or with
positions; null when no word repeats. The query row shown is the query word's
first occurrence.

Caveats: the embeddings and projections are random, not trained, so which word
attends to which means nothing about language; the lab shows the arithmetic.

>>> from qkv.learn.widget import Env
>>> facts = Lab().run({"text": "the cat sat on the mat"}, Env()).facts
>>> facts["tokens"][facts["query_index"]], facts["repeated_rows_equal"]
('cat', True)
>>> Lab().run({"text": "the cat sat on the mat", "mask": "causal"}, Env()).facts["repeated_rows_equal"]
False
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

import qkv
from qkv import masks, mods
from qkv.interpret import entropy
from qkv.learn.errors import LearnError
from qkv.learn.widget import Control, Env, Result, Widget, register
from qkv.learn.widgets._toy import attention_inputs, index_of, matrix, rounded, row, words_of

MAX_WORDS = 12
SHOWN_DIMS = 16  # columns of the output sent to the page (all d_k are computed)
ROW_TOLERANCE = 1e-5  # two weight rows closer than this (largest difference) count as identical


def repeated_rows_equal(words: list[str], weights: Tensor) -> bool | None:
    """Whether each repeated word's occurrences have identical rows of ``weights (N, N)``; None if none repeats."""
    seen: dict[str, int] = {}
    pairs = []
    for i, w in enumerate(words):
        if w.lower() in seen:
            pairs.append((seen[w.lower()], i))
        else:
            seen[w.lower()] = i
    if not pairs:
        return None
    return all(float((weights[a] - weights[b]).abs().max()) < ROW_TOLERANCE for a, b in pairs)


@register
class Lab(Widget):
    """Scaled dot-product attention for one query, step by step, on a few words."""

    name = "lab"
    title = "The attention lab"
    controls = (
        Control("text", "text", "words", "the cat sat on the mat", high=200, help=f"at most {MAX_WORDS} words"),
        Control("d_k", "slider", "key dimension d_k", 8, low=1, high=256, step=1),
        Control("heads", "slider", "heads", 2, low=1, high=4, step=1),
        Control("head", "slider", "head shown", 0, low=0, high=3, step=1, help="must be below the number of heads"),
        Control("scaled", "toggle", "divide by √d_k", True),
        Control("temperature", "slider", "temperature T", 1.0, low=0.1, high=10.0, step=0.1),
        Control("mask", "select", "mask", "none", choices=("none", "causal", "sliding_window")),
        Control("window", "slider", "window (sliding_window)", 3, low=1, high=12, step=1),
        Control("positional", "select", "positions", "none", choices=("none", "sinusoidal", "rotary")),
        Control("query", "text", "query word", "cat", high=40, help="a word of the text (its first occurrence)"),
    )
    facts = (
        "tokens",
        "query_index",
        "top_key",
        "top_token",
        "top_weight",
        "entropy",
        "weights",
        "repeated_rows_equal",
    )

    def compute(self, args: dict[str, Any], env: Env) -> Result:
        words = words_of(self.name, "text", args["text"], MAX_WORDS)
        d_k, heads, head = args["d_k"], args["heads"], args["head"]
        if head >= heads:
            raise LearnError(
                f"{self.name}: head: expected a head from 0 to {heads - 1} (there are {heads}), got {head}"
            )
        if args["positional"] == "rotary" and d_k % 2:
            raise LearnError(f"{self.name}: d_k: rotary turns pairs of dimensions, so it needs an even d_k, got {d_k}")
        query = index_of(self.name, "query", args["query"], words)
        n = len(words)
        mask = {"none": None, "causal": masks.causal(), "sliding_window": masks.sliding_window(args["window"])}[
            args["mask"]
        ]
        temperature = args["temperature"]
        bias = mods.temperature(temperature) if temperature != 1.0 else None
        scale = 1.0 / math.sqrt(d_k) if args["scaled"] else 1.0

        q, k, v = attention_inputs(words, env.dtype, heads, d_k, args["positional"])  # (1, H, N, d_k) each
        weights = qkv.attention_weights(q, k, mask=mask, bias=bias, scale=scale)[0, head]  # (1, H, N, N) -> (N, N)
        out = qkv.attention(q, k, v, mask=mask, bias=bias, scale=scale)[0, head]  # (1, H, N, d_k) -> (N, d_k)
        allowed = torch.ones(n, n, dtype=torch.bool) if mask is None else mask.to_dense(1, 1, n, n)[0, 0]  # (N, N)
        scores = q[0, head] @ k[0, head].T  # (N, d_k) @ (d_k, N) -> (N, N)
        scaled = scores * scale / temperature

        w = weights[query]  # (N,)
        top = int(w.argmax())
        same = repeated_rows_equal(words, weights)
        shown = min(d_k, SHOWN_DIMS)
        scale_text = f"1/√{d_k}" if args["scaled"] else "1 (scaling off)"
        same_text = {
            None: "No word repeats.",
            True: "Repeated words have identical rows (same vector, same keys).",
            False: "Repeated words have different rows here (positions or the mask tell them apart).",
        }[same]
        views: list[dict[str, Any]] = [
            {
                "kind": "matrix",
                "title": "Scores Q·Kᵀ",
                "rows": words,
                "cols": words,
                "values": matrix(scores),
                "diverging": True,
                "caption": f"head {head}, d_k = {d_k}",
            },
            {
                "kind": "matrix",
                "title": "Scaled scores",
                "rows": words,
                "cols": words,
                "values": matrix(scaled, allowed),
                "diverging": True,
                "caption": f"scores × {scale_text} ÷ T={temperature:g}; empty cells are masked (−∞)",
            },
            {
                "kind": "matrix",
                "title": "Weights softmax(scaled)",
                "rows": words,
                "cols": words,
                "values": matrix(weights, allowed),
                "caption": f"each row sums to 1. {same_text}",
            },
            {
                "kind": "matrix",
                "title": "Output weights·V",
                "rows": words,
                "cols": [f"d{i}" for i in range(shown)],
                "values": matrix(out[:, :shown]),
                "diverging": True,
                "caption": f"the first {shown} of {d_k} dimensions" if shown < d_k else f"all {d_k} dimensions",
            },
            {
                "kind": "tokens",
                "title": f"What '{words[query]}' attends to",
                "tokens": words,
                "weights": row(w),
                "focus": query,
                "caption": f"top: '{words[top]}' with {float(w[top]):.0%}",
            },
        ]
        facts = {
            "tokens": words,
            "query_index": query,
            "top_key": top,
            "top_token": words[top],
            "top_weight": rounded(w[top]),
            "entropy": rounded(entropy(w)),
            "weights": matrix(weights),
            "repeated_rows_equal": same,
        }
        return Result(views=views, facts=facts)
