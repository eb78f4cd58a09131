"""The Learn API (`/api/learn/...`) on the small test course: every route, bad ids and bodies get a 4xx
with a message, and answers sent at once from many clients leave the progress file valid and complete."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from test_learn_core import HERE  # registers the test widget

from qkv.explorer import create_app
from qkv.learn.course import load_course
from qkv.learn.progress import Progress
from qkv.learn.tutor import Tutor
from qkv.learn.widget import Env


@pytest.fixture
def client(tmp_path):
    app = create_app(loader=lambda name: pytest.fail("no model is needed"))
    app.state.tutor = Tutor(course=load_course(HERE), progress=Progress(tmp_path / "p.json"), env=Env())
    with TestClient(app, headers={"X-QKV-Token": app.state.token}) as c:
        yield c


def test_course_lessons_widget_answer_and_progress_routes(client):
    course = client.get("/api/learn/course").json()
    assert [les["state"] for les in course["lessons"]] == ["open", "locked"]
    assert {n["id"] for n in course["graph"]["nodes"]} == {"alpha-idea", "beta-idea"}
    assert course["glossary"][0]["id"] == "weight" and course["faq"][0]["lessons"] == ["alpha", "beta"]
    lesson = client.get("/api/learn/lessons/alpha").json()
    assert [q["id"] for q in lesson["questions"]] == ["guess", "c1", "c2", "c3"]
    widget = client.post("/api/learn/widget", json={"widget": "test-echo", "args": {"n": 5}}).json()
    assert widget["facts"]["double"] == 10 and widget["views"][0]["kind"] == "text"
    verdict = client.post(
        "/api/learn/answer", json={"lesson": "alpha", "question": "guess", "answer": 10, "args": {"n": 5}}
    ).json()
    assert verdict["correct"] and verdict["key"] == 10 and verdict["reveal"] == "The widget doubled it: 10."
    assert client.post("/api/learn/run", json={"lesson": "alpha", "snippet": 0}).json()["output"] == "4\n"
    assert client.post("/api/learn/position", json={"lesson": "alpha", "route": "code-first", "step": 1}).json()
    assert client.get("/api/learn/lessons/alpha").json()["progress"]["route"] == "code-first"
    progress = client.get("/api/learn/progress").json()
    assert progress["lessons"]["alpha"]["answers"]["guess"]["correct"] is True
    assert client.delete("/api/learn/progress").json() == {"ok": True}
    assert client.get("/api/learn/progress").json()["lessons"] == {}


def test_learn_page_is_served_with_the_strict_policy(client):
    page = client.get("/learn")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    assert "<html" in page.text.lower()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("get", "/api/learn/lessons/nope", None, 404, "unknown id 'nope'"),
        ("post", "/api/learn/answer", {"lesson": "nope", "question": "c1", "answer": "yes"}, 404, "unknown id"),
        ("post", "/api/learn/answer", {"lesson": "alpha", "question": "zz", "answer": "yes"}, 404, "no question 'zz'"),
        ("post", "/api/learn/answer", {"lesson": "alpha", "question": "c1", "answer": "maybe"}, 400, "option ids"),
        ("post", "/api/learn/answer", {"lesson": "alpha", "question": "c1"}, 400, "answer: missing"),
        ("post", "/api/learn/answer", {"lesson": "alpha", "question": "c1", "answer": "yes", "x": 1}, 400, "unknown"),
        (
            "post",
            "/api/learn/answer",
            {"lesson": "alpha", "question": "c2", "answer": "odd", "args": {"n": 99}},
            400,
            "n: expected an integer",
        ),
        ("post", "/api/learn/widget", {"widget": "nope"}, 404, "expected one of"),
        ("post", "/api/learn/widget", {"widget": "test-echo", "args": [1]}, 400, "JSON object"),
        ("post", "/api/learn/widget", {"args": {}}, 400, "widget: missing"),
        ("post", "/api/learn/run", {"lesson": "alpha", "snippet": 9}, 400, "snippet index"),
        ("post", "/api/learn/run", {"lesson": "alpha", "snippet": "print(1)"}, 400, "snippet index"),
        ("post", "/api/learn/position", {"lesson": "alpha", "route": "x", "step": 0}, 400, "route: expected one of"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message(client, method, path, body, status, message):
    response = getattr(client, method)(path, **({"json": body} if body is not None else {}))
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert "Traceback" not in response.text


def test_concurrent_answers_keep_the_progress_file_valid(client):
    app_tutor = client.app.state.tutor

    def answer(i):
        question, answer = [("c1", "yes"), ("c2", "odd"), ("c3", 0), ("c1", "no")][i % 4]
        return client.post("/api/learn/answer", json={"lesson": "alpha", "question": question, "answer": answer})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(answer, range(32)))
    assert all(r.status_code == 200 for r in responses)
    state = json.loads(app_tutor.progress.path.read_text())
    answers = state["lessons"]["alpha"]["answers"]
    assert sum(a["tries"] for a in answers.values()) == 32
    assert state["lessons"]["alpha"]["mastered_at"] is not None


def test_a_step_without_a_question_gets_its_reveal_filled_with_the_live_facts(tmp_path):
    """`/api/learn/widget` with the lesson and step: the step's reveal, for the learner's own arguments."""
    from qkv.learn.markup import fill

    app = create_app(loader=lambda name: pytest.fail("no model is needed"))
    app.state.tutor = Tutor(progress=Progress(tmp_path / "p.json"))
    course = app.state.tutor.course
    les = course.lesson("masks")
    index = next(i for i, s in enumerate(les.steps) if s.reveal and not s.predict and s.widget == "mask-editor")
    with TestClient(app, headers={"X-QKV-Token": app.state.token}) as client:
        args = {"text": "a b c d e", "preset": "padding", "length": 2}
        body = {"widget": "mask-editor", "args": args, "lesson": "masks", "step": index}
        r = client.post("/api/learn/widget", json=body).json()
        assert r["reveal"] == fill(les.steps[index].reveal, r["facts"]) and "40%" in r["reveal"]
        assert "reveal" not in client.post("/api/learn/widget", json={"widget": "mask-editor", "args": args}).json()
        bad = client.post("/api/learn/widget", json={**body, "step": 99})
        assert bad.status_code == 400 and "step: expected a step of 'masks'" in bad.json()["error"]
        other = client.post("/api/learn/widget", json={**body, "widget": "soft-lookup", "args": {}})
        assert other.status_code == 400 and "not 'soft-lookup'" in other.json()["error"]
