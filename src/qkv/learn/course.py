"""The course as data: lesson files, the glossary and the FAQ, read and checked against the schema.

`load_course` reads ``course/lessons/*.toml``, ``course/glossary/*.toml`` and
``course/faq.toml`` from the package (or another folder) and checks every rule
of ``docs/course-format.md``: required fields and their types, no unknown
fields (a typo is an error, not a silently ignored key), unique ids, widgets
and facts that exist, starting arguments the widget accepts, glossary and
lesson links that resolve, prerequisites taught by some lesson and free of
cycles. A file that breaks a rule raises `LearnError` naming the file and the
field.

>>> course = load_course()
>>> course.lessons[0].id, len(course.lessons) >= 12
('sequences', True)
>>> course.lesson("nope")
Traceback (most recent call last):
...
qkv.learn.errors.LearnError: lesson: unknown id 'nope'; the lessons are ['sequences', ...]
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from qkv.learn import markup
from qkv.learn.errors import LearnError
from qkv.learn.widget import WIDGETS, Widget, check_args

__all__ = [
    "Concept",
    "Course",
    "FaqEntry",
    "Lesson",
    "Myth",
    "Option",
    "Pitfall",
    "Question",
    "Snippet",
    "Step",
    "Term",
    "load_course",
]

ID = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
PHASES = ("predict", "check")
KINDS = ("choice", "number", "token")
ROUTES = ("overview", "build-up", "code-first")
MIN_CHECKS = 3


@dataclass(frozen=True)
class Concept:
    id: str
    title: str
    summary: str
    lesson: str
    prerequisites: tuple[str, ...]


@dataclass(frozen=True)
class Step:
    title: str
    text: str
    widget: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    predict: str | None = None
    reveal: str | None = None


@dataclass(frozen=True)
class Snippet:
    index: int
    title: str
    text: str
    code: str


@dataclass(frozen=True)
class Option:
    id: str
    text: str
    feedback: str
    correct: bool = False
    value: Any = None


@dataclass(frozen=True)
class Question:
    """One question. A ``fact`` makes its key live: computed by ``widget`` for the learner's arguments."""

    id: str
    phase: str
    kind: str
    prompt: str
    concept: str
    options: tuple[Option, ...] = ()
    widget: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    fact: str | None = None
    answer: float | None = None
    tolerance: float = 0.0
    relative: bool = False
    feedback: str = ""
    feedback_correct: str = ""
    feedback_low: str = ""
    feedback_high: str = ""
    reveal: str | None = None

    @property
    def live(self) -> bool:
        return self.fact is not None


@dataclass(frozen=True)
class Myth:
    belief: str
    reality: str
    widget: str | None = None
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pitfall:
    title: str
    why: str
    setup: str
    wrong: str
    right: str
    shows: str


@dataclass(frozen=True)
class Lesson:
    id: str
    title: str
    order: int
    minutes: int
    prerequisites: tuple[str, ...]
    overview: str
    summary: tuple[str, ...]
    concepts: tuple[Concept, ...]
    steps: tuple[Step, ...]
    code: tuple[Snippet, ...]
    questions: tuple[Question, ...]
    myths: tuple[Myth, ...]
    pitfalls: tuple[Pitfall, ...]
    path: str

    def question(self, ident: object) -> Question:
        for q in self.questions:
            if q.id == ident:
                return q
        raise LearnError(
            f"question: lesson {self.id!r} has no question {ident!r}; "
            f"its questions are {[q.id for q in self.questions]}",
            status=404,
        )

    @property
    def checks(self) -> tuple[Question, ...]:
        return tuple(q for q in self.questions if q.phase == "check")

    def step_asking(self, question: str) -> Step | None:
        """The step whose ``predict`` is ``question`` (its widget and reveal go with the answer)."""
        return next((s for s in self.steps if s.predict == question), None)

    def texts(self) -> Iterable[tuple[str, str]]:
        """Every markup text of the lesson with where it stands (for link checks)."""
        yield "overview", self.overview
        for i, s in enumerate(self.summary):
            yield f"summary[{i}]", s
        for c in self.concepts:
            yield f"concepts.{c.id}.summary", c.summary
        for i, step in enumerate(self.steps):
            yield f"steps[{i}].text", step.text
            if step.reveal:
                yield f"steps[{i}].reveal", step.reveal
        for snippet in self.code:
            yield f"code[{snippet.index}].text", snippet.text
        for q in self.questions:
            yield f"questions.{q.id}.prompt", q.prompt
            for o in q.options:
                yield f"questions.{q.id}.options.{o.id}", o.text + "\n" + o.feedback
            for name in ("feedback", "feedback_correct", "feedback_low", "feedback_high", "reveal"):
                if getattr(q, name):
                    yield f"questions.{q.id}.{name}", getattr(q, name)
        for i, m in enumerate(self.myths):
            yield f"myths[{i}]", m.belief + "\n" + m.reality
        for i, p in enumerate(self.pitfalls):
            yield f"pitfalls[{i}].why", p.why


@dataclass(frozen=True)
class Term:
    id: str
    term: str
    definition: str
    formula: str = ""
    code: str = ""
    lesson: str = ""


@dataclass(frozen=True)
class FaqEntry:
    question: str
    answer: str
    lessons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Course:
    """The whole course: lessons in path order, every concept, the glossary and the FAQ."""

    lessons: tuple[Lesson, ...]
    concepts: dict[str, Concept]
    glossary: dict[str, Term]
    faq: tuple[FaqEntry, ...]

    def lesson(self, ident: object) -> Lesson:
        for lesson in self.lessons:
            if lesson.id == ident:
                return lesson
        raise LearnError(
            f"lesson: unknown id {ident!r}; the lessons are {[les.id for les in self.lessons]}", status=404
        )


# ---------------------------------------------------------------------------------------------
# reading


class _Table:
    """A TOML table being read: each field taken once, type-checked; leftovers are an error."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise LearnError(f"{where}: expected a table, got {type(data).__name__}")
        self.data = dict(data)
        self.where = where

    def take(self, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if name not in self.data:
            if default is ...:
                raise LearnError(f"{self.where}: missing field {name!r}")
            return default
        value = self.data.pop(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise LearnError(f"{self.where}: {name}: expected {expected}, got {type(value).__name__}")
        return value

    def text(self, name: str, default: Any = ...) -> str:
        value = self.take(name, str, default)
        if value is not None and default is ... and not value.strip():
            raise LearnError(f"{self.where}: {name}: expected some text, got an empty string")
        return value.strip() if isinstance(value, str) else value

    def ident(self, name: str = "id") -> str:
        value = self.text(name)
        if not ID.match(value):
            raise LearnError(f"{self.where}: {name}: expected lowercase words joined by '-', got {value!r}")
        return value

    def strings(self, name: str, default: Any = ...) -> tuple[str, ...]:
        value = self.take(name, list, default)
        if any(not isinstance(v, str) for v in value):
            raise LearnError(f"{self.where}: {name}: expected a list of strings")
        return tuple(v.strip() for v in value)

    def tables(self, name: str) -> list[Any]:
        return list(self.take(name, list, []))

    def done(self) -> None:
        if self.data:
            raise LearnError(f"{self.where}: unknown field {sorted(self.data)[0]!r}; see docs/course-format.md")


def _widget(name: str | None, where: str) -> Widget | None:
    if name is None:
        return None
    if name not in WIDGETS:
        raise LearnError(f"{where}: widget: unknown widget {name!r}; the widgets are {sorted(WIDGETS)}")
    return WIDGETS[name]


def _args(widget: Widget | None, args: dict[str, Any], where: str) -> dict[str, Any]:
    if widget is None:
        if args:
            raise LearnError(f"{where}: args given without a widget")
        return {}
    try:
        check_args(widget.name, widget.controls, args)
    except LearnError as error:
        raise LearnError(f"{where}: args: {error}") from None
    return dict(args)


def _facts(widget: Widget | None, text: str | None, where: str) -> None:
    """Every ``{fact}`` placeholder in ``text`` must be a fact of ``widget``."""
    if not text:
        return
    names = {n.partition("[")[0] for n in markup.fields(text)}
    if names and widget is None:
        raise LearnError(f"{where}: uses facts {sorted(names)} but has no widget to compute them")
    unknown = sorted(names - set(widget.facts)) if widget is not None else []
    if unknown and widget is not None:
        raise LearnError(f"{where}: {{{unknown[0]}}} is not a fact of {widget.name!r}; it gives {list(widget.facts)}")


def _step(data: Any, where: str) -> Step:
    t = _Table(data, where)
    widget = _widget(t.take("widget", str, None), where)
    step = Step(
        title=t.text("title"),
        text=t.text("text"),
        widget=widget.name if widget else None,
        args=_args(widget, t.take("args", dict, {}), where),
        predict=t.take("predict", str, None),
        reveal=t.text("reveal", None),
    )
    _facts(widget, step.reveal, f"{where}.reveal")
    t.done()
    return step


def _option(data: Any, where: str) -> Option:
    t = _Table(data, where)
    option = Option(
        id=t.ident(),
        text=t.text("text"),
        feedback=t.text("feedback"),
        correct=t.take("correct", bool, False),
        value=t.take("value", (str, int, float, bool), None),
    )
    t.done()
    return option


def _question(data: Any, where: str, lesson_concepts: list[str], steps: list[Step]) -> Question:
    t = _Table(data, where)
    ident = t.ident()
    where = f"{where} ({ident})"
    phase = t.text("phase")
    kind = t.text("kind")
    if phase not in PHASES:
        raise LearnError(f"{where}: phase: expected one of {list(PHASES)}, got {phase!r}")
    if kind not in KINDS:
        raise LearnError(f"{where}: kind: expected one of {list(KINDS)}, got {kind!r}")
    step = next((s for s in steps if s.predict == ident), None)
    widget = _widget(t.take("widget", str, None) or (step.widget if step else None), where)
    args = t.take("args", dict, None)
    if args is None:
        args = dict(step.args) if step is not None and widget is not None and step.widget == widget.name else {}
    options = tuple(_option(o, f"{where}.options[{i}]") for i, o in enumerate(t.tables("options")))
    answer = t.take("answer", (int, float), None)
    q = Question(
        id=ident,
        phase=phase,
        kind=kind,
        prompt=t.text("prompt"),
        concept=t.text("concept", lesson_concepts[0] if lesson_concepts else ""),
        options=options,
        widget=widget.name if widget else None,
        args=_args(widget, args, where),
        fact=t.take("fact", str, None),
        answer=None if answer is None else float(answer),
        tolerance=float(t.take("tolerance", (int, float), 0.0)),
        relative=t.take("relative", bool, False),
        feedback=t.text("feedback", ""),
        feedback_correct=t.text("feedback_correct", ""),
        feedback_low=t.text("feedback_low", ""),
        feedback_high=t.text("feedback_high", ""),
        reveal=t.text("reveal", None),
    )
    t.done()
    if q.concept not in lesson_concepts:
        raise LearnError(f"{where}: concept: {q.concept!r} is not taught by this lesson; it teaches {lesson_concepts}")
    if q.fact is not None:
        if widget is None:
            raise LearnError(f"{where}: fact {q.fact!r} needs a widget to compute it (widget = ...)")
        if q.fact not in widget.facts:
            raise LearnError(
                f"{where}: fact: {q.fact!r} is not a fact of {widget.name!r}; it gives {list(widget.facts)}"
            )
    _facts(widget, q.reveal, f"{where}.reveal")
    ids = [o.id for o in options]
    if len(set(ids)) != len(ids):
        raise LearnError(f"{where}: options: two options share an id ({ids})")
    if kind == "choice":
        if not 2 <= len(options) <= 6:
            raise LearnError(f"{where}: options: a choice needs 2 to 6 options, got {len(options)}")
        if q.fact is None and sum(o.correct for o in options) != 1:
            raise LearnError(f"{where}: options: exactly one option must be correct = true (or give a fact)")
        if q.fact is not None and any(o.value is None for o in options):
            raise LearnError(f"{where}: options: a live choice (fact = {q.fact!r}) needs a value on every option")
        if q.fact is not None and any(o.correct for o in options):
            raise LearnError(f"{where}: options: a live choice is graded by its fact; drop correct = true")
    else:
        if options:
            raise LearnError(f"{where}: options: only a choice has options")
        if kind == "token" and q.fact is None:
            raise LearnError(f"{where}: a token question needs the fact that holds the right token's index")
        if kind == "number" and (q.fact is None) == (q.answer is None):
            raise LearnError(f"{where}: a number question needs exactly one of fact (live) or answer (fixed)")
        if q.tolerance < 0:
            raise LearnError(f"{where}: tolerance: expected >= 0, got {q.tolerance}")
    return q


def _lesson(path: Path) -> tuple[Lesson, list[Concept]]:
    where = path.name
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise LearnError(f"{where}: not valid TOML ({error})") from None
    t = _Table(data, where)
    ident = t.ident()
    expected_name = re.compile(rf"^\d\d-{re.escape(ident)}\.toml$")
    if not expected_name.match(path.name):
        raise LearnError(f"{where}: the file of lesson {ident!r} must be named NN-{ident}.toml")
    prerequisites = t.strings("prerequisites")
    concepts = []
    for i, c in enumerate(t.tables("concepts")):
        ct = _Table(c, f"{where}: concepts[{i}]")
        concepts.append(Concept(ct.ident(), ct.text("title"), ct.text("summary"), ident, prerequisites))
        ct.done()
    if not concepts:
        raise LearnError(f"{where}: concepts: a lesson teaches at least one concept")
    concept_ids = [c.id for c in concepts]
    steps = [_step(s, f"{where}: steps[{i}]") for i, s in enumerate(t.tables("steps"))]
    code = []
    for i, s in enumerate(t.tables("code")):
        st = _Table(s, f"{where}: code[{i}]")
        code.append(Snippet(i, st.text("title"), st.text("text", ""), st.text("code")))
        st.done()
    questions = [
        _question(q, f"{where}: questions[{i}]", concept_ids, steps) for i, q in enumerate(t.tables("questions"))
    ]
    myths = []
    for i, m in enumerate(t.tables("myths")):
        mt = _Table(m, f"{where}: myths[{i}]")
        widget = _widget(mt.take("widget", str, None), mt.where)
        myths.append(
            Myth(
                mt.text("belief"),
                mt.text("reality"),
                widget.name if widget else None,
                _args(widget, mt.take("args", dict, {}), mt.where),
            )
        )
        mt.done()
    pitfalls = []
    for i, p in enumerate(t.tables("pitfalls")):
        pt = _Table(p, f"{where}: pitfalls[{i}]")
        pitfalls.append(
            Pitfall(
                pt.text("title"),
                pt.text("why"),
                pt.text("setup", ""),
                pt.text("wrong"),
                pt.text("right"),
                pt.text("shows"),
            )
        )
        pt.done()
    lesson = Lesson(
        id=ident,
        title=t.text("title"),
        order=t.take("order", int),
        minutes=t.take("minutes", int, 10),
        prerequisites=prerequisites,
        overview=t.text("overview"),
        summary=t.strings("summary"),
        concepts=tuple(concepts),
        steps=tuple(steps),
        code=tuple(code),
        questions=tuple(questions),
        myths=tuple(myths),
        pitfalls=tuple(pitfalls),
        path=path.name,
    )
    t.done()
    _check_lesson(lesson)
    return lesson, concepts


def _check_lesson(lesson: Lesson) -> None:
    where = lesson.path
    if not lesson.steps:
        raise LearnError(f"{where}: steps: the build-up route needs at least one step")
    if not lesson.summary:
        raise LearnError(f"{where}: summary: give the lesson's takeaways")
    ids = [q.id for q in lesson.questions]
    if len(set(ids)) != len(ids):
        raise LearnError(
            f"{where}: questions: two questions share an id ({sorted(i for i in ids if ids.count(i) > 1)[0]!r})"
        )
    if len(lesson.checks) < MIN_CHECKS:
        raise LearnError(
            f"{where}: questions: a knowledge check needs at least {MIN_CHECKS} check questions, "
            f"got {len(lesson.checks)}"
        )
    for i, step in enumerate(lesson.steps):
        if step.predict is None:
            continue
        q = next((q for q in lesson.questions if q.id == step.predict), None)
        if q is None or q.phase != "predict":
            raise LearnError(f"{where}: steps[{i}]: predict: {step.predict!r} is not a predict question of this lesson")


def _glossary(folder: Path) -> dict[str, Term]:
    terms: dict[str, Term] = {}
    for path in sorted(folder.glob("*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        top = _Table(data, path.name)
        for i, entry in enumerate(top.tables("terms")):
            t = _Table(entry, f"{path.name}: terms[{i}]")
            term = Term(
                t.ident(),
                t.text("term"),
                t.text("definition"),
                t.text("formula", ""),
                t.text("code", ""),
                t.text("lesson", ""),
            )
            t.done()
            if term.id in terms:
                raise LearnError(f"{path.name}: terms[{i}]: the term {term.id!r} is defined twice")
            terms[term.id] = term
        top.done()
    return terms


def _faq(path: Path) -> tuple[FaqEntry, ...]:
    if not path.exists():
        return ()
    top = _Table(tomllib.loads(path.read_text(encoding="utf-8")), path.name)
    entries = []
    for i, entry in enumerate(top.tables("faq")):
        t = _Table(entry, f"{path.name}: faq[{i}]")
        entries.append(FaqEntry(t.text("question"), t.text("answer"), t.strings("lessons", [])))
        t.done()
    top.done()
    return tuple(entries)


def _check_links(course: Course) -> None:
    lessons = {les.id for les in course.lessons}
    places: list[tuple[str, str]] = [
        (f"{les.path}: {where}", text) for les in course.lessons for where, text in les.texts()
    ]
    places += [(f"glossary: {t.id}", t.definition) for t in course.glossary.values()]
    places += [(f"faq.toml: {e.question[:40]!r}", e.answer) for e in course.faq]
    for where, text in places:
        for kind, ident in markup.links(text):
            if kind == "term" and ident not in course.glossary:
                raise LearnError(f"{where}: links to the glossary term {ident!r}, which no glossary file defines")
            if kind == "lesson" and ident not in lessons:
                raise LearnError(f"{where}: links to the lesson {ident!r}, which does not exist")
    for t in course.glossary.values():
        if t.lesson and t.lesson not in lessons:
            raise LearnError(f"glossary: {t.id}: lesson {t.lesson!r} does not exist")
    for e in course.faq:
        for ident in e.lessons:
            if ident not in lessons:
                raise LearnError(f"faq.toml: {e.question[:40]!r}: lesson {ident!r} does not exist")


def _check_graph(course: Course) -> None:
    """Prerequisites are concepts some lesson teaches, and following them never comes back (no cycle)."""
    for les in course.lessons:
        for p in les.prerequisites:
            if p not in course.concepts:
                raise LearnError(f"{les.path}: prerequisites: {p!r} is not a concept any lesson teaches")
            if course.concepts[p].lesson == les.id:
                raise LearnError(f"{les.path}: prerequisites: {p!r} is taught by this lesson itself")
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(concept: str, path: list[str]) -> None:
        if state.get(concept) == 2:
            return
        if state.get(concept) == 1:
            cycle = path[path.index(concept) :] + [concept]
            raise LearnError(f"prerequisites form a cycle: {' -> '.join(cycle)}")
        state[concept] = 1
        for p in course.concepts[concept].prerequisites:
            visit(p, [*path, concept])
        state[concept] = 2

    for concept in course.concepts:
        visit(concept, [])


def _course_dir() -> Path:
    return Path(str(resources.files("qkv.learn").joinpath("course")))


def load_course(folder: str | Path | None = None) -> Course:
    """The course in ``folder`` (default: the one shipped in the package), checked; cached per folder."""
    return _load(str(Path(folder) if folder is not None else _course_dir()))


@lru_cache(maxsize=4)
def _load(folder: str) -> Course:
    import qkv.learn.widgets  # noqa: F401 - registers the widgets the lessons name

    root = Path(folder)
    paths = sorted((root / "lessons").glob("*.toml"))
    if not paths:
        raise LearnError(f"course: no lesson files (*.toml) in {root / 'lessons'}")
    lessons: list[Lesson] = []
    concepts: dict[str, Concept] = {}
    for path in paths:
        lesson, taught = _lesson(path)
        for c in taught:
            if c.id in concepts:
                raise LearnError(f"{path.name}: concept {c.id!r} is already taught by {concepts[c.id].lesson!r}")
            concepts[c.id] = c
        lessons.append(lesson)
    lessons.sort(key=lambda les: les.order)
    for a, b in zip(lessons, lessons[1:]):
        if a.order == b.order:
            raise LearnError(f"{b.path}: order {b.order} is also the order of {a.path}")
    ids = [les.id for les in lessons]
    if len(set(ids)) != len(ids):
        raise LearnError(f"course: two lessons share an id ({ids})")
    course = Course(tuple(lessons), concepts, _glossary(root / "glossary"), _faq(root / "faq.toml"))
    _check_links(course)
    _check_graph(course)
    return course
