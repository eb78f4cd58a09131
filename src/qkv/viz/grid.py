"""`grid`: every layer's every head at once, a layers × heads array of small heatmaps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from qkv.errors import AttentionError
from qkv.viz._data import WeightsLike, axis_labels, layers
from qkv.viz.heatmap import _figure_class, plain

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def grid(
    weights: Sequence[WeightsLike] | WeightsLike,
    tokens: Sequence[str] | None = None,
    *,
    key_tokens: Sequence[str] | None = None,
    batch: int = 0,
    title: str | None = None,
    cmap: str = "Blues",
) -> Figure:
    """A layers × heads grid of attention heatmaps (row = layer, column = head).

    Args:
        weights: ``rec.weights`` of `qkv.interpret.record` (a list of ``(B, H, Nq, Nk)``,
            one per layer), one tensor ``(L, B, H, Nq, Nk)``, or lists of ``(H, Nq, Nk)``.
            Layers may have different head counts (pruned heads leave blank cells).
        tokens, key_tokens: axis labels, drawn when the matrices are small (≤ 16 tokens).
        batch: which batch item to draw.
        title: the figure's title.
        cmap: matplotlib colormap; the colour scale is [0, 1] in every cell.

    Returns:
        A matplotlib ``Figure``; ``fig.savefig(path)`` writes PNG, SVG or PDF.

    >>> import torch
    >>> from qkv.viz import grid
    >>> weights = [torch.softmax(torch.randn(1, 3, 5, 5), -1) for _ in range(2)]   # 2 layers, 3 heads
    >>> fig = grid(weights, ["a", "b", "c", "d", "e"])
    >>> len(fig.axes)                                   # 2 × 3 heatmaps and a colour bar
    7
    """
    per_layer = layers("weights", weights, batch)  # L × (H, Nq, Nk)
    nl, nh = len(per_layer), max(a.shape[0] for a in per_layer)
    if nh == 0:
        raise AttentionError("weights: every layer has 0 heads (all pruned); there is nothing to draw")
    nq, nk = per_layer[0].shape[1:]
    rows, cols = axis_labels(tokens, key_tokens, nq, nk)
    cell = min(1.6, 22.0 / nh, 30.0 / nl)  # inches per heatmap
    show_labels = max(nq, nk) <= 16 and cell >= 1.2
    fig = _figure_class()(figsize=(nh * cell + 1.8, nl * cell + 1.2), layout="constrained", dpi=100)
    axes = np.atleast_2d(fig.subplots(nl, nh, squeeze=False))  # (L, H) grid of Axes
    image = None
    for layer, a in enumerate(per_layer):
        for head in range(nh):
            ax = axes[layer, head]
            ax.set_xticks([])
            ax.set_yticks([])
            if head >= a.shape[0]:
                ax.set_axis_off()
                continue
            image = ax.imshow(a[head], cmap=cmap, vmin=0.0, vmax=1.0, aspect="equal", interpolation="nearest")
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=9)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=9)
            if show_labels and head == 0:
                ax.set_yticks(np.arange(nq), [plain(t) for t in rows], fontsize=6)
            if show_labels and layer == nl - 1:
                ax.set_xticks(np.arange(nk), [plain(t) for t in cols], fontsize=6, rotation=90)
            ax.tick_params(length=0, pad=1)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=min(1.0, 3.0 / max(nl * cell, 1e-3)), label="weight")
    if title is not None:
        fig.suptitle(str(title))
    return fig


__all__ = ["grid"]
