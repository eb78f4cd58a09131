"""The explorer in a real headless Chromium: `qkv explore` serves the page, typing draws the
attention, every knob redraws, the lab shows softmax saturate; no page errors, and the page
asks nothing of any host but the explorer's own."""

from __future__ import annotations

import os
import queue
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading

import pytest
from browser import browser_page

START_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def server():
    """`qkv explore --port 0` as a user runs it (module form until the command is registered); yields its URL."""
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qkv.cli.explore", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        try:
            first = lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            first = ""
        match = re.search(r"http://127\.0\.0\.1:\d+/", first)
        if not match:
            stderr.seek(0)
            pytest.fail(f"qkv explore did not print its URL: {first!r} {stderr.read().decode()[-2000:]}")
        yield match.group(0)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stderr.close()


@pytest.fixture(scope="module")
def page(server):
    with browser_page(width=1360, height=1000) as p:
        p.route(server + "**", lambda route: route.continue_())  # our server only; the rest stays blocked
        p.goto(server)
        p.wait_for_selector("[data-testid=attention-view][data-state=ready]", timeout=60_000)
        yield p


def _outside(page, server) -> list[str]:
    return [url for url in page.requests if not url.startswith(server)]


def _view(page, key: str) -> str:
    return page.get_attribute("[data-testid=attention-view]", f"data-{key}")


def _canvas(page, selector: str) -> str:
    return page.eval_on_selector(selector, "c => c.toDataURL()")


def _inked(page, selector: str) -> int:
    """How many pixels of a canvas are drawn on."""
    return page.eval_on_selector(
        selector,
        "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
        " for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }",
    )


def test_the_page_starts_on_a_real_model_and_binds_to_loopback(page, server):
    assert server.startswith("http://127.0.0.1:")
    assert _view(page, "model") == "minilm"
    assert page.locator("#col-q .tok").first.inner_text().startswith("[CLS]")
    assert page.get_attribute("[data-testid=server-status]", "class").split().count("ok") == 1


def test_every_post_carries_the_token_the_server_wrote_into_the_page(page, server):
    token = page.get_attribute('meta[name="qkv-token"]', "content")
    posts = []

    def on_request(request) -> None:
        if request.method == "POST":
            posts.append(request)

    page.on("request", on_request)
    try:
        page.fill("[data-testid=text-input]", "A bird sang at dawn.")
        page.wait_for_function(
            "() => [...document.querySelectorAll('#col-q .tok .txt')].some(e => e.textContent === 'bird')",
            timeout=30_000,
        )
    finally:
        page.remove_listener("request", on_request)
    assert token and posts and all(p.url.startswith(server + "api/") for p in posts)
    assert [p.headers.get("x-qkv-token") for p in posts] == [token] * len(posts)
    assert page.get_attribute("script[src='/static/explorer.js']", "type") == "module"
    assert page.errors == [] and _outside(page, server) == []


def test_typing_a_sentence_draws_its_attention(page, server):
    page.fill("[data-testid=text-input]", "The dog chased the ball across the park.")
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=attention-view] #col-q .tok .txt')]"
        ".some(e => e.textContent === 'dog')",
        timeout=30_000,
    )
    page.wait_for_selector("[data-testid=attention-view][data-state=ready]")
    tokens = page.eval_on_selector_all("#col-q .tok .txt", "els => els.map(e => e.textContent)")
    assert tokens == ["[CLS]", "the", "dog", "chased", "the", "ball", "across", "the", "park", ".", "[SEP]"]
    assert _view(page, "tokens") == "11"
    assert _inked(page, "#lines-canvas") > 500 and _inked(page, "[data-testid=heatmap]") > 5000
    assert page.locator("[data-testid=grid-entropy]").is_visible() and _inked(page, "[data-testid=rollout]") > 1000
    assert page.errors == [] and _outside(page, server) == []


def test_head_layer_and_focus_knobs_redraw_the_view(page, server):
    digest, picture = _view(page, "digest"), _canvas(page, "[data-testid=heatmap]")
    head = _view(page, "head")
    other = "3" if head != "3" else "4"
    page.click(f"[data-testid=head-buttons] button[data-head='{other}']")
    assert _view(page, "head") == other
    assert _view(page, "digest") != digest and _canvas(page, "[data-testid=heatmap]") != picture

    digest, lines = _view(page, "digest"), _canvas(page, "#lines-canvas")
    page.select_option("[data-testid=layer-select]", "5")
    assert _view(page, "layer") == "5" and _view(page, "digest") != digest
    assert _canvas(page, "#lines-canvas") != lines

    page.click("[data-testid=head-buttons] button[data-head='mean']")
    assert _view(page, "head") == "mean"
    overview = _canvas(page, "#lines-canvas")
    page.hover("#col-q .tok[data-index='2']")  # "dog": its lines alone, and a sentence saying where they go
    assert "dog attends to" in page.inner_text("[data-testid=focus-line]")
    assert _canvas(page, "#lines-canvas") != overview
    page.mouse.move(5, 5)
    assert _canvas(page, "#lines-canvas") == overview

    page.click("[data-testid=grid-distance]", position={"x": 28 + 24 * 7 + 12, "y": 18 + 22 * 1 + 11})
    assert (_view(page, "layer"), _view(page, "head")) == ("1", "7")  # a grid cell selects its layer and head
    assert page.errors == [] and _outside(page, server) == []


def test_a_text_too_long_for_the_view_gets_a_clear_message(page, server):
    page.fill("[data-testid=text-input]", "word " * 300)
    page.wait_for_selector("[data-testid=model-error]:not([hidden])", timeout=30_000)
    assert "at most 128" in page.inner_text("[data-testid=model-error]")
    # the browser itself logs the 413 as a failed resource; nothing else may complain
    assert [e for e in page.errors if "413" not in e] == []
    page.errors.clear()
    page.fill("[data-testid=text-input]", "Short again.")
    page.wait_for_selector("[data-testid=model-error][hidden]", state="attached", timeout=30_000)
    page.wait_for_selector("[data-testid=attention-view][data-state=ready]")
    assert _view(page, "tokens") == "5"


def _ready_on(page, model: str, layer: str | None = None, timeout: int = 60_000) -> None:
    """Wait until the view shows ``model`` (and ``layer``), drawn."""
    page.wait_for_function(
        "([model, layer]) => { const v = document.querySelector('[data-testid=attention-view]');"
        " return v.dataset.state === 'ready' && v.dataset.model === model"
        " && (layer === null || v.dataset.layer === layer); }",
        arg=[model, layer],
        timeout=timeout,
    )


def _lab_ready(page) -> None:
    page.wait_for_selector("[data-testid=lab-view][data-state=ready]", timeout=30_000)


def _lab(page, key: str) -> str:
    return page.get_attribute("[data-testid=lab-view]", f"data-{key}")


def test_lab_softmax_saturates_when_scaling_is_off_and_d_k_grows(page, server):
    page.click("[data-testid=tab-lab]")
    _lab_ready(page)
    assert _lab(page, "step") == "softmax"
    peak, digest = float(_lab(page, "peak")), _lab(page, "digest")
    assert peak < 0.6  # d_k = 8, scaled: the weights are spread out

    page.uncheck("[data-testid=lab-scaled]")
    page.fill("[data-testid=lab-dk]", "10")  # 2**10 = 1024
    page.wait_for_function(
        "() => document.querySelector('[data-testid=lab-view]').dataset.state === 'ready'"
        " && document.querySelector('#lab-dk-value').textContent === '1024'"
        " && +document.querySelector('[data-testid=lab-view]').dataset.peak > 0.7",
        timeout=30_000,
    )
    assert _lab(page, "digest") != digest
    assert "off" in page.inner_text("#lab-scale-value")
    assert page.locator("[data-testid=saturation-chart] polyline").count() == 4
    assert page.locator("[data-testid=saturation-chart] circle").count() == 2  # "now", on both charts

    page.check("[data-testid=lab-scaled]")  # scaling back on: the spread returns
    page.wait_for_function(
        "() => document.querySelector('[data-testid=lab-view]').dataset.state === 'ready'"
        " && +document.querySelector('[data-testid=lab-view]').dataset.peak < 0.6",
        timeout=30_000,
    )
    assert page.errors == [] and _outside(page, server) == []


def test_lab_steps_through_the_pipeline_with_the_real_matrices(page, server):
    page.select_option("[data-testid=lab-mask]", "causal")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=lab-view]').dataset.state === 'ready'"
        " && document.querySelector('#lab-mask-help').textContent.startsWith('Causal')",
        timeout=30_000,
    )
    _lab_ready(page)
    page.click("[data-testid=step-mask]")
    words = 10  # "the cat sat on the mat because it was tired"
    assert page.locator("[data-testid=lab-view] .neg-inf").count() == words * (words - 1) // 2
    titles = []
    page.click("[data-testid=step-x]")
    for _ in range(6):
        titles.append(page.inner_text("#step-title"))
        page.click("[data-testid=step-next]")
    titles.append(page.inner_text("#step-title"))
    assert [t.split(" · ")[0] for t in titles] == ["1", "2", "3", "4", "5", "6", "7"]
    assert page.locator("[data-testid=lab-view] figure").count() == 3  # weights · V = out
    assert page.is_disabled("[data-testid=step-next]")

    before = _lab(page, "digest")
    page.fill("[data-testid=lab-heads]", "4")
    page.wait_for_function("() => document.querySelectorAll('[data-testid=lab-head-buttons] button').length === 4")
    _lab_ready(page)
    page.click("[data-testid=lab-head-buttons] button >> text='3'")
    assert _lab(page, "head") == "3" and _lab(page, "digest") != before
    assert "e-" in page.inner_text("#lab-check") or "0.0e+0" in page.inner_text("#lab-check")
    assert page.errors == [] and _outside(page, server) == []


def test_a_long_smollm2_text_draws_and_each_layer_is_fetched_when_shown(page, server):
    """115 words (beyond the 74 tokens SmolLM2's full answer once allowed): one layer comes at a time."""
    words = "cat dog river stone light music bread winter garden paper window silver".split()
    rng = random.Random(11)
    page.click("[data-testid=tab-model]")
    page.fill("[data-testid=text-input]", " ".join(rng.choice(words) for _ in range(115)) + ".")
    page.select_option("[data-testid=model-select]", "smollm2")
    _ready_on(page, "smollm2", timeout=180_000)  # loads the model: slow, once
    assert int(_view(page, "tokens")) > 100 and int(_view(page, "layers-held")) <= 2  # not all 30 layers
    assert "Started at layer " + _view(page, "layer") in page.inner_text("#model-note")  # the server's pick
    assert _inked(page, "[data-testid=heatmap]") > 5000 and _inked(page, "#lines-canvas") > 500
    digest, picture, held = _view(page, "digest"), _canvas(page, "[data-testid=heatmap]"), _view(page, "layers-held")
    other = "3" if _view(page, "layer") != "3" else "4"
    page.select_option("[data-testid=layer-select]", other)
    _ready_on(page, "smollm2", layer=other)
    assert _view(page, "digest") != digest and _canvas(page, "[data-testid=heatmap]") != picture
    assert int(_view(page, "layers-held")) == int(held) + 1
    assert page.errors == [] and _outside(page, server) == []
