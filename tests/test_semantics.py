"""The semantics users trip over, settled: causal alignment, empty rows, half precision, broadcasting."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv import accuracy
from tests.conftest import ALL_BACKENDS, FAST_BACKENDS, qkv_inputs


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_causal_is_bottom_right_aligned(backend):
    q, k, v = qkv_inputs(b=1, hq=1, nq=2, nk=4, d=8, dv=4)
    v = torch.eye(4)[None, None]  # (1, 1, Nk=4, Dv=4): out row = the weights themselves
    k = k.clone()
    w = qkv.attention(q, k, v, causal=True, backend=backend)[0, 0]
    # q0 sees k0..k2, q1 sees all four keys (the picture in the docstring)
    assert torch.equal(w > 0, torch.tensor([[True, True, True, False], [True, True, True, True]]))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_causal_square_is_lower_triangle(backend):
    q, k, _ = qkv_inputs(b=1, hq=1, nq=5, d=8)
    w = qkv.attention(q, k, torch.eye(5)[None, None], causal=True, backend=backend)[0, 0]
    assert torch.equal(w > 0, torch.ones(5, 5, dtype=torch.bool).tril())


def _empty_row_cases():
    q, k, v = qkv_inputs(b=2, hq=2, nq=6, nk=5, d=8)
    mask = torch.rand(2, 2, 6, 5) > 0.3
    mask[:, :, 2] = False
    mask[1, 0, 4] = False
    empty_mask = ~mask.any(-1)
    causal_empty = torch.zeros(2, 2, 6, dtype=torch.bool)
    causal_empty[:, :, 0] = True  # Nq = 6 > Nk = 5: q0 sees no key
    bias = torch.randn(1, 2, 6, 5)
    bias[:, :, 3] = float("-inf")
    bias_empty = torch.zeros(2, 2, 6, dtype=torch.bool)
    bias_empty[:, :, 3] = True
    return [
        ("mask", (q, k, v), {"mask": mask}, empty_mask),
        ("causal Nq > Nk", (q, k, v), {"causal": True}, causal_empty),
        ("bias -inf", (q, k, v), {"bias": bias}, bias_empty),
    ]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("case", _empty_row_cases(), ids=lambda c: c[0])
def test_rows_with_no_allowed_key_give_zero_output_inf_lse_zero_grad(backend, case):
    _, (q, k, v), kwargs, empty = case
    q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
    grad_out = torch.randn(2, 2, 6, 8)
    out = qkv.attention(q, k, v, backend=backend, **kwargs)
    assert empty.any() and not out.isnan().any()
    assert torch.equal(out[empty], torch.zeros_like(out[empty]))
    assert (out[~empty].abs().sum(-1) > 0).all()
    (dq, dk, dv) = torch.autograd.grad(out, (q, k, v), grad_out)
    for g in (dq, dk, dv):
        assert torch.isfinite(g).all()
    assert torch.equal(dq[empty], torch.zeros_like(dq[empty]))
    if backend != "sdpa":  # sdpa cannot return lse; `auto` routes lse elsewhere
        _, lse = qkv.attention(q, k, v, backend=backend, return_lse=True, **kwargs)
        assert torch.isneginf(lse[empty]).all() and torch.isfinite(lse[~empty]).all()


def test_sdpa_empty_row_guard_zeroes_rows_torch_would_not():
    """Off the CPU the sdpa backend guards empty rows itself; the guard is exact on CPU tensors too."""
    from qkv.backends import sdpa

    q, k, v = qkv_inputs(b=1, hq=2, nq=4, nk=5, d=8)
    mask = torch.rand(1, 2, 4, 5) > 0.3
    mask[0, 1, 2] = False
    guarded, empty = sdpa.guard_empty_rows(mask)
    assert empty is not None and bool(empty[0, 1, 2]) and guarded[0, 1, 2].all()
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=guarded).masked_fill(empty, 0.0)
    torch.testing.assert_close(out, qkv.reference.attention(q, k, v, mask=mask).float())
    bias = torch.zeros(1, 2, 4, 5).masked_fill(~mask, float("-inf"))
    _, empty_from_bias = sdpa.guard_empty_rows(bias)
    assert torch.equal(empty_from_bias, empty)
    assert sdpa.guard_empty_rows(torch.ones(4, 5, dtype=torch.bool))[1] is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_half_precision_with_large_logits_does_not_overflow(dtype, backend):
    # |q·k| reaches ~1e6 here, far beyond float16's largest value 65504.
    q, k, v = qkv_inputs(b=1, hq=2, nq=32, d=64, dtype=torch.float32)
    q, k, v = (300 * q).to(dtype), (300 * k).to(dtype), v.to(dtype)
    assert torch.isinf(q @ k.transpose(-2, -1)).any() or dtype == torch.bfloat16
    out, golden = qkv.attention(q, k, v, backend=backend), qkv.reference.attention(q, k, v)
    assert torch.isfinite(out).all()
    # the only error left is rounding the output to the dtype
    assert accuracy.max_error(out, golden) <= 2 * torch.finfo(dtype).eps * golden.abs().max()
    w = qkv.attention_weights(q, k)
    assert torch.isfinite(w).all() and torch.allclose(w.sum(-1), torch.ones(()))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_grouped_query_heads_read_kv_head_h_div_group(backend):
    q, k, v = qkv_inputs(b=2, hq=6, hkv=2, nq=7, d=8)
    expanded = qkv.attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), backend=backend)
    torch.testing.assert_close(qkv.attention(q, k, v, backend=backend), expanded)


@pytest.mark.parametrize("causal", [False, True])
def test_one_query_per_grouped_head_equals_the_spec_with_gradients(causal):
    """A decoding step (Nq = 1) with grouped heads: sdpa runs the group's heads as query rows."""
    q, k, v = qkv_inputs(b=2, hq=6, hkv=2, nq=1, nk=9, d=8, dtype=torch.float64, requires_grad=True)
    out = qkv.attention(q, k, v, causal=causal, backend="sdpa")
    golden = qkv.reference.attention(q, k, v, causal=causal)
    assert accuracy.max_error(out, golden) < 1e-12
    grad_out = torch.randn_like(out)
    for g, gold in zip(torch.autograd.grad(out, (q, k, v), grad_out), torch.autograd.grad(golden, (q, k, v), grad_out)):
        assert accuracy.max_error(g, gold) < 1e-12


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_scale_one_is_unscaled_attention(backend):
    q, k, v = qkv_inputs(b=1, hq=2, nq=5, d=4)
    expected = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
    torch.testing.assert_close(qkv.attention(q, k, v, scale=1.0, backend=backend), expected)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_padding_mask_broadcasts_over_heads_and_queries(backend):
    q, k, v = qkv_inputs(b=2, hq=3, nq=4, nk=6, d=8)
    keep = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)  # (B, Nk)
    out = qkv.attention(q, k, v, mask=keep[:, None, None, :], backend=backend)
    torch.testing.assert_close(out[0], qkv.attention(q[:1], k[:1, :, :4], v[:1, :, :4], backend=backend)[0])
    torch.testing.assert_close(out[1], qkv.attention(q[1:], k[1:], v[1:], backend=backend)[0])


@pytest.mark.parametrize("backend", ("eager", "sdpa", "reference"))
def test_dropout_zeroes_weights_and_rescales_the_rest(backend):
    # With v = I, each output row is the (dropped, rescaled) weight row itself.
    n, p = 64, 0.25
    q, k, _ = qkv_inputs(b=1, hq=4, nq=n, d=8)
    v = torch.eye(n)[None, None].expand(1, 4, n, n)
    out = qkv.attention(q, k, v, dropout_p=p, backend=backend).float()
    w = qkv.attention_weights(q, k)
    kept = out != 0
    torch.testing.assert_close(out[kept], (w / (1 - p))[kept])
    assert abs((~kept).float().mean().item() - p) < 0.03


def test_empty_query_and_batch_axes_give_empty_outputs():
    q, k, v = qkv_inputs(b=1, hq=2, nq=0, nk=3, d=8)
    for backend in ALL_BACKENDS:
        out, lse = (
            qkv.attention(q, k, v, backend=backend, return_lse=True)
            if backend != "sdpa"
            else (qkv.attention(q, k, v, backend=backend), torch.empty(1, 2, 0))
        )
        assert out.shape == (1, 2, 0, 8) and lse.shape == (1, 2, 0)


def test_attention_weights_match_reference_and_rows_select_the_same_rows():
    q, k, _ = qkv_inputs(b=2, hq=4, hkv=2, nq=11, nk=13, d=16)
    mask = torch.rand(2, 1, 11, 13) > 0.2
    mask[0, 0, 5] = False
    bias = torch.randn(1, 4, 11, 13)
    full = qkv.attention_weights(q, k, mask=mask, bias=bias, causal=True)
    golden = qkv.reference.attention_weights(q, k, mask=mask, bias=bias, causal=True)
    assert full.dtype == torch.float32 and full.shape == (2, 4, 11, 13)
    assert accuracy.max_error(full, golden) < 1e-6
    assert torch.equal(full[0, :, 5], torch.zeros(4, 13))
    rows = torch.tensor([10, 0, 5, 7])
    picked = qkv.attention_weights(q, k, mask=mask, bias=bias, causal=True, rows=rows)
    torch.testing.assert_close(picked, full[:, :, rows])
    # the same rows, computed on their own: equal up to rounding (BLAS sums a 2-row product in another order)
    by_rows, full_rows = qkv.attention_weights(q, k, rows=[3, 4]), qkv.attention_weights(q, k)[:, :, 3:5]
    torch.testing.assert_close(by_rows, full_rows, rtol=2e-6, atol=1e-7)


def test_weights_are_what_attention_applies_to_v():
    q, k, v = qkv_inputs(b=1, hq=2, nq=7, nk=9, d=8)
    mask = torch.rand(7, 9) > 0.3
    w = qkv.attention_weights(q, k, mask=mask, causal=True)
    torch.testing.assert_close(w @ v, qkv.attention(q, k, v, mask=mask, causal=True))


def _lse_by_hand(q, k, *, mask=None, bias=None, causal=False, scale=None):
    """The log-sum-exp over the allowed keys of the scaled, biased scores, in float64 with torch.logsumexp:
    written apart from qkv (no qkv.reference), bottom-right causal, grouped heads repeated."""
    nq, nk, group = q.shape[-2], k.shape[-2], q.shape[1] // k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    keys = k.double().repeat_interleave(group, 1)  # (B, Hkv, Nk, D) -> (B, Hq, Nk, D)
    scores = q.double() @ keys.transpose(-2, -1) * scale  # (B, Hq, Nq, D) @ (B, Hq, D, Nk) -> (B, Hq, Nq, Nk)
    if bias is not None:
        scores = scores + bias.double()
    allowed = torch.ones(scores.shape, dtype=torch.bool)
    if mask is not None:
        allowed = allowed & mask
    if causal:
        allowed = allowed & (torch.arange(nk)[None, :] <= torch.arange(nq)[:, None] + (nk - nq))  # (Nq, Nk)
    return torch.logsumexp(scores.masked_fill(~allowed, float("-inf")), dim=-1)  # (B, Hq, Nq); no key: -inf


LSE_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def test_outputs_keep_input_dtype_and_lse_accumulates():
    for dtype, lse_dtype in [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ]:
        q, k, v = qkv_inputs(b=1, hq=1, nq=3, d=4, dtype=dtype)
        expected = _lse_by_hand(q, k)
        for backend in ("reference", "eager", "blockwise", "auto"):
            out, lse = qkv.attention(q, k, v, return_lse=True, backend=backend)
            assert (out.dtype, lse.dtype) == (dtype, lse_dtype)
            assert accuracy.max_error(lse, expected) < LSE_TOLERANCE[dtype], (backend, dtype)
        assert qkv.reference.attention(q, k, v).dtype == torch.float64


def _lse_cases():
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(2, 6, 40, 70, generator=g) > 0.3  # (B, Hq, Nq, Nk)
    mask[:, :, 7] = False  # rows with no key
    bias = 3 * torch.randn(1, 6, 40, 70, generator=g)
    bias[:, :, 11, ::2] = float("-inf")
    return {
        "plain": {},
        "scale 1": {"scale": 1.0},
        "causal, Nq < Nk": {"causal": True},
        "mask with empty rows": {"mask": mask},
        "bias with -inf": {"bias": bias},
        "everything": {"mask": mask, "bias": bias, "causal": True, "scale": 0.3},
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", ("reference", "eager", "blockwise", "auto"))
@pytest.mark.parametrize("case", list(_lse_cases()))
def test_lse_is_the_log_sum_exp_of_the_allowed_scaled_biased_scores(case, backend, dtype):
    """The lse each backend returns, against one computed by hand in float64 with torch.logsumexp."""
    kwargs = _lse_cases()[case]
    q, k, v = qkv_inputs(b=2, hq=6, hkv=2, nq=40, nk=70, d=16, dv=8, dtype=dtype)
    kwargs = {n: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for n, t in kwargs.items()}
    expected = _lse_by_hand(q, k, **kwargs)
    _, lse = qkv.attention(q, k, v, return_lse=True, backend=backend, **kwargs)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(expected))
    assert torch.isfinite(expected).any()
    finite = torch.isfinite(expected)
    allowed = LSE_TOLERANCE[dtype] * max(1.0, expected[finite].abs().max().item())
    assert accuracy.max_error(lse[finite], expected[finite]) < allowed, backend


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_contiguous_inputs(backend):
    x = torch.randn(2, 7, 3, 8)  # (B, N, H, D), as a module's projection leaves it
    q = x.transpose(1, 2)  # (B, N, H, D) -> (B, H, N, D), a non-contiguous view
    expected = qkv.attention(q.contiguous(), q.contiguous(), q.contiguous(), backend=backend)
    torch.testing.assert_close(qkv.attention(q, q, q, backend=backend), expected)
