"""Attention as a soft lookup: a query word matched against a tiny dictionary of six keys.

The keys are animals and vehicles with hand-made 3-D vectors whose axes mean
something: ``(animal, vehicle, size)``, size -1 small, 0 medium, +1 big. The
value of each key is its typical weight in kilograms. A query (another word,
with its own hand-made vector) scores every key by a dot product; the scores
times ``sharpness`` go through softmax (`qkv.attention_weights`, ``scale=1``,
the sharpness multiplied into the query) and the answer is the weighted average
of the values (`qkv.attention`). At a high sharpness softmax approaches a hard
argmax and the answer approaches the top key's own value (``hard_output``); at a
low one every key counts about equally.

Caveats: the vectors are chosen by hand to be readable, not learned; ties go to
the first key in the table (there are none among the built-in queries).

>>> from qkv.learn.widget import Env
>>> result = SoftLookup().run({"query": "kitten"}, Env())
>>> result.facts["top_token"], result.facts["hard_output"]
('cat', 4.0)
"""

from __future__ import annotations

from typing import Any

import torch

import qkv
from qkv.interpret import entropy
from qkv.learn.widget import Control, Env, Result, Widget, register
from qkv.learn.widgets._toy import rounded, row

AXES = ("animal", "vehicle", "size")
#: key -> (vector over AXES, value: typical weight in kg)
KEYS: dict[str, tuple[tuple[float, float, float], float]] = {
    "cat": ((1.0, 0.0, -1.0), 4.0),
    "dog": ((1.0, 0.0, 0.0), 30.0),
    "lion": ((1.0, 0.0, 1.0), 190.0),
    "bike": ((0.0, 1.0, -1.0), 15.0),
    "car": ((0.0, 1.0, 0.0), 1500.0),
    "bus": ((0.0, 1.0, 1.0), 12000.0),
}
QUERIES: dict[str, tuple[float, float, float]] = {
    "kitten": (1.0, 0.0, -1.0),
    "tiger": (1.0, 0.0, 1.0),
    "truck": (0.0, 1.0, 1.0),
    "scooter": (0.0, 1.0, -1.0),
    "horse": (0.6, 0.4, 1.0),  # a big animal people ride: between lion and bus
}
VALUE = "weight (kg)"


@register
class SoftLookup(Widget):
    """A query word matched softly against a tiny dictionary of six keys."""

    name = "soft-lookup"
    title = "A soft lookup"
    controls = (
        Control("query", "select", "query", "kitten", choices=tuple(QUERIES), help="the word we look up"),
        Control(
            "sharpness",
            "slider",
            "sharpness",
            1.0,
            low=0.1,
            high=20.0,
            step=0.1,
            help="multiplies every score before softmax; high sharpness is nearly a hard lookup",
        ),
    )
    facts = ("weights", "top_key", "top_token", "top_weight", "output", "hard_output", "entropy")

    def compute(self, args: dict[str, Any], env: Env) -> Result:
        names = list(KEYS)
        dtype = env.dtype
        q = torch.tensor(QUERIES[args["query"]], dtype=dtype).view(1, 1, 1, 3)  # (B=1, H=1, Nq=1, D=3)
        k = torch.tensor([KEYS[n][0] for n in names], dtype=dtype).view(1, 1, -1, 3)  # (1, 1, Nk=6, 3)
        v = torch.tensor([KEYS[n][1] for n in names], dtype=dtype).view(1, 1, -1, 1)  # (1, 1, Nk, Dv=1)
        sharp = q * args["sharpness"]
        weights = qkv.attention_weights(sharp, k, scale=1.0)[0, 0, 0]  # (1, 1, 1, Nk) -> (Nk,)
        output = float(qkv.attention(sharp, k, v, scale=1.0)[0, 0, 0, 0])  # (1, 1, 1, 1) -> scalar
        scores = (sharp @ k.transpose(-2, -1))[0, 0, 0]  # (1, 1, 1, 3) @ (1, 1, 3, Nk) -> (Nk,)
        top = int(weights.argmax())
        values = v[0, 0, :, 0]  # (Nk,)
        table: list[list[Any]] = [
            [n, rounded(s), rounded(w), rounded(x, 1), rounded(w * x, 2)]
            for n, s, w, x in zip(names, scores.tolist(), weights.tolist(), values.tolist())
        ]
        table.append(["sum", None, rounded(weights.sum()), None, rounded(output, 2)])
        facts = {
            "weights": row(weights),
            "top_key": top,
            "top_token": names[top],
            "top_weight": rounded(weights[top]),
            "output": rounded(output, 2),
            "hard_output": float(values[top]),
            "entropy": rounded(entropy(weights)),
        }
        vector = ", ".join(f"{a} {x:g}" for a, x in zip(AXES, QUERIES[args["query"]]))
        views: list[dict[str, Any]] = [
            {
                "kind": "bars",
                "title": f"How much '{args['query']}' takes from each key",
                "labels": names,
                "values": row(weights),
                "caption": f"query '{args['query']}' = ({vector}); weights = softmax(sharpness × q·k), sum 1",
            },
            {
                "kind": "table",
                "title": f"The lookup, key by key ({VALUE})",
                "columns": ["key", "score", "weight", VALUE, "weight × value"],
                "rows": table,
                "caption": (
                    f"soft answer {rounded(output, 2):g} kg (the weighted average); "
                    f"hard answer {float(values[top]):g} kg (the top key '{names[top]}' alone)"
                ),
            },
        ]
        return Result(views=views, facts=facts)
