"""The explorer answers bad input with a 4xx and a message written for the user, never a 5xx, and no
response carries an exception's class or text: not for huge integers, lone surrogates, deep
nesting or wrong types (fuzzed with hypothesis: the API has no OpenAPI schema to fuzz from).

The model is the tiny BERT folder of `test_hardening_files`, loaded by qkv for real.
"""

from __future__ import annotations

import json
import logging
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("tokenizers", reason="the tokenizers need the 'tokenizers' package: pip install tokenizers")
pytest.importorskip("safetensors", reason="weights need the 'safetensors' package: pip install safetensors")

from fastapi.testclient import TestClient  # noqa: E402
from test_hardening_files import bert_folder  # noqa: E402

from qkv.explorer import create_app  # noqa: E402
from qkv.explorer.lab import LabConfig  # noqa: E402

EXCEPTION_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception|Warning)\b|Traceback")
LAB_FIELDS = sorted(LabConfig.__dataclass_fields__)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(bert_folder(tmp_path_factory.mktemp("explorer-model") / "bert"))


@pytest.fixture(scope="module")
def client(tiny_model):
    app = create_app(model=tiny_model, models=[tiny_model])
    with TestClient(app, raise_server_exceptions=False, headers={"X-QKV-Token": app.state.token}) as c:
        yield c


def _post(client, path: str, text: str):
    body = text.encode("utf-8", "surrogatepass")  # a raw surrogate gives bytes that are not UTF-8
    return client.post(path, content=body, headers={"Content-Type": "application/json"})


def _assert_refused_for_the_user(r, status: int = 400) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    message = r.json()["error"]
    assert message and not EXCEPTION_NAME.search(message), message
    return message


HUGE = "7" * 5000


@pytest.mark.parametrize(
    "path, body, says",
    [
        ("/api/attention", '{"text": "the cat", "model": ' + HUGE + "}", "5000 digits"),
        ("/api/attention", '{"text": ' + HUGE + "}", "5000 digits"),
        ("/api/lab", '{"seed": -' + HUGE + "}", "5000 digits"),
        ("/api/lab", '{"d_k": ' + HUGE + "}", "5000 digits"),
        ("/api/lab", '{"text": "the \\ud800 cat"}', "surrogate"),
        ("/api/lab", '{"mask": "\\udfff"}', "surrogate"),
        ("/api/lab", '{"\\ud83d": 1}', "surrogate"),
        ("/api/attention", '{"text": "cat", "\\udc00": 1}', "surrogate"),
    ],
)
def test_huge_integers_and_lone_surrogates_are_a_400_for_the_user(client, path, body, says):
    assert says in _assert_refused_for_the_user(_post(client, path, body))


def test_the_models_answer_still_works(client, tiny_model):
    r = client.post("/api/attention", json={"text": "the cat sat on the mat."})
    assert r.status_code == 200, r.text
    body = r.json()
    n = len(body["tokens"])
    assert body["model"] == tiny_model and n == 9  # [CLS] the cat sat on the mat . [SEP]
    for row in body["weights"][0][0]:  # layer 0, head 0: probabilities
        assert math.isclose(sum(row), 1.0, abs_tol=1e-4)
    assert client.post("/api/lab", json={"seed": 3, "d_k": 4}).status_code == 200


def test_internal_errors_say_internal_error_and_an_id_never_the_exception(tiny_model, caplog):
    def broken_loader(name):
        raise RuntimeError("secret detail: /srv/weights/private.bin")

    app = create_app(model=tiny_model, models=[tiny_model], loader=broken_loader)
    with (
        TestClient(app, raise_server_exceptions=False, headers={"X-QKV-Token": app.state.token}) as c,
        caplog.at_level(logging.ERROR, "qkv.explorer"),
    ):
        r = c.post("/api/attention", json={"text": "the cat"})
    assert r.status_code == 500
    message = r.json()["error"]
    assert "RuntimeError" not in r.text and "secret" not in r.text and "private.bin" not in r.text
    found = re.fullmatch(r"internal error \(id ([0-9a-f]{8})\); the server's log has the details", message)
    assert found, message
    logged = [rec for rec in caplog.records if found.group(1) in rec.getMessage()]
    assert logged and "secret detail" in str(logged[0].exc_info[1])  # the operator keeps what the client does not see


# -- fuzzing: random JSON bodies, wrong types, huge numbers, lone surrogates, deep nesting ------------------


class Raw(str):
    """JSON text to put into a body as is (numbers Python would refuse to write: 5,000 digits)."""


def dump(value) -> str:
    """JSON text of ``value``; `Raw` pieces go in as they are, floats may be NaN / Infinity (Python's JSON)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)  # ensure_ascii: a lone surrogate becomes its \\udXXX escape


lone_surrogates = st.integers(0xD800, 0xDFFF).map(chr)
texts = st.one_of(
    st.text(max_size=30),
    st.lists(st.one_of(st.sampled_from(["the", "cat", "sat", " ", "."]), lone_surrogates), max_size=8).map("".join),
    st.text(st.characters(codec="utf-8"), max_size=10),
)
huge_integers = st.integers(1000, 6000).flatmap(lambda n: st.sampled_from([Raw("9" * n), Raw("-1" + "0" * n)]))
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(10**80), 10**80),
    huge_integers,
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
    st.sampled_from(["none", "causal", "sliding_window", "block_sparse", "sinusoidal", "rotary", "minilm"]),
)
values = st.recursive(
    leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3), max_leaves=12
)
keys = st.one_of(st.sampled_from([*LAB_FIELDS, "text", "model"]), texts)
objects = st.dictionaries(keys, values, max_size=5)
deep = st.integers(50, 40_000).flatmap(
    lambda depth: st.sampled_from(
        [
            "[" * depth + "]" * depth,
            '{"text": ' + "[" * depth + '"cat"' + "]" * depth + "}",
            '{"a":' * depth + "1" + "}" * depth,
        ]
    )
)
bodies = st.one_of(objects.map(dump), values.map(dump), deep, st.text(max_size=40).map(lambda t: t))


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(path=st.sampled_from(["/api/attention", "/api/lab"]), body=bodies)
def test_fuzzed_bodies_never_get_a_5xx_nor_an_exception_name(client, path, body):
    r = _post(client, path, body)
    assert r.status_code < 500, (r.status_code, r.text[:300], body[:200])
    assert not EXCEPTION_NAME.search(r.text), r.text[:300]
    if r.status_code >= 400:
        assert r.json()["error"]
