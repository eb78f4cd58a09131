"""Position: without positional information, self-attention cannot tell word order.

The words get fixed embeddings ``x (N, 8)`` and one head of fixed projections
(d_k = 8), as in the lab; `qkv.attention` computes self-attention on the text
and on the same words shuffled (``x[perm]``, the permutation drawn from
``seed``). Positions belong to the slots, not the words: ``sinusoidal`` adds the
encoding of slot ``i`` to whatever word sits there, ``rotary`` turns q and k by
their slot. Self-attention without positions is permutation-equivariant,
``out(x[perm]) = out(x)[perm]``: each word gets the same output wherever it
stands. With positions it is not.

``max_difference`` is ``max |out(x)[perm] − out(x[perm])|``; ``equivariant`` is
whether it is below ``TOLERANCE`` (1e-5) times the largest ``|out|``, a margin
far above float32 rounding (about 1e-7) and far below what positions change.
A permutation that leaves every word in place would show nothing, so the seed's
draw is used only if it moves a word; otherwise it is rotated by one slot.

>>> from qkv.learn.widget import Env
>>> Shuffle().run({}, Env()).facts["equivariant"]
True
>>> Shuffle().run({"positional": "sinusoidal"}, Env()).facts["equivariant"]
False
"""

from __future__ import annotations

from typing import Any

import torch

import qkv
from qkv.learn.errors import LearnError
from qkv.learn.widget import Control, Env, Result, Widget, register
from qkv.learn.widgets._toy import attention_inputs, generator, matrix, rounded, words_of

MAX_WORDS = 12
D_K = 8
TOLERANCE = 1e-5  # relative to the largest |out|
SHOWN_DIMS = 4  # output dims per word in the table


def permutation(n: int, seed: int) -> list[int]:
    """A permutation of ``range(n)`` drawn from ``seed`` that moves at least one item (for ``n > 1``).

    >>> sorted(permutation(5, 1)) == list(range(5)) and permutation(5, 1) != list(range(5))
    True
    """
    perm = torch.randperm(n, generator=generator("shuffle", seed)).tolist()
    if perm == list(range(n)):
        perm = perm[1:] + perm[:1]
    return perm


@register
class Shuffle(Widget):
    """Self-attention on shuffled words, with and without positions."""

    name = "shuffle"
    title = "Shuffle the words"
    controls = (
        Control("text", "text", "words", "the cat chased the dog", high=200, help=f"2 to {MAX_WORDS} words"),
        Control("positional", "select", "positions", "none", choices=("none", "sinusoidal", "rotary")),
        Control("seed", "slider", "which shuffle", 1, low=0, high=1000, step=1),
    )
    facts = ("max_difference", "equivariant", "permutation")

    def compute(self, args: dict[str, Any], env: Env) -> Result:
        words = words_of(self.name, "text", args["text"], MAX_WORDS)
        n = len(words)
        if n < 2:
            raise LearnError(f"{self.name}: text: expected at least 2 words to shuffle, got {n}")
        perm = permutation(n, args["seed"])
        shuffled = [words[i] for i in perm]
        positional = args["positional"]
        out = qkv.attention(*attention_inputs(words, env.dtype, 1, D_K, positional))[0, 0]  # (N, d_k)
        out_shuffled = qkv.attention(*attention_inputs(shuffled, env.dtype, 1, D_K, positional))[0, 0]  # (N, d_k)
        moved = out[perm]  # (N, d_k): row i is the output the word now in slot i had in the original order
        difference = (moved - out_shuffled).abs()  # (N, d_k)
        max_difference = float(difference.max())
        equivariant = max_difference < TOLERANCE * float(out.abs().max())
        facts = {
            "max_difference": rounded(max_difference, 5),
            "equivariant": equivariant,
            "permutation": perm,
        }
        table: list[list[Any]] = [
            [i, w, perm[i], rounded(float(difference[i].max()), 5)]
            + [f"{a:.3f} / {b:.3f}" for a, b in zip(moved[i, :SHOWN_DIMS].tolist(), out_shuffled[i].tolist())]
            for i, w in enumerate(shuffled)
        ]
        found = (
            "Every word has the same output in both orders: without positions, attention sees a set of words, "
            "not a sequence."
            if equivariant
            else f"Outputs change with the order (largest difference {max_difference:.3g}): the positions "
            f"({positional}) tell the slots apart."
        )
        views: list[dict[str, Any]] = [
            {
                "kind": "matrix",
                "title": "Outputs in the original order, moved: out(x)[perm]",
                "rows": shuffled,
                "cols": [f"d{j}" for j in range(D_K)],
                "values": matrix(moved),
                "diverging": True,
            },
            {
                "kind": "matrix",
                "title": "Outputs of the shuffled words: out(x[perm])",
                "rows": shuffled,
                "cols": [f"d{j}" for j in range(D_K)],
                "values": matrix(out_shuffled),
                "diverging": True,
            },
            {
                "kind": "table",
                "title": "Word by word",
                "columns": ["slot", "word", "slot before", "largest difference"]
                + [f"d{j} before / after" for j in range(SHOWN_DIMS)],
                "rows": table,
                "caption": f"shuffled: {' '.join(shuffled)}",
            },
            {
                "kind": "text",
                "text": f"{found} Equivariant means the largest difference is below {TOLERANCE:g} × the largest "
                f"|output| ({float(out.abs().max()):.3g}).",
            },
        ]
        return Result(views=views, facts=facts)
