"""``sentence-order``: does word order change what a sentence means to the model? MiniLM against a bag of words.

Two texts go through MiniLM (all-MiniLM-L6-v2, a BERT encoder). ``similarity_model``
is the cosine of their sentence embeddings, `qkv.models.TextEncoder.embed` (mean
of the last hidden states over the tokens, L2-normalized): positions and six
layers of attention have mixed the words. ``similarity_bag`` is the baseline
without either: the cosine of the means of MiniLM's input *word* embeddings
(``model.embeddings.tokens``, no position, no token type, no attention) over the
texts' word tokens ([CLS] and [SEP] left out). Two texts made of the same tokens
in another order have the same bag, so ``similarity_bag`` is exactly 1 for them
(the sums run over the sorted ids, so both means are the same numbers), while
``similarity_model`` is below 1: order reached the embedding through positions.

Caveats: a cosine of sentence embeddings is one model's notion of similarity,
not meaning itself; "the same words" means the same word-piece tokens (case is
folded by MiniLM's uncased tokenizer). The model runs in float32; the cosines
are computed in ``env.dtype``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from qkv.learn.errors import LearnError
from qkv.learn.widget import Control, Env, Result, Widget, register
from qkv.learn.widgets.model_attention import check_length

__all__ = ["SentenceOrder", "cosine"]


def cosine(a: Tensor, b: Tensor) -> float:
    """The cosine of two vectors, clamped to [-1, 1] (rounding can step past it)."""
    value = float((a @ b) / (a.norm() * b.norm()).clamp(min=1e-30))
    return max(-1.0, min(1.0, value))


@register
class SentenceOrder(Widget):
    """MiniLM's sentence similarity of two texts beside a bag-of-words baseline that ignores order."""

    name = "sentence-order"
    title = "Order matters"
    controls = (
        Control("text", "text", "first text", "the dog bit the man", high=200),
        Control("other", "text", "second text", "the man bit the dog", high=200),
    )
    facts = ("similarity_model", "similarity_bag", "same_words")
    models = ("minilm",)

    def compute(self, args: dict[str, Any], env: Env) -> Result:
        model = env.model("minilm")
        texts = [args["text"], args["other"]]
        ids = []
        for name, text in zip(("text", "other"), texts):
            row = model.encode(text)
            check_length(name, len(row))
            ids.append(row)
        specials = {model.tokenizer.bos_id, model.tokenizer.eos_id}
        words = [sorted(i for i in row if i not in specials) for row in ids]  # the bag: order thrown away
        for name, bag in zip(("text", "other"), words):
            if not bag:
                raise LearnError(f"{name}: has no word tokens (only [CLS] / [SEP]); write a sentence")
        with env.lock("minilm"), torch.no_grad():
            embedded = model.embed(texts).to(env.dtype)  # (2, E)
            table = model.model.embeddings.tokens.weight  # (V, E): the input word embeddings
            bags = [table[torch.tensor(w, dtype=torch.long)].to(env.dtype) for w in words]  # each (n_i, E)
        similarity_bag = cosine(bags[0].mean(0), bags[1].mean(0))  # (n, E) -> (E,) each
        similarity_model = cosine(embedded[0], embedded[1])
        same = words[0] == words[1]
        views = [
            {
                "kind": "bars",
                "title": "How similar are the two texts?",
                "labels": ["MiniLM sentence embeddings", "bag of word embeddings"],
                "values": [round(similarity_model, 5), round(similarity_bag, 5)],
                "caption": (
                    "Left: cosine of MiniLM's sentence embeddings (positions + 6 layers of attention). "
                    "Right: cosine of the mean input word embeddings (no positions, no attention), "
                    + ("exactly 1 here: both texts have the same words." if same else "the texts' words differ.")
                ),
            }
        ]
        facts = {
            "similarity_model": round(similarity_model, 6),
            "similarity_bag": round(similarity_bag, 6),
            "same_words": same,
        }
        return Result(views=views, facts=facts)
