"""Self versus cross attention: queries from one sentence, keys and values from another.

The queries come from ``target`` (say, a French sentence being written), the
keys and values from ``source`` (the English sentence it translates), so the
weight matrix is ``Nq × Nk``, one row per target word; with ``self`` on, keys and
values come from ``target`` too and the matrix is square. `qkv.attention_weights`
and `qkv.attention` compute it (one head, ``d_k = 16``, ``scale = 1/√d_k``).

The alignment is built in: there is no trained translation model here. Each
word gets a fixed random embedding ``(16,)``, and the words of a small table of
translation pairs (`PAIRS`: chat↔cat, le↔the, est↔is, assis↔sitting, ...) share
their partner's embedding. Queries and keys share one random projection, so
equal embeddings give the largest dot products and a French word mostly attends
its English partner; a word outside the table attends by chance. In a trained
model ``W_q`` and ``W_k`` differ and the alignment is learned from data.

>>> from qkv.learn.widget import Env
>>> facts = CrossAttention().run({}, Env()).facts
>>> facts["shape"], facts["top_key_of"]
([4, 4], [0, 1, 2, 3])
"""

from __future__ import annotations

import math
from typing import Any

import torch

import qkv
from qkv.learn.widget import Control, Env, Result, Widget, register
from qkv.learn.widgets._toy import embed, matrix, projection, row, words_of

MAX_WORDS = 12
D = 16  # embedding width and d_k
#: French word -> the English word whose embedding it shares (the built-in alignment)
PAIRS = {
    "le": "the",
    "la": "the",
    "les": "the",
    "un": "a",
    "une": "a",
    "chat": "cat",
    "chien": "dog",
    "souris": "mouse",
    "oiseau": "bird",
    "est": "is",
    "sont": "are",
    "assis": "sitting",
    "mange": "eats",
    "dort": "sleeps",
    "voit": "sees",
    "sur": "on",
    "sous": "under",
    "dans": "in",
    "et": "and",
    "tapis": "mat",
    "maison": "house",
    "jardin": "garden",
    "pomme": "apple",
    "petit": "small",
    "grand": "big",
    "noir": "black",
    "blanc": "white",
}


def _vectors(words: list[str], dtype: torch.dtype) -> torch.Tensor:
    """``(N, D)``: each word's embedding, a French word of `PAIRS` taking its partner's."""
    return embed([PAIRS.get(w.lower(), w) for w in words], dtype, dim=D, seed=1)


@register
class CrossAttention(Widget):
    """Queries from one sentence against keys and values from the same one or another."""

    name = "cross-attention"
    title = "Self- and cross-attention"
    controls = (
        Control("target", "text", "queries from (target)", "le chat est assis", high=200),
        Control("source", "text", "keys and values from (source)", "the cat is sitting", high=200),
        Control("self", "toggle", "self-attention (keys from the target too)", False),
    )
    facts = ("shape", "top_key_of", "tokens_query", "tokens_key")

    def compute(self, args: dict[str, Any], env: Env) -> Result:
        target = words_of(self.name, "target", args["target"], MAX_WORDS)
        source = target if args["self"] else words_of(self.name, "source", args["source"], MAX_WORDS)
        w_qk = projection("qk", 0, D, D, env.dtype, seed=1)  # (D, D), shared by queries and keys
        w_v = projection("v", 0, D, D, env.dtype, seed=1)  # (D, D)
        x_q, x_kv = _vectors(target, env.dtype), _vectors(source, env.dtype)  # (Nq, D), (Nk, D)
        q = (x_q @ w_qk)[None, None]  # (Nq, D) -> (1, 1, Nq, D)
        k = (x_kv @ w_qk)[None, None]  # (Nk, D) -> (1, 1, Nk, D)
        v = (x_kv @ w_v)[None, None]  # (Nk, D) -> (1, 1, Nk, D)
        scale = 1.0 / math.sqrt(D)
        weights = qkv.attention_weights(q, k, scale=scale)[0, 0]  # (1, 1, Nq, Nk) -> (Nq, Nk)
        out = qkv.attention(q, k, v, scale=scale)[0, 0]  # (1, 1, Nq, D) -> (Nq, D)
        top = [int(i) for i in weights.argmax(-1)]  # (Nq,)
        kind = (
            "self-attention: keys and values from the same sentence"
            if args["self"]
            else ("cross-attention: queries from the target, keys and values from the source")
        )
        lines = "\n".join(f"- **{target[i]}** → {source[j]} ({float(weights[i, j]):.0%})" for i, j in enumerate(top))
        views: list[dict[str, Any]] = [
            {
                "kind": "matrix",
                "title": "Weights (rows: queries, columns: keys)",
                "rows": target,
                "cols": source,
                "values": matrix(weights),
                "caption": f"{kind}; {len(target)} × {len(source)}, each row sums to 1",
            },
            {"kind": "text", "text": f"Where each query word looks most:\n\n{lines}"},
            {
                "kind": "bars",
                "title": "Output size per query ‖out‖",
                "labels": target,
                "values": row(out.norm(dim=-1)),  # (Nq, D) -> (Nq,)
                "caption": "each query's output is a weighted average of the value rows of the keys",
            },
        ]
        facts = {
            "shape": [len(target), len(source)],
            "top_key_of": top,
            "tokens_query": target,
            "tokens_key": source,
        }
        return Result(views=views, facts=facts)
