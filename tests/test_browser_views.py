"""The saved HTML views in a real headless Chromium: hover and click change what is shown,
nothing is fetched from the network, no script error, long inputs stay readable."""

from __future__ import annotations

import pytest
import torch
from browser import browser_page

from qkv.viz import head_view, model_view

TOKENS = ["The", "cat", "sat", "on", "the", "mat", "."]


def _patterns(n: int, layers: int = 2) -> list[torch.Tensor]:
    """Known heads: 0 previous token, 1 first token, 2 itself; layer l > 0 shifts nothing."""
    eye = torch.eye(n)
    previous = torch.roll(eye, -1, dims=1)  # query i -> key i - 1
    previous[0] = eye[0]
    first = torch.zeros(n, n)
    first[:, 0] = 1.0
    heads = torch.stack([previous, first, eye])  # (H, N, N)
    return [heads[None].clone() for _ in range(layers)]  # L × (1, H, N, N)


@pytest.fixture(scope="module")
def page():
    with browser_page() as p:
        yield p


def _backgrounds(page, side: str) -> list[str]:
    return page.eval_on_selector_all(f".qkv-{side} .qkv-tok[data-index]", "els => els.map(e => e.style.background)")


def _canvas(page, selector: str) -> str:
    return page.eval_on_selector(selector, "c => c.toDataURL()")


def test_head_view_hover_changes_what_is_highlighted(page, tmp_path):
    path = head_view(_patterns(7), TOKENS, title="known heads").save(tmp_path / "head.html")
    page.goto(path.as_uri())
    page.wait_for_selector(".qkv-left .qkv-tok[data-index='6']")
    assert page.locator(".qkv-tok.qkv-active").count() == 0
    assert all(b == "" for b in _backgrounds(page, "right"))
    before = _canvas(page, "canvas.qkv-lines")

    page.hover(".qkv-left .qkv-tok[data-index='3']")  # "on": previous token "sat", first token "The", itself
    assert page.get_attribute(".qkv-head-view", "data-focus") == "q3"
    assert page.locator(".qkv-left .qkv-tok.qkv-active").get_attribute("data-index") == "3"
    lit = [i for i, b in enumerate(_backgrounds(page, "right")) if b]
    assert lit == [0, 2, 3]
    assert "on" in page.inner_text(".qkv-status") and '"sat" 0.33' in page.inner_text(".qkv-status")
    focused = _canvas(page, "canvas.qkv-lines")
    assert focused != before

    page.hover(".qkv-right .qkv-tok[data-index='0']")  # key "The": who attends to it
    assert page.get_attribute(".qkv-head-view", "data-focus") == "k0"
    assert [i for i, b in enumerate(_backgrounds(page, "left")) if b] == list(range(7))  # first-token head
    assert all(b == "" for b in _backgrounds(page, "right"))
    assert _canvas(page, "canvas.qkv-lines") not in (before, focused)

    page.mouse.move(5, 5)  # leave: back to the overview
    assert page.get_attribute(".qkv-head-view", "data-focus") == ""
    assert _canvas(page, "canvas.qkv-lines") == before
    page.assert_quiet()


def test_head_view_heads_layers_and_pinning(page, tmp_path):
    weights = _patterns(7)
    weights[1] = weights[1][:, [2, 0]]  # layer 1 has 2 heads: itself, previous token
    page.goto(head_view(weights, TOKENS, heads=[0]).save(tmp_path / "heads.html").as_uri())
    page.wait_for_selector("button.qkv-head")
    assert page.locator("button.qkv-head.qkv-off").count() == 2  # only head 0 shown first
    page.hover(".qkv-left .qkv-tok[data-index='4']")
    assert [i for i, b in enumerate(_backgrounds(page, "right")) if b] == [3]  # previous token only
    page.click(".qkv-left .qkv-tok[data-index='4']")  # pin
    page.click("button.qkv-head >> text='1'")  # add the first-token head while pinned
    assert page.get_attribute(".qkv-head-view", "data-focus") == "q4"
    assert [i for i, b in enumerate(_backgrounds(page, "right")) if b] == [0, 3]
    page.dblclick("button.qkv-head >> text='2'")  # head 2 alone: itself
    assert [i for i, b in enumerate(_backgrounds(page, "right")) if b] == [4]
    page.select_option("select.qkv-layer", "1")  # layer 1: head 2 does not exist there -> all heads
    assert page.locator("button.qkv-head").count() == 2
    assert [i for i, b in enumerate(_backgrounds(page, "right")) if b] == [3, 4]
    page.click(".qkv-left .qkv-tok[data-index='4']")  # unpin
    page.mouse.move(5, 5)
    assert page.get_attribute(".qkv-head-view", "data-focus") == ""
    page.assert_quiet()


def test_model_view_click_enlarges_and_hover_reads_a_weight(page, tmp_path):
    page.goto(model_view(_patterns(7), TOKENS).save(tmp_path / "model.html").as_uri())
    page.wait_for_selector("button.qkv-thumb")
    assert page.locator("button.qkv-thumb").count() == 6  # 2 layers × 3 heads
    assert page.locator(".qkv-detail").is_hidden()
    page.click("button.qkv-thumb[data-layer='1'][data-head='1']")
    assert page.locator(".qkv-detail").is_visible()
    assert page.inner_text(".qkv-detail h3") == "layer 1 · head 1"
    cell = page.eval_on_selector("canvas.qkv-big", "c => parseFloat(c.style.width) / 7")
    assert cell >= 12  # readable cells
    page.hover("canvas.qkv-big", position={"x": cell * 0.5, "y": cell * 5.5})  # query 5 -> key 0
    status = page.inner_text(".qkv-detail .qkv-status")
    assert 'query 5 "mat" → key 0 "The": 1.00' in status
    assert page.inner_text(".qkv-qlabels span.qkv-active") == "mat"
    page.hover("canvas.qkv-big", position={"x": cell * 3.5, "y": cell * 5.5})  # query 5 -> key 3
    assert page.inner_text(".qkv-detail .qkv-status").endswith(": 0.00")
    thumb = _canvas(page, "button.qkv-thumb[data-layer='0'][data-head='2'] canvas")
    page.check("input.qkv-boost")
    assert _canvas(page, "button.qkv-thumb[data-layer='0'][data-head='2'] canvas") == thumb  # 0/1 weights: same
    page.click("button.qkv-close")
    assert page.locator(".qkv-detail").is_hidden()
    page.assert_quiet()


def test_long_inputs_scroll_at_a_readable_size(page, tmp_path):
    n = 240
    tokens = [f"w{i}" for i in range(n)]
    weights = [torch.softmax(torch.randn(1, 4, n, n) * 2, dim=-1) for _ in range(3)]
    page.goto(head_view(weights, tokens).save(tmp_path / "long.html").as_uri())
    page.wait_for_selector(f".qkv-left .qkv-tok[data-index='{n - 1}']")
    row = page.eval_on_selector(".qkv-left .qkv-tok[data-index='0']", "e => e.getBoundingClientRect().height")
    assert row >= 16  # tokens keep their size: the list scrolls
    assert page.locator(".qkv-left .qkv-tok[data-index]").count() == n
    scroll = page.eval_on_selector(".qkv-scroll", "e => [e.scrollHeight, e.clientHeight]")
    assert scroll[0] > 2 * scroll[1]
    page.locator(f".qkv-left .qkv-tok[data-index='{n - 10}']").scroll_into_view_if_needed()
    page.hover(f".qkv-left .qkv-tok[data-index='{n - 10}']")
    assert page.get_attribute(".qkv-head-view", "data-focus") == f"q{n - 10}"

    page.goto(model_view(weights, tokens).save(tmp_path / "long_model.html").as_uri())
    page.click("button.qkv-thumb[data-layer='2'][data-head='3']")
    cell = page.eval_on_selector("canvas.qkv-big", f"c => parseFloat(c.style.width) / {n}")
    assert cell >= 12
    assert page.locator(".qkv-klabels span").count() == n
    page.assert_quiet()


def test_missing_browser_skips_or_fails_when_required(monkeypatch, tmp_path):
    monkeypatch.setenv("QKV_CHROMIUM", str(tmp_path / "no-such-chromium"))
    monkeypatch.delenv("QKV_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no chromium"):
        with browser_page():
            pass
    monkeypatch.setenv("QKV_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="QKV_REQUIRE_BROWSER=1"):
        with browser_page():
            pass
