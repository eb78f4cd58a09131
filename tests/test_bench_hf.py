"""`qkv bench --section hf`: every peer runs on one model and agrees with "eager" (no timing is asserted)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

pytest.importorskip("transformers")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from qkv import bench_hf  # noqa: E402
from qkv.cli import main  # noqa: E402

N = 48


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa").eval()


def _check(m: bench_hf.HFMeasurement, rounds: int) -> None:
    assert set(m.seconds) == set(m.rounds) == set(bench_hf.PEERS)
    assert all(len(m.rounds[peer]) == rounds and m.seconds[peer] > 0 for peer in bench_hf.PEERS)
    assert m.weights_ratio == m.seconds["eager+weights"] / m.seconds["qkv+weights"]
    assert m.plain_ratio == m.seconds["sdpa"] / m.seconds["qkv"]
    assert set(m.extra_mib) == set(bench_hf.PEERS)
    assert m.weights_diff is not None and m.weights_diff < 1e-5
    assert set(m.logits_diff) == {"sdpa", "qkv", "qkv+weights"} and max(m.logits_diff.values()) < 1e-4


def test_every_peer_runs_and_qkv_weights_agree_with_eager():
    model = _tiny_llama()
    m = bench_hf.measure(model, N, name="tiny llama", rounds=2)
    _check(m, rounds=2)
    assert m.weights_kept == "all 3 layers" and m.n == N
    assert model.config._attn_implementation == "sdpa"  # restored
    low, high = m.ratio_range("qkv", "sdpa")
    assert low <= m.plain_ratio <= high  # two rounds: the medians are means, their ratio lies between the rounds'
    assert "eager+weights / qkv+weights" in bench_hf.line(m) and "(rounds " in bench_hf.line(m)


def test_past_the_memory_limit_only_the_last_layer_is_kept_and_compared():
    m = bench_hf.measure(_tiny_llama(), N, rounds=1, all_weights_max_mib=0.0)
    _check(m, rounds=1)
    assert m.weights_kept == "last layer"


def test_the_sliding_window_model_has_the_same_weights_and_its_window():
    base = _tiny_llama()
    ids = torch.randint(0, 96, (1, N), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        wide = bench_hf.with_sliding_window(base, window=N)(ids).logits  # the window covers every key
        narrow = bench_hf.with_sliding_window(base, window=8)(ids).logits
        assert (wide - base(ids).logits).abs().max() < 1e-5
        assert (narrow - base(ids).logits).abs().max() > 1e-3  # the window changes what the model computes
    m = bench_hf.measure(bench_hf.with_sliding_window(base, window=8), N, rounds=1)
    _check(m, rounds=1)


def test_the_command_prints_rows_goals_and_writes_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_hf, "smollm2", _tiny_llama)
    monkeypatch.setattr(bench_hf, "ROUNDS", 1)
    out = tmp_path / "hf.json"
    assert main(["bench", "--section", "hf", "--n", str(N), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sliding_window=256" in text and "qkv within 1.1x of sdpa" in text
    data = json.loads(out.read_text())
    assert [row["n"] for row in data["hf"]] == [N, N] and len(data["goals"]) == 4
    assert all(row["weights_diff"] < 1e-5 for row in data["hf"])


@pytest.mark.parametrize("absent", ["transformers", "gguf"])
def test_without_transformers_or_gguf_the_section_is_one_line_and_exit_2(absent, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, absent, None)  # importlib.util.find_spec now finds nothing
    assert main(["bench", "--section", "hf"]) == 2
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and f"pip install {absent}" in out
