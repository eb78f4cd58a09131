"""Self-contained HTML views: `head_view` (token-to-token lines) and `model_view` (layers × heads).

Each view is one HTML text with its CSS and JavaScript inline (from ``static/``) and
the weights embedded as data: it loads nothing from the network (a
Content-Security-Policy in the saved page forbids it), works offline, and opens
from disk or in a notebook.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from qkv.errors import AttentionError
from qkv.viz._data import WeightsLike, axis_labels, labels, layers

# The saved page may run its own inline code and nothing else: no network fetch of any kind.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


@functools.cache
def _static(name: str) -> str:
    return resources.files("qkv.viz").joinpath("static", name).read_text(encoding="utf-8")


@dataclass(frozen=True, repr=False)
class HTMLView:
    """A self-contained HTML view: ``.save(path)`` writes a page; notebooks render it inline.

    Attributes:
        fragment: the embeddable part (``<style>``, the view's ``<div>``, ``<script>``),
            what ``_repr_html_`` gives a notebook.
        title: the page title.
    """

    fragment: str
    title: str

    @property
    def html(self) -> str:
        """The whole page: ``<!DOCTYPE html>`` ... with a policy that forbids network loads."""
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<title>{html.escape(self.title)}</title>\n</head>\n<body class="qkv-page">\n'
            f"{self.fragment}\n</body>\n</html>\n"
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the page to ``path`` (UTF-8) and return it as a ``Path``."""
        if not isinstance(path, (str, os.PathLike)):
            raise AttentionError(f"path: expected a file path, got {type(path).__name__}")
        target = Path(path)
        target.write_text(self.html, encoding="utf-8")
        return target

    def _repr_html_(self) -> str:
        return self.fragment

    def __str__(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return f"HTMLView({self.title!r}, {len(self.fragment)} characters)"


def _json(data: object) -> str:
    """JSON that is safe inside ``<script>``: no ``<``, ``>`` or ``&`` can end the element."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _encode(a: np.ndarray) -> str:
    """Weights in [0, 1] as base64 bytes ``round(255 w)``, row-major ``(H, Nq, Nk)``."""
    return base64.b64encode(np.ascontiguousarray(np.rint(a * 255.0).astype(np.uint8)).tobytes()).decode("ascii")


def _payload(
    weights: object,
    tokens: Sequence[str] | None,
    key_tokens: Sequence[str] | None,
    batch: int,
    layer_names: Sequence[str] | None,
    title: str | None,
) -> tuple[dict, list[np.ndarray]]:
    per_layer = layers("weights", weights, batch)  # L × (H, Nq, Nk)
    nq, nk = per_layer[0].shape[1:]
    rows, cols = axis_labels(tokens, key_tokens, nq, nk)
    if layer_names is None:
        names = [f"layer {i}" for i in range(len(per_layer))]
    else:
        names = labels("layer_names", layer_names, len(per_layer))
    if title is not None and not isinstance(title, str):
        raise AttentionError(f"title: expected a string, got {type(title).__name__}")
    data = {
        "title": title,
        "tokens": rows,
        "keyTokens": cols,
        "layers": [{"name": name, "heads": int(a.shape[0]), "data": _encode(a)} for name, a in zip(names, per_layer)],
    }
    return data, per_layer


def _view(kind: str, entry: str, data: dict, title: str) -> HTMLView:
    view_id = f"qkv-{kind}-{uuid.uuid4().hex[:12]}"
    script = "\n".join(
        [
            "(function () {",
            _static("common.js"),
            _static(f"{kind}_view.js"),
            f"const root = document.getElementById({json.dumps(view_id)});",
            'root.textContent = "";',
            f"{entry}(root, {_json(data)});",
            "})();",
        ]
    )
    fragment = (
        f"<style>\n{_static('views.css')}</style>\n"
        f'<div class="qkv-view qkv-{kind}-view" id="{view_id}" tabindex="-1">'
        "<p>qkv attention view: it needs JavaScript (in a notebook, trust the notebook).</p></div>\n"
        f"<script>\n{script}\n</script>"
    )
    return HTMLView(fragment=fragment, title=title)


def head_view(
    weights: Sequence[WeightsLike] | WeightsLike,
    tokens: Sequence[str] | None = None,
    *,
    key_tokens: Sequence[str] | None = None,
    layer: int = 0,
    heads: Sequence[int] | None = None,
    batch: int = 0,
    layer_names: Sequence[str] | None = None,
    title: str | None = None,
) -> HTMLView:
    """Token-to-token lines for each head (as bertviz's head view), in one self-contained HTML file.

    Queries are listed on the left, keys on the right; each head draws a line
    from query ``i`` to key ``j`` with opacity ``w_ij``, in the head's colour.
    Hover a token to see only its lines (left: what it attends to; right: what
    attends to it), with the other side's tokens shaded by weight and the top keys
    named; click a token to pin it. A menu chooses the layer, buttons the heads.
    Long inputs (200+ tokens) scroll at a readable row height.

    Args:
        weights: ``rec.weights`` (a list of ``(B, H, Nq, Nk)``, one per layer), one
            tensor ``(L, B, H, Nq, Nk)`` or ``(B, H, Nq, Nk)``, or ``(H, Nq, Nk)`` items.
            All layers share ``Nq`` and ``Nk``; their head counts may differ.
        tokens: the query tokens (and keys unless ``key_tokens``); positions when None.
        key_tokens: the key tokens when they differ (cross-attention, ``rows=``).
        layer: the layer shown first.
        heads: the heads shown first (default all).
        batch: which batch item to show.
        layer_names: names for the layer menu (e.g. ``rec.names``); default ``layer 0``, ...
        title: a heading and the page title.

    The weights are embedded at 1/255 resolution (about 1.4 bytes per weight),
    which is finer than line opacity can show; hover texts print two decimals.

    >>> import torch
    >>> from qkv.viz import head_view
    >>> weights = [torch.softmax(torch.randn(1, 2, 3, 3), -1)]          # 1 layer, 2 heads
    >>> view = head_view(weights, ["the", "cat", "sat"])
    >>> view.html.startswith("<!DOCTYPE html>"), "http:" in view.html or "https:" in view.html
    (True, False)
    """
    data, per_layer = _payload(weights, tokens, key_tokens, batch, layer_names, title)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -len(per_layer) <= layer < len(per_layer):
        raise AttentionError(f"layer: expected an int in [0, {len(per_layer)}) (the layer shown first), got {layer!r}")
    layer %= len(per_layer)
    if heads is not None:
        count = per_layer[layer].shape[0]
        if (
            isinstance(heads, (str, bytes))
            or not isinstance(heads, Sequence)
            or not all(isinstance(h, int) and not isinstance(h, bool) and 0 <= h < count for h in heads)
        ):
            raise AttentionError(f"heads: expected head indices in [0, {count}) of layer {layer}, got {heads!r}")
        heads = list(heads)
    data.update(layer=layer, heads=heads)
    return _view("head", "qkvHeadView", data, title or "qkv head view")


def model_view(
    weights: Sequence[WeightsLike] | WeightsLike,
    tokens: Sequence[str] | None = None,
    *,
    key_tokens: Sequence[str] | None = None,
    batch: int = 0,
    layer_names: Sequence[str] | None = None,
    open: tuple[int, int] | None = None,  # noqa: A002 - the view's word for it
    title: str | None = None,
) -> HTMLView:
    """Every layer × head as a thumbnail heatmap; click one to enlarge it, in one self-contained HTML file.

    The enlarged head labels every query (rows) and key (columns) and prints the
    weight under the pointer; long inputs scroll (cells stay ≥ 12 px up to 600
    tokens) with the labels kept in view. Thumbnails of long inputs keep each
    block's largest weight, so thin patterns (previous token, first token) stay
    visible. A "√ contrast" switch brightens small weights.

    Args:
        weights, tokens, key_tokens, batch, layer_names, title: as for `head_view`.
        open: ``(layer, head)`` to show enlarged from the start.

    >>> import torch
    >>> from qkv.viz import model_view
    >>> weights = [torch.softmax(torch.randn(1, 4, 5, 5), -1) for _ in range(3)]   # 3 layers × 4 heads
    >>> view = model_view(weights, list("abcde"), open=(2, 1))
    >>> "qkvModelView" in view._repr_html_()
    True
    """
    data, per_layer = _payload(weights, tokens, key_tokens, batch, layer_names, title)
    if open is not None:
        ok = (
            isinstance(open, Sequence)
            and len(open) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in open)
            and 0 <= open[0] < len(per_layer)
            and 0 <= open[1] < per_layer[open[0]].shape[0]
        )
        if not ok:
            raise AttentionError(f"open: expected (layer, head) of an existing head, got {open!r}")
        open = [int(open[0]), int(open[1])]
    data.update(open=open)
    return _view("model", "qkvModelView", data, title or "qkv model view")


__all__ = ["HTMLView", "head_view", "model_view"]
