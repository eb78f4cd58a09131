"""Position: sinusoidal encodings and rotary embeddings both make a dot product depend on the offset only.

``kind = "sinusoidal"``: the encoding table ``PE (length, dim)`` from
`qkv.positional.SinusoidalPositionalEncoding`, and the dot products
``PE(i)·PE(i + offset)`` for every ``i``. Since ``sin a sin b + cos a cos b =
cos(a − b)``, each is ``Σ cos(offset · ω)`` over the frequencies: the same for
every ``i``.

``kind = "rotary"``: one fixed random query and key ``(dim,)`` (entries N(0, 1)),
turned by `qkv.positional.RotaryEmbedding` at positions ``i`` and ``i + offset``
for every ``i``; the score ``R_i q · R_{i+offset} k`` is the same for every ``i``
because a rotation's angle difference is all that is left. The matrix view is the
score of q at position ``i`` and k at position ``j`` for all ``i, j``: constant
along each diagonal.

``max_difference`` is the largest deviation of those scores from their mean;
``relative_only`` is whether it is below ``TOLERANCE`` (1e-4) times the largest
possible score (``dim/2`` for sinusoidal, ``|q||k|`` for rotary), a margin above
rounding: RoPE computes its angles in float32 even for float64 inputs.

>>> from qkv.learn.widget import Env
>>> facts = Positions().run({"kind": "rotary"}, Env()).facts
>>> facts["relative_only"], facts["max_difference"] < 1e-3
(True, True)
"""

from __future__ import annotations

from typing import Any

import torch

from qkv.learn.errors import LearnError
from qkv.learn.widget import Control, Env, Result, Widget, register
from qkv.learn.widgets._toy import generator, matrix, rounded, row
from qkv.positional import RotaryEmbedding, SinusoidalPositionalEncoding

TOLERANCE = 1e-4  # relative to the largest possible score


@register
class Positions(Widget):
    """Sinusoidal and rotary positions: dot products that depend on the offset only."""

    name = "positions"
    title = "Positions that only know the offset"
    controls = (
        Control("kind", "select", "encoding", "sinusoidal", choices=("sinusoidal", "rotary")),
        Control("dim", "slider", "dimensions (even)", 16, low=2, high=64, step=2),
        Control("length", "slider", "positions", 32, low=2, high=64, step=1),
        Control("offset", "slider", "offset between the two positions", 3, low=0, high=31, step=1),
    )
    facts = ("relative_only", "max_difference")

    def compute(self, args: dict[str, Any], env: Env) -> Result:
        kind, dim, length, offset = args["kind"], args["dim"], args["length"], args["offset"]
        if dim % 2:
            raise LearnError(f"{self.name}: dim: expected an even number (dimensions come in pairs), got {dim}")
        if offset >= length:
            raise LearnError(
                f"{self.name}: offset: expected an offset below the number of positions ({length}), got {offset}"
            )
        starts = torch.arange(length - offset)  # (M,): every i with i + offset inside the range
        positions = torch.arange(length)  # (L,)
        if kind == "sinusoidal":
            pe = SinusoidalPositionalEncoding(dim)(positions, dtype=env.dtype)  # (L, dim)
            scores = (pe[starts] * pe[starts + offset]).sum(-1)  # (M, dim) · (M, dim) -> (M,)
            largest = dim / 2  # |PE(i)|² = dim/2: each pair is (sin, cos)
            picture = {
                "kind": "matrix",
                "title": f"Sinusoidal encoding PE ({length} positions × {dim} dims)",
                "rows": [str(p) for p in range(length)],
                "cols": [f"d{j}" for j in range(dim)],
                "values": matrix(pe, decimals=3),
                "diverging": True,
                "caption": "even dims sin(p·ω), odd dims cos(p·ω); ω falls from 1 to about 1/10000 along the dims",
            }
            what = "PE(i)·PE(i + offset)"
        else:
            q, k = torch.randn(2, dim, generator=generator("positions", dim), dtype=torch.float64).to(env.dtype)
            rope = RotaryEmbedding(dim)
            # (dim,) -> (1, 1, L, dim), the same vector at every position, turned -> (L, dim)
            q_at = rope.apply(q.expand(1, 1, length, dim), positions)[0, 0]
            k_at = rope.apply(k.expand(1, 1, length, dim), positions)[0, 0]  # (L, dim)
            grid = q_at @ k_at.T  # (L, dim) @ (dim, L) -> (L, L): q at position i, k at position j
            scores = grid[starts, starts + offset]  # (M,)
            largest = float(q.norm() * k.norm())
            picture = {
                "kind": "matrix",
                "title": "Score of q at position i and k at position j (rotary)",
                "rows": [str(p) for p in range(length)],
                "cols": [str(p) for p in range(length)],
                "values": matrix(grid, decimals=3),
                "diverging": True,
                "caption": "constant along each diagonal: the score depends on j − i only",
            }
            what = "(R_i q)·(R_{i+offset} k)"
        max_difference = float((scores - scores.mean()).abs().max())
        relative_only = max_difference < TOLERANCE * largest
        facts = {"relative_only": relative_only, "max_difference": rounded(max_difference, 6)}
        views: list[dict[str, Any]] = [
            picture,
            {
                "kind": "lines",
                "title": f"{what} for every i, offset {offset}",
                "x": starts.tolist(),
                "x_label": "i",
                "series": [{"name": what, "values": row(scores)}],
                "caption": f"largest deviation from the mean {max_difference:.2g} "
                f"({'flat: only the offset matters' if relative_only else 'not flat'}; "
                f"flat means below {TOLERANCE:g} × {largest:.3g})",
            },
        ]
        return Result(views=views, facts=facts)
