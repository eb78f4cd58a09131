"""`qkv.interpret` on a transformers model: ``record`` reads it once ``import qkv.hf`` has run, and what reads
its `Recording` (metrics, ``summarize_rows``) gives what it gives on transformers' own eager weights."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import qkv.hf
import qkv.interpret
from qkv.hf.record import TransformersCall
from qkv.interpret import entropy, head_importance, mean_distance, record, rollout, summarize_rows
from qkv.interpret.calls import AttentionCall

IDS = torch.randint(1, 64, (2, 9), generator=torch.Generator().manual_seed(5))
MASK = torch.tensor([[1] * 9, [0] * 3 + [1] * 6])  # the second text left-padded


def _pair(kind: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same tiny random model twice: on ``"qkv"`` and on transformers' ``"eager"`` (the weights to trust)."""
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            initializer_range=0.25,
        )
        cls = transformers.LlamaForCausalLM
    else:
        cfg = transformers.BertConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            initializer_range=0.25,
        )
        cls = transformers.BertModel
    ours = cls._from_config(copy.deepcopy(cfg), attn_implementation="qkv").eval()
    eager = cls._from_config(cfg, attn_implementation="eager").eval()
    eager.load_state_dict(ours.state_dict())
    return ours, eager


def _eager_weights(eager: torch.nn.Module, mask: torch.Tensor = MASK) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(eager(input_ids=IDS, attention_mask=mask, output_attentions=True).attentions)


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_record_of_a_transformers_model_equals_its_eager_weights(kind: str) -> None:
    model, eager = _pair(kind)
    expected = _eager_weights(eager)
    with torch.no_grad(), record(model) as rec:
        model(input_ids=IDS, attention_mask=MASK)
    assert isinstance(rec, qkv.hf.Recording) and qkv.hf.Recording is qkv.interpret.Recording
    assert rec.layers == [0, 1] and rec.names == [name for name, _ in qkv.hf.attention_modules(model)]
    real = slice(3, None)  # the padded text's real positions (its padding rows differ: eager spreads them)
    for ours, exact in zip(rec.weights, expected):
        assert ours.shape == (2, 4, 9, 9) and ours.dtype == torch.float32
        torch.testing.assert_close(ours[0], exact[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(ours[1, :, real], exact[1, :, real], atol=1e-5, rtol=0)
    assert rec.stack().shape == (2, 2, 4, 9, 9)


def test_layers_heads_and_rows_keep_only_what_is_asked_as_on_qkvs_modules() -> None:
    model, eager = _pair("llama")
    expected = _eager_weights(eager)
    with torch.no_grad(), record(model, layers=[-1], heads=[1, 3], rows=[-1, 4]) as rec:
        model(input_ids=IDS, attention_mask=MASK)
    assert rec.layers == [1] and rec.names == ["model.layers.1.self_attn"]
    assert (rec.heads, rec.rows, rec.keep) == ([1, 3], [-1, 4], "weights")
    torch.testing.assert_close(rec.weights[0], expected[1][:, [1, 3]][:, :, [8, 4]], atol=1e-5, rtol=0)
    with torch.no_grad(), qkv.hf.record(model, layers=[-1], heads=[1, 3], rows=[-1, 4]) as same:
        model(input_ids=IDS, attention_mask=MASK)
    assert torch.equal(same.weights[0], rec.weights[0])  # qkv.hf.record is the same recording


def test_keep_calls_gives_weights_on_demand_and_summarize_rows_reads_them() -> None:
    model, eager = _pair("llama")
    one = IDS[:1]
    with torch.no_grad():
        expected = eager(input_ids=one, output_attentions=True).attentions
        with record(model, keep="calls") as rec:
            model(input_ids=one)
    assert rec.weights == [] and len(rec) == 2
    call = rec.calls[1]
    assert isinstance(call, TransformersCall) and isinstance(call, AttentionCall)
    assert (call.layer, call.causal, call.num_heads, call.num_queries, call.num_keys) == (1, True, 4, 9, 9)
    assert call.nbytes() == 4 * 9 * 9 * 4
    assert repr(call) == "TransformersCall(layer 1 'model.layers.1.self_attn', 4 heads, 9 queries × 9 keys, causal)"
    torch.testing.assert_close(call.weights(), expected[1], atol=1e-5, rtol=0)
    blocks = list(call.blocks(heads=[2], block_elements=2 * 9))  # two rows a block
    assert [rows.tolist() for rows, _ in blocks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    torch.testing.assert_close(torch.cat([w for _, w in blocks], dim=2), expected[1][:, [2]], atol=1e-5, rtol=0)
    summary = summarize_rows(call, k=2, heads=[2])
    top = expected[1][0, 2].topk(2, dim=-1)
    assert summary.top(0) == [(0, pytest.approx(1.0))]  # a causal first row sees only itself
    torch.testing.assert_close(summary.top_weight[2:], top.values[2:], atol=1e-5, rtol=0)


def test_keep_calls_while_generating_counts_each_steps_queries() -> None:
    model, _ = _pair("llama")
    with torch.no_grad(), record(model, layers=[0], keep="calls") as rec:
        model.generate(IDS[:1], max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert [(c.num_queries, c.num_keys) for c in rec.calls] == [(9, 9), (1, 10)]
    assert torch.allclose(rec.calls[-1].weights().sum(-1), torch.ones(1, 4, 1))


def test_the_metrics_read_the_recording_as_they_read_eager_weights() -> None:
    model, eager = _pair("bert")
    mask = torch.ones_like(MASK)
    expected = _eager_weights(eager, mask)
    with torch.no_grad(), record(model) as rec:
        model(input_ids=IDS, attention_mask=mask)
    torch.testing.assert_close(entropy(rec.weights[0]), entropy(expected[0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(mean_distance(rec.weights[1]), mean_distance(expected[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(rollout(rec.weights), rollout(expected), atol=1e-5, rtol=0)


def test_what_qkv_interpret_cannot_do_on_a_transformers_model_says_why() -> None:
    model, eager = _pair("llama")
    with pytest.raises(qkv.hf.ModelError, match="set_attn_implementation"):
        record(eager)
    with pytest.raises(qkv.hf.ModelError, match="out of range; the model has 2 attention layers"):
        record(model, layers=[2])
    with pytest.raises(qkv.AttentionError, match="keep='calls'"):
        record(model, rows=[0], keep="calls")
    with pytest.raises(qkv.hf.ModelError, match="is a transformers model; prune_heads removes heads of qkv.nn"):
        qkv.interpret.prune_heads(model, {0: [1]})


def test_before_import_qkv_hf_record_names_the_import() -> None:
    code = (
        "import torch, transformers, qkv.interpret\n"
        "cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,\n"
        "                               num_attention_heads=4, num_key_value_heads=2)\n"
        "model = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation='eager')\n"
        "try:\n    qkv.interpret.record(model)\n"
        "except Exception as e:\n    print(type(e).__name__, isinstance(e, ValueError), e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    line = result.stdout.strip()
    assert line.startswith("ModelError True model: LlamaForCausalLM is a transformers model"), result.stderr
    assert "import qkv.hf" in line and "pip install transformers" in line and "attn_implementation='qkv'" in line


def test_head_importance_of_a_transformers_model_equals_qkvs_own_model_of_the_same_weights(tmp_path) -> None:
    """|∂L/∂ξ_h| through transformers' Llama on "qkv" and through qkv's own Llama loaded from the same folder."""
    from test_loaders_llama_family import hf_folder, ours

    folder, hf = hf_folder(tmp_path / "llama", "llama")
    hf = hf.double()
    hf.set_attn_implementation("qkv")
    mine = ours(folder)  # float64
    x = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = hf(input_ids=x).logits
    theirs_scores = head_importance(hf, lambda ids: hf(input_ids=ids).logits.pow(2).mean(), [x, x[:1]])
    our_scores = head_importance(mine, lambda ids: mine(ids).pow(2).mean(), [x, x[:1]])
    assert theirs_scores.shape == our_scores.shape == (2, 4)
    assert bool((theirs_scores > 0).all())
    torch.testing.assert_close(theirs_scores, our_scores, rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # the scales are gone afterwards: the same logits as before
        assert torch.equal(hf(input_ids=x).logits, before)
