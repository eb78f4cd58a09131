"""Grading an answer: the key is fixed in the lesson, or computed live by the question's widget.

A live question (one with a ``fact``) runs its widget on the arguments the
learner set (the lesson's starting ``args`` where the learner changed nothing)
and takes the fact as the key, so "which token does *it* attend to most?" is
graded against the weights qkv computed for the learner's own sentence. The
reveal text gets the same facts filled in, so it shows what decided the answer.

>>> from qkv.learn.course import load_course
>>> from qkv.learn.widget import Env
>>> course = load_course()
>>> lesson = course.lessons[0]
>>> q = lesson.checks[0]
>>> right = next(o.id for o in q.options if o.correct) if not q.live else None
>>> grade(lesson, q.id, right, None, Env()).correct if right else True
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qkv.learn import markup
from qkv.learn.course import Lesson, Option, Question
from qkv.learn.errors import LearnError
from qkv.learn.widget import WIDGETS, Env

__all__ = ["Grade", "grade", "key_of", "widget_facts"]


@dataclass(frozen=True)
class Grade:
    """The verdict on one answer: right or not, what to tell the learner, what decided it."""

    correct: bool
    feedback: str
    reveal: str | None
    key: Any

    def as_json(self) -> dict[str, Any]:
        return {"correct": self.correct, "feedback": self.feedback, "reveal": self.reveal, "key": self.key}


def widget_facts(widget: str, args: Mapping[str, Any], env: Env) -> dict[str, Any]:
    """The facts ``widget`` computes for ``args`` (checked against its controls)."""
    return WIDGETS[widget].run(args, env).facts


def _arguments(question: Question, args: object) -> dict[str, Any]:
    """The learner's arguments for the question's widget: the lesson's starting ones, updated by what was sent."""
    if args is None:
        return dict(question.args)
    if not isinstance(args, dict):
        raise LearnError(f"args: expected a JSON object of the widget's arguments, got {type(args).__name__}")
    return {**question.args, **args}


def key_of(question: Question, facts: Mapping[str, Any] | None) -> Any:
    """The correct answer: an option id (choice), a number, or a token index."""
    if question.kind == "choice":
        if question.fact is None:
            return next(o.id for o in question.options if o.correct)
        assert facts is not None
        value = facts[question.fact]
        match = next((o for o in question.options if _same(o.value, value)), None)
        return None if match is None else match.id
    if question.kind == "number":
        if question.fact is None:
            return question.answer
        assert facts is not None
        return float(facts[question.fact])
    assert facts is not None and question.fact is not None
    return int(facts[question.fact])


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _option(question: Question, answer: object) -> Option:
    for option in question.options:
        if option.id == answer:
            return option
    raise LearnError(
        f"answer: expected one of the option ids {[o.id for o in question.options]} of {question.id!r}, got {answer!r}"
    )


def _number(question: Question, answer: object) -> float:
    if isinstance(answer, bool) or not isinstance(answer, (int, float)) or not math.isfinite(answer):
        raise LearnError(f"answer: {question.id!r} asks for a number, got {answer!r}")
    return float(answer)


def _token(question: Question, answer: object, facts: Mapping[str, Any]) -> int:
    tokens = facts.get("tokens") or facts.get("tokens_query") or []
    count = len(tokens) if isinstance(tokens, list) else None
    if isinstance(answer, bool) or not isinstance(answer, int) or answer < 0 or (count is not None and answer >= count):
        upto = f" from 0 to {count - 1}" if count else ""
        raise LearnError(f"answer: {question.id!r} asks for a token index{upto}, got {answer!r}")
    return answer


def grade(lesson: Lesson, question_id: object, answer: object, args: object, env: Env) -> Grade:
    """Grade ``answer`` to a question of ``lesson``; bad ids and malformed answers raise `LearnError`.

    ``args`` are the learner's current arguments of the question's widget (None: the lesson's own).
    """
    question = lesson.question(question_id)
    step = lesson.step_asking(question.id)
    facts: dict[str, Any] | None = None
    # the loader gives a predict question its step's widget and arguments when it names none itself
    if question.widget is not None and (question.live or _needs_facts(question, step)):
        facts = widget_facts(question.widget, _arguments(question, args), env)
    elif args is not None and not isinstance(args, dict):
        raise LearnError(f"args: expected a JSON object of the widget's arguments, got {type(args).__name__}")
    key = key_of(question, facts)

    if question.kind == "choice":
        chosen = _option(question, answer)
        correct = key is not None and chosen.id == key
        feedback = chosen.feedback
        if key is None:
            feedback = (
                f"For these inputs the computed {question.fact} is {facts[question.fact]!r}"  # type: ignore[index]
                ", which none of the options names: read the reveal."
            )
    elif question.kind == "number":
        value = _number(question, answer)
        assert key is not None
        allowed = question.tolerance * (abs(key) if question.relative else 1.0)
        correct = abs(value - key) <= allowed + 1e-12
        if correct:
            feedback = question.feedback_correct or f"Right: {key:.4g}."
        elif value < key:
            feedback = question.feedback_low or question.feedback or f"Too low: the computed value is {key:.4g}."
        else:
            feedback = question.feedback_high or question.feedback or f"Too high: the computed value is {key:.4g}."
    else:
        assert facts is not None
        index = _token(question, answer, facts)
        correct = index == key
        feedback = (question.feedback_correct or "Right.") if correct else (question.feedback or "Not this token.")

    reveal_text = question.reveal or (step.reveal if step else None)
    reveal = markup.fill(reveal_text, facts) if reveal_text and facts is not None else reveal_text
    return Grade(correct=correct, feedback=feedback, reveal=reveal, key=key)


def _needs_facts(question: Question, step: Any) -> bool:
    texts = [question.reveal or "", (step.reveal or "") if step else ""]
    return any(markup.fields(t) for t in texts)
