"""`qkv learn` in the terminal: --list, --text ID answered by typing (the same progress file as the page),
--reset asking first, and an unknown lesson as one line with exit code 2."""

from __future__ import annotations

import io
import json

import pytest

from qkv.cli import main


@pytest.fixture(autouse=True)
def home(monkeypatch, tmp_path):
    monkeypatch.setenv("QKV_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "160")
    return tmp_path


def test_list_names_every_lesson_and_its_state(capsys):
    assert main(["learn", "--list"]) == 0
    out = capsys.readouterr().out
    assert "sequences" in out and "Attention beyond language" in out
    assert out.count("locked") >= 11 and "open" in out


def test_text_runs_a_lesson_and_records_the_answers(monkeypatch, capsys, home):
    answers = io.StringIO("\n".join(["9", "x"] + ["1"] * 80) + "\n")  # a bad answer, a non-number, then 1s
    monkeypatch.setattr("sys.stdin", answers)
    assert main(["learn", "--text", "soft-lookup"]) == 0
    out = capsys.readouterr().out
    assert "Attention as a soft lookup" in out and "Knowledge check" in out
    assert "expected one of the option ids" in out  # "9" is refused and asked again, nothing recorded
    state = json.loads((home / "learn-progress.json").read_text())
    answered = state["lessons"]["soft-lookup"]["answers"]
    assert answered and all(a["tries"] >= 1 for a in answered.values())
    assert state["lessons"]["soft-lookup"]["route"] == "build-up"


def test_unknown_lesson_is_one_line_with_exit_2(capsys):
    assert main(["learn", "--text", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qkv: error: lesson: unknown id 'nope'") and err.count("\n") == 1


def test_reset_asks_first_and_keeps_progress_on_no(monkeypatch, capsys, home):
    path = home / "learn-progress.json"
    path.write_text(json.dumps({"version": 1, "lessons": {"x": {}}, "concepts": {}}))
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    assert main(["learn", "--reset"]) == 0 and path.exists()
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert main(["learn", "--reset"]) == 0 and not path.exists()
