"""`/api/learn/exercises` and `/api/learn/check`: the page's way to the grader.

The learner's code runs only in the grader's child process (time and memory limits);
the report is `qkv learn check --json`'s, with the learner's own file name, and the
progress file records the pass (the concept practised) or the diagnosed mistake (review).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from qkv.explorer import create_app, learn_routes, serve_in_thread
from qkv.learn.progress import Progress
from qkv.learn.tutor import Tutor

SOLUTIONS = Path(__file__).parent / "exercise_solutions"


def _source(name: str) -> str:
    return (SOLUTIONS / name).read_text(encoding="utf-8")


@pytest.fixture
def app(tmp_path):
    app = create_app(loader=lambda name: pytest.fail("no model is needed"))
    app.state.tutor = Tutor(progress=Progress(tmp_path / "p.json"))
    return app


@pytest.fixture
def client(app):
    with TestClient(app, headers={"X-QKV-Token": app.state.token}) as c:
        yield c


def test_the_exercises_come_with_statement_hints_starter_and_lesson(client):
    listed = client.get("/api/learn/exercises").json()["exercises"]
    names = [e["name"] for e in listed]
    assert len(names) >= 10 and {"softmax", "attention", "causal-mask", "kv-decode"} <= set(names)
    attention = listed[names.index("attention")]
    assert "def attention(q, k, v, mask=None)" in attention["starter"] and attention["hints"]
    assert attention["lesson"] and attention["record"] is None


def test_a_wrong_solution_is_diagnosed_and_its_concept_comes_back_for_review(client, app):
    report = client.post("/api/learn/check", json={"exercise": "attention", "source": _source("wrong_no_scaling.py")})
    assert report.status_code == 200
    body = report.json()
    assert body["passed"] is False and body["diagnosis"]["mistake"] == "no-scaling"
    assert body["record"] == {"passed": False, "tries": 1, "at": body["record"]["at"], "last": False}
    state = app.state.tutor.progress.read()
    assert state["concepts"][body["concept"]]["review"]["stage"] == 0
    node = next(n for n in client.get("/api/learn/course").json()["graph"]["nodes"] if n["id"] == body["concept"])
    assert node["practised"] is False


def test_a_right_solution_passes_and_marks_the_concept_practised(client, app):
    client.post("/api/learn/check", json={"exercise": "attention", "source": _source("wrong_no_scaling.py")})
    body = client.post("/api/learn/check", json={"exercise": "attention", "source": _source("ok_attention_torch.py")})
    body = body.json()
    assert body["passed"] is True and body["diagnosis"] is None and body["library"] == "torch"
    assert body["record"]["passed"] is True and body["record"]["tries"] == 2
    listed = {e["name"]: e for e in client.get("/api/learn/exercises").json()["exercises"]}
    assert listed["attention"]["record"]["passed"] is True
    node = next(n for n in client.get("/api/learn/course").json()["graph"]["nodes"] if n["id"] == body["concept"])
    assert node["practised"] is True


def test_an_exception_is_shown_with_the_learners_own_file_and_line(client):
    body = client.post("/api/learn/check", json={"exercise": "attention", "source": _source("bad_raises.py")}).json()
    assert body["passed"] is False
    assert body["error"]["file"] == "attention.py" and body["error"]["line"] == 6
    assert "qkv-exercise-" not in str(body)  # the server's private folder never reaches the page


def test_what_the_code_prints_and_its_exit_stay_in_the_report(client):
    body = client.post("/api/learn/check", json={"exercise": "softmax", "source": _source("bad_prints_and_exits.py")})
    assert body.status_code == 200 and body.json()["passed"] is False
    assert "hello from the learner" in body.json()["printed"]
    assert client.get("/api/health").status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"exercise": "nope", "source": "x = 1"}, 404, "unknown name"),
        ({"exercise": "softmax", "source": 3}, 400, "source: expected"),
        ({"exercise": "softmax"}, 400, "source: missing; send"),
        ({"exercise": "softmax", "source": "", "extra": 1}, 400, "unknown field"),
        ({"exercise": "softmax", "source": "#" * 70_000}, 413, "bytes"),
    ],
)
def test_bad_bodies_are_refused_and_record_nothing(client, app, body, status, says):
    r = client.post("/api/learn/check", json=body)
    assert r.status_code == status and says in r.json()["error"]
    assert "exercises" not in app.state.tutor.progress.read()


def test_an_infinite_loop_times_out_and_the_server_keeps_answering(app, monkeypatch):
    monkeypatch.setattr(learn_routes, "CHECK_TIMEOUT", 3.0)
    headers = {"X-QKV-Token": app.state.token}
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60, headers=headers) as http:
        result: dict[str, httpx.Response] = {}
        body = {"exercise": "softmax", "source": _source("bad_infinite_loop.py")}
        worker = threading.Thread(target=lambda: result.update(r=http.post("/api/learn/check", json=body)))
        started = time.monotonic()
        worker.start()
        time.sleep(0.5)
        assert http.get("/api/health").status_code == 200 and worker.is_alive()  # answered while it loops
        assert http.post("/api/lab", json={"d_k": 4}).status_code == 200
        worker.join(60)
    report = result["r"].json()
    assert result["r"].status_code == 200 and report["passed"] is False
    assert "3" in report["note"] and "time" in report["note"].lower()
    assert time.monotonic() - started < 30


@pytest.mark.slow
def test_a_memory_bomb_is_stopped_and_the_server_keeps_answering(client, monkeypatch):
    monkeypatch.setattr(learn_routes, "CHECK_MEMORY_MB", 1024)
    body = client.post("/api/learn/check", json={"exercise": "softmax", "source": _source("bad_memory_bomb.py")})
    assert body.status_code == 200 and body.json()["passed"] is False
    error = body.json()["error"]
    assert error.get("memory") or error["type"] in ("MemoryError", "Crash"), error
    assert client.get("/api/health").status_code == 200
