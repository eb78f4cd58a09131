"""Pictures of attention: matplotlib figures, a terminal table, self-contained HTML views.

- `heatmap` (one matrix) and `grid` (layers × heads): matplotlib Figures, saved
  with ``fig.savefig(path)`` as PNG, SVG or PDF.
- `terminal_view`: a `rich` table of what each token attends to.
- `head_view` (token-to-token lines per head) and `model_view` (layers × heads
  thumbnails, click to enlarge): `HTMLView` objects, one self-contained HTML file
  each (``.save(path)``; ``_repr_html_`` for notebooks) that loads nothing from the network.

Inputs are the probabilities `qkv.interpret.record` gives (``rec.weights``) and
the tokens as strings.
"""

from qkv.viz.grid import grid
from qkv.viz.heatmap import heatmap
from qkv.viz.html import HTMLView, head_view, model_view
from qkv.viz.terminal import terminal_view

__all__ = ["HTMLView", "grid", "head_view", "heatmap", "model_view", "terminal_view"]
