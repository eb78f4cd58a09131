"""The explorer's HTTP API: answers match qkv's own computations, bad input gets a clear 4xx
(never a 500), the model is loaded once and shared, a slow request blocks nothing else."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from qkv.explorer import Limits, create_app, serve_in_thread
from qkv.interpret import entropy, mean_distance, rollout
from qkv.models import ModelNotInstalledError, load

SENTENCE = "The cat sat on the mat because it was tired."


class CountingLoader:
    """A loader that counts its calls and takes a while (so concurrent first requests overlap it)."""

    def __init__(self, model=None) -> None:
        self.model = model
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, name: str):
        with self.lock:
            self.calls += 1
        time.sleep(0.3)  # widen the window in which concurrent first requests could load twice
        return self.model if self.model is not None else load(name)


@pytest.fixture(scope="module")
def minilm():
    return load("minilm")


@pytest.fixture(scope="module")
def client(minilm):
    app = create_app(loader=lambda name: minilm if name == "minilm" else load(name))
    with TestClient(app, headers=_token(app)) as c:
        yield c


def _token(app) -> dict[str, str]:
    """The header the app's own pages send with every change."""
    return {"X-QKV-Token": app.state.token}


def _post(client, path: str, body) -> httpx.Response:
    if isinstance(body, (bytes, str)):
        return client.post(path, content=body, headers={"Content-Type": "application/json"})
    return client.post(path, json=body)


# -- health and the page ----------------------------------------------------------------------


def test_health_lists_models_and_limits_without_loading_any():
    loader = CountingLoader()
    client = TestClient(create_app(loader=loader))  # reading needs no token
    body = client.get("/api/health").json()
    assert body["status"] == "ok" and body["default_model"] == "minilm"
    names = [m["name"] for m in body["models"]]
    assert names[0] == "minilm" and "smollm2" in names
    assert all(m["loaded"] is False for m in body["models"])
    assert body["limits"]["max_body_bytes"] == Limits().max_body_bytes
    assert loader.calls == 0  # health never loads a model


def test_page_is_local_static_files_with_the_test_hooks(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'data-testid="text-input"' in page.text and 'data-testid="attention-view"' in page.text
    assert "connect-src 'self'" in page.headers["content-security-policy"]  # the browser may talk to us only
    for src in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert src.startswith("/static/") or src == "/learn", src  # its own files, and the course's page
        assert client.get(src).status_code == 200
    static = resources.files("qkv.explorer").joinpath("static")
    for item in static.iterdir():
        text = item.read_text(encoding="utf-8")
        urls = set(re.findall(r"https?://[^\s\"')]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, f"{item.name} refers to the network: {urls}"


# -- /api/attention ---------------------------------------------------------------------------


def test_attention_returns_the_models_exact_weights_and_metrics(client, minilm):
    r = client.post("/api/attention", json={"text": SENTENCE, "model": "minilm"})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = minilm.attentions(SENTENCE)
    assert body["tokens"] == expected.tokens and body["tokens"][0] == "[CLS]" and body["tokens"][-1] == "[SEP]"
    assert body["special"] == expected.special and body["causal"] is False and body["kind"] == "bert"
    weights = torch.tensor(body["weights"], dtype=torch.float64)  # (L, H, N, N)
    n = len(expected.tokens)
    assert weights.shape == (6, 12, n, n) == expected.weights.shape
    assert body["num_layers"] == 6 and body["num_heads"] == 12
    torch.testing.assert_close(weights, expected.weights.double(), atol=6e-6, rtol=0)  # 5 decimals
    torch.testing.assert_close(weights.sum(-1), torch.ones(6, 12, n, dtype=torch.float64), atol=1e-4, rtol=0)
    w = expected.weights
    torch.testing.assert_close(torch.tensor(body["entropy"]), entropy(w).mean(-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(body["distance"]), mean_distance(w).mean(-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(body["rollout"]), rollout(w[:, None])[0], atol=1e-4, rtol=0)
    assert math.isclose(body["entropy_max"], math.log(n), rel_tol=1e-4)


def test_attention_defaults_to_the_servers_model(client):
    body = client.post("/api/attention", json={"text": "Hello there"}).json()
    assert body["model"] == "minilm" and body["tokens"] == ["[CLS]", "hello", "there", "[SEP]"]


@pytest.mark.parametrize(
    "body, status, says",
    [
        (b"", 400, "got nothing"),
        (b"The cat sat.", 400, "not valid JSON"),
        (b"[1, 2]", 400, "expected a JSON object"),
        (b"\xff\xfe{}", 400, "UTF-8"),
        (b"[" * 60_000, 400, "body:"),
        ({"model": "minilm"}, 400, "text: missing"),
        ({"text": 42}, 400, "text: expected a string, got int"),
        ({"text": None}, 400, "text: expected a string"),
        ({"text": "   \n"}, 400, "text: expected some text"),
        ({"text": "hi", "model": "gpt5"}, 400, "model: expected one of ['minilm', 'smollm2'], got 'gpt5'"),
        ({"text": "hi", "model": "/etc/passwd"}, 400, "model: expected one of"),
        ({"text": "hi", "model": ["minilm"]}, 400, "model: expected a string"),
        ({"text": "hi", "layers": 3}, 400, "unknown field 'layers'"),
        ({"text": "hi", "layer": "3"}, 400, "layer: expected an integer (a layer index), got str"),
        ({"text": "hi", "layer": True}, 400, "layer: expected an integer (a layer index), got true or false"),
        ({"text": "hi", "layer": 1.5}, 400, "layer: expected an integer (a layer index), got float"),
        ({"text": "hi", "layer": -1}, 400, "layer: expected an integer from 0, got -1"),
        ({"text": "hi", "layer": 6}, 400, "layer: expected an integer from 0 to 5 (minilm has 6 layers), got 6"),
        ('{"text": "\\ud800 cat"}', 400, "surrogate"),
        ({"text": "x" * 2001}, 413, "at most 2000 characters"),
        ({"text": "word " * 300}, 413, "at most 128"),
    ],
    ids=lambda v: v if isinstance(v, int) else None,
)
def test_bad_attention_requests_get_a_clear_4xx(client, body, status, says):
    r = _post(client, "/api/attention", body)
    assert r.status_code == status, r.text
    assert says in r.json()["error"]


def test_oversized_bodies_are_refused_before_they_are_read(client):
    limit = Limits().max_body_bytes
    big = json.dumps({"text": "a" * (limit + 10)}).encode()
    r = client.post("/api/attention", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and f"at most {limit}" in r.json()["error"]

    def chunks():  # no Content-Length: the server counts as it reads
        for _ in range(limit // 1000 + 5):
            yield b" " * 1000

    r = client.post("/api/attention", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "more than" in r.json()["error"]
    r = client.post("/api/lab", content=big)
    assert r.status_code == 413


def test_unknown_routes_and_methods_answer_json(client):
    r = client.get("/api/nothing")
    assert r.status_code == 404 and "/api/attention" in r.json()["error"]
    r = client.get("/api/attention")
    assert r.status_code == 405 and "GET" in r.json()["error"]


def test_a_model_that_is_not_installed_is_a_503_with_the_install_command():
    def loader(name):
        raise ModelNotInstalledError(f"model {name!r} needs a package; install it with:\n    pip install --no-deps x")

    app = create_app(loader=loader)
    client = TestClient(app, headers=_token(app))
    r = client.post("/api/attention", json={"text": "Hello"})
    assert r.status_code == 503 and "pip install --no-deps x" in r.json()["error"]
    assert client.get("/api/health").status_code == 200


# -- /api/lab ---------------------------------------------------------------------------------


def test_lab_steps_are_qkvs_own_computation(client):
    r = client.post("/api/lab", json={"text": "the cat sat on the mat", "d_k": 16, "heads": 3, "mask": "causal"})
    assert r.status_code == 200, r.text
    lab = r.json()
    assert lab["tokens"] == ["the", "cat", "sat", "on", "the", "mat"] and len(lab["heads"]) == 3
    assert lab["scale"] == pytest.approx(1 / 4)
    assert lab["check"]["weights"] < 1e-9 and lab["check"]["out"] < 1e-9
    for head in lab["heads"]:
        q, k = torch.tensor(head["q"]), torch.tensor(head["k"])  # (N, 16)
        torch.testing.assert_close(torch.tensor(head["scores"]), q @ k.T, atol=2e-3, rtol=1e-3)
        masked = torch.tensor([[-math.inf if v is None else v for v in row] for row in head["masked"]])
        weights = torch.tensor(head["weights"])
        torch.testing.assert_close(weights, torch.softmax(masked, -1), atol=1e-3, rtol=0)
        assert torch.all(weights.triu(1) == 0)  # causal: nothing after the query
        torch.testing.assert_close(torch.tensor(head["out"]), weights @ torch.tensor(head["v"]), atol=2e-3, rtol=0)


def test_lab_without_positions_cannot_tell_repeated_words_apart(client):
    plain = client.post("/api/lab", json={"text": "the cat saw the dog"}).json()
    w = plain["heads"][0]["weights"]
    assert w[0] == w[3]  # both "the" rows: same embedding, same query
    rotary = client.post("/api/lab", json={"text": "the cat saw the dog", "positional": "rotary"}).json()
    assert rotary["heads"][0]["weights"][0] != rotary["heads"][0]["weights"][3]


def test_lab_shows_softmax_saturating_without_scaling(client):
    lab = client.post("/api/lab", json={"d_k": 1024, "scaled": False}).json()
    sat = lab["saturation"]
    assert sat["d_k"][0] == 2 and sat["d_k"][-1] == 1024
    assert sat["unscaled"]["peak"][-1] > 0.8 > sat["scaled"]["peak"][-1]  # one key takes (nearly) all
    assert sat["unscaled"]["gradient"][-1] < 0.5 * sat["scaled"]["gradient"][-1]  # and the gradient fades
    assert lab["heads"][0]["logit_std"] > 10  # unscaled spread ~ sqrt(1024)
    scaled = client.post("/api/lab", json={"d_k": 1024}).json()
    assert scaled["heads"][0]["logit_std"] < 3
    assert len(scaled["heads"][0]["q"][0]) == 32  # only the first 32 of 1024 dims are sent


@pytest.mark.parametrize(
    "body, says",
    [
        ({"d_k": 0}, "d_k: expected an integer from 1 to 1024, got 0"),
        ({"d_k": "8"}, "d_k: expected an integer"),
        ({"d_k": 2048}, "d_k: expected an integer from 1 to 1024"),
        ({"heads": 9}, "heads: expected an integer from 1 to 8"),
        ({"temperature": 0}, "temperature: expected a number"),
        ('{"temperature": NaN}', "temperature: expected a number"),
        ({"scaled": "yes"}, "scaled: expected true or false"),
        ({"mask": "diagonal"}, "mask: expected one of"),
        ({"positional": "alibi"}, "positional: expected one of"),
        ({"positional": "rotary", "d_k": 5}, "even d_k"),
        ({"text": "one two three four five six seven eight nine ten eleven twelve thirteen"}, "at most 12 words"),
        ({"text": ""}, "text: expected a few words"),
        ({"seed": -1}, "seed: expected an integer"),
        ({"dk": 8}, "unknown field 'dk'"),
        ([1], "expected a JSON object"),
    ],
)
def test_bad_lab_requests_get_a_400(client, body, says):
    r = _post(client, "/api/lab", body)
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]


# -- concurrency --------------------------------------------------------------------------------


def test_many_clients_at_once_share_one_model_and_each_gets_its_own_answer(minilm):
    loader = CountingLoader(minilm)
    app = create_app(loader=loader)
    texts = [
        f"Request number {i} asks about {word}."
        for i, word in enumerate(
            [
                "cats",
                "dogs",
                "rain",
                "music",
                "trains",
                "bread",
                "rivers",
                "stars",
                "chess",
                "ships",
                "tea",
                "snow",
                "bees",
                "maps",
                "clocks",
                "kites",
            ]
        )
    ]
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60, headers=_token(app)) as http:

        def ask(i: int):
            if i % 5 == 4:
                return "lab", http.post("/api/lab", json={"seed": i, "d_k": 4})
            if i % 7 == 6:
                return "health", http.get("/api/health")
            text = texts[i % len(texts)]
            return text, http.post("/api/attention", json={"text": text})

        with ThreadPoolExecutor(max_workers=24) as pool:
            answers = list(pool.map(ask, range(40)))
    assert [r.status_code for _, r in answers] == [200] * 40
    assert loader.calls == 1  # loaded once, although ~25 requests arrived before it was there
    checked = set()
    for text, r in answers:
        if text in ("lab", "health"):
            continue
        body = r.json()
        assert body["text"] == text
        assert body["tokens"] == minilm.attentions(text).tokens
        if text not in checked:  # no request saw another's weights (record() hooks a shared model)
            checked.add(text)
            expected = minilm.attentions(text).weights.double()
            torch.testing.assert_close(torch.tensor(body["weights"], dtype=torch.float64), expected, atol=6e-6, rtol=0)


class SlowModel:
    """A stand-in model whose forward pass waits until the test lets it go."""

    kind = "bert"
    context_length = 512

    def __init__(self, minilm) -> None:
        self.minilm = minilm
        self.started = threading.Event()
        self.release = threading.Event()

    def encode(self, text):
        return self.minilm.encode(text)

    def attentions(self, text):
        self.started.set()
        assert self.release.wait(30), "the test never released the slow model"
        return self.minilm.attentions(text)


def test_a_slow_request_blocks_neither_health_nor_the_lab_nor_the_page(minilm):
    slow = SlowModel(minilm)
    app = create_app(loader=lambda name: slow)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30, headers=_token(app)) as http:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(http.post, "/api/attention", json={"text": SENTENCE})
            assert slow.started.wait(20)
            try:
                quick = httpx.Client(base_url=url, timeout=10, headers=_token(app))
                assert quick.get("/api/health").status_code == 200
                assert quick.post("/api/lab", json={"d_k": 8}).status_code == 200
                assert quick.get("/").status_code == 200
                assert quick.get("/static/explorer.js").status_code == 200
                assert not pending.done()
            finally:
                slow.release.set()
            r = pending.result(timeout=30)
    assert r.status_code == 200 and r.json()["tokens"][0] == "[CLS]"


def test_a_full_queue_answers_503_instead_of_piling_up(minilm):
    slow = SlowModel(minilm)
    app = create_app(loader=lambda name: slow, limits=Limits(max_waiting=1))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30, headers=_token(app)) as http:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(http.post, "/api/attention", json={"text": SENTENCE})
            assert slow.started.wait(20)
            try:
                r = httpx.post(url + "api/attention", json={"text": "another"}, timeout=10, headers=_token(app))
                assert r.status_code == 503 and "busy" in r.json()["error"]
            finally:
                slow.release.set()
            assert pending.result(timeout=30).status_code == 200


# -- the command ------------------------------------------------------------------------------


def _explore_args(*argv: str):
    import argparse

    from qkv.cli import explore

    parser = argparse.ArgumentParser(prog="qkv")
    explore.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["explore", *argv])


def test_qkv_explore_binds_to_loopback_unless_told_otherwise():
    args = _explore_args()
    assert (args.host, args.port, args.model) == ("127.0.0.1", 8765, "minilm")


def test_qkv_explore_on_a_busy_port_says_so_before_loading_a_model():
    import socket

    from rich.console import Console

    from qkv.errors import AttentionError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        args = _explore_args("--port", str(port), "--model", "no-such-model")  # would fail later, if it got there
        with pytest.raises(AttentionError, match=rf"cannot listen on 127\.0\.0\.1:{port} .*--port"):
            args.run(args, Console(file=None, quiet=True))


def test_qkv_explore_with_an_unknown_model_names_the_known_ones():
    from rich.console import Console

    from qkv.errors import AttentionError

    args = _explore_args("--port", "0", "--model", "gpt5")
    with pytest.raises(AttentionError, match=r"expected one of \['minilm', 'smollm2'\]"):
        args.run(args, Console(quiet=True))


@pytest.fixture(scope="module")
def smollm2():
    return load("smollm2")


def test_one_layer_of_a_small_answer_is_that_layer_and_the_rest_is_unchanged(client):
    full = client.post("/api/attention", json={"text": SENTENCE}).json()
    assert full["layers_sent"] == list(range(6))  # it fits the budget: every layer, as before
    one = client.post("/api/attention", json={"text": SENTENCE, "layer": 4}).json()
    assert one["layers_sent"] == [4] and len(one["weights"]) == 1
    assert one["weights"][0] == full["weights"][4]
    for key in ("tokens", "entropy", "distance", "rollout", "start", "num_layers", "num_heads", "max_tokens"):
        assert one[key] == full[key], key
    start = full["start"]
    assert 0 <= start["layer"] < 6 and 0 <= start["head"] < 12 and f"layer {start['layer']}" in start["reason"]


def test_smollm2_answers_with_causal_weights_and_long_texts_one_layer_at_a_time(smollm2):
    """The decoder (a few seconds to load): causal rows, grouped-query heads, and texts up to 128 tokens."""
    app = create_app(loader=lambda name: smollm2 if name == "smollm2" else load(name))
    client = TestClient(app, headers=_token(app))
    body = client.post("/api/attention", json={"text": SENTENCE, "model": "smollm2"}).json()
    assert body["model"] == "smollm2" and body["causal"] is True and body["kind"] == "llama"
    assert body["tokens"][:3] == ["The", " cat", " sat"]
    weights = torch.tensor(body["weights"])  # (30, 9, N, N)
    n = len(body["tokens"])
    assert weights.shape == (30, 9, n, n) and body["layers_sent"] == list(range(30))
    assert torch.all(weights.triu(1) == 0)  # no token sees a later one
    torch.testing.assert_close(weights.sum(-1), torch.ones(30, 9, n), atol=1e-4, rtol=0)
    smol = next(m for m in client.get("/api/health").json()["models"] if m["name"] == "smollm2")
    assert smol["loaded"] and smol["max_tokens"] == Limits().max_tokens == 128  # no longer capped by the weights

    gen = torch.Generator().manual_seed(7)
    words = "cat dog river stone light music bread winter garden paper window silver".split()
    text = " ".join(words[int(i)] for i in torch.randint(len(words), (115,), generator=gen)) + "."
    expected = smollm2.attentions(text).weights  # (30, 9, N, N)
    n = expected.shape[-1]
    assert 100 <= n <= 128 and 30 * 9 * n * n > Limits().max_weights  # all of it would not fit one answer
    r = client.post("/api/attention", json={"text": text, "model": "smollm2", "layer": 23})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["layers_sent"] == [23] and len(body["tokens"]) == n
    layer = torch.tensor(body["weights"], dtype=torch.float64)  # (1, 9, N, N)
    assert layer.shape == (1, 9, n, n)
    torch.testing.assert_close(layer[0], expected[23].double(), atol=6e-6, rtol=0)  # 5 decimals
    assert not torch.allclose(layer[0], expected[22].double(), atol=1e-3)  # that layer, not its neighbour
    torch.testing.assert_close(torch.tensor(body["entropy"]), entropy(expected).mean(-1), atol=1e-4, rtol=0)  # (30, 9)
    torch.testing.assert_close(torch.tensor(body["rollout"]), rollout(expected[:, None])[0], atol=1e-4, rtol=0)
    start = body["start"]  # chosen on the server from all 30 layers
    plain = [i for i in range(1, n) if not (body["special"][i] or body["special"][i - 1])]
    share = expected[start["layer"], start["head"], plain, [i - 1 for i in plain]].mean().item()
    assert start["neighbour"] == "previous" and math.isclose(start["share"], share, abs_tol=1e-4)
    assert share >= max(expected[:, :, plain, [i - 1 for i in plain]].mean(-1).flatten().tolist()) - 1e-6
    assert f"layer {start['layer']}, head {start['head']}" in start["reason"]

    default = client.post("/api/attention", json={"text": text, "model": "smollm2"}).json()
    assert default["layers_sent"] == [0] and len(default["weights"]) == 1  # the first layer, and it says so
    torch.testing.assert_close(torch.tensor(default["weights"][0]), expected[0], atol=6e-6, rtol=0)
    r = client.post("/api/attention", json={"text": text, "model": "smollm2", "layer": 30})
    assert r.status_code == 400 and r.json()["error"] == (
        "layer: expected an integer from 0 to 29 (smollm2 has 30 layers), got 30"
    )
    r = client.post("/api/attention", json={"text": "one two three " * 50, "model": "smollm2"})
    assert r.status_code == 413 and "at most 128" in r.json()["error"]
