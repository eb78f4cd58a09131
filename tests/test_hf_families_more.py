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


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("family", DECODERS + ENCODERS)
def test_every_hidden_state_and_weight_matches_the_spec_in_float64_and_float32(family: str, padded: bool) -> None:
    models = _models(family)
    models["qkv64"] = copy.deepcopy(models["spec"])
    models["qkv64"].set_attn_implementation("qkv")
    ids, mask = _inputs(family, padded)
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
