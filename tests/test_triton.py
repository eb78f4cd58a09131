"""The triton backend's kernels against the float64 spec: outputs, lse and gradients within the error budget.

Without a GPU they run in triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``,
set before the kernels are defined), on small shapes: the interpreter is slow. On a GPU
the same tests run on the compiled kernels with CUDA tensors, and those marked for a GPU
add bfloat16 and larger shapes (the interpreter lacks bfloat16). The whole file skips
where triton is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest
import torch

import qkv
from qkv import accuracy, masks, mods
from qkv.backends import triton as tb
from qkv.backends.common.interface import Call
from tests.conftest import qkv_inputs

HAVE_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed (pip install 'qkv[gpu]')")

if HAVE_TRITON and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are defined (conftest sets it too)

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def kernel_device():
    """Where the kernels run: on CPU tensors under the interpreter; on a GPU every tensor a test makes is a
    CUDA tensor (torch's default device for the test), so the same checks run on the compiled kernels."""
    if tb.interpreting():
        yield "cpu"
    elif torch.cuda.is_available():
        torch.set_default_device("cuda")
        try:
            yield "cuda"
        finally:
            torch.set_default_device("cpu")
    else:
        pytest.skip("the triton kernels were defined without TRITON_INTERPRET=1: they need a GPU")


def run(q, k, v, *, mask=None, bias=None, causal=False, return_lse=True):
    """The triton backend as `qkv.attention` runs it: by name where it is registered, else called as qkv would."""
    from qkv.backends import BACKENDS

    if "triton" in BACKENDS:
        return qkv.attention(q, k, v, mask=mask, bias=bias, causal=causal, return_lse=return_lse, backend="triton")
    b, hq, nq, nk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    if isinstance(bias, mods.ScoreMod):
        bias = bias.additive_bias(b, hq, nq, nk, device=q.device, dtype=q.dtype)
    scale = q.shape[-1] ** -0.5  # a backend gets the scale resolved, as qkv.attention passes it
    out, lse = tb.attention(q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=True)
    return (out, lse) if return_lse else out


def check(q, k, v, *, mask=None, bias=None, causal=False, lse_in_loss=False):
    """Output, lse and gradients (q, k, v and a tensor bias) against the float64 spec, within the error budget
    (a few times what plain attention in the same dtype errs, STYLE.md)."""
    b, hq, nq, nk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    dense_mask = mask.to_dense(b, hq, nq, nk, device=q.device) if isinstance(mask, masks.Mask) else mask
    of_score = isinstance(bias, mods.ScoreMod) and not bias.additive  # soft-capping: compared as a modifier
    dense_bias = bias
    if isinstance(bias, mods.ScoreMod):
        dense_bias = bias.additive_bias(b, hq, nq, nk, device=q.device, dtype=torch.float64)
    if of_score:
        dense_bias = bias
    bias_grad = isinstance(bias, torch.Tensor) and bias.requires_grad
    leaves = [q, k, v] + ([bias] if bias_grad else [])
    golden_ins = [t.detach().double().requires_grad_() for t in leaves]
    plain_ins = [t.detach().clone().requires_grad_() for t in leaves]
    if of_score:
        gold_bias = plain_bias = bias
    else:
        gold_bias = golden_ins[3] if bias_grad else (None if dense_bias is None else dense_bias.double())
        plain_bias = plain_ins[3] if bias_grad else (None if dense_bias is None else dense_bias.to(q.dtype))
    golden, golden_lse = qkv.reference.attention(
        *golden_ins[:3], mask=dense_mask, bias=gold_bias, causal=causal, return_lse=True
    )
    if of_score:  # the same-dtype baseline that takes a modifier: eager
        plain, plain_lse = qkv.attention(
            *plain_ins[:3], mask=dense_mask, bias=plain_bias, causal=causal, return_lse=True, backend="eager"
        )
    else:
        plain, plain_lse = accuracy.plain_attention(
            *plain_ins[:3], mask=dense_mask, bias=plain_bias, causal=causal, return_lse=True
        )
    out, lse = run(q, k, v, mask=mask, bias=bias, causal=causal)
    assert out.dtype == q.dtype and out.shape == golden.shape and lse.dtype == torch.float32
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert accuracy.max_error(out, golden) <= accuracy.budget(accuracy.max_error(plain, golden), q.dtype)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(golden_lse))
    finite = ~torch.isneginf(golden_lse)
    if finite.any():
        lse_budget = accuracy.budget(accuracy.max_error(plain_lse[finite], golden_lse[finite]), q.dtype)
        assert accuracy.max_error(lse[finite], golden_lse[finite]) <= lse_budget
    grad_out = torch.randn_like(golden)
    grad_lse = torch.randn_like(golden_lse) if lse_in_loss else None

    def loss(o, lse_):
        total = (o * grad_out.to(o.dtype)).sum()
        if grad_lse is not None:  # rows with no key have lse -inf: they take no part
            total = total + torch.where(torch.isneginf(lse_), 0.0, lse_ * grad_lse.to(lse_.dtype)).sum()
        return total

    golden_grads = torch.autograd.grad(loss(golden, golden_lse), golden_ins)
    plain_grads = torch.autograd.grad(loss(plain, plain_lse), plain_ins)
    grads = torch.autograd.grad(loss(out, lse), leaves)
    for name, g, p, gold in zip(["q", "k", "v", "bias"], grads, plain_grads, golden_grads):
        assert g.shape == gold.shape and g.dtype == q.dtype, name
        magnitude = max(1.0, gold.abs().max().item())
        allowed = accuracy.budget(accuracy.max_error(p, gold), q.dtype) + accuracy.ABS_FLOOR[q.dtype] * magnitude
        assert accuracy.max_error(g, gold) <= allowed, name
    return out, lse


def three_documents() -> masks.Mask:
    return masks.document(torch.tensor([0] * 40 + [1] * 9 + [2] * 47))  # three documents in 96 positions


def block_layout() -> masks.Mask:
    return masks.block_sparse(torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=torch.bool), 32)


# (mask, causal, Nq, Nk): ragged lengths (not multiples of the 32-wide tiles) and Nq != Nk where the mask allows;
# masks holding tensors are made in the test, on its device
MASKS = {
    "none": (None, False, 70, 90),
    "causal, Nq < Nk (a cache)": (None, True, 40, 90),
    "causal, Nq > Nk": (None, True, 90, 40),
    "sliding window": (masks.sliding_window(24), False, 70, 90),
    "local band": (masks.local(10), False, 70, 70),
    "dilated (stored tiles)": (masks.dilated(5, dilation=3), False, 70, 70),
    "document and causal": (three_documents, True, 96, 96),
    "block sparse": (block_layout, False, 96, 96),
    "padding": (lambda: masks.padding([20, 75]), False, 50, 75),
    "from_function": (masks.from_function(lambda b, h, i, j: (i * 7 + j * 3 + h) % 5 != 0), False, 70, 90),
}


@pytest.mark.parametrize("name", MASKS)
def test_every_mask_kind_matches_the_spec(kernel_device, name):
    mask, causal, nq, nk = MASKS[name]
    mask = mask() if callable(mask) and not isinstance(mask, masks.Mask) else mask
    q, k, v = qkv_inputs(2, 2, 1, nq, nk, 16, requires_grad=True)  # grouped-query: two query heads per key head
    check(q, k, v, mask=mask, causal=causal)


def test_a_dense_bool_mask_with_empty_rows(kernel_device):
    q, k, v = qkv_inputs(1, 2, 2, 45, 60, 16, requires_grad=True)
    mask = torch.rand(1, 2, 45, 60) > 0.4
    mask[0, 0, 5] = False
    mask[0, 1, 40:] = False  # a whole ragged block of rows with no key
    out, lse = check(q, k, v, mask=mask, lse_in_loss=True)
    assert torch.isneginf(lse[0, 1, 40:]).all() and (out[0, 1, 40:] == 0).all()


def test_rows_with_no_key_give_zeros_lse_minus_inf_and_no_gradient(kernel_device):
    mask = masks.from_function(lambda b, h, i, j: (i >= 40) & (j <= i))  # the first 40 queries see no key
    q, k, v = qkv_inputs(1, 1, 1, 64, 64, 16, requires_grad=True)
    out, lse = run(q, k, v, mask=mask)
    assert (out[:, :, :40] == 0).all() and torch.isneginf(lse[:, :, :40]).all()
    (dq,) = torch.autograd.grad(out.sum(), (q,))
    assert (dq[:, :, :40] == 0).all() and not torch.isnan(dq).any()


def test_the_lse_is_differentiable(kernel_device):
    q, k, v = qkv_inputs(1, 2, 2, 50, 50, 16, requires_grad=True)
    check(q, k, v, causal=True, lse_in_loss=True)


def test_half_precision_grouped_heads(kernel_device):
    q, k, v = qkv_inputs(1, 4, 1, 64, 80, 32, dtype=torch.float16, requires_grad=True)
    check(q, k, v, causal=True)


def test_head_dims_padded_inside_values_of_another_width_and_strided_inputs(kernel_device):
    """D = 40 and Dv = 24 (padded to 64 and 32 inside); q, k, v as transposed (B, N, H, D) views."""
    q = torch.randn(1, 70, 2, 40).transpose(1, 2).requires_grad_()  # (B, N, H, D) -> (B, H, N, D), strided
    k = torch.randn(1, 90, 2, 40).transpose(1, 2).requires_grad_()
    v = torch.randn(1, 90, 2, 24).transpose(1, 2).requires_grad_()
    assert not q.is_contiguous()
    check(q, k, v, mask=masks.sliding_window(30))


def test_a_bias_tensor_and_its_gradient(kernel_device):
    q, k, v = qkv_inputs(1, 2, 2, 40, 50, 16, requires_grad=True)
    bias = torch.randn(1, 2, 40, 50).requires_grad_()
    check(q, k, v, bias=bias, causal=True)


def test_a_broadcast_bias_gets_its_gradient_summed(kernel_device):
    q, k, v = qkv_inputs(2, 2, 2, 33, 33, 16, requires_grad=True)
    bias = torch.randn(1, 1, 33, 33).requires_grad_()  # one bias for every sequence and head
    check(q, k, v, bias=bias)


def test_alibi_runs_in_the_kernel(kernel_device, monkeypatch):
    from qkv.backends.triton import score_mods

    monkeypatch.setattr(score_mods, "dense_bias", _no_dense_bias)
    q, k, v = qkv_inputs(1, 4, 2, 40, 70, 16, requires_grad=True)  # Nq < Nk: ALiBi's j - i' is bottom-right aligned
    check(q, k, v, bias=mods.alibi(4), mask=masks.sliding_window(20))


def test_softcapping_runs_in_the_kernel_forward_and_backward(kernel_device, monkeypatch):
    from qkv.backends.triton import score_mods

    monkeypatch.setattr(score_mods, "dense_bias", _no_dense_bias)
    q, k, v = qkv_inputs(1, 2, 1, 50, 60, 16, requires_grad=True)
    q = (q.detach() * 3).requires_grad_()  # scores past the cap: the tanh bends
    check(q, k, v, bias=mods.softcap(2.0), causal=True)


def test_other_additive_mods_arrive_as_dense_biases(kernel_device):
    table = torch.randn(8, 2)
    q, k, v = qkv_inputs(1, 2, 2, 40, 40, 16, requires_grad=True)
    check(q, k, v, bias=mods.relative_position_bias(table, num_buckets=8, max_distance=16))


def _no_dense_bias(*args, **kwargs):
    raise AssertionError("this modifier should run in the kernel, not as a dense bias")


def test_only_caps_and_alibi_are_read_as_kernel_mods():
    from qkv.backends.triton.score_mods import KernelMod, kernel_mod

    assert kernel_mod(mods.softcap(30.0), heads=2) == KernelMod(softcap=30.0)
    assert torch.equal(kernel_mod(mods.alibi(4), heads=4).slopes, mods.alibi(4).slopes)
    assert kernel_mod(mods.alibi(4), heads=8) is None
    assert kernel_mod(mods.temperature(2.0), heads=2) is None

    class NotACap(mods.ScoreMod):  # a parameter named cap, another rule
        cap = 3.0

        def __call__(self, score, b, h, q_idx, kv_idx, num_queries, num_keys):
            return score.clamp(-self.cap, self.cap)

    assert kernel_mod(NotACap(), heads=2) is None


def test_a_nan_stays_nan(kernel_device):
    q, k, v = qkv_inputs(1, 1, 1, 40, 40, 16)
    q[0, 0, 7, 3] = float("nan")
    out, _ = run(q, k, v, causal=True)
    assert torch.isnan(out[0, 0, 7]).all()


def test_a_nan_in_the_values_reaches_only_the_rows_that_attend_it(kernel_device):
    q, k, v = qkv_inputs(1, 1, 1, 64, 64, 16)
    v[0, 0, 40, 2] = float("nan")  # key 40 sits inside a partial tile of the causal mask
    out, _ = run(q, k, v, causal=True)
    assert not torch.isnan(out[0, 0, :40]).any() and torch.isnan(out[0, 0, 40:, 2]).all()


def test_small_head_dims_and_one_query_decoding(kernel_device):
    q, k, v = qkv_inputs(1, 2, 1, 1, 70, 8, requires_grad=True)  # D = 8, padded to 16 inside; one new query
    check(q, k, v, causal=True)


def test_bfloat16_is_refused_in_the_interpreter(kernel_device):
    if kernel_device == "cuda":
        pytest.skip("on a GPU bfloat16 runs")
    q, k, v = qkv_inputs(1, 1, 1, 8, 8, 16, dtype=torch.bfloat16)
    assert "GPU only" in tb.refuse(Call(q, k, v))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"dtype": torch.float64}, "not torch.float64"),
        ({"d": 320}, "head dimensions up to 256"),
        ({"dropout_p": 0.1}, "dropout"),
        ({"bias": mods.temperature(2.0)}, "neither soft-capping nor additive"),
    ],
)
def test_calls_it_cannot_compute_exactly_are_refused_with_the_reason(change, reason):
    dtype, d = change.get("dtype", torch.float32), change.get("d", 16)
    q, k, v = qkv_inputs(1, 1, 1, 8, 8, d, dtype=dtype)
    request = Call(q, k, v, bias=change.get("bias"), dropout_p=change.get("dropout_p", 0.0))
    assert reason in tb.refuse(request)


def test_cpu_tensors_are_refused_without_the_interpreter(monkeypatch):
    monkeypatch.setattr(sys.modules["qkv.backends.triton.kernels"], "INTERPRETED", False)
    q, k, v = qkv_inputs(1, 1, 1, 8, 8, 16)
    assert "TRITON_INTERPRET=1" in tb.refuse(Call(q, k, v))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        tb.attention(q, k, v)


def test_auto_never_picks_it_on_the_cpu():
    q, k, v = qkv_inputs(1, 1, 1, 8, 8, 16)
    cost, reason = tb.estimate(Call(q, k, v, mask=masks.sliding_window(4)))
    assert cost == float("inf") and "CUDA" in reason
    for options in ({}, {"mask": masks.sliding_window(4)}, {"causal": True}):
        assert qkv.explain_dispatch(q, k, v, return_lse=True, **options).backend != "triton"


def test_on_a_gpu_its_estimate_is_finite_for_banded_masks_only(monkeypatch):
    """The rule for CUDA tensors, on the CPU: the device check faked, the plan built as on a GPU."""
    monkeypatch.setattr(tb, "_on_gpu", lambda t: True)
    monkeypatch.setattr(tb, "refuse", lambda call: None)
    monkeypatch.setattr(tb, "interpreting", lambda: False)  # the GPU's tile sizes
    q, k, v = qkv_inputs(1, 2, 2, 4096, 4096, 64)
    cost, reason = tb.estimate(Call(q, k, v, mask=masks.sliding_window(256)))
    assert cost < 0.3 and "keeps" in reason  # 2.0 per kept tile: about 5 of the 64 key tiles per row
    assert tb.estimate(Call(q, k, v, mask=masks.causal()))[0] == pytest.approx(tb.TILE_COST * 65 / 128, rel=0.01)
    documents = masks.document(torch.arange(4096) // 500)
    for call in (Call(q, k, v), Call(q, k, v, causal=True), Call(q, k, v, mask=documents)):
        cost, reason = tb.estimate(call)
        assert cost == float("inf") and "banded masks" in reason


@needs_gpu
def test_on_a_gpu_auto_picks_it_for_banded_masks_only():
    q, k, v = (t.cuda() for t in qkv_inputs(1, 4, 4, 4096, 4096, 64, dtype=torch.bfloat16))
    assert qkv.explain_dispatch(q, k, v, mask=masks.sliding_window(256)).backend == "triton"
    documents = masks.document((torch.arange(4096) // 500).cuda())
    for options in ({}, {"causal": True}, {"mask": documents}):
        assert qkv.explain_dispatch(q, k, v, **options).backend != "triton", options


def test_a_named_call_that_it_refuses_says_why(kernel_device):
    q, k, v = qkv_inputs(1, 1, 1, 8, 8, 16, dtype=torch.float64)
    with pytest.raises(qkv.AttentionError, match="'triton' cannot compute this call exactly: .*float64"):
        qkv.attention(q, k, v, backend="triton")


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_on_a_gpu_every_dtype_and_larger_shapes(dtype):
    q, k, v = (t.cuda() for t in qkv_inputs(2, 8, 2, 1000, 1000, 64, dtype=dtype))
    for t in (q, k, v):
        t.requires_grad_()
    documents = masks.document((torch.arange(1000) // 300).cuda())
    for mask, causal in [(None, True), (masks.sliding_window(256), False), (documents, True)]:
        check(q, k, v, mask=mask, causal=causal)


@needs_gpu
@pytest.mark.parametrize("head_dim", [128, 256])
def test_on_a_gpu_large_head_dims(head_dim):
    q, k, v = (t.cuda().requires_grad_() for t in qkv_inputs(1, 2, 2, 300, 300, head_dim, dtype=torch.float16))
    check(q, k, v, causal=True)


@needs_gpu
def test_the_gpu_page_example_runs():
    text = (Path(__file__).resolve().parents[1] / "docs" / "gpu.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    exec(compile(block, "docs/gpu.md", "exec"), {})  # noqa: S102
