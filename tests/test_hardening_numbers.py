"""Numbers every backend must get right: degenerate scales, NaN inputs, the spec's reach, module masks.

Each test protects one promise of the contract that a probe once found broken:
the mean of the allowed values at ``scale=0``, NaN exactly where the float64
spec puts it, the spec accepting every mask `qkv.attention` accepts, clear errors
from mask functions of the wrong shape, exact float64 copies of torch layers, and
``(B, Nk)`` padding masks in modules read as padding.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qkv
from qkv import masks, mods
from qkv.nn import MultiHeadAttention, TransformerDecoderLayer, TransformerEncoderLayer
from tests.conftest import FAST_BACKENDS, qkv_inputs

NAN = float("nan")


@pytest.mark.parametrize("backend", [*FAST_BACKENDS, "reference"])
@pytest.mark.parametrize("nq, nk", [(32, 32), (256, 256), (5, 9)])
def test_scale_zero_with_a_causal_mask_is_the_mean_of_the_allowed_values(backend, nq, nk):
    q, k, v = qkv_inputs(b=1, hq=2, nq=nq, nk=nk, d=16)
    out = qkv.attention(q, k, v, causal=True, scale=0.0, backend=backend).double()
    # row i sees keys 0 .. i + (Nk - Nq): their running mean
    counts = torch.arange(1, nk + 1, dtype=torch.float64)[:, None]  # (Nk, 1)
    running_mean = v.double().cumsum(dim=2) / counts  # (B, H, Nk, Dv)
    expected = running_mean[:, :, nk - nq :]  # (B, H, Nq, Dv); every row here has a key
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def _nan_rows(out: torch.Tensor) -> torch.Tensor:
    return torch.isnan(out).any(dim=-1)  # (B, H, Nq)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("position", [5, 200])
@pytest.mark.parametrize("mask", ["causal", "window", "none"])
def test_nan_propagates_exactly_where_the_spec_puts_it(backend, where, position, mask):
    q, k, v = qkv_inputs(b=1, hq=2, nq=256, d=16)
    dict(q=q, k=k, v=v)[where][0, 1, position, 3] = NAN
    kwargs = dict(causal=mask == "causal", mask=masks.sliding_window(64) if mask == "window" else None)
    spec = qkv.reference.attention(q, k, v, **kwargs)
    out = qkv.attention(q, k, v, backend=backend, **kwargs)
    assert _nan_rows(spec).any()  # the NaN reaches some row...
    if where != "q":
        assert not _nan_rows(spec).all() or mask == "none"  # ...but not the rows that never attend it
    assert torch.equal(_nan_rows(out), _nan_rows(spec))
    finite = ~_nan_rows(spec)
    torch.testing.assert_close(out.double()[finite], spec[finite], atol=1e-5, rtol=1e-5)


def test_the_spec_gives_nan_only_in_rows_that_attend_a_nan_value_and_zero_for_masked_rows():
    q, k, v = qkv_inputs(b=1, hq=1, nq=8, d=4)
    v[0, 0, 5, 0] = NAN
    q[0, 0, 2, 1] = NAN
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[3] = False  # row 3 attends nothing
    out, lse = qkv.reference.attention(q, k, v, mask=mask, causal=True, return_lse=True)
    nan_rows = _nan_rows(out)[0, 0]
    assert nan_rows.tolist() == [False, False, True, False, False, True, True, True]
    assert torch.isnan(lse)[0, 0].tolist() == [i == 2 for i in range(8)]  # the scores hold NaN only in row 2
    assert (out[0, 0, 3] == 0).all() and lse[0, 0, 3] == float("-inf")


@pytest.mark.parametrize("backend", ["auto", "blockwise", "eager"])
def test_a_nan_query_row_that_may_attend_nothing_still_gives_zero(backend):
    q, k, v = qkv_inputs(b=1, hq=2, nq=256, d=16)
    q[0, 0, 7] = NAN
    mask = torch.ones(256, 256, dtype=torch.bool)
    mask[7] = False
    out = qkv.attention(q, k, v, mask=mask, causal=True, backend=backend)
    assert (out[0, 0, 7] == 0).all()
    assert not torch.isnan(out).any()


def _every_mask_kind() -> list:
    doc = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2]] * 2)
    layout = torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)
    return [
        masks.causal(),
        masks.sliding_window(3),
        masks.local(2),
        masks.padding([5, 8]),
        masks.document(doc),
        masks.block_sparse(layout, 4),
        masks.global_tokens([0, 4]),
        masks.dilated(4, 2),
        masks.from_function(lambda b, h, i, j: (i + j) % 3 != 1),
        masks.sliding_window(3) & masks.padding([6, 7]),
        masks.local(1) | masks.global_tokens([2]),
        ~masks.causal() | masks.local(0),
    ]


@pytest.mark.parametrize("mask", _every_mask_kind(), ids=repr)
def test_the_spec_accepts_every_mask_object_that_attention_accepts(mask):
    q, k, v = qkv_inputs(b=2, hq=2, nq=8, d=8, dtype=torch.float64)
    dense = mask.to_dense(2, 2, 8, 8)
    out = qkv.reference.attention(q, k, v, mask=mask, bias=mods.alibi(2))
    torch.testing.assert_close(out, qkv.reference.attention(q, k, v, mask=dense, bias=mods.alibi(2)))
    torch.testing.assert_close(out, qkv.attention(q, k, v, mask=mask, bias=mods.alibi(2)))
    weights = qkv.reference.attention_weights(q, k, mask=mask)
    torch.testing.assert_close(weights, qkv.attention_weights(q, k, mask=mask))


def _three_by_three(b, h, q_idx, kv_idx):
    return torch.ones(3, 3, dtype=torch.bool)


@pytest.mark.parametrize(
    "run",
    [
        lambda m, q, k, v: m.to_dense(1, 2, 8, 8),
        lambda m, q, k, v: qkv.attention(q, k, v, mask=m, backend="eager"),
        lambda m, q, k, v: qkv.attention(q, k, v, mask=m, backend="sdpa"),
        lambda m, q, k, v: qkv.attention(q, k, v, mask=m, backend="blockwise"),
        lambda m, q, k, v: qkv.attention(q, k, v, mask=m),
        lambda m, q, k, v: qkv.attention_weights(q, k, mask=m),
        lambda m, q, k, v: qkv.attention_weights(q, k, mask=m, rows=[1, 2]),
        lambda m, q, k, v: qkv.reference.attention(q, k, v, mask=m),
    ],
    ids=["to_dense", "eager", "sdpa", "blockwise", "auto", "weights", "weights rows", "reference"],
)
def test_a_mask_function_of_the_wrong_shape_gives_an_attention_error_on_every_path(run):
    q, k, v = qkv_inputs(b=1, hq=2, nq=8, d=8)
    with pytest.raises(qkv.AttentionError, match=r"mask: .*shape \(3, 3\)|mask: .*\(1, 1, 3, 3\)"):
        run(masks.from_function(_three_by_three), q, k, v)


def _float64_pair(make_theirs, make_ours):
    torch.manual_seed(7)
    theirs = make_theirs().double().eval()
    with torch.no_grad():
        for p in theirs.parameters():  # weights that float32 cannot hold
            p.add_(torch.randn_like(p) * 1e-3)
    return theirs, make_ours(theirs).eval()


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_and_decoder_layers_copy_float64_weights_exactly(norm_first):
    kwargs = dict(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True, norm_first=norm_first)
    enc_theirs, enc_ours = _float64_pair(
        lambda: torch.nn.TransformerEncoderLayer(**kwargs), TransformerEncoderLayer.from_torch
    )
    dec_theirs, dec_ours = _float64_pair(
        lambda: torch.nn.TransformerDecoderLayer(**kwargs), TransformerDecoderLayer.from_torch
    )
    for mine, theirs in ((enc_ours, enc_theirs), (dec_ours, dec_theirs)):
        for name, p in theirs.state_dict().items():
            assert p.dtype == torch.float64, name
        assert all(p.dtype == torch.float64 for p in mine.parameters())
    x, memory = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 7, 16, dtype=torch.float64)
    torch.testing.assert_close(enc_ours(x), enc_theirs(x), atol=1e-12, rtol=1e-12)
    tgt_mask = torch.nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64)
    expected = dec_theirs(x, memory, tgt_mask=tgt_mask, tgt_is_causal=True)
    torch.testing.assert_close(dec_ours(x, memory, causal=True), expected, atol=1e-12, rtol=1e-12)


def test_modules_read_a_batch_by_keys_mask_as_key_padding_also_when_batch_equals_queries():
    torch.manual_seed(3)
    theirs = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(theirs).eval()
    x = torch.randn(5, 5, 16)  # B = Nq = Nk = 5
    keep = torch.ones(5, 5, dtype=torch.bool)  # (B, Nk), True = may attend
    for b, length in enumerate([5, 3, 1, 4, 2]):
        keep[b, length:] = False
    expected, _ = theirs(x, x, x, key_padding_mask=~keep)
    torch.testing.assert_close(ours(x, mask=keep), expected, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(ours(x, mask=keep), ours(x, mask=keep[:, None, None, :]))
    layer_theirs = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    layer_ours = TransformerEncoderLayer.from_torch(layer_theirs).eval()
    expected = layer_theirs(x, src_key_padding_mask=~keep)
    torch.testing.assert_close(layer_ours(x, mask=keep), expected, atol=1e-5, rtol=1e-5)


def test_a_two_dimensional_module_mask_that_is_not_batch_by_keys_is_refused():
    mha = MultiHeadAttention(16, 4).eval()
    with pytest.raises(qkv.AttentionError, match=r"mask: .*\(B=2, Nk=6\)"):
        mha(torch.randn(2, 6, 16), mask=torch.ones(6, 6, dtype=torch.bool))


# ---------------------------------------------------------------------------
# a property: any call either matches the spec or raises AttentionError


@st.composite
def _calls(draw):
    b, hkv = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    hq = hkv * draw(st.integers(1, 2))
    nq, nk, d = draw(st.integers(1, 7)), draw(st.integers(1, 7)), draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, nq, d, generator=gen)
    k = torch.randn(b, hkv, nk, draw(st.sampled_from([d, d, d + 1])), generator=gen)
    v = torch.randn(b, hkv, draw(st.sampled_from([nk, nk, nk + 1])), 3, generator=gen)
    mask_kind = draw(st.sampled_from(["none", "dense", "padding", "wrong", "object", "bad rule"]))
    mask = {
        "none": None,
        "dense": torch.rand(b, 1, nq, nk, generator=gen) > 0.3,
        "padding": torch.rand(b, nk, generator=gen) > 0.3,  # wrong for the functional API unless b == 1 ...
        "wrong": torch.ones(nq + 1, nk, dtype=torch.bool),
        "object": draw(st.sampled_from(_every_mask_kind()[:4])),
        "bad rule": masks.from_function(_three_by_three),
    }[mask_kind]
    bias_kind = draw(st.sampled_from(["none", "tensor", "wrong", "alibi", "softcap"]))
    bias = {
        "none": None,
        "tensor": torch.randn(1, hq, nq, nk, generator=gen),
        "wrong": torch.randn(hq + 1, nq, nk, generator=gen),
        "alibi": mods.alibi(hq),
        "softcap": mods.softcap(2.0),
    }[bias_kind]
    nan = draw(st.sampled_from(["none", "q", "k", "v"]))
    if nan != "none":
        t = dict(q=q, k=k, v=v)[nan]
        t[tuple(draw(st.integers(0, n - 1)) for n in t.shape)] = NAN
    return dict(
        q=q,
        k=k,
        v=v,
        mask=mask,
        bias=bias,
        causal=draw(st.booleans()),
        scale=draw(st.sampled_from([None, 0.0, 1.0, -0.5])),
        backend=draw(st.sampled_from(["auto", "eager", "sdpa", "blockwise"])),
    )


@settings(max_examples=150, deadline=None)
@given(_calls())
def test_every_call_matches_the_spec_or_raises_an_attention_error(call):
    backend = call.pop("backend")
    try:
        spec = qkv.reference.attention(**call)
    except qkv.AttentionError:
        with pytest.raises(qkv.AttentionError):
            qkv.attention(**call, backend=backend)
        return
    try:
        out = qkv.attention(**call, backend=backend)
    except qkv.AttentionError as error:  # only a backend that cannot compute this call may refuse
        assert backend != "auto" and "cannot compute this call" in str(error)
        return
    assert torch.equal(torch.isnan(out), torch.isnan(spec))
    finite = ~torch.isnan(spec)
    torch.testing.assert_close(out.double()[finite], spec[finite], atol=2e-5, rtol=1e-4)
