"""`heatmap`: one attention matrix as a matplotlib Figure (save as PNG, SVG or PDF)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from qkv.errors import AttentionError
from qkv.viz._data import WeightsLike, axis_labels, matrix

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _figure_class() -> type[Figure]:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - matplotlib is a dependency
        raise ImportError("qkv.viz pictures need matplotlib: pip install matplotlib") from err
    return Figure


def plain(token: str) -> str:
    """A token as matplotlib should print it: ``$`` would start mathtext, blanks would be invisible."""
    token = token.replace("$", r"\$")
    return token if token.strip() else repr(token)


def tick_step(count: int, room: int) -> int:
    """Label every ``step``-th position so that at most ``room`` labels share an axis."""
    return max(1, -(-count // max(room, 1)))


def heatmap(
    weights: WeightsLike,
    tokens: Sequence[str] | None = None,
    *,
    key_tokens: Sequence[str] | None = None,
    title: str | None = None,
    cmap: str = "Blues",
    annotate: bool | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Draw attention probabilities ``(Nq, Nk)``: row = query (attending), column = key (attended to).

    Args:
        weights: one matrix ``(Nq, Nk)`` of probabilities (tensor or array), e.g.
            ``rec.weights[layer][0, head]`` or the head average ``rec.weights[layer].mean(1)[0]``.
        tokens: labels of the query rows (and of the key columns unless ``key_tokens``);
            positions ``0, 1, ...`` when None. Long inputs label every k-th token.
        key_tokens: labels of the key columns when they differ (cross-attention, KV cache).
        title: drawn above the matrix.
        cmap: a matplotlib colormap name; the colour scale is fixed to [0, 1].
        annotate: print each weight in its cell (default: when both sides have ≤ 12 tokens).
        ax: draw into this Axes instead of a new Figure.

    Returns:
        The matplotlib ``Figure`` (made without pyplot: no window, no global state);
        ``fig.savefig("attention.png")`` / ``.svg`` / ``.pdf`` writes it.

    >>> import torch
    >>> from qkv.viz import heatmap
    >>> w = torch.softmax(torch.randn(4, 4), dim=-1)
    >>> fig = heatmap(w, ["the", "cat", "sat", "down"], title="layer 0, head 1")
    >>> fig.axes[0].get_title(), [t.get_text() for t in fig.axes[0].get_yticklabels()]
    ('layer 0, head 1', ['the', 'cat', 'sat', 'down'])
    """
    w = matrix("weights", weights)
    nq, nk = w.shape
    rows, cols = axis_labels(tokens, key_tokens, nq, nk)
    if annotate is None:
        annotate = max(nq, nk) <= 12
    longest = max(len(t) for t in rows + cols) if nq and nk else 1
    cell = min(0.45, max(0.12, 6.5 / max(nq, nk, 1)))  # inches per token
    width, height = min(nk * cell, 28.0), min(nq * cell, 28.0)  # the matrix, in inches
    font = min(10.0, max(5.0, cell * 72 * 0.62))  # points
    label_in = min(longest, 18) * font * 0.6 / 72 + 0.4  # room for the longest label
    if ax is None:
        fig = _figure_class()(figsize=(width + label_in + 1.6, height + label_in + 0.8), layout="constrained", dpi=110)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    image = ax.imshow(w, cmap=cmap, vmin=0.0, vmax=1.0, aspect="equal", interpolation="nearest")
    y_step = tick_step(nq, int(height / 0.12))  # labels at least 0.12 in apart
    x_step = tick_step(nk, int(width / 0.12))
    ax.set_yticks(np.arange(0, nq, y_step), [plain(rows[i]) for i in range(0, nq, y_step)], fontsize=font)
    ax.set_xticks(np.arange(0, nk, x_step), [plain(cols[j]) for j in range(0, nk, x_step)], fontsize=font, rotation=90)
    ax.tick_params(length=2, pad=2)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    if title is not None:
        if not isinstance(title, str):
            raise AttentionError(f"title: expected a string, got {type(title).__name__}")
        ax.set_title(title)
    if annotate:
        for i in range(nq):
            for j in range(nk):
                ax.text(
                    j,
                    i,
                    f"{w[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=max(5.0, font - 2),
                    color="white" if w[i, j] > 0.55 else "#1a1a1a",
                )
    fig.colorbar(image, ax=ax, shrink=max(0.35, min(1.0, 5.0 / max(height, 1e-3))), label="weight")
    return fig


__all__ = ["heatmap"]
