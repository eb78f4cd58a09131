"""`qkv.hf.record`: only the layers, heads and rows asked for, exact, from the pass itself; and the import rules."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import qkv.hf


def _llama(attn: str = "qkv", layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=0.25,
    )
    return transformers.LlamaForCausalLM._from_config(cfg, attn_implementation=attn).eval()


IDS = torch.randint(1, 64, (2, 11), generator=torch.Generator().manual_seed(3))
MASK = torch.tensor([[1] * 11, [0] * 4 + [1] * 7])


def test_record_keeps_what_is_asked_and_equals_output_attentions() -> None:
    model = _llama()
    with torch.no_grad():
        full = model(input_ids=IDS, attention_mask=MASK, output_attentions=True).attentions
        with qkv.hf.record(model, layers=[-1], heads=[0, 3], rows=[-1, 5]) as rec:
            model(input_ids=IDS, attention_mask=MASK)
    assert rec.layers == [1] and rec.names == ["model.layers.1.self_attn"]
    assert rec.weights[0].shape == (2, 2, 2, 11)
    torch.testing.assert_close(rec.weights[0], full[1][:, [0, 3]][:, :, [10, 5]], rtol=0, atol=1e-6)
    assert rec.stack().shape == (1, 2, 2, 2, 11) and len(rec) == 1
    rec.clear()
    assert len(rec) == 0


def test_record_everything_matches_the_float64_spec() -> None:
    import hf_reference

    model = _llama()
    spec_model = _llama(hf_reference.NAME).double()
    spec_model.load_state_dict(model.state_dict())
    with torch.no_grad(), qkv.hf.record(model) as rec:
        model(input_ids=IDS, attention_mask=MASK)
        spec = spec_model(input_ids=IDS, attention_mask=MASK, output_attentions=True).attentions
    assert len(rec) == 2
    for ours, exact in zip(rec.weights, spec):
        real = ours[1, :, 4:]  # the second sequence's real query rows (its first 4 are padding)
        assert float((real.double() - exact[1, :, 4:]).abs().max()) < 2e-6
        assert (ours[1, :, :4] == 0).all()  # left padding sees no key: zero rows


def test_record_during_generate_adds_one_entry_per_layer_and_step() -> None:
    model = _llama()
    with torch.no_grad(), qkv.hf.record(model, layers=[0], rows=[-1]) as rec:
        out = model.generate(IDS, attention_mask=MASK, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 14)
    assert [tuple(w.shape) for w in rec.weights] == [
        (2, 4, 1, 11),
        (2, 4, 1, 12),
        (2, 4, 1, 13),
    ]
    assert all(torch.allclose(w[0].sum(-1), torch.ones(4, 1)) for w in rec.weights)


def test_a_long_document_costs_only_the_rows_and_heads_recorded() -> None:
    model = _llama(layers=1)
    ids = torch.randint(1, 64, (1, 2048), generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), qkv.hf.record(model, heads=[1, 2], rows=[-1]) as rec:
        model(input_ids=ids)
    assert rec.weights[0].shape == (1, 2, 1, 2048)
    assert rec.weights[0].numel() * rec.weights[0].element_size() == 16 * 1024  # not 4 · 2048² floats
    assert torch.allclose(rec.weights[0].sum(-1), torch.ones(1, 2, 1))


def test_record_refuses_what_it_cannot_do() -> None:
    with pytest.raises(qkv.hf.ModelError, match="set_attn_implementation"):
        qkv.hf.record(_llama("eager"))
    model = _llama()
    with pytest.raises(qkv.hf.ModelError, match="out of range"):
        qkv.hf.record(model, layers=[2])
    with pytest.raises(qkv.hf.ModelError, match="non-empty list of integers"):
        qkv.hf.record(model, heads=[])
    with (
        pytest.raises(qkv.hf.ModelError, match="heads \\[7\\] out of range"),
        qkv.hf.record(model, heads=[7]),
    ):
        model(input_ids=IDS)
    assert isinstance(qkv.hf.ModelError("x"), qkv.AttentionError)


def test_import_qkv_leaves_transformers_alone_and_qkv_hf_without_it_says_how_to_install_it() -> None:
    code = (
        "import sys, qkv\n"
        "print('transformers' in sys.modules)\n"
        "sys.modules['transformers'] = None\n"
        "try:\n    import qkv.hf\nexcept Exception as e:\n    print(type(e).__name__, isinstance(e, ValueError), e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    first, second = result.stdout.splitlines()[:2]
    assert first == "False", result.stderr  # import qkv does not import transformers
    assert second.startswith("ModelError True") and "pip install transformers" in second, result.stderr
