"""Softmax and masks: pick or draw which keys each word may attend to, and see what softmax does with it.

The words get fixed random embeddings and one head of fixed random projections
(d_k = 8), as in the lab. The mask comes from a preset built with `qkv.masks`
(``causal()``, ``sliding_window(window)``, ``padding([length])``: the first
``length`` keys are real) or, with preset ``"custom"``, is the N×N grid of the
``mask`` control (True = may attend; left out, the custom grid starts all
allowed). The grid is passed as a bool tensor to `qkv.attention_weights` and
`qkv.attention` (presets as mask objects).

Clicking a cell of the "allowed" matrix (1 = allowed, null = masked) edits it:
the page sends the edited grid as ``mask`` and switches the preset to
``"custom"``. A grid sent with another preset is not used (that preset decides,
so picking a preset always works) and a text view says so; a grid whose size is
not the word count is refused.

A row with no allowed key (only a custom grid makes one) has nothing to average:
qkv gives that row weights 0 and output 0, never NaN (``exp(−∞)/Σ exp(−∞)`` would
be 0/0). ``row_sums`` is then 0 for it, 1 for every other row.

>>> from qkv.learn.widget import Env
>>> facts = MaskEditor().run({"text": "a b c", "preset": "causal"}, Env()).facts
>>> facts["allowed"][0], facts["row_sums"], facts["kept_fraction"]
([True, False, False], [1.0, 1.0, 1.0], 0.6667)
>>> grid = [[False, False, False], [True, True, False], [True, True, True]]
>>> MaskEditor().run({"text": "a b c", "preset": "custom", "mask": grid}, Env()).facts["zero_output_rows"]
[0]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

import qkv
from qkv import masks
from qkv.learn.errors import LearnError
from qkv.learn.widget import Control, Env, Result, Widget, register
from qkv.learn.widgets._toy import attention_inputs, rounded, row, words_of

MAX_WORDS = 10


@register
class MaskEditor(Widget):
    """Which keys each word may attend to, picked or drawn, and the weights softmax gives."""

    name = "mask-editor"
    title = "Masks: who may attend to whom"
    controls = (
        Control("text", "text", "words", "the cat sat on the mat", high=200, help=f"at most {MAX_WORDS} words"),
        Control(
            "preset", "select", "mask", "causal", choices=("none", "causal", "padding", "sliding_window", "custom")
        ),
        Control("window", "slider", "window (sliding_window)", 2, low=1, high=10, step=1),
        Control("length", "slider", "real keys (padding)", 4, low=1, high=10, step=1),
        Control("mask", "mask", "custom mask", None, high=MAX_WORDS, help="True = may attend; used with preset custom"),
    )
    facts = ("allowed", "row_sums", "empty_rows", "zero_output_rows", "any_nan", "kept_fraction")

    def run(self, args: Mapping[str, Any], env: Env) -> Result:
        """As `Widget.run`; ``"mask": null`` means the same as leaving the mask out."""
        if isinstance(args, Mapping) and "mask" in args and args["mask"] is None:
            args = {name: value for name, value in args.items() if name != "mask"}
        return super().run(args, env)

    def compute(self, args: dict[str, Any], env: Env) -> Result:
        words = words_of(self.name, "text", args["text"], MAX_WORDS)
        n = len(words)
        preset, grid = args["preset"], args["mask"]
        if grid is not None and len(grid) != n:
            raise LearnError(
                f"{self.name}: mask: expected a {n}×{n} grid (one row and column per word), got {len(grid)}×{len(grid)}"
            )
        unused = grid is not None and preset != "custom"
        if preset == "custom":
            mask: Any = torch.tensor(grid if grid is not None else [[True] * n] * n).view(1, 1, n, n)  # (1, 1, N, N)
        else:
            mask = {
                "none": None,
                "causal": masks.causal(),
                "sliding_window": masks.sliding_window(args["window"]),
                "padding": masks.padding([args["length"]]),
            }[preset]
        if mask is None:
            allowed = torch.ones(n, n, dtype=torch.bool)
        elif isinstance(mask, masks.Mask):
            allowed = mask.to_dense(1, 1, n, n)[0, 0]  # (1, 1, N, N) -> (N, N)
        else:
            allowed = mask[0, 0]  # (1, 1, N, N) -> (N, N)

        q, k, v = attention_inputs(words, env.dtype, 1, 8, "none")  # (1, 1, N, 8) each
        weights = qkv.attention_weights(q, k, mask=mask)[0, 0]  # (1, 1, N, N) -> (N, N)
        out = qkv.attention(q, k, v, mask=mask)[0, 0]  # (1, 1, N, 8) -> (N, 8)

        sums = weights.sum(-1)  # (N,)
        empty = [i for i in range(n) if not bool(allowed[i].any())]
        zero = [i for i in range(n) if bool((out[i] == 0).all())]
        any_nan = bool(weights.isnan().any() or out.isnan().any())
        facts = {
            "allowed": allowed.tolist(),
            "row_sums": row(sums),
            "empty_rows": empty,
            "zero_output_rows": zero,
            "any_nan": any_nan,
            "kept_fraction": rounded(allowed.sum() / (n * n)),
        }
        sums_text = " or ".join(f"{s:g}" for s in sorted(set(row(sums)), reverse=True))
        values = [
            [None if not ok or w != w else rounded(w) for w, ok in zip(r, a)]
            for r, a in zip(weights.tolist(), allowed.tolist())
        ]
        views: list[dict[str, Any]] = [
            {
                "kind": "matrix",
                "title": "Allowed (1 = may attend)",
                "rows": words,
                "cols": words,
                "values": [[1 if ok else None for ok in r] for r in allowed.tolist()],
                "editable": "mask",
                "caption": "rows are queries, columns keys; click a cell to draw your own mask (preset custom)",
            },
            {
                "kind": "matrix",
                "title": "Weights",
                "rows": words,
                "cols": words,
                "values": values,
                "caption": f"{int(allowed.sum())} of {n * n} cells allowed; a row's weights sum to {sums_text}",
            },
        ]
        if unused:
            views.append(
                {
                    "kind": "text",
                    "text": f"The drawn mask is not used: preset *{preset}* decides. Pick the preset *custom* "
                    "to use the mask you drew.",
                }
            )
        if empty:
            names = ", ".join(f"'{words[i]}' (row {i})" for i in empty)
            views.append(
                {
                    "kind": "text",
                    "text": (
                        f"No key is allowed for {names}. Softmax over nothing would be 0/0 (NaN); "
                        "qkv gives such a row weights 0 and output 0 instead, so one empty row never "
                        f"poisons the rest. Here: NaN anywhere: {'yes' if any_nan else 'no'}; "
                        f"rows with output 0: {zero}."
                    ),
                }
            )
        return Result(views=views, facts=facts)
