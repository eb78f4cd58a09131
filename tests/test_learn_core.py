"""The course machinery on a small course of its own (tests/learn_course): the loader's rules, grading
with fixed and live keys, the progress file (atomic, shared, spaced review) and the tutor's flow."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from qkv.learn import LearnError
from qkv.learn.course import load_course
from qkv.learn.grading import grade
from qkv.learn.graph import graph
from qkv.learn.progress import DAY, Progress
from qkv.learn.snippets import run_pitfall
from qkv.learn.tutor import Tutor
from qkv.learn.widget import WIDGETS, Control, Env, Result, Widget, register

HERE = Path(__file__).parent / "learn_course"

if "test-echo" not in WIDGETS:

    @register
    class Echo(Widget):
        """Doubles n; the tokens are the numbers 0..n-1 reversed (the largest comes first)."""

        name = "test-echo"
        title = "Echo"
        controls = (Control("n", "slider", "n", 3, low=1, high=9),)
        facts = ("double", "even", "tokens", "largest")

        def compute(self, args, env):
            n = args["n"]
            tokens = [str(i) for i in reversed(range(n))]
            return Result(
                views=[{"kind": "text", "text": f"n = {n}"}],
                facts={"double": 2 * n, "even": n % 2 == 0, "tokens": tokens, "largest": 0},
            )


def copy_course(tmp_path: Path) -> Path:
    target = tmp_path / "course"
    shutil.copytree(HERE, target)
    return target


def edit(folder: Path, name: str, old: str, new: str) -> None:
    path = next((folder / "lessons").glob(name)) if "*" in name else folder / name
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


@pytest.fixture
def tutor(tmp_path):
    return Tutor(course=load_course(HERE), progress=Progress(tmp_path / "p.json"), env=Env())


# -- the loader ------------------------------------------------------------------------------


def test_small_course_loads_with_concepts_glossary_and_faq():
    course = load_course(HERE)
    assert [les.id for les in course.lessons] == ["alpha", "beta"]
    assert set(course.concepts) == {"alpha-idea", "beta-idea"}
    assert course.concepts["beta-idea"].prerequisites == ("alpha-idea",)
    assert "weight" in course.glossary and course.faq[0].lessons == ("alpha", "beta")


@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        ("lessons/01-alpha.toml", 'title = "Alpha"', 'title = "Alpha"\ncolour = "red"', "unknown field 'colour'"),
        ("lessons/01-alpha.toml", "(term:weight)", "(term:wieght)", "glossary term 'wieght'"),
        ("lessons/01-alpha.toml", "(lesson:beta)", "(lesson:gamma)", "lesson 'gamma'"),
        ("lessons/01-alpha.toml", 'widget = "test-echo"\nargs', 'widget = "nope"\nargs', "unknown widget 'nope'"),
        ("lessons/01-alpha.toml", "args = { n = 3 }", "args = { n = 30 }", "n: expected an integer from 1 to 9"),
        ("lessons/01-alpha.toml", "{double}", "{triple}", "{triple} is not a fact of 'test-echo'"),
        ("lessons/01-alpha.toml", 'fact = "double"', 'fact = "half"', "'half' is not a fact"),
        ("lessons/01-alpha.toml", "prerequisites = []", 'prerequisites = ["beta-idea"]', "cycle"),
        ("lessons/02-beta.toml", '["alpha-idea"]', '["nothing"]', "'nothing' is not a concept"),
        ("lessons/01-alpha.toml", 'correct = true\nfeedback = "Right', 'feedback = "Right', "exactly one option"),
        ("lessons/01-alpha.toml", "value = true", "correct = true", "needs a value on every option"),
        ("lessons/02-beta.toml", "order = 2", "order = 1", "order 1 is also"),
        ("lessons/02-beta.toml", 'id = "b3"', 'id = "b2"', "share an id"),
        (
            "lessons/02-beta.toml",
            'phase = "check"\nkind = "number"\nprompt = "3',
            'phase = "predict"\nkind = "number"\nprompt = "3',
            "at least 3 check questions",
        ),
        ("lessons/01-alpha.toml", 'predict = "guess"', 'predict = "c1"', "'c1' is not a predict question"),
        ("lessons/01-alpha.toml", 'id = "alpha"', 'id = "Alpha!"', "lowercase words"),
        ("lessons/01-alpha.toml", "order = 1", 'order = "one"', "order: expected int"),
        ("glossary/basics.toml", 'id = "weight"', 'id = "weight"\nsee = 1', "unknown field 'see'"),
    ],
)
def test_loader_refuses_a_broken_course_naming_file_and_field(tmp_path, file, old, new, message):
    folder = copy_course(tmp_path)
    edit(folder, file, old, new)
    with pytest.raises(LearnError, match=message.replace("(", r"\(").replace("{", r"\{").replace("}", r"\}")):
        load_course(folder)


def test_loader_refuses_invalid_toml_and_a_misnamed_file(tmp_path):
    folder = copy_course(tmp_path)
    (folder / "lessons" / "02-beta.toml").rename(folder / "lessons" / "02-gamma.toml")
    with pytest.raises(LearnError, match="must be named NN-beta.toml"):
        load_course(folder)
    (folder / "lessons" / "02-gamma.toml").write_text("id = ")
    with pytest.raises(LearnError, match="not valid TOML"):
        load_course(folder)


# -- grading ---------------------------------------------------------------------------------


def test_fixed_choice_gives_each_option_its_feedback():
    alpha = load_course(HERE).lesson("alpha")
    right, wrong = grade(alpha, "c1", "yes", None, Env()), grade(alpha, "c1", "no", None, Env())
    assert right.correct and right.key == "yes" and "normalised" in right.feedback
    assert not wrong.correct and wrong.feedback == "They are normalised by their sum."


def test_live_keys_follow_the_learners_arguments():
    alpha = load_course(HERE).lesson("alpha")
    assert grade(alpha, "c2", "odd", None, Env()).correct  # n = 3 by default
    assert grade(alpha, "c2", "even", {"n": 4}, Env()).correct
    assert not grade(alpha, "c2", "odd", {"n": 4}, Env()).correct
    number = grade(alpha, "guess", 8.4, {"n": 4}, Env())  # key 8, tolerance 0.5
    assert number.correct and number.key == 8.0 and number.reveal == "The widget doubled it: 8."
    assert not grade(alpha, "guess", 6, {"n": 4}, Env()).correct
    assert grade(alpha, "c3", 0, None, Env()).correct and not grade(alpha, "c3", 1, None, Env()).correct


@pytest.mark.parametrize(
    ("question", "answer", "args", "message"),
    [
        ("c1", "maybe", None, "expected one of the option ids"),
        ("c1", 0, None, "expected one of the option ids"),
        ("guess", "eight", None, "asks for a number"),
        ("guess", float("nan"), None, "asks for a number"),
        ("guess", True, None, "asks for a number"),
        ("c3", 3, None, "token index from 0 to 2"),
        ("c3", -1, None, "token index"),
        ("c2", "odd", {"n": 0}, "n: expected an integer from 1 to 9"),
        ("c2", "odd", {"m": 1}, "unknown argument 'm'"),
        ("c2", "odd", [1], "expected a JSON object"),
        ("zz", "odd", None, "has no question 'zz'"),
    ],
)
def test_bad_answers_are_refused_with_a_message(question, answer, args, message):
    alpha = load_course(HERE).lesson("alpha")
    with pytest.raises(LearnError, match=message):
        grade(alpha, question, answer, args, Env())


def test_pitfall_wrong_code_gives_the_wrong_result():
    pitfall = load_course(HERE).lesson("alpha").pitfalls[0]
    wrong, right, shows = run_pitfall(pitfall)
    assert wrong.ok and right.ok and shows.ok, shows.output
    swapped = type(pitfall)(pitfall.title, pitfall.why, pitfall.setup, pitfall.right, pitfall.wrong, pitfall.shows)
    assert not run_pitfall(swapped)[2].ok  # the claim is checked, not assumed


# -- progress --------------------------------------------------------------------------------


def test_progress_review_is_spaced_one_three_seven_days(tmp_path):
    store = Progress(tmp_path / "p.json")
    store.answer("alpha", "c1", concept="alpha-idea", correct=False, now=0.0)
    review = lambda: store.read()["concepts"]["alpha-idea"]["review"]  # noqa: E731
    assert review() == {"due": 1 * DAY, "stage": 0}
    store.answer("alpha", "c1", concept="alpha-idea", correct=True, now=0.5 * DAY)  # not due yet: unchanged
    assert review() == {"due": 1 * DAY, "stage": 0}
    store.answer("alpha", "c1", concept="alpha-idea", correct=True, now=1 * DAY)
    assert review() == {"due": 4 * DAY, "stage": 1}
    store.answer("alpha", "c1", concept="alpha-idea", correct=True, now=4 * DAY)
    assert review() == {"due": 11 * DAY, "stage": 2}
    store.answer("alpha", "c1", concept="alpha-idea", correct=True, now=11 * DAY)
    assert review() is None


def test_progress_is_written_atomically_and_a_failed_change_writes_nothing(tmp_path):
    store = Progress(tmp_path / "p.json")
    store.position("alpha", "build-up", 1)
    before = store.path.read_bytes()

    def explode(state):
        state["lessons"]["alpha"]["step"] = 99
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.update(explode)
    assert store.path.read_bytes() == before
    assert not list(tmp_path.glob(".progress-*"))  # no temporary file left behind


def test_progress_from_many_threads_keeps_every_answer(tmp_path):
    store = Progress(tmp_path / "p.json")

    def work(i):
        for j in range(5):
            store.answer("alpha", f"q{i}-{j}", concept="alpha-idea", correct=True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    answers = json.loads(store.path.read_text())["lessons"]["alpha"]["answers"]
    assert len(answers) == 40


def test_a_corrupt_progress_file_is_named_and_never_overwritten(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{not json")
    store = Progress(path)
    with pytest.raises(LearnError, match="is not valid JSON.*qkv learn --reset"):
        store.answer("alpha", "c1", concept="alpha-idea", correct=True)
    assert path.read_text() == "{not json"


def test_progress_path_follows_qkv_home_then_xdg(monkeypatch, tmp_path):
    from qkv.learn.progress import progress_path

    monkeypatch.setenv("QKV_HOME", str(tmp_path / "home"))
    assert progress_path() == tmp_path / "home" / "learn-progress.json"
    monkeypatch.delenv("QKV_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert progress_path() == tmp_path / "xdg" / "qkv" / "learn-progress.json"


# -- the tutor ---------------------------------------------------------------------------------


def test_mastering_a_lesson_unlocks_the_next(tutor):
    states = lambda: {les["id"]: les["state"] for les in tutor.course_json()["lessons"]}  # noqa: E731
    assert states() == {"alpha": "open", "beta": "locked"}
    assert not tutor.answer("alpha", "c1", "no")["correct"]
    tutor.answer("alpha", "c1", "yes")
    tutor.answer("alpha", "c2", "odd")
    done = tutor.answer("alpha", "c3", 0)
    assert done["mastered"] and done["newly_mastered"] and done["unlocked"] == ["beta-idea"]
    assert states() == {"alpha": "mastered", "beta": "open"}
    nodes = {n["id"]: n for n in tutor.course_json()["graph"]["nodes"]}
    assert nodes["alpha-idea"]["state"] == "mastered" and nodes["beta-idea"]["state"] == "open"
    assert nodes["beta-idea"]["y"] > nodes["alpha-idea"]["y"]  # drawn below its prerequisite
    assert tutor.answer("alpha", "c1", "yes")["unlocked"] == []  # mastered once


def test_a_refused_answer_changes_no_progress(tutor):
    tutor.answer("alpha", "c1", "yes")
    before = tutor.progress.path.read_bytes()
    for call in (
        lambda: tutor.answer("alpha", "c1", "maybe"),
        lambda: tutor.answer("alpha", "c2", "odd", {"n": 99}),
        lambda: tutor.answer("gamma", "c1", "yes"),
        lambda: tutor.position("alpha", "sideways", 0),
        lambda: tutor.position("alpha", "build-up", 7),
    ):
        with pytest.raises(LearnError):
            call()
    assert tutor.progress.path.read_bytes() == before


def test_lesson_json_hides_keys_and_feedback(tutor):
    lesson = tutor.lesson_json("alpha")
    text = json.dumps(lesson)
    assert "correct" not in json.dumps(lesson["questions"]) and "feedback" not in json.dumps(lesson["questions"])
    assert "normalised" not in text  # the options' feedback comes only with an answer
    assert lesson["widgets"]["test-echo"]["controls"][0]["name"] == "n"


def test_wrong_answers_come_back_for_review(tutor):
    tutor.answer("alpha", "c1", "no")
    state = tutor.progress.read()
    now = time.time()
    assert graph(tutor.course, state, now=now + 2 * DAY)["nodes"][0]["due"]
    assert not graph(tutor.course, state, now=now + 0.5 * DAY)["nodes"][0]["due"]


def test_course_snippets_run(tutor):
    assert tutor.run("alpha", 0) == {"ok": True, "output": "4\n", "seconds": pytest.approx(0, abs=5)}
    with pytest.raises(LearnError, match="snippet index"):
        tutor.run("alpha", 1)
