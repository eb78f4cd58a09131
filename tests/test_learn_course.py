"""The packaged course: it loads and validates, every lesson has its three routes and a knowledge check,
every snippet runs, every pitfall's wrong code really gives the wrong result, every term a lesson links
is in the glossary, and every live question's key, recomputed in float64, agrees with the page's float32."""

from __future__ import annotations

import math

import pytest
import torch

from qkv.learn.course import load_course
from qkv.learn.grading import key_of, widget_facts
from qkv.learn.snippets import run_pitfall, run_snippet
from qkv.learn.widget import WIDGETS, Env

COURSE = load_course()
LESSONS = {les.id: les for les in COURSE.lessons}
ENV32, ENV64 = Env(dtype=torch.float32), Env(dtype=torch.float64)
# widgets that train a model or time a real one take seconds to a minute per call: their keys are
# recomputed in float64 once in CI (the slow mark), not in every local run
SLOW_WIDGETS = {"kv-cache", "pruning", "bottleneck", "vit-digits", "head-ablation"}
LIVE = [
    pytest.param(les.id, q.id, marks=[pytest.mark.slow] if q.widget in SLOW_WIDGETS else [])
    for les in COURSE.lessons
    for q in les.questions
    if q.live
]
SNIPPETS = [(les.id, s.index) for les in COURSE.lessons for s in les.code]
PITFALLS = [(les.id, i) for les in COURSE.lessons for i in range(len(les.pitfalls))]


def test_the_path_follows_the_build_up():
    ids = [les.id for les in COURSE.lessons]
    assert len(ids) >= 12
    assert ids[:3] == ["sequences", "bottleneck", "soft-lookup"] and ids[-2:] == ["production", "vision"]
    assert "reading" in ids and ids.index("reading") > ids.index("multi-head")


@pytest.mark.parametrize("lesson", list(LESSONS))
def test_every_lesson_has_three_routes_a_prediction_and_a_check(lesson):
    les = LESSONS[lesson]
    assert les.overview and les.steps and les.code, "overview, build-up and code-first routes"
    assert len(les.checks) >= 3
    assert any(s.predict for s in les.steps), "at least one predict-then-reveal step"
    assert any(s.widget for s in les.steps), "at least one live widget"
    for q in les.checks:
        if q.kind == "choice" and not q.live:
            wrong = [o for o in q.options if not o.correct]
            assert all(o.feedback for o in wrong) and len({o.feedback for o in wrong}) == len(wrong), (
                f"{q.id}: each wrong option names its own misconception"
            )


def test_prerequisites_are_taught_earlier():
    order = {les.id: les.order for les in COURSE.lessons}
    for les in COURSE.lessons:
        for p in les.prerequisites:
            assert order[COURSE.concepts[p].lesson] < les.order, (les.id, p)


def test_glossary_terms_have_definitions_and_the_faq_links_lessons():
    assert len(COURSE.glossary) >= 40
    assert all(t.definition for t in COURSE.glossary.values())
    assert len(COURSE.faq) >= 8


@pytest.mark.parametrize(("lesson", "index"), SNIPPETS)
def test_snippet_runs(lesson, index):
    run = run_snippet(LESSONS[lesson].code[index])
    assert run.ok, run.output
    assert run.output.strip(), "a snippet prints what the learner should look at"


@pytest.mark.parametrize(("lesson", "index"), PITFALLS)
def test_pitfall_wrong_code_really_gives_the_wrong_result(lesson, index):
    wrong, right, shows = run_pitfall(LESSONS[lesson].pitfalls[index])
    assert wrong.ok, wrong.output
    assert right.ok, right.output
    assert shows.ok, shows.output


@pytest.mark.parametrize(("lesson", "question"), LIVE)
def test_live_key_agrees_with_float64(lesson, question):
    q = LESSONS[lesson].question(question)
    page = key_of(q, widget_facts(q.widget, q.args, ENV32))
    spec = key_of(q, widget_facts(q.widget, q.args, ENV64))
    assert page is not None, f"{question}: no option matches the computed fact"
    if q.kind == "number":
        assert math.isclose(page, spec, rel_tol=1e-4, abs_tol=max(q.tolerance / 10, 1e-6)), (page, spec)
    else:
        assert page == spec


def test_every_widget_is_used_by_some_lesson():
    used = (
        {s.widget for les in COURSE.lessons for s in les.steps}
        | {q.widget for les in COURSE.lessons for q in les.questions}
        | {m.widget for les in COURSE.lessons for m in les.myths}
    )
    assert set(WIDGETS) - {"test-echo"} <= used, sorted(set(WIDGETS) - used - {"test-echo"})
