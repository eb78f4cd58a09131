"""More transformers families on ``attn_implementation="qkv"``: ViT, Whisper, and every hidden state in float64.

The rules of `test_hf` (whose models and helpers this file reuses): tiny random configurations
built here, held to the model in float64 on `hf_reference` (an attention written apart from qkv).
In float32, ``"qkv"`` may err at most ``BUDGET_FACTOR ×`` what stock ``"eager"`` errs, plus
``ATOL``; in float64, the model on ``"qkv"`` matches the spec to ``RELATIVE_64`` of the largest
value. Padded positions are compared where they mean something: the real tokens' rows.

- The families of `test_hf` (Llama, Qwen2, Mistral, Gemma 2, GPT-2, BERT, RoBERTa, DistilBERT):
  logits, every hidden state and every attention weight, in float64 and float32.
- ViT: an image is a fixed grid of patches, so there is no padding to test; three images per batch.
- Whisper (encoder–decoder): encoder self-attention, decoder causal self-attention with a padded
  batch of different lengths, and cross-attention, and greedy ``generate()`` with the cache.
  Whisper does not declare ``_supports_attention_backend``, and needs nothing to run on qkv:
  transformers accepts any ``attn_implementation`` its ``AttentionInterface`` holds, and the flag
  is read only by ``is_backend_compatible()`` (what serving engines check). Its attention layers
  call the registered function like every other family's; the record test counts them.
"""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import hf_reference
from test_hf import ATOL, BUDGET_FACTOR, DECODERS, ENCODERS, VOCAB, _err, _inputs, _models

import qkv.hf

RELATIVE_64 = 1e-9


def _implementations(base: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``base``'s weights as ``qkv`` and ``eager`` in float32, ``spec`` and ``qkv64`` in float64."""
    out = {}
    for name, implementation, dtype in (
        ("qkv", "qkv", torch.float32),
        ("eager", "eager", torch.float32),
        ("spec", hf_reference.NAME, torch.float64),
        ("qkv64", "qkv", torch.float64),
    ):
        m = copy.deepcopy(base).to(dtype)
        m.set_attn_implementation(implementation)
        out[name] = m
    return out


def _check(
    name: str, ours: torch.Tensor, eager: torch.Tensor, ours64: torch.Tensor, spec: torch.Tensor, rows: torch.Tensor
) -> None:
    """float64: within ``RELATIVE_64`` of the spec's largest value; float32: within eager's budget."""
    ours, eager, ours64, spec = (t.double() for t in (ours, eager, ours64, spec))
    scale = _err(spec, torch.zeros_like(spec), rows)
    assert scale > 0, name  # a comparison of zeros would prove nothing
    e64 = _err(ours64, spec, rows)
    assert e64 <= RELATIVE_64 * scale, (name, e64, scale)
    e_qkv, e_eager = _err(ours, spec, rows), _err(eager, spec, rows)
    assert e_qkv <= BUDGET_FACTOR * e_eager + ATOL, (name, e_qkv, e_eager)


def _compare(outs: dict[str, object], fields: dict[str, torch.Tensor]) -> int:
    """Check every tensor of ``fields`` (output field -> rows of the real tokens); the count checked."""
    checked = 0
    for field, rows in fields.items():
        values = [getattr(outs[k], field) for k in ("qkv", "eager", "qkv64", "spec")]
        if isinstance(values[0], torch.Tensor):
            values = [(v,) for v in values]
        assert len({len(v) for v in values}) == 1, field
        for i, parts in enumerate(zip(*values)):
            _check(f"{field}[{i}]", *parts, rows)
            checked += 1
    return checked


@pytest.mark.parametrize("family", DECODERS + ENCODERS)
def test_every_hidden_state_and_weight_matches_the_spec_in_float64_and_float32(family: str) -> None:
    """A batch of lengths 9, 6, 3: one sequence without padding, two padded (`test_hf` runs the unpadded batch)."""
    models = _models(family)
    models["qkv64"] = copy.deepcopy(models["spec"])
    models["qkv64"].set_attn_implementation("qkv")
    ids, mask = _inputs(family, padded=True)
    with torch.no_grad():
        outs = {
            name: m(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
            for name, m in models.items()
        }
    main = "logits" if family in DECODERS else "last_hidden_state"
    rows = mask.bool()
    checked = _compare(outs, {main: rows, "hidden_states": rows, "attentions": rows})
    assert checked == 1 + 3 + 2  # the main output, embeddings and 2 layers, 2 layers' weights


def _vit() -> dict[str, torch.nn.Module]:
    cfg = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
        num_channels=3,
        initializer_range=0.25,
    )
    torch.manual_seed(0)
    return _implementations(transformers.ViTModel._from_config(cfg, attn_implementation="eager").eval())


def test_vit_hidden_states_and_weights_match_the_spec() -> None:
    models = _vit()
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        outs = {
            name: m(pixel_values=pixels.to(m.dtype), output_attentions=True, output_hidden_states=True)
            for name, m in models.items()
        }
    rows = torch.ones(3, 17, dtype=torch.bool)  # 16 patches and the class token, all real
    checked = _compare(outs, {"last_hidden_state": rows, "hidden_states": rows, "attentions": rows})
    assert checked == 1 + 3 + 2
    assert outs["qkv"].attentions[0].shape == (3, 4, 17, 17)


def _whisper() -> dict[str, torch.nn.Module]:
    cfg = transformers.WhisperConfig(
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=8,
        max_source_positions=12,
        max_target_positions=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        init_std=0.25,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration._from_config(cfg, attn_implementation="eager").eval()
    return _implementations(model)


def _whisper_inputs(padded: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_features (3, 8, 24), decoder_input_ids (3, 6), decoder_attention_mask)``; padded: lengths 6, 4, 2."""
    gen = torch.Generator().manual_seed(4)
    features = torch.randn(3, 8, 24, generator=gen)  # Whisper's encoder takes 2 × max_source_positions frames
    ids = torch.randint(3, VOCAB, (3, 6), generator=gen)
    mask = torch.ones_like(ids)
    if padded:
        for b, n in enumerate((6, 4, 2)):
            mask[b, : 6 - n] = 0
        ids = ids.masked_fill(mask == 0, 0)
    return features, ids, mask


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_whisper_encoder_decoder_and_cross_attention_match_the_spec(padded: bool) -> None:
    models = _whisper()
    features, ids, mask = _whisper_inputs(padded)
    with torch.no_grad():
        outs = {
            name: m(
                input_features=features.to(m.dtype),
                decoder_input_ids=ids,
                decoder_attention_mask=mask,
                output_attentions=True,
                output_hidden_states=True,
            )
            for name, m in models.items()
        }
    frames = torch.ones(3, 12, dtype=torch.bool)  # the encoder's 12 positions: Whisper masks no input frame
    tokens = mask.bool()
    fields = {
        "logits": tokens,
        "encoder_last_hidden_state": frames,
        "encoder_hidden_states": frames,
        "encoder_attentions": frames,
        "decoder_hidden_states": tokens,
        "decoder_attentions": tokens,
        "cross_attentions": tokens,
    }
    assert _compare(outs, fields) == 1 + 1 + 3 + 2 + 3 + 2 + 2
    assert outs["qkv"].cross_attentions[0].shape == (3, 4, 6, 12)
    if padded:  # a left-padding query sees no key: zeros, never NaN
        w = outs["qkv"].decoder_attentions[0]
        assert not torch.isnan(w).any() and (w[2, :, 0] == 0).all()


def test_whisper_generate_with_the_cache_gives_the_same_greedy_ids() -> None:
    models = _whisper()
    features, ids, mask = _whisper_inputs(padded=True)
    kwargs = {"decoder_input_ids": ids, "decoder_attention_mask": mask, "max_new_tokens": 6, "do_sample": False}
    with torch.no_grad():
        eager = models["eager"].generate(features, **kwargs)
        ours = models["qkv"].generate(features, **kwargs)
    assert ours.shape == (3, 6)
    assert torch.equal(ours, eager)


def test_whisper_runs_every_attention_layer_on_qkv_without_declaring_the_backend_flag() -> None:
    """Not declared, not needed: 2 encoder self-attentions, 2 decoder self-attentions, 2 cross-attentions on qkv."""
    model = _whisper()["qkv"]
    assert not type(model)._supports_attention_backend
    assert model.config._attn_implementation == "qkv"
    features, ids, mask = _whisper_inputs(padded=True)
    with qkv.hf.record(model) as rec, torch.no_grad():
        model(input_features=features, decoder_input_ids=ids, decoder_attention_mask=mask)
    names = rec.names
    assert len(names) == 6
    assert sum(".encoder." in n and n.endswith("self_attn") for n in names) == 2
    assert sum(".decoder." in n and n.endswith("self_attn") for n in names) == 2
    assert sum(n.endswith("encoder_attn") for n in names) == 2
    cross = [w for w, n in zip(rec.weights, names) if n.endswith("encoder_attn")]
    assert all(w.shape == (3, 4, 6, 12) for w in cross)
    assert all(torch.allclose(w.sum(-1), torch.tensor(1.0)) for w in cross)  # every decoder row sees every frame


# ---------------------------------------------------------------------------
# attention sinks (gpt-oss): a per-head logit in the softmax's denominator that attends nothing.
# The spec here is gpt-oss's own eager code in float64 (it appends the sink as one more softmax
# column and drops it after): `hf_reference` knows no sinks. Its weights leave the sink's share out.


def _gpt_oss() -> torch.nn.Module:
    cfg = transformers.GptOssConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=4,
        initializer_range=0.25,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(
        cfg, attn_implementation="eager", experts_implementation="eager"
    ).eval()
    assert model.config.layer_types == ["sliding_attention", "full_attention"]
    for layer in model.model.layers:  # sinks far from zero: a large share of some rows goes to the sink
        torch.nn.init.normal_(layer.self_attn.sinks, mean=1.0, std=1.5)
    return model


def test_attention_sinks_match_gpt_oss_eager_in_float64_and_float32() -> None:
    base = _gpt_oss()
    ids, mask = _inputs("llama", padded=True)  # left padding, lengths 9, 6, 3
    rows = mask.bool()
    outs = {}
    for name, implementation, dtype in (
        ("qkv", "qkv", torch.float32),
        ("eager", "eager", torch.float32),
        ("qkv64", "qkv", torch.float64),
        ("spec", "eager", torch.float64),
    ):
        m = copy.deepcopy(base).to(dtype)
        m.set_attn_implementation(implementation)
        with torch.no_grad():
            outs[name] = m(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    assert _compare(outs, {"logits": rows, "hidden_states": rows, "attentions": rows}) == 1 + 3 + 2
    w = outs["qkv64"].attentions[1]  # (B, H, N, N): the keys keep less than all of the mass
    real = w.sum(-1)[rows[:, None, :].expand(w.shape[:-1])]
    assert bool((real < 1).all()) and float(real.min()) < 0.5
    assert (w[2, :, 0] == 0).all() and not torch.isnan(w).any()  # a padding query: zeros, never NaN


def test_attention_sinks_generate_the_same_greedy_ids_and_train_like_eager() -> None:
    base = _gpt_oss()
    ids, mask = _inputs("llama", padded=True)
    ours, eager = copy.deepcopy(base), copy.deepcopy(base)
    ours.set_attn_implementation("qkv")
    kwargs = {"attention_mask": mask, "max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        assert torch.equal(ours.generate(ids, **kwargs), eager.generate(ids, **kwargs))
    grads = []
    for model in (ours.double(), eager.double()):
        model.train()
        model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
        grads.append(torch.stack([layer.self_attn.sinks.grad for layer in model.model.layers]))
    assert grads[1].abs().max() > 1e-6  # the loss depends on the sinks
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_attention_sinks_of_another_shape_are_refused_with_the_fix() -> None:
    q, k, v = torch.randn(3, 1, 4, 5, 8).unbind(0)  # (B=1, H=4, N=5, D=8) each
    module = torch.nn.Module()
    with pytest.raises(qkv.hf.ModelError, match=r"s_aux: .*shape \(4,\), got \(1, 4\).*'eager'"):
        qkv.hf.attention_forward(module, q, k, v, None, s_aux=torch.zeros(1, 4))


# ---------------------------------------------------------------------------
# a sliding window of no key: Qwen2-MoE builds its sliding mask with window 0 when no layer slides


def test_a_window_of_no_key_is_a_mask_that_allows_nothing_not_an_error() -> None:
    from transformers.masking_utils import sdpa_mask, sliding_window_causal_mask_function

    fn = sliding_window_causal_mask_function(0)
    ours = qkv.hf.mask_interface(2, 5, 5, mask_function=fn)
    spec = sdpa_mask(batch_size=2, q_length=5, kv_length=5, mask_function=fn, allow_is_causal_skip=False)
    assert isinstance(ours, qkv.masks.Mask)
    assert torch.equal(ours.to_dense(2, 1, 5, 5), spec) and not spec.any()


def test_qwen2_moe_without_sliding_layers_matches_eager() -> None:
    cfg = transformers.Qwen2MoeConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.25,
    )
    assert cfg.sliding_window == 0  # what the config sets when no layer slides
    torch.manual_seed(0)
    eager = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    ours = copy.deepcopy(eager)
    ours.set_attn_implementation("qkv")
    ids, mask = _inputs("llama", padded=True)
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask).logits
        b = eager(input_ids=ids, attention_mask=mask).logits
    assert _err(a.double(), b.double(), mask.bool()) < 1e-4
