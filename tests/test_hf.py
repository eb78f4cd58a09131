"""transformers models on ``attn_implementation="qkv"``: logits, exact weights and greedy generation.

Every family is a tiny random configuration built here (no downloads). The float64 spec is the
model in float64 on `hf_reference` (an attention written apart from qkv); ``"qkv"`` in float32
may err at most ``BUDGET_FACTOR ×`` what stock ``"eager"`` in float32 errs against it, plus
``ATOL``. Padded positions are compared where they mean something: the real tokens' rows.
"""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import hf_reference

import qkv.hf

BUDGET_FACTOR = 4.0
ATOL = 1e-5
VOCAB = 97

DECODERS = ("llama", "qwen2", "mistral", "gemma2", "gpt2")
ENCODERS = ("bert", "roberta", "distilbert")


def _config(family: str) -> transformers.PretrainedConfig:
    common = {"vocab_size": VOCAB, "initializer_range": 0.25}
    llama_like = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        **common,
    )
    if family == "llama":
        return transformers.LlamaConfig(**llama_like)
    if family == "qwen2":
        return transformers.Qwen2Config(**llama_like)
    if family == "mistral":
        return transformers.MistralConfig(sliding_window=4, **llama_like)
    if family == "gemma2":
        return transformers.Gemma2Config(
            head_dim=8,
            sliding_window=4,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=30.0,
            query_pre_attn_scalar=8,
            **llama_like,
        )
    if family == "gpt2":
        return transformers.GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=4, **common)
    if family == "bert":
        return transformers.BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            **common,
        )
    if family == "roberta":
        return transformers.RobertaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=70,
            pad_token_id=1,
            **common,
        )
    assert family == "distilbert"
    return transformers.DistilBertConfig(
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=64,
        max_position_embeddings=64,
        **common,
    )


def _model_class(family: str) -> type:
    if family in DECODERS:
        return transformers.AutoModelForCausalLM
    return transformers.AutoModel


_BUILT: dict[str, torch.nn.Module] = {}


def _models(family: str) -> dict[str, torch.nn.Module]:
    """The same weights as ``{"qkv": float32, "eager": float32, "spec": float64}`` models."""
    if family not in _BUILT:
        torch.manual_seed(0)
        _BUILT[family] = _model_class(family).from_config(_config(family), attn_implementation="eager").eval()
    base = _BUILT[family]
    out = {}
    for name, implementation, dtype in (
        ("qkv", "qkv", torch.float32),
        ("eager", "eager", torch.float32),
        ("spec", hf_reference.NAME, torch.float64),
    ):
        m = copy.deepcopy(base).to(dtype)
        m.set_attn_implementation(implementation)
        out[name] = m
    return out


def _inputs(family: str, padded: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of a batch with lengths 9, 6, 3 (left padding for decoders)."""
    gen = torch.Generator().manual_seed(1)
    lengths = [9, 6, 3] if padded else [9, 9, 9]
    ids = torch.randint(3, VOCAB, (len(lengths), 9), generator=gen)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        if family in DECODERS:
            mask[b, 9 - n :] = 1
        else:
            mask[b, :n] = 1
    ids = ids.masked_fill(mask == 0, 0 if family != "roberta" else 1)
    return ids, mask


def _run(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    main = out.logits if hasattr(out, "logits") else out.last_hidden_state
    return main.double(), tuple(w.double() for w in out.attentions)


def _err(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor) -> float:
    """Largest difference over the real tokens' rows (``rows (B, N)`` bool; rows on axis -2 of a, b)."""
    return float(
        (a - b)
        .abs()
        .amax(-1)
        .masked_select(rows.expand(a.shape[:-1]) if a.dim() == 3 else rows[:, None, :].expand(a.shape[:-1]))
        .max()
    )


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("family", DECODERS + ENCODERS)
def test_logits_and_weights_match_the_float64_spec(family: str, padded: bool) -> None:
    models = _models(family)
    ids, mask = _inputs(family, padded)
    rows = mask.bool()
    spec, spec_w = _run(models["spec"], ids, mask)
    results = {name: _run(models[name], ids, mask) for name in ("qkv", "eager")}
    err = {name: _err(r[0], spec, rows) for name, r in results.items()}
    assert len(results["qkv"][1]) == len(spec_w) == 2  # one probability tensor per layer
    assert err["qkv"] <= BUDGET_FACTOR * err["eager"] + ATOL, (family, err)
    for layer, (w_qkv, w_eager, w_spec) in enumerate(zip(results["qkv"][1], results["eager"][1], spec_w)):
        e_qkv, e_eager = _err(w_qkv, w_spec, rows), _err(w_eager, w_spec, rows)
        assert e_qkv <= BUDGET_FACTOR * e_eager + ATOL, (family, layer, e_qkv, e_eager)
        assert torch.allclose(
            w_qkv.sum(-1)[rows[:, None, :].expand(w_qkv.shape[:-1])],
            torch.tensor(1.0).double(),
        )
    if padded and family in DECODERS:  # rows of left padding see no key: zeros, never NaN
        w = results["qkv"][1][0]
        assert not torch.isnan(w).any()
        assert (w[2, :, 0] == 0).all()


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2", "gpt2"])
def test_generate_with_the_cache_gives_the_same_greedy_ids(family: str) -> None:
    models = _models(family)
    ids, mask = _inputs(family, padded=True)
    kwargs = {
        "attention_mask": mask,
        "max_new_tokens": 6,
        "do_sample": False,
        "pad_token_id": 0,
    }
    with torch.no_grad():
        eager = models["eager"].generate(ids, **kwargs)
        ours = models["qkv"].generate(ids, **kwargs)
    assert torch.equal(ours, eager)


def test_a_causal_model_keeps_its_mask_only_with_the_mask_function_registered() -> None:
    """Registered alone, an attention function gets ``attention_mask=None`` and the padding is lost."""
    from transformers import AttentionInterface

    AttentionInterface.register("qkv_attention_only", qkv.hf.attention_forward)
    models = _models("llama")
    ids, mask = _inputs("llama", padded=True)
    rows = mask.bool()
    eager, _ = _run(models["eager"], ids, mask)
    ours, _ = _run(models["qkv"], ids, mask)
    alone = copy.deepcopy(models["qkv"])
    alone.set_attn_implementation("qkv_attention_only")
    with torch.no_grad():
        lost = alone(input_ids=ids, attention_mask=mask).logits.double()
    assert _err(ours, eager, rows) < 1e-4
    assert _err(lost, eager, rows) > 1e-2  # what registering the attention function alone would do


def test_packed_sequences_by_position_ids_match_eager() -> None:
    models = _models("llama")
    ids = torch.randint(3, VOCAB, (1, 9), generator=torch.Generator().manual_seed(2))
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1]])
    with torch.no_grad():
        ours = models["qkv"](input_ids=ids, position_ids=positions, use_cache=False).logits
        eager = models["eager"](input_ids=ids, position_ids=positions, use_cache=False).logits
        alone = torch.cat(
            [models["eager"](input_ids=ids[:, s:e]).logits for s, e in ((0, 4), (4, 7), (7, 9))],
            1,
        )
    torch.testing.assert_close(ours, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, alone, atol=1e-5, rtol=1e-5)


def test_weights_are_computed_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import qkv.hf.attention

    calls: list[tuple[str, tuple[int, ...]]] = []

    def counting(name: str):
        real = getattr(qkv.hf.attention, name)

        def count(*args, **kwargs):
            result = real(*args, **kwargs)
            p = result[1] if isinstance(result, tuple) else result
            calls.append((name, tuple(p.shape)))
            return result

        return count

    for name in ("probabilities", "attention_with_probabilities"):
        monkeypatch.setattr(qkv.hf.attention, name, counting(name))
    models = _models("llama")
    ids, mask = _inputs("llama", padded=False)
    with torch.no_grad():
        plain = models["qkv"](input_ids=ids, attention_mask=mask)
    assert plain.attentions is None and calls == []
    with torch.no_grad():
        out = models["qkv"](input_ids=ids, attention_mask=mask, output_attentions=True)
    # every probability is wanted: one pass gives them and the output, once per layer
    assert len(out.attentions) == 2 and calls == [("attention_with_probabilities", (3, 4, 9, 9))] * 2


def test_from_pretrained_and_training_with_dropout(tmp_path) -> None:
    base = _models("llama")["eager"]
    base.save_pretrained(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="qkv")
    assert model.config._attn_implementation == "qkv"
    model.config.attention_dropout = 0.5
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    model.train()
    ids, mask = _inputs("llama", padded=True)
    out = model(input_ids=ids, attention_mask=mask, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None for p in model.model.layers[0].self_attn.parameters())


@pytest.mark.slow
def test_the_real_smollm2_generates_the_same_greedy_tokens_as_eager() -> None:
    """The packaged SmolLM2-135M GGUF, read by transformers (with ``gguf``), on "qkv" and on "eager"."""
    pytest.importorskip("gguf")
    from qkv.models.packages import PACKAGES

    package = PACKAGES["smollm2"]
    if not package.is_installed():
        pytest.skip(f"SmolLM2 is not installed: {package.install_command}")
    path = package.path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent),
        gguf_file=path.name,
        attn_implementation="qkv",
        dtype=torch.float32,
    ).eval()
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 253, 1345, 30]])  # a short English prompt's token ids
    kwargs = {"max_new_tokens": 8, "do_sample": False}
    with torch.no_grad():
        ours = model.generate(ids, **kwargs)
        model.set_attn_implementation("eager")
        eager = model.generate(ids, **kwargs)
    assert ours.shape == (1, 17)
    assert torch.equal(ours, eager)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_a_4d_float_mask_is_an_additive_bias_and_a_mask(family: str) -> None:
    """A caller's 4-D float mask (an ALiBi or relative position bias, -inf-like where masked), with soft-capping."""
    models = _models(family)
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(3, VOCAB, (2, 7), generator=gen)
    bias = torch.randn(2, 1, 7, 7, generator=gen)
    blocked = ~torch.ones(7, 7, dtype=torch.bool).tril()
    blocked = blocked | (torch.rand(2, 1, 7, 7, generator=gen) < 0.2) & ~torch.eye(7, dtype=torch.bool)
    float_mask = bias.masked_fill(blocked, torch.finfo(torch.float32).min)
    with torch.no_grad():
        ours = models["qkv"](input_ids=ids, attention_mask=float_mask).logits
        eager = models["eager"](input_ids=ids, attention_mask=float_mask).logits
        spec = models["spec"](input_ids=ids, attention_mask=float_mask.double()).logits
    err_ours, err_eager = (
        float((ours - spec).abs().max()),
        float((eager - spec).abs().max()),
    )
    assert err_ours <= BUDGET_FACTOR * err_eager + ATOL, (err_ours, err_eager)
