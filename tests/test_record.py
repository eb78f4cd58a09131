"""qkv.interpret.record: exact per-layer probabilities whatever backend runs the forward pass."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import qkv
from qkv import masks, mods
from qkv.backends import BACKENDS
from qkv.interpret import record
from qkv.nn import (
    DecoderConfig,
    EncoderConfig,
    MultiHeadAttention,
    TransformerDecoder,
    TransformerEncoder,
    prune_heads,
)


def _encoder(backend: str) -> TransformerEncoder:
    torch.manual_seed(0)
    cfg = EncoderConfig.bert(vocab_size=60, embed_dim=32, num_layers=3, num_heads=4, ffn_dim=64)
    model = TransformerEncoder(cfg).eval()
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            m.backend = backend
    return model


def _llama(backend: str = "auto", num_layers: int = 2) -> TransformerDecoder:
    torch.manual_seed(0)
    cfg = DecoderConfig.llama(
        vocab_size=50, embed_dim=32, num_layers=num_layers, num_heads=4, num_kv_heads=2, ffn_dim=64
    )
    model = TransformerDecoder(cfg).eval()
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            m.backend = backend
    return model


def _eager_weights(model: torch.nn.Module, run) -> list[torch.Tensor]:
    """Expected weights, independently of record: re-run each attention call with need_weights=True."""
    expected = []

    def pre_hook(module, args, kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k != "cache"}
        saved, module.backend = module.backend, "eager"
        try:
            with torch.no_grad():
                _, w = MultiHeadAttention.forward(module, *args, **kwargs, need_weights=True)
        finally:
            module.backend = saved
        expected.append(w)

    handles = [
        m.register_forward_pre_hook(pre_hook, with_kwargs=True)
        for m in model.modules()
        if isinstance(m, MultiHeadAttention)
    ]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return expected


@pytest.mark.parametrize("backend", ["sdpa", "blockwise", "eager"])
def test_record_equals_eager_weights_on_every_backend(backend):
    model = _encoder(backend)
    ids = torch.randint(0, 60, (2, 11))
    padding = torch.tensor([[True] * 11, [True] * 8 + [False] * 3])[:, None, None, :]  # (B, 1, 1, N)
    expected = _eager_weights(model, lambda: model(ids, mask=padding))
    with record(model) as rec:
        model(ids, mask=padding)
    assert len(rec.weights) == 3 and rec.layers == [0, 1, 2]
    assert rec.names == ["layers.0.self_attn", "layers.1.self_attn", "layers.2.self_attn"]
    for got, want in zip(rec.weights, expected):
        assert got.shape == (2, 4, 11, 11)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        assert got[1, :, :, 8:].abs().max() == 0  # padded keys get nothing


@pytest.mark.parametrize("backend", ["sdpa", "blockwise"])
def test_forward_stays_on_its_backend_and_output_is_unchanged(backend, monkeypatch):
    model = _encoder(backend)
    ids = torch.randint(0, 60, (1, 9))
    with torch.no_grad():
        plain = model(ids)
    calls = {name: 0 for name in BACKENDS}
    for name, module in BACKENDS.items():
        original = module.attention

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, "attention", counted)
    with record(model) as rec, torch.no_grad():
        recorded = model(ids)
    assert calls[backend] == 3 and sum(calls.values()) == 3  # no extra pass on another backend
    assert torch.equal(recorded, plain)
    assert len(rec.weights) == 3


def test_record_with_gqa_rope_and_kv_cache_sees_the_cached_keys():
    model = _llama("sdpa")
    ids = torch.randint(0, 50, (1, 7))
    with record(model) as full, torch.no_grad():
        model(ids)
    cache = model.new_cache("contiguous", batch=1, max_length=8)
    with record(model) as steps, torch.no_grad():
        model(ids[:, :4], cache=cache)  # prefill: 4 queries
        for t in range(4, 7):
            model(ids[:, t : t + 1], cache=cache)  # one query over t + 1 keys
    assert steps.layers == [0, 1] * 4
    for layer in (0, 1):
        want = full.weights[layer]  # (1, 4, 7, 7), causal
        prefill = steps.weights[layer]
        torch.testing.assert_close(prefill, want[:, :, :4, :4], atol=1e-6, rtol=1e-5)
        for step, t in enumerate(range(4, 7)):
            got = steps.weights[2 * (step + 1) + layer]
            assert got.shape == (1, 4, 1, t + 1)
            torch.testing.assert_close(got[:, :, 0], want[:, :, t, : t + 1], atol=1e-6, rtol=1e-5)


def test_layers_heads_and_rows_restrict_to_slices_of_the_full_recording():
    model = _llama("blockwise", num_layers=3)
    ids = torch.randint(0, 50, (2, 10))
    with record(model) as full, torch.no_grad():
        model(ids)
    with record(model, layers=[0, -1], heads=[3, 1], rows=torch.tensor([2, -1])) as part, torch.no_grad():
        model(ids)
    assert part.layers == [0, 2] and part.heads == [3, 1] and part.rows == [2, -1]
    for got, layer in zip(part.weights, (0, 2)):
        assert got.shape == (2, 2, 2, 10)
        torch.testing.assert_close(got, full.weights[layer][:, [3, 1]][:, :, [2, 9]])


def test_heads_restriction_with_mask_object_and_per_head_score_mod():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, backend="blockwise").eval()
    x = torch.randn(1, 12, 32)
    kwargs = dict(mask=masks.sliding_window(4), bias=mods.alibi(4))
    with torch.no_grad():
        _, want = mha(x, need_weights=True, **kwargs)  # (1, 4, 12, 12)
    with record(mha, heads=[2, 0], rows=[5, 11]) as rec, torch.no_grad():
        mha(x, **kwargs)
    torch.testing.assert_close(rec.weights[0], want[:, [2, 0]][:, :, [5, 11]])
    assert rec.weights[0][0, :, 1, :8].abs().max() == 0  # outside the window of 4


def test_heads_restriction_with_per_head_bias_tensor():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, num_kv_heads=2, backend="sdpa").eval()
    x = torch.randn(2, 6, 32)
    bias = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        _, want = mha(x, bias=bias, need_weights=True)
    with record(mha, heads=[3]) as rec, torch.no_grad():
        mha(x, bias=bias)
    torch.testing.assert_close(rec.weights[0], want[:, [3]])


def test_cross_attention_and_pruned_layers_are_recorded():
    torch.manual_seed(0)
    cfg = DecoderConfig.llama(vocab_size=40, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=64)
    cfg = dataclasses.replace(cfg, cross_attention=True)
    model = TransformerDecoder(cfg).eval()
    prune_heads(model, {0: [1], 3: [0, 1, 2, 3]})  # layer 1's cross-attention loses every head
    ids, memory = torch.randint(0, 40, (2, 5)), torch.randn(2, 8, 32)
    expected = _eager_weights(model, lambda: model(ids, memory=memory))
    with record(model) as rec, torch.no_grad():
        model(ids, memory=memory)
    assert rec.names == ["layers.0.self_attn", "layers.0.cross_attn", "layers.1.self_attn", "layers.1.cross_attn"]
    assert [tuple(w.shape) for w in rec.weights] == [(2, 3, 5, 5), (2, 4, 5, 8), (2, 4, 5, 5), (2, 0, 5, 8)]
    for got, want in zip(rec.weights, expected):
        torch.testing.assert_close(got, want.float(), atol=1e-6, rtol=1e-5)


def test_half_precision_model_records_float32_probabilities():
    mha = MultiHeadAttention(16, 2, backend="sdpa").to(torch.bfloat16).eval()
    x = torch.randn(1, 5, 16).to(torch.bfloat16)
    with record(mha) as rec, torch.no_grad():
        mha(x, causal=True)
    w = rec.weights[0]
    assert w.dtype == torch.float32
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 5))


def test_hooks_are_removed_after_the_block_even_on_error():
    model = _encoder("sdpa")
    ids = torch.randint(0, 60, (1, 5))
    with pytest.raises(RuntimeError, match="boom"):
        with record(model):
            raise RuntimeError("boom")
    assert all(not m._attention_hooks for m in model.modules() if isinstance(m, MultiHeadAttention))
    rec = record(model)
    with rec:
        model(ids)
    model(ids)  # outside the block: nothing more is recorded
    assert len(rec) == 3
    assert rec.stack().shape == (3, 1, 4, 5, 5)
    rec.clear()
    assert len(rec) == 0


def test_nested_recordings_both_see_the_pass():
    model = _encoder("auto")
    ids = torch.randint(0, 60, (1, 4))
    with record(model, layers=[1]) as outer, record(model) as inner, torch.no_grad():
        model(ids)
    assert len(outer) == 1 and len(inner) == 3
    torch.testing.assert_close(outer.weights[0], inner.weights[1])


def test_bad_arguments_name_themselves():
    model = _encoder("auto")
    ids = torch.randint(0, 60, (1, 4))
    with pytest.raises(qkv.AttentionError, match="model: .*no qkv.nn.MultiHeadAttention"):
        record(torch.nn.Linear(2, 2))
    with pytest.raises(qkv.AttentionError, match="model: "):
        record("bert")
    with pytest.raises(qkv.AttentionError, match=r"layers: \[3\] out of range"):
        record(model, layers=[3])
    with pytest.raises(qkv.AttentionError, match="heads: "):
        record(model, heads=[0.5])
    with pytest.raises(qkv.AttentionError, match=r"heads: heads \[4\] are out of range"):
        with record(model, heads=[4]), torch.no_grad():
            model(ids)
    with pytest.raises(qkv.AttentionError, match=r"rows: query rows \[4\] are out of range"):
        with record(model, rows=[4]), torch.no_grad():
            model(ids)
    with pytest.raises(qkv.AttentionError, match="nothing was recorded"):
        record(model).stack()
    rec = record(model)
    with rec, pytest.raises(qkv.AttentionError, match="already active"):
        with rec:
            pass


def test_negative_heads_count_from_the_end_as_rows_do():
    from qkv.nn import MultiHeadAttention

    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(1, 5, 16)
    with qkv.interpret.record(mha, heads=[-1], rows=[-2]) as last, torch.no_grad():
        mha(x)
    with qkv.interpret.record(mha, heads=[3], rows=[3]) as named, torch.no_grad():
        mha(x)
    assert torch.equal(last.weights[0], named.weights[0])
    with pytest.raises(qkv.AttentionError, match=r"heads: heads \[-5\] are out of range for a layer with 4 heads"):
        with qkv.interpret.record(mha, heads=[-5]), torch.no_grad():
            mha(x)
