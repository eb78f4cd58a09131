"""The Learn page in a real headless Chromium, driven by the keyboard only, as a new learner.

The explorer app runs in-process (`serve_in_thread`) on the real course, with its
progress file in a fresh ``QKV_HOME``. The learner opens ``/learn``, completes the first
three lessons with Tab, Enter, Space and the arrow keys (no mouse), answers a check
question wrongly and then rightly, sees the next concept unlock in the graph, reloads
and finds the progress kept. The page reports no errors and asks nothing of any other
host. Screenshots at 800 and 1280 px go to ``out/screenshots/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from browser import browser_page

SHOTS = Path(__file__).resolve().parents[1] / "out" / "screenshots"
WIDGET_TIMEOUT_MS = 120_000  # the bottleneck widget trains a small GRU the first time
FIRST_LESSONS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The explorer (with its Learn routes) on a free port, progress under a fresh QKV_HOME; yields its URL."""
    home = tmp_path_factory.mktemp("qkv-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QKV_HOME", str(home))
        from qkv.explorer.app import create_app
        from qkv.explorer.server import serve_in_thread

        app = create_app()
        with serve_in_thread(app) as url:
            yield url


@pytest.fixture(scope="module")
def course():
    from qkv.learn.course import load_course

    return load_course()


def quiet(page, server: str) -> None:
    """No page errors, and no request to any host but our server (`assert_quiet` on what is left)."""
    page.requests[:] = [url for url in page.requests if not url.startswith(server)]
    page.assert_quiet()


def _active(page, selector: str) -> bool:
    return page.evaluate("s => !!document.activeElement && document.activeElement.matches(s)", selector)


def tab_to(page, selector: str, limit: int = 400) -> None:
    """Press Tab until the focus is on ``selector`` (the keyboard's way of getting somewhere)."""
    for _ in range(limit):
        if _active(page, selector):
            return
        page.keyboard.press("Tab")
    focused = page.evaluate("() => document.activeElement && document.activeElement.outerHTML.slice(0, 160)")
    raise AssertionError(f"Tab never reached {selector!r} in {limit} presses; the focus is on {focused}")


def focused_value(page) -> str:
    return page.evaluate("() => document.activeElement.value")


def pick(page, qid: str, want: str | None) -> str:
    """Focus the question's first answer with Tab, then move with arrows to option ``want``
    (None: keep the first) and select it with Space. Returns the option id chosen."""
    tab_to(page, f"[data-testid=question-{qid}] input:not([disabled])")
    count = page.locator(f"[data-testid=question-{qid}] input[type=radio]").count()
    for _ in range(count):
        if want is None or focused_value(page) == want:
            break
        page.keyboard.press("ArrowDown")  # moves the focus and the selection to the next option
    page.keyboard.press("Space")
    chosen = focused_value(page)
    assert page.locator(f"[data-testid=question-{qid}] input:checked").get_attribute("value") == chosen
    return chosen


def answer(page, qid: str, want: str | None) -> dict:
    """Pick an option and press Enter; the server's verdict."""
    pick(page, qid, want)
    with page.expect_response(lambda r: "/api/learn/answer" in r.url and r.request.method == "POST") as info:
        page.keyboard.press("Enter")
    verdict = info.value.json()
    page.wait_for_selector(f"[data-testid=question-{qid}][data-state={'correct' if verdict['correct'] else 'wrong'}]")
    return verdict


def open_lesson(page, lesson: str) -> None:
    page.wait_for_selector(f"[data-testid=lesson-view][data-lesson={lesson}][data-state=ready]")
    assert _active(page, "#lesson-title"), "opening a lesson puts the focus on its title"


def run_steps(page, lesson: dict) -> None:
    """The build-up: each step's predict question (where there is one), then Continue."""
    questions = {q["id"]: q for q in lesson["questions"]}
    for i, step in enumerate(lesson["steps"]):
        page.wait_for_selector(f"[data-testid=step][data-step='{i}']")
        if step.get("predict"):
            q = questions[step["predict"]]
            widget = page.locator(f"[data-testid=step] [data-testid=widget-{step['widget']}]").first
            hidden = widget.locator(".views").is_hidden()
            assert hidden, "a predict step hides the computation until the learner answers"
            verdict = answer(page, q["id"], None)
            feedback = page.locator(f"[data-testid=feedback-{q['id']}]")
            assert feedback.inner_text().strip(), "the answer gets feedback"
            icon = "✓" if verdict["correct"] else "✗"
            assert icon in feedback.inner_text(), "right or wrong is said with an icon, not by colour alone"
            page.wait_for_selector(
                f"[data-testid=step] [data-testid=widget-{step['widget']}][data-state=ready]", timeout=WIDGET_TIMEOUT_MS
            )
            assert widget.locator(".views").is_visible(), "after the answer the computation is shown"
            assert widget.locator(".views > *").count() > 0, "the widget drew its views"
            tab_to(page, "[data-testid=step-continue]")
            page.keyboard.press("Enter")
        else:
            if step.get("widget"):
                page.wait_for_selector(
                    f"[data-testid=step] [data-testid=widget-{step['widget']}][data-state=ready]",
                    timeout=WIDGET_TIMEOUT_MS,
                )
            tab_to(page, "#step-title")  # after Continue the focus is on the step's title: Space continues
            page.keyboard.press("Space")
    page.wait_for_selector("[data-testid=knowledge-check]")


def knowledge_check(page, lesson: dict, wrong_first: dict[str, str]) -> list[dict]:
    """Every check question: the option in ``wrong_first`` first (it is wrong), else the first shown;
    a wrong answer is retried with the key the server named. Returns the verdicts."""
    verdicts = []
    for q in [q for q in lesson["questions"] if q["phase"] == "check"]:
        verdict = answer(page, q["id"], wrong_first.get(q["id"]))
        verdicts.append(verdict)
        if not verdict["correct"]:
            feedback = page.locator(f"[data-testid=feedback-{q['id']}]").inner_text()
            assert "✗" in feedback and "Not yet" in feedback, feedback
            assert _active(page, f"[data-testid=retry-{q['id']}]"), "after a wrong answer the focus is on Try again"
            page.keyboard.press("Enter")
            verdict = answer(page, q["id"], verdict["key"])
            verdicts.append(verdict)
            assert verdict["correct"], f"{q['id']}: the key the server named was not right: {verdict}"
    return verdicts


def test_a_new_learner_completes_three_lessons_by_keyboard(server, course):
    lessons = sorted(course.lessons, key=lambda les: les.order)[:FIRST_LESSONS]
    first_check = next(q for q in lessons[0].questions if q.phase == "check" and any(o.correct for o in q.options))
    wrong = next(o.id for o in first_check.options if not o.correct)
    with browser_page(width=1280, height=900) as page:
        page.route(server + "**", lambda route: route.continue_())  # our server only; the rest stays blocked
        page.goto(server + "learn")
        page.wait_for_selector("body[data-ready=true]")
        first = lessons[0]
        node = f"[data-testid=graph-node-{first.concepts[0].id}]"
        assert page.get_attribute(node, "data-state") == "open"
        assert page.get_attribute(f"[data-testid=graph-node-{lessons[1].concepts[0].id}]", "data-state") == "locked"
        tab_to(page, node)
        page.keyboard.press("Enter")
        for k, les in enumerate(lessons):
            open_lesson(page, les.id)
            data = page.evaluate(f"() => fetch('/api/learn/lessons/{les.id}').then(r => r.json())")
            if k < 2:
                assert page.get_attribute("[data-testid=route-build-up]", "aria-selected") == "true"
                run_steps(page, data)
            else:
                # The code-first route, chosen with the arrow keys on the route tabs; a snippet run by Enter.
                tab_to(page, "[data-testid=route-build-up]")
                page.keyboard.press("ArrowRight")
                assert _active(page, "[data-testid=route-code-first]")
                page.wait_for_selector("[data-testid=run-0]")
                tab_to(page, "[data-testid=run-0]")
                page.keyboard.press("Enter")
                page.wait_for_selector("[data-testid=output-0].ok, [data-testid=output-0].failed", timeout=60_000)
                assert "ran in" in page.inner_text("[data-testid=output-0]")
            verdicts = knowledge_check(page, data, {first_check.id: wrong} if k == 0 else {})
            if k == 0:
                assert verdicts[0]["correct"] is False and verdicts[1]["correct"] is True
            assert verdicts[-1]["mastered"], verdicts[-1]
            banner = page.locator("[data-testid=mastered-banner]")
            banner.wait_for(state="visible")
            assert "Lesson mastered" in banner.inner_text()
            unlocked = [u for v in verdicts for u in v["unlocked"]]
            nxt = sorted(course.lessons, key=lambda les: les.order)[k + 1]
            assert nxt.concepts[0].id in unlocked or nxt.prerequisites == ()
            nxt_node = page.locator(f"[data-testid=graph-node-{nxt.concepts[0].id}]")
            page.wait_for_function(
                "id => document.querySelector(`[data-testid=graph-node-${id}]`).dataset.state !== 'locked'",
                arg=nxt.concepts[0].id,
            )
            if unlocked:
                assert "Unlocked:" in banner.inner_text()
                assert nxt_node.get_attribute("data-unlocked") == "true", "the newly open node is highlighted"
            for c in les.concepts:
                assert page.get_attribute(f"[data-testid=graph-node-{c.id}]", "data-state") == "mastered"
            if k == 0:
                _screens(page, "lesson-end")
            if k + 1 < len(lessons):
                tab_to(page, "[data-testid=next-lesson]")
                page.keyboard.press("Enter")

        # Reload: the progress is kept (graph, lesson list, the last route chosen).
        page.reload()
        page.wait_for_selector(f"[data-testid=lesson-view][data-lesson={lessons[-1].id}][data-state=ready]")
        for les in lessons:
            for c in les.concepts:
                assert page.get_attribute(f"[data-testid=graph-node-{c.id}]", "data-state") == "mastered"
            assert page.get_attribute(f"[data-testid=lesson-{les.id}]", "data-state") == "mastered"
        assert page.get_attribute("[data-testid=route-code-first]", "aria-selected") == "true"
        assert page.locator("[data-testid=mastered-banner]").is_visible()
        progress = page.evaluate("() => fetch('/api/learn/progress').then(r => r.json())")
        assert all(progress["lessons"][les.id].get("mastered_at") for les in lessons), json.dumps(progress)[:500]
        quiet(page, server)


def test_glossary_tooltip_on_focus_and_search(server, course):
    first = sorted(course.lessons, key=lambda les: les.order)[0]
    with browser_page(width=1280, height=900) as page:
        page.route(server + "**", lambda route: route.continue_())
        page.goto(server + f"learn#/lesson/{first.id}")
        page.wait_for_selector(f"[data-testid=lesson-view][data-lesson={first.id}][data-state=ready]")
        tab_to(page, ".route-tabs [aria-selected=true]")
        page.keyboard.press("Home")  # the overview
        page.wait_for_selector("[data-testid=route-overview][aria-selected=true]")
        term = "#route-panel .overview button.term"
        tab_to(page, term)
        tip_id = page.evaluate("() => document.activeElement.getAttribute('aria-describedby')")
        term_id = page.evaluate("() => document.activeElement.dataset.term")
        tip = page.locator(f"#{tip_id}")
        assert tip.is_visible(), "the definition shows on keyboard focus"
        assert course.glossary[term_id].definition in tip.inner_text()
        page.keyboard.press("Escape")
        assert tip.is_hidden(), "Escape hides the tooltip"
        page.keyboard.press("Shift+Tab")
        assert tip.is_hidden()
        # The glossary tab: a searchable list.
        tab_to(page, "[data-testid=tab-path]")
        page.keyboard.press("ArrowRight")
        assert page.get_attribute("[data-testid=tab-glossary]", "aria-selected") == "true"
        entry = course.glossary[term_id]
        tab_to(page, "[data-testid=glossary-search]")
        page.keyboard.type(entry.term)
        assert page.locator(f"[data-testid=glossary-term-{term_id}]").is_visible()
        shown = page.locator(".glossary-entry:visible").count()
        assert 1 <= shown < len(course.glossary), "the search narrows the list"
        quiet(page, server)


def _screens(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    for width in (1280, 800):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(150)
        page.screenshot(path=str(SHOTS / f"learn-{name}-{width}.png"), full_page=True)
        overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"at {width} px the page scrolls sideways by {overflow} px"
    page.set_viewport_size({"width": 1280, "height": 900})


def test_screenshots_of_a_widget_step(server, course):
    """A step with live views (after its predict question) at 1280 and 800 px wide, and the home page."""
    third = sorted(course.lessons, key=lambda les: les.order)[2]
    with browser_page(width=1280, height=900) as page:
        page.route(server + "**", lambda route: route.continue_())
        page.goto(server + "learn")
        page.wait_for_selector("body[data-ready=true]")
        _screens(page, "home")
        page.goto(server + f"learn#/lesson/{third.id}")
        page.wait_for_selector(f"[data-testid=lesson-view][data-lesson={third.id}][data-state=ready]")
        tab_to(page, ".route-tabs [aria-selected=true]")  # the tabs are one Tab stop: arrows choose
        page.keyboard.press("Home")
        page.keyboard.press("ArrowRight")
        page.wait_for_selector("[data-testid=route-build-up][aria-selected=true]")
        data = page.evaluate(f"() => fetch('/api/learn/lessons/{third.id}').then(r => r.json())")
        step = data["steps"][data["progress"]["step"] if data["progress"]["route"] == "build-up" else 0]
        if step.get("predict") and not data["progress"]["answers"].get(step["predict"]):
            answer(page, step["predict"], None)
        page.wait_for_selector("[data-testid=step] [data-state=ready]", timeout=WIDGET_TIMEOUT_MS)
        _screens(page, "step")
        quiet(page, server)


SOLUTIONS = Path(__file__).resolve().parent / "exercise_solutions"


def test_an_exercise_diagnoses_a_wrong_solution_then_passes_the_fix_and_marks_the_concept(server):
    """Open an exercise, paste a wrong solution, read the diagnosis, fix it, see it pass and the graph mark it."""
    from qkv.learn.exercises.catalogue import exercise

    concept = exercise("attention").concept
    wrong = (SOLUTIONS / "wrong_no_scaling.py").read_text(encoding="utf-8")
    right = (SOLUTIONS / "ok_attention_numpy.py").read_text(encoding="utf-8")
    with browser_page(width=1280, height=900) as page:
        page.route(server + "**", lambda route: route.continue_())
        page.goto(server + "learn#/exercise/attention")
        editor = page.locator("[data-testid=exercise-editor]")
        editor.wait_for()
        assert "def attention(q, k, v, mask=None)" in editor.input_value()  # the starter file
        page.click("[data-testid=exercise-hint]")
        assert page.locator(".hint-list li").count() == 1
        editor.fill(wrong)
        page.click("[data-testid=exercise-run]")
        diagnosis = page.locator("[data-testid=exercise-diagnosis]")
        diagnosis.wait_for(timeout=60_000)
        assert diagnosis.get_attribute("data-mistake") == "no-scaling"
        assert "√d_k" in diagnosis.inner_text() or "sqrt" in diagnosis.inner_text().lower()
        assert page.get_attribute("[data-testid=exercise-report]", "data-passed") == "false"
        assert page.locator(".report .case.failed").count() >= 1
        _screens(page, "exercise-diagnosis")

        editor.fill(right)
        page.click("[data-testid=exercise-run]")
        page.wait_for_selector("[data-testid=exercise-report][data-passed=true]", timeout=60_000)
        assert page.locator("[data-testid=exercise-practised]").is_visible()
        page.wait_for_selector(f"[data-testid=graph-node-{concept}][data-practised=true]", timeout=30_000)
        page.click("[data-testid=tab-exercises]")
        assert page.get_attribute("[data-testid=exercise-attention]", "data-passed") == "true"

        page.reload()  # the learner's text is kept in the browser, the pass on the server
        page.locator("[data-testid=exercise-editor]").wait_for()
        assert page.locator("[data-testid=exercise-editor]").input_value() == right
        page.wait_for_selector(f"[data-testid=graph-node-{concept}][data-practised=true]")
        quiet(page, server)


def _go_to_step(page, server: str, lesson: str, step: int) -> None:
    """Put the learner at ``step`` of ``lesson``'s build-up (through the page's own API call) and open it."""
    page.goto(server + "learn")
    page.wait_for_selector("body[data-ready=true]")
    page.evaluate(
        """([lesson, step]) => fetch('/api/learn/position', {method: 'POST',
             headers: {'Content-Type': 'application/json',
                       'X-QKV-Token': document.querySelector('meta[name="qkv-token"]').content},
             body: JSON.stringify({lesson, route: 'build-up', step})})""",
        [lesson, step],
    )
    page.goto(server + f"learn#/lesson/{lesson}")
    page.wait_for_selector(f"[data-testid=lesson-view][data-lesson={lesson}][data-state=ready]")


def _widget_facts(response) -> dict:
    assert response.ok, response.text()
    return response.json()["facts"]


def test_a_token_question_is_answered_by_clicking_a_token_and_its_key_is_the_live_winner(server):
    """A predict question: one commitment, then the reveal; the key is the widget's result for this input."""
    with browser_page(width=1280, height=900) as page:
        page.route(server + "**", lambda route: route.continue_())
        with page.expect_response(lambda r: r.url.endswith("/api/learn/widget"), timeout=WIDGET_TIMEOUT_MS) as got:
            _go_to_step(page, server, "qkv", 1)
        facts = _widget_facts(got.value)
        top = facts["top_key"]
        page.wait_for_selector(f"[data-testid=token-cat-top-{top}]", timeout=WIDGET_TIMEOUT_MS)
        wrong = next(i for i in range(len(facts["tokens"])) if i != top)
        page.check(f"[data-testid=token-cat-top-{wrong}]")
        page.click("[data-testid=check-cat-top]")
        feedback = page.locator("[data-testid=feedback-cat-top]")
        feedback.locator(".verdict.wrong").wait_for()
        assert f"(token {top})" in feedback.locator(".key").inner_text()
        assert facts["tokens"][top] in feedback.locator(".reveal").inner_text()
        key = page.locator(f"[data-testid=question-cat-top] label:has([data-testid=token-cat-top-{top}])")
        assert "is-key" in key.get_attribute("class")
        assert page.locator("[data-testid=retry-cat-top]").is_hidden()  # a prediction is made once
        quiet(page, server)


def test_a_number_question_says_which_way_it_is_off_and_reveals_the_live_value(server):
    with browser_page(width=1280, height=900) as page:
        page.route(server + "**", lambda route: route.continue_())
        with page.expect_response(lambda r: r.url.endswith("/api/learn/widget"), timeout=WIDGET_TIMEOUT_MS) as got:
            _go_to_step(page, server, "block", 1)
        ratio = _widget_facts(got.value)["attention_norm_ratio"]
        box = page.locator("[data-testid=number-attention-ratio]")
        box.fill(str(round(ratio * 10, 3)))
        page.keyboard.press("Enter")
        feedback = page.locator("[data-testid=feedback-attention-ratio]")
        feedback.locator(".verdict.wrong").wait_for()
        assert "Smaller than that" in feedback.inner_text()
        assert f"{ratio:.2f}" in feedback.locator(".reveal").inner_text()
        quiet(page, server)


def test_editing_the_mask_cell_by_cell_recomputes_the_weights(server):
    """The empty-row step: allow one cell of the all-masked first row and the row comes back to life."""
    with browser_page(width=1280, height=900) as page:
        page.route(server + "**", lambda route: route.continue_())
        with page.expect_response(lambda r: r.url.endswith("/api/learn/widget"), timeout=WIDGET_TIMEOUT_MS) as got:
            _go_to_step(page, server, "masks", 3)
        before = _widget_facts(got.value)
        page.check("[data-testid=option-empty-row-zeros]")
        page.click("[data-testid=check-empty-row]")
        page.wait_for_selector("[data-testid=feedback-empty-row] .verdict.right")
        assert before["empty_rows"] == [0] and before["any_nan"] is False
        grid = "[data-testid=widget-mask-editor] table.matrix[role=grid]"
        first = page.locator(f"{grid} tbody tr").first.locator("td").first
        first.wait_for()
        assert first.inner_text() == "×"
        with page.expect_response(lambda r: r.url.endswith("/api/learn/widget"), timeout=WIDGET_TIMEOUT_MS) as got:
            first.click()
        after = _widget_facts(got.value)
        assert after["empty_rows"] == [] and after["allowed"][0][0] is True
        assert after["row_sums"][0] == pytest.approx(1.0)
        page.wait_for_function(
            "s => { const c = document.querySelector(s); return c && c.textContent !== '×'; }",
            arg=f"{grid} tbody tr:first-child td",
        )
        quiet(page, server)


def test_a_step_without_a_question_shows_its_reveal_for_the_learners_input(server):
    with browser_page(width=1280, height=900) as page:
        page.route(server + "**", lambda route: route.continue_())
        _go_to_step(page, server, "masks", 2)  # "Padding and windows": a widget and a reveal, no question
        said = page.locator("[data-testid=step-reveal] .reveal")
        said.wait_for(timeout=WIDGET_TIMEOUT_MS)
        assert "With this padding mask" in said.inner_text() and "{" not in said.inner_text()
        quiet(page, server)
