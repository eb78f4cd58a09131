"""Why 1/√d_k: how softmax saturates as d_k grows, with and without the scaling.

Fixed random queries and keys, 16 heads × 8 tokens, every entry N(0, 1) (one
seed; a smaller ``d_k`` keeps the first ``d_k`` dimensions of the same draw), so
``q·k`` has variance ``d_k``. For every ``d_k`` in 2, 4, ..., 1024, scaled
(``1/√d_k``) and unscaled (``scale=1``), `qkv.attention_weights` gives the weights
and the widget averages over heads and query rows:

- ``peak``: the largest weight of a row (1 = all on one key; 1/8 = uniform);
- ``entropy``: the row's entropy in nats (`qkv.interpret.entropy`; log 8 ≈ 2.08 is uniform);
- ``gradient``: the Frobenius norm of softmax's Jacobian ``diag(p) − p pᵀ``, how much a
  change of the scores still moves the weights (0 when a row is saturated).

``entropy_direction`` / ``gradient_direction`` say how the mean moves from
``d_k = 2`` to ``d_k = 1024`` under the chosen scaling: ``"fall"`` / ``"rise"``
when the relative change is beyond ``FLAT`` (10%), else ``"flat"``. Unscaled,
both fall (the scores spread like √d_k and softmax saturates); scaled, the
scores keep unit variance and the curves stay about flat.

Caveats: random, untrained q and k with independent entries; trained models'
queries and keys are correlated, but the variance argument is the same. The
sweep is computed once per dtype and kept (`functools.lru_cache`).

>>> from qkv.learn.widget import Env
>>> facts = Saturation().run({"d_k": 1024, "scaled": False}, Env()).facts
>>> facts["peak"] > 0.9, facts["entropy_direction"], facts["gradient_direction"]
(True, 'fall', 'fall')
>>> Saturation().run({"scaled": True}, Env()).facts["entropy_direction"]
'flat'
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

import qkv
from qkv.interpret import entropy
from qkv.learn.widget import Control, Env, Result, Widget, register
from qkv.learn.widgets._toy import generator, rounded

SWEEP = tuple(2**p for p in range(1, 11))  # d_k = 2 .. 1024
HEADS, TOKENS = 16, 8
FLAT = 0.10  # a relative change within ±10% from d_k=2 to d_k=1024 counts as flat
STATS = ("peak", "entropy", "gradient")


@functools.lru_cache(maxsize=4)
def sweep(dtype: torch.dtype) -> dict[str, dict[str, list[float]]]:
    """``{"scaled"|"unscaled": {"peak"|"entropy"|"gradient": [mean for each d_k in SWEEP]}}``."""
    g = generator("saturation", 0)
    q, k = torch.randn(2, 1, HEADS, TOKENS, SWEEP[-1], generator=g, dtype=torch.float64).to(dtype).unbind(0)
    curves: dict[str, dict[str, list[float]]] = {}
    for scaling in ("scaled", "unscaled"):
        means: dict[str, list[float]] = {s: [] for s in STATS}
        for d_k in SWEEP:
            scale = 1.0 / math.sqrt(d_k) if scaling == "scaled" else 1.0
            p = qkv.attention_weights(q[..., :d_k], k[..., :d_k], scale=scale)  # (1, H, N, N)
            jacobian = torch.diag_embed(p) - p[..., :, None] * p[..., None, :]  # (1, H, N, N) -> (1, H, N, N, N)
            means["peak"].append(float(p.amax(-1).mean()))  # (1, H, N) -> mean
            means["entropy"].append(float(entropy(p).mean()))  # (1, H, N) -> mean
            means["gradient"].append(float(jacobian.flatten(-2).norm(dim=-1).mean()))  # (1, H, N, N·N) -> mean
        curves[scaling] = means
    return curves


def direction(first: float, last: float) -> str:
    """``"fall"``, ``"rise"`` or ``"flat"``: the relative change from ``first`` to ``last`` against `FLAT`.

    >>> direction(2.0, 0.1), direction(2.0, 2.1), direction(1.0, 1.5)
    ('fall', 'flat', 'rise')
    """
    change = (last - first) / abs(first)
    return "fall" if change < -FLAT else "rise" if change > FLAT else "flat"


@register
class Saturation(Widget):
    """How softmax saturates as d_k grows, with and without dividing by √d_k."""

    name = "saturation"
    title = "Why divide by √d_k"
    controls = (
        Control("d_k", "select", "key dimension d_k", 64, choices=SWEEP),
        Control("scaled", "toggle", "divide by √d_k", False),
    )
    facts = ("peak", "entropy", "gradient", "entropy_direction", "gradient_direction")

    def compute(self, args: dict[str, Any], env: Env) -> Result:
        curves = sweep(env.dtype)
        scaling = "scaled" if args["scaled"] else "unscaled"
        at = SWEEP.index(args["d_k"])
        chosen = curves[scaling]
        facts = {
            "peak": rounded(chosen["peak"][at]),
            "entropy": rounded(chosen["entropy"][at]),
            "gradient": rounded(chosen["gradient"][at]),
            "entropy_direction": direction(chosen["entropy"][0], chosen["entropy"][-1]),
            "gradient_direction": direction(chosen["gradient"][0], chosen["gradient"][-1]),
        }
        titles = {
            "peak": "Largest weight of a row (1 = one key takes all)",
            "entropy": f"Row entropy in nats (uniform over {TOKENS} keys: {math.log(TOKENS):.2f})",
            "gradient": "Size of softmax's gradient ‖diag(p) − ppᵀ‖",
        }
        views = [
            {
                "kind": "lines",
                "title": titles[stat],
                "x": list(SWEEP),
                "x_label": "d_k",
                "log_x": True,
                "series": [
                    {"name": name, "values": [rounded(v) for v in curves[s][stat]]}
                    for s, name in (("unscaled", "unscaled (scale 1)"), ("scaled", "scaled (÷√d_k)"))
                ],
                "caption": f"means over {HEADS} random heads × {TOKENS} queries; at d_k = {args['d_k']}, {scaling}: "
                f"{facts[stat]:g}",
            }
            for stat in STATS
        ]
        return Result(views=views, facts=facts)
