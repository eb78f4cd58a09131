"""qkv.viz.head_view / model_view: one self-contained file that loads nothing from the network."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

import qkv
from qkv.interpret import record
from qkv.nn import EncoderConfig, TransformerEncoder
from qkv.viz import HTMLView, head_view, model_view

TOKENS = ["[CLS]", "the", "cat", "sat", "[SEP]"]
URL_ATTRIBUTES = {"src", "href", "srcset", "action", "formaction", "poster", "data", "background", "ping", "xlink:href"}


def _weights(layers: int = 2, heads: int = 3, n: int = 5) -> list[torch.Tensor]:
    return [torch.softmax(torch.randn(1, heads, n, n) * 2, dim=-1) for _ in range(layers)]


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.tags: list[str] = []
        self.meta: list[dict[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "meta":
            self.meta.append(dict(attrs))
        for name, value in attrs:
            if name in URL_ATTRIBUTES:
                self.urls.append((tag, name, value or ""))


def _parse(text: str) -> _Collector:
    c = _Collector()
    c.feed(text)
    return c


def _payload(view: HTMLView, entry: str) -> dict:
    match = re.search(entry + r"\(root, (\{.*\})\);\n\}\)\(\);", view.html, flags=re.S)
    assert match, f"{entry}(...) call not found"
    return json.loads(match.group(1))


@pytest.mark.parametrize("make", [head_view, model_view])
def test_views_load_nothing_from_the_network(make, tmp_path):
    view = make(_weights(), TOKENS, title="a title")
    path = view.save(tmp_path / "view.html")
    text = path.read_text(encoding="utf-8")
    parsed = _parse(text)
    # no src/href at all (nothing external, not even a local file): everything is inline
    assert parsed.urls == []
    assert not re.search(r"\b(?:src|href)\s*=", text, flags=re.I)
    assert not re.search(r"\b(?:https?|wss?|ftp):|//[a-z0-9.-]+\.[a-z]{2,}/", text, flags=re.I)
    assert not re.search(r"url\(|@import|fetch\(|XMLHttpRequest|WebSocket|EventSource|import\(|sendBeacon", text)
    assert "<link" not in text and "<iframe" not in text
    assert {"style", "script", "div"} <= set(parsed.tags)
    csp = [m for m in parsed.meta if m.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"]


def test_saved_page_is_complete_and_fragment_is_embeddable(tmp_path):
    view = head_view(_weights(), TOKENS, title="Attention <b>of</b> a cat")
    assert view.html.startswith("<!DOCTYPE html>") and view.html.rstrip().endswith("</html>")
    assert '<meta charset="utf-8">' in view.html
    assert "<title>Attention &lt;b&gt;of&lt;/b&gt; a cat</title>" in view.html
    fragment = view._repr_html_()
    assert "<html" not in fragment and "<!DOCTYPE" not in fragment and fragment in view.html
    assert str(view) == view.html and "HTMLView" in repr(view)
    other = head_view(_weights(), TOKENS)
    ids = [re.search(r'id="(qkv-head-[0-9a-f]+)"', v.fragment).group(1) for v in (view, other)]
    assert ids[0] != ids[1]  # two views in one notebook do not collide
    css_rules = re.search(r"<style>\n(.*?)</style>", fragment, flags=re.S).group(1)
    selectors = [s.strip() for s in re.findall(r"(?:^|})\s*([^{}@/]+?)\s*\{", css_rules)]
    assert selectors and all(s.startswith((".qkv-view", "body.qkv-page")) for s in selectors), selectors
    path = view.save(str(tmp_path / "v.html"))
    assert path.read_text(encoding="utf-8") == view.html
    with pytest.raises(qkv.AttentionError, match="path: "):
        view.save(3)


def test_embedded_weights_and_tokens_round_trip():
    weights = _weights(layers=3, heads=2, n=5)
    tokens = ["naïve", "日本", " ", "</script><script>alert(1)</script>", "a&b"]
    view = model_view(weights, tokens, layer_names=["enc.0", "enc.1", "enc.2"], open=(2, 1))
    assert "</script><script>alert(1)" not in view.html  # a token cannot end the script element
    data = _payload(view, "qkvModelView")
    assert data["tokens"] == tokens and data["keyTokens"] == tokens and data["open"] == [2, 1]
    assert [layer["name"] for layer in data["layers"]] == ["enc.0", "enc.1", "enc.2"]
    for layer, w in zip(data["layers"], weights):
        stored = np.frombuffer(base64.b64decode(layer["data"]), dtype=np.uint8).reshape(2, 5, 5)
        assert np.array_equal(stored, np.rint(w[0].numpy() * 255).astype(np.uint8))
        assert np.abs(stored / 255 - w[0].numpy()).max() <= 0.5 / 255 + 1e-7


def test_head_view_of_a_recorded_model_with_cross_shapes_and_pruned_heads():
    torch.manual_seed(0)
    cfg = EncoderConfig.bert(vocab_size=40, embed_dim=32, num_layers=2, num_heads=4, ffn_dim=64)
    model = TransformerEncoder(cfg).eval()
    qkv.interpret.prune_heads(model, {1: [0, 3]})
    with record(model) as rec, torch.no_grad():
        model(torch.randint(0, 40, (2, 6)))
    tokens = [f"t{i}" for i in range(6)]
    data = _payload(head_view(rec.weights, tokens, batch=1, layer=-1, heads=[1]), "qkvHeadView")
    assert [layer["heads"] for layer in data["layers"]] == [4, 2]
    assert data["layer"] == 1 and data["heads"] == [1]
    stored = np.frombuffer(base64.b64decode(data["layers"][1]["data"]), dtype=np.uint8).reshape(2, 6, 6)
    assert np.array_equal(stored, np.rint(rec.weights[1][1].numpy() * 255).astype(np.uint8))
    # rows= recordings: fewer queries than keys, labelled separately
    with record(model, rows=[0, -1]) as part, torch.no_grad():
        model(torch.randint(0, 40, (1, 6)))
    data = _payload(head_view(part.weights, ["t0", "t5"], key_tokens=tokens), "qkvHeadView")
    assert data["tokens"] == ["t0", "t5"] and data["keyTokens"] == tokens


def test_a_long_input_stays_compact():
    n = 220
    view = model_view([torch.softmax(torch.randn(1, 12, n, n), -1) for _ in range(6)], [f"w{i}" for i in range(n)])
    # 6 layers × 12 heads × 220² weights at 1/255: about 1.33 bytes each, plus the page
    assert len(view.html) < 1.4 * 6 * 12 * n * n + 60_000


def test_bad_arguments_name_themselves():
    w = _weights()
    with pytest.raises(qkv.AttentionError, match="tokens: 4 tokens given"):
        head_view(w, TOKENS[:4])
    with pytest.raises(qkv.AttentionError, match="tokens: expected a list of strings"):
        head_view(w, "the cat")
    with pytest.raises(qkv.AttentionError, match=r"layer: expected an int in \[0, 2\)"):
        head_view(w, TOKENS, layer=2)
    with pytest.raises(qkv.AttentionError, match="heads: "):
        head_view(w, TOKENS, heads=[3])
    with pytest.raises(qkv.AttentionError, match="open: "):
        model_view(w, TOKENS, open=(0, 5))
    with pytest.raises(qkv.AttentionError, match="batch: 1 is out of range"):
        model_view(w, TOKENS, batch=1)
    with pytest.raises(qkv.AttentionError, match=r"weights\[1\]: 4 queries × 4 keys"):
        head_view([w[0], torch.softmax(torch.randn(1, 3, 4, 4), -1)], TOKENS)
    with pytest.raises(qkv.AttentionError, match=r"weights\[0\]: expected probabilities"):
        head_view([torch.randn(1, 2, 5, 5) * 5], TOKENS)
    with pytest.raises(qkv.AttentionError, match="weights: expected a non-empty list"):
        model_view([], TOKENS)
    with pytest.raises(qkv.AttentionError, match="layer_names: "):
        model_view(w, TOKENS, layer_names=["only one"])


def test_layers_without_a_batch_axis_are_accepted():
    weights = _weights(layers=2, heads=3)
    without_batch = [w[0] for w in weights]  # L × (H, N, N), as `qkv explain` holds them
    a = _payload(head_view(without_batch, TOKENS, layer=1, heads=[2]), "qkvHeadView")
    b = _payload(head_view(torch.stack(weights), TOKENS, layer=1, heads=[2]), "qkvHeadView")  # (L, B, H, N, N)
    assert a["layers"] == b["layers"] and a["layer"] == 1 and a["heads"] == [2]
