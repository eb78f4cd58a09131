"""The command line never ends in a traceback: bad input is one line on stderr with exit status 2,
Ctrl-C is the one line ``qkv: interrupted`` with exit status 130 (what was printed stays), and the
statistics of ``qkv generate`` are a line of their own on stderr.

Runs on the tiny models of `test_hardening_files` (no weight package needed).
"""

from __future__ import annotations

import pytest

pytest.importorskip("gguf", reason="writing GGUF files needs the 'gguf' package: pip install gguf")
pytest.importorskip("tokenizers", reason="the tokenizers need the 'tokenizers' package: pip install tokenizers")
pytest.importorskip("safetensors", reason="weights need the 'safetensors' package: pip install safetensors")

from test_hardening_files import bert_folder, llama_gguf  # noqa: E402

import qkv.cli.explain  # noqa: E402
import qkv.experiments  # noqa: E402
from qkv.cli import main  # noqa: E402
from qkv.models import LanguageModel  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {"bert": str(bert_folder(root / "bert")), "llama": str(llama_gguf(root / "llama.gguf"))}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith("qkv: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_png_with_an_unknown_extension_names_the_ones_that_work(tiny, capsys, tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(qkv.models, "load", lambda name, **kw: loads.append(name))  # must not be reached
    for name in ("out.jpgg", "out"):
        err = one_line_error(capsys, "explain", "the cat sat", "--model", tiny["bert"], "--png", str(tmp_path / name))
        assert name in err and ".png" in err and ".svg" in err and ".pdf" in err
    assert loads == [] and list(tmp_path.iterdir()) == []  # refused before the model loads; nothing written
    monkeypatch.undo()
    code, _, err = run(capsys, "explain", "the cat sat", "--model", tiny["bert"], "--png", str(tmp_path / "ok.svg"))
    assert code == 0 and (tmp_path / "ok.svg").read_bytes().lstrip().startswith(b"<?xml"), err


def test_experiment_out_in_an_unusable_place_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    err = one_line_error(capsys, "experiment", "scaling", "--quick", "--out", str(blocker / "results"))
    assert "--out" in err and str(blocker / "results") in err
    err = one_line_error(capsys, "experiment", "scaling", "--quick", "--out", str(blocker))
    assert "is a file, not a folder" in err
    assert blocker.read_text() == "not a folder"


def test_generate_refuses_zero_new_tokens_with_the_fix(tiny, capsys):
    for n in ("0", "-3"):
        err = one_line_error(capsys, "generate", "ab", "--model", tiny["llama"], "--max-new-tokens", n)
        assert "--max-new-tokens" in err and f"got {n}" in err and "--max-new-tokens 32" in err
        assert "ended the text" not in err


def test_generate_stats_line_is_its_own_line_on_stderr_when_piped(tiny, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "50")  # a narrow console must not fold the line either
    code, out, err = run(capsys, "generate", "ab", "--model", tiny["llama"], "--max-new-tokens", "6")
    assert code == 0, err
    text = out.removesuffix("\n")
    assert out == text + "\n" and text and "tokens/s" not in out  # stdout: the text alone, then a newline
    stats = [line for line in err.splitlines() if "tokens/s" in line]
    assert len(stats) == 1 and "tokens in" in stats[0] and "prompt included in the time" in stats[0], err


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def _stream_then_interrupt(self, prompt, max_new_tokens=64, **kwargs):
    yield "Once"
    yield " upon"
    raise KeyboardInterrupt


@pytest.mark.parametrize("command", ["explain", "generate", "experiment"])
def test_ctrl_c_ends_with_one_line_and_exit_130_keeping_partial_output(tiny, capsys, monkeypatch, tmp_path, command):
    if command == "explain":
        monkeypatch.setattr(qkv.cli.explain, "_forward", _interrupt)  # while the model runs
        argv = ["explain", "the cat sat", "--model", tiny["bert"]]
    elif command == "generate":
        monkeypatch.setattr(LanguageModel, "stream", _stream_then_interrupt)
        argv = ["generate", "ab", "--model", tiny["llama"]]
    else:
        monkeypatch.setattr(qkv.experiments, "run", _interrupt)
        argv = ["experiment", "scaling", "--quick", "--out", str(tmp_path / "out")]
    try:
        code = main(argv)
    except KeyboardInterrupt:  # would stop the test session itself
        pytest.fail("Ctrl-C escaped qkv's main: the user sees a traceback")
    out, err = capsys.readouterr()
    assert code == 130
    assert err.splitlines()[-1] == "qkv: interrupted" and err.count("qkv:") == 1 and "Traceback" not in err
    if command == "generate":
        assert out == "Once upon\n"  # the text so far stays, ended by a newline before the message
    else:
        assert out == ""
