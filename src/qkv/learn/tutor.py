"""The tutor: the course, the learner's progress and the widgets behind one object.

The explorer's Learn routes and ``qkv learn --text`` both go through `Tutor`,
so the page and the terminal grade the same way and write the same progress
file. Every method checks its input and raises `LearnError` (status 400 or
404) before anything is written: a refused answer changes no progress.

>>> import tempfile, pathlib
>>> from qkv.learn.progress import Progress
>>> tutor = Tutor(progress=Progress(pathlib.Path(tempfile.mkdtemp()) / "p.json"))
>>> [les["state"] for les in tutor.course_json()["lessons"]][:2]
['open', 'locked']
"""

from __future__ import annotations

import json
import time
from typing import Any

from qkv.learn.course import ROUTES, Course, Lesson, Question, load_course
from qkv.learn.errors import LearnError
from qkv.learn.grading import grade
from qkv.learn.graph import concept_state, graph, lesson_state, review_due
from qkv.learn.markup import fill
from qkv.learn.progress import Progress
from qkv.learn.snippets import run_snippet
from qkv.learn.widget import WIDGETS, Env

__all__ = ["Tutor"]


def _question_json(q: Question) -> dict[str, Any]:
    """A question as the page sees it: no key, no feedback (those come with the answer)."""
    out: dict[str, Any] = {"id": q.id, "phase": q.phase, "kind": q.kind, "prompt": q.prompt, "concept": q.concept}
    if q.widget:
        out["widget"], out["args"] = q.widget, q.args
    if q.options:
        out["options"] = [{"id": o.id, "text": o.text} for o in q.options]
    return out


class Tutor:
    """The course (default: the packaged one), a progress store and a widget environment."""

    def __init__(self, course: Course | None = None, progress: Progress | None = None, env: Env | None = None) -> None:
        self._course = course
        self.progress = progress or Progress()
        self.env = env or Env()

    @property
    def course(self) -> Course:
        """The course, read on first use (the explorer starts even before anyone opens Learn)."""
        if self._course is None:
            self._course = load_course()
        return self._course

    # -- reading ---------------------------------------------------------------------------

    def course_json(self) -> dict[str, Any]:
        state = self.progress.read()
        due = review_due(self.course, state)
        due_concepts = {d["concept"] for d in due}
        lessons = [
            {**self._heading(les, state), "due": any(c.id in due_concepts for c in les.concepts)}
            for les in self.course.lessons
        ]
        return {
            "lessons": lessons,
            "graph": graph(self.course, state),
            "glossary": [vars(t) for t in sorted(self.course.glossary.values(), key=lambda t: t.term.lower())],
            "faq": [{"question": e.question, "answer": e.answer, "lessons": list(e.lessons)} for e in self.course.faq],
            "review": due,
        }

    def _heading(self, les: Lesson, state: dict[str, Any]) -> dict[str, Any]:
        """What the course list and the lesson page both say of a lesson."""
        return {
            "id": les.id,
            "title": les.title,
            "order": les.order,
            "minutes": les.minutes,
            "prerequisites": list(les.prerequisites),
            "concepts": [{"id": c.id, "title": c.title, "summary": c.summary} for c in les.concepts],
            "state": lesson_state(self.course, les, state),
        }

    def lesson_json(self, ident: object) -> dict[str, Any]:
        les = self.course.lesson(ident)
        state = self.progress.read()
        entry = state["lessons"].get(les.id, {})
        names = {s.widget for s in les.steps} | {q.widget for q in les.questions} | {m.widget for m in les.myths}
        return {
            **self._heading(les, state),
            "overview": les.overview,
            "summary": list(les.summary),
            "steps": [{k: v for k, v in vars(s).items() if v not in (None, {})} for s in les.steps],
            "code": [vars(s) for s in les.code],
            "questions": [_question_json(q) for q in les.questions],
            "myths": [{k: v for k, v in vars(m).items() if v not in (None, {})} for m in les.myths],
            "pitfalls": [{k: getattr(p, k) for k in ("title", "why", "setup", "wrong", "right")} for p in les.pitfalls],
            "widgets": {name: WIDGETS[name].describe(self.env) for name in sorted(n for n in names if n)},
            "progress": {
                "route": entry.get("route", "build-up"),
                "step": entry.get("step", 0),
                "answers": {q: {"correct": a["correct"]} for q, a in entry.get("answers", {}).items()},
                "mastered": bool(entry.get("mastered_at")),
            },
        }

    def progress_json(self) -> dict[str, Any]:
        state = self.progress.read()
        return {"lessons": state["lessons"], "concepts": state["concepts"], "path": str(self.progress.path)}

    # -- acting ----------------------------------------------------------------------------

    def widget(self, name: object, args: object, lesson: object = None, step: object = None) -> dict[str, Any]:
        """Run widget ``name`` on ``args`` now. With ``lesson`` and ``step`` (a build-up step showing this
        widget), the result also carries the step's ``reveal`` filled in with these facts."""
        if not isinstance(name, str) or name not in WIDGETS:
            raise LearnError(f"widget: expected one of {sorted(WIDGETS)}, got {name!r}", status=404)
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise LearnError(f"args: expected a JSON object of {name}'s arguments, got {type(args).__name__}")
        reveal = self._step_reveal(name, lesson, step) if lesson is not None or step is not None else None
        started = time.perf_counter()
        result = WIDGETS[name].run(args, self.env).as_json()
        result["seconds"] = round(time.perf_counter() - started, 3)
        if reveal is not None:
            result["reveal"] = fill(reveal, result["facts"])
        return result

    def _step_reveal(self, name: str, lesson: object, step: object) -> str | None:
        les = self.course.lesson(lesson)
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < len(les.steps):
            raise LearnError(f"step: expected a step of {les.id!r} from 0 to {len(les.steps) - 1}, got {step!r}")
        found = les.steps[step]
        if found.widget != name:
            raise LearnError(f"step: step {step} of {les.id!r} shows {found.widget!r}, not {name!r}")
        return found.reveal

    def answer(self, lesson: object, question: object, answer: object, args: object = None) -> dict[str, Any]:
        """Grade and record an answer; says whether the lesson is now mastered and what it unlocked."""
        les = self.course.lesson(lesson)
        q = les.question(question)
        verdict = grade(les, q.id, answer, args, self.env)  # raises before anything is written
        before = self._open_concepts(self.progress.read())
        outcome = self.progress.answer(
            les.id,
            q.id,
            concept=q.concept,
            correct=verdict.correct,
            checks=[c.id for c in les.checks],
            concepts=[c.id for c in les.concepts],
        )
        state = self.progress.read()
        unlocked = sorted(self._open_concepts(state) - before) if outcome["newly_mastered"] else []
        return {
            **verdict.as_json(),
            "lesson_state": lesson_state(self.course, les, state),
            "mastered": outcome["mastered"],
            "newly_mastered": outcome["newly_mastered"],
            "unlocked": unlocked,
        }

    def _open_concepts(self, state: dict[str, Any]) -> set[str]:
        return {c for c in self.course.concepts if concept_state(self.course, c, state) == "open"}

    def run(self, lesson: object, snippet: object) -> dict[str, Any]:
        les = self.course.lesson(lesson)
        if isinstance(snippet, bool) or not isinstance(snippet, int) or not 0 <= snippet < len(les.code):
            raise LearnError(
                f"snippet: expected a snippet index of {les.id!r} from 0 to {len(les.code) - 1}, got {snippet!r}"
            )
        return run_snippet(les.code[snippet]).as_json()

    def position(self, lesson: object, route: object, step: object) -> None:
        les = self.course.lesson(lesson)
        if route not in ROUTES:
            raise LearnError(f"route: expected one of {list(ROUTES)}, got {route!r}")
        limit = _route_length(les, str(route))
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= limit:
            raise LearnError(f"step: expected an integer from 0 to {limit} for {route!r} of {les.id!r}, got {step!r}")
        self.progress.position(les.id, str(route), step)

    def exercises_json(self) -> dict[str, Any]:
        """Every exercise (statement, hints, starter file, lesson) with the learner's record of it."""
        from qkv.learn.exercises.catalogue import EXERCISES

        done = self.progress.read().get("exercises", {})
        return {
            "exercises": [
                {**e.to_json(), "starter": e.starter(), "record": done.get(e.name)} for e in EXERCISES.values()
            ]
        }

    def check(self, name: object, source: object, *, timeout: float = 10.0, memory_mb: int = 2048) -> dict[str, Any]:
        """Grade ``source`` as exercise ``name`` (in the grader's child process) and record the result.

        The source is written to a private folder under the exercise's file name, so a traceback
        names the learner's own file and line. A pass marks the exercise's concept practised; a
        diagnosed mistake sends it back for review.
        """
        import tempfile
        from pathlib import Path

        from qkv.learn.exercises.catalogue import exercise
        from qkv.learn.exercises.grader import MAX_SOURCE, check

        ex = exercise(name)
        if not isinstance(source, str):
            raise LearnError(f"source: expected the solution's Python text, got {type(source).__name__}")
        if len(source) > MAX_SOURCE:
            raise LearnError(f"source: {len(source)} characters; expected a solution under 1 MB", status=413)
        with tempfile.TemporaryDirectory(prefix="qkv-exercise-") as folder:
            path = Path(folder) / ex.file_name
            path.write_text(source, encoding="utf-8")
            report = check(path, ex.name, timeout=timeout, memory_mb=memory_mb).to_json()
        # the learner's file is theirs, not the server's: "softmax.py", never the private folder's path
        report = json.loads(json.dumps(report, default=str).replace(folder.rstrip("/") + "/", ""))
        record = self.progress.exercise(
            ex.name, concept=ex.concept, passed=report["passed"], diagnosed=report["diagnosis"] is not None
        )
        return {**report, "record": record, "concept": ex.concept, "lesson": ex.lesson}

    def reset(self) -> None:
        self.progress.reset()


def _route_length(lesson: Lesson, route: str) -> int:
    """The last step index of a route (the step after the last is the lesson's end: summary and check)."""
    return {"overview": 1, "build-up": len(lesson.steps), "code-first": len(lesson.code)}[route]
