"""`qkv.hf.weights`: the probabilities ``output_attentions=True`` returns, against the float64 spec.

`attention_with_probabilities` (every probability kept: the scores once give them and the output)
and `probabilities` (the rows and heads asked, from `qkv.attention`'s log-sum-exp) on fresh random
inputs with grouped heads, a structured mask, a float bias and fully masked rows; errors within
a few times what same-dtype eager errs.
"""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv import masks, mods
from qkv.hf.weights import attention_with_probabilities, probabilities

B, HQ, HKV, N, D = 2, 6, 2, 70, 16


def _inputs(seed: int, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, HQ, N, D, generator=g, dtype=torch.float64) * 1.5
    k = torch.randn(B, HKV, N, D, generator=g, dtype=torch.float64) * 1.5
    v = torch.randn(B, HKV, N, D, generator=g, dtype=torch.float64)
    bias = torch.randn(B, 1, N, N, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype), bias.to(dtype)


def _double(bias):
    return bias.double() if isinstance(bias, torch.Tensor) else bias


def _spec(q, k, v, **options):
    """The float64 reference's output and weights (K/V repeated per query head)."""
    k64, v64 = (t.double().repeat_interleave(HQ // HKV, dim=1) for t in (k, v))
    out = qkv.reference.attention(q.double(), k64, v64, **{**options, "bias": _double(options.get("bias"))})
    options = {**options, "bias": _double(options.get("bias"))}
    weights = qkv.reference.attention_weights(q.double(), k64, **options)
    return out, weights


CASES = {
    "causal": dict(mask=None, causal=True),
    "window and padding": dict(mask=masks.sliding_window(9) & masks.padding(torch.tensor([N, 30])), causal=False),
    "bias": dict(mask=None, causal=True, bias="tensor"),
    "softcap": dict(mask=masks.sliding_window(20), causal=False, bias=mods.softcap(5.0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_pass_output_and_weights_match_the_float64_spec(case: str) -> None:
    spec = dict(CASES[case])
    q, k, v, bias_tensor = _inputs(1)
    bias = bias_tensor if spec.get("bias") == "tensor" else spec.get("bias")
    options = dict(mask=spec["mask"], causal=spec["causal"], bias=bias)
    out, p, lse = attention_with_probabilities(q, k, v, scale=None, **options)
    want_out, want_p = _spec(q, k, v, **{**options, "bias": None if bias is None else bias})
    assert out.dtype == torch.float32 and p.dtype == torch.float32 and tuple(p.shape) == (B, HQ, N, N)
    # float32 budget: a few times what a float32 run errs (qkv.attention_weights, eager attention)
    k_rep, v_rep = (t.repeat_interleave(HQ // HKV, dim=1) for t in (k, v))
    eager_p = qkv.attention_weights(q, k_rep, **options)
    budget = 4 * float((eager_p.double() - want_p).abs().max()) + 1e-7
    assert float((p.double() - want_p).abs().max()) <= budget
    assert (
        float((out.double() - want_out).abs().max())
        <= 4 * float((qkv.attention(q, k_rep, v_rep, backend="eager", **options).double() - want_out).abs().max())
        + 1e-7
    )
    _, ref_lse = qkv.attention(q, k_rep, v_rep, return_lse=True, **options)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(finite, torch.isfinite(lse))
    torch.testing.assert_close(lse[finite], ref_lse[finite], rtol=1e-5, atol=1e-5)
    # the rows and heads asked, from the same log-sum-exp, are the same numbers
    picked = probabilities(q, k, lse, scale=None, heads=torch.tensor([4]), rows=torch.tensor([0, 33]), **options)
    torch.testing.assert_close(picked, p[:, [4]][:, :, [0, 33]], rtol=1e-5, atol=1e-6)


def test_a_fully_masked_row_gives_zeros_and_a_nan_stays_a_nan() -> None:
    q, k, v, _ = _inputs(2)
    lengths = masks.padding(torch.tensor([N, 0]))  # the second sequence has no key at all
    out, p, lse = attention_with_probabilities(q, k, v, mask=lengths, bias=None, causal=False, scale=None)
    assert not bool(out[1].any()) and not bool(p[1].any()) and bool(torch.isneginf(lse[1]).all())
    assert bool(torch.isfinite(out[0]).all())
    q[0, 3, 5, 0] = float("nan")
    out, p, _ = attention_with_probabilities(q, k, v, mask=None, bias=None, causal=True, scale=None)
    assert bool(out[0, 3, 5].isnan().all()) and bool(p[0, 3, 5].isnan().all())
    assert bool(torch.isfinite(out[0, 3, :5]).all())  # only that row


def test_gradients_flow_through_the_one_pass_as_through_qkv_attention() -> None:
    q, k, v, _ = _inputs(3, torch.float64)
    for t in (q, k, v):
        t.requires_grad_(True)
    out, p, _ = attention_with_probabilities(q, k, v, mask=masks.sliding_window(5), bias=None, causal=False, scale=0.3)
    (out.square().sum() + p[:, :, :, :4].sum()).backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    k_rep, v_rep = (t.repeat_interleave(HQ // HKV, dim=1) for t in (k, v))
    ref_out = qkv.reference.attention(q, k_rep, v_rep, mask=masks.sliding_window(5), scale=0.3)
    ref_p = qkv.reference.attention_weights(q, k_rep, mask=masks.sliding_window(5), scale=0.3)
    (ref_out.square().sum() + ref_p[:, :, :, :4].sum()).backward()
    for mine, ref in zip(grads, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(mine, ref, rtol=1e-9, atol=1e-10)
