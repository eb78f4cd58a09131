"""`terminal_view`: what each token attends to, as a rich table for the terminal."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.table import Table
from rich.text import Text

from qkv.errors import AttentionError
from qkv.viz._data import WeightsLike, axis_labels, matrix

_SHADES = " ░▒▓█"


def _cell(weight: float) -> Text:
    """One key's weight as a shaded block, darker for more weight."""
    level = min(len(_SHADES) - 1, int(round(weight * (len(_SHADES) - 1) * 1.6)))  # visible from ~0.1
    return Text(_SHADES[level], style="blue")


def _show(token: str, width: int = 14) -> str:
    token = token if token.strip() else repr(token)
    return token if len(token) <= width else token[: width - 1] + "…"


def terminal_view(
    weights: WeightsLike,
    tokens: Sequence[str] | None = None,
    *,
    key_tokens: Sequence[str] | None = None,
    top: int = 3,
    title: str | None = None,
) -> Table:
    """A `rich` table: for each query token, the keys it attends to most, and a shaded strip of all keys.

    Args:
        weights: one matrix ``(Nq, Nk)`` of probabilities, e.g. ``rec.weights[layer][0, head]``
            or a head average ``rec.weights[layer].mean(1)[0]``.
        tokens: the query tokens (and keys unless ``key_tokens``); positions when None.
        key_tokens: the key tokens when they differ from the queries.
        top: how many keys to name per row.
        title: the table's title.

    Print it with ``rich.print(table)`` or ``rich.console.Console().print(table)``.
    The strip column (one shaded cell per key, ``░▒▓█`` for more weight, headed by
    the last digit of each key's index) is shown while there are at most 60 keys.

    >>> import torch
    >>> from rich.console import Console
    >>> from qkv.viz import terminal_view
    >>> w = torch.tensor([[1.0, 0.0, 0.0], [0.7, 0.3, 0.0], [0.1, 0.6, 0.3]])
    >>> Console(width=80, color_system=None).print(terminal_view(w, ["the", "cat", "sat"], top=2))
    ┏━━━┳━━━━━━━┳━━━━━━━━━━━━━━━━━━━━┳━━━━━┓
    ┃ # ┃ token ┃ attends to         ┃ 012 ┃
    ┡━━━╇━━━━━━━╇━━━━━━━━━━━━━━━━━━━━╇━━━━━┩
    │ 0 │ the   │ the 1.00           │ █   │
    │ 1 │ cat   │ the 0.70  cat 0.30 │ █▒  │
    │ 2 │ sat   │ cat 0.60  sat 0.30 │ ░█▒ │
    └───┴───────┴────────────────────┴─────┘
    """
    w = matrix("weights", weights)
    nq, nk = w.shape
    rows, cols = axis_labels(tokens, key_tokens, nq, nk)
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise AttentionError(f"top: expected a positive int (keys named per row), got {top!r}")
    table = Table(title=title, show_lines=False, header_style="bold")
    table.add_column("#", justify="right", style="dim")
    table.add_column("token", style="bold")
    table.add_column("attends to")
    strip = nk <= 60
    if strip:
        table.add_column("".join(str(j % 10) for j in range(nk)), no_wrap=True)  # key index, last digit
    for i in range(nq):
        order = np.argsort(-w[i], kind="stable")[: min(top, nk)]
        named = Text()
        for rank, j in enumerate(order):
            if w[i, j] <= 0 or (rank and w[i, j] < 0.005):
                break
            if rank:
                named.append("  ")
            named.append(_show(cols[j]), style="cyan" if rank == 0 else "")
            named.append(f" {w[i, j]:.2f}", style="dim")
        if not named:
            named = Text("(no key allowed)", style="dim")
        cells: list[Text | str] = [str(i), _show(rows[i]), named]
        if strip:
            cells.append(Text.assemble(*(_cell(float(x)) for x in w[i])))
        table.add_row(*cells)
    return table


__all__ = ["terminal_view"]
