"""The blockwise backend's CPU kernel against the float64 spec, and its fallback."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qkv
from qkv import accuracy, masks
from qkv.backends.blockwise import cpu_kernel, kernel
from qkv.backends.blockwise import plan as bplan
from tests.conftest import qkv_inputs

needs_kernel = pytest.mark.skipif(
    not cpu_kernel.available() and os.environ.get("QKV_REQUIRE_KERNEL") != "1",
    reason=f"no C++ toolchain here: {cpu_kernel.status()}",
)


def test_the_kernel_is_built_where_it_is_required():
    """CI sets QKV_REQUIRE_KERNEL=1: there a failed build fails the suite instead of falling back quietly."""
    if os.environ.get("QKV_REQUIRE_KERNEL") != "1":
        pytest.skip("QKV_REQUIRE_KERNEL is not set")
    assert cpu_kernel.available(), cpu_kernel.status()
    assert "in use" in cpu_kernel.status()


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the kernel's forward and backward calls."""
    calls = {"forward": 0, "backward": 0}
    for name in calls:
        original = getattr(cpu_kernel, name)

        def counting(*args, _name=name, _original=original):
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(cpu_kernel, name, counting)
    return calls


def _check(q, k, v, *, mask=None, bias=None, causal=False, lse_in_loss=False):
    """Blockwise output, lse and gradients against the float64 reference, within the error budget
    (a few times what plain attention in the same dtype errs)."""
    b, hq, nq, nk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    dense_mask = mask.to_dense(b, hq, nq, nk) if isinstance(mask, masks.Mask) else mask
    golden_ins = [t.detach().double().requires_grad_() for t in (q, k, v)]
    plain_ins = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    golden, golden_lse = qkv.reference.attention(
        *golden_ins, mask=dense_mask, bias=bias, causal=causal, return_lse=True
    )
    plain_bias = None if bias is None else bias.to(q.dtype)
    plain, plain_lse = accuracy.plain_attention(
        *plain_ins, mask=dense_mask, bias=plain_bias, causal=causal, return_lse=True
    )
    out, lse = qkv.attention(q, k, v, mask=mask, bias=bias, causal=causal, return_lse=True, backend="blockwise")
    assert out.dtype == q.dtype and not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert accuracy.max_error(out, golden) <= accuracy.budget(accuracy.max_error(plain, golden), q.dtype)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(golden_lse))
    finite = ~torch.isneginf(golden_lse)
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
    grads = torch.autograd.grad(loss(out, lse), (q, k, v))
    for g, p, gold in zip(grads, plain_grads, golden_grads):
        magnitude = max(1.0, gold.abs().max().item())
        allowed = accuracy.budget(accuracy.max_error(p, gold), q.dtype) + accuracy.ABS_FLOOR[q.dtype] * magnitude
        assert accuracy.max_error(g, gold) <= allowed


@needs_kernel
def test_a_sliding_window_runs_in_the_kernel_forward_and_backward(kernel_calls):
    q, k, v = qkv_inputs(1, 4, 2, 700, 700, 32, dtype=torch.float32, requires_grad=True)
    _check(q, k, v, mask=masks.sliding_window(150))
    assert kernel_calls == {"forward": 1, "backward": 1}


@needs_kernel
def test_kernel_blocks_compute_only_the_keys_their_rows_may_attend():
    mask = masks.sliding_window(256)
    n = 2048
    q, k, _ = qkv_inputs(1, 8, 8, n, n, 16)
    plan = bplan._plan(mask, False, (1, 8, n, n), torch.device("cpu"))
    spec = bplan._Spec(mask, None, False, 0.25, n, n, torch.float32)
    (kb,) = kernel._kernel_chunks(spec, plan, 1, 8, torch.float32)
    q0, rows = kb.blocks[:, 0], kb.blocks[:, 1]
    assert torch.equal(torch.sort(q0).values, torch.arange(0, n, kernel.KERNEL_ROWS))
    assert (rows == kernel.KERNEL_ROWS).all()
    assert len(kb.tiles) <= 8  # the band's tiles repeat: built once per offset, shared
    first, end = cpu_kernel.key_ranges(q, k, kb.blocks, kb.segments, kb.tiles).unbind(1)
    steady = q0 >= 256
    # 32 rows of a band of 256 need 256 + 31 keys, widened to a multiple of 16: 288 (a block of 64 rows: 320)
    assert ((end - first)[steady] == 288).all()
    assert (end == q0 + rows).all()  # the last key computed is the block's last row's own
    assert ((end - first)[~steady] <= 288).all() and (first >= 0).all()


@needs_kernel
@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 2),
    kv_heads=st.integers(1, 2),
    group=st.integers(1, 3),
    nq=st.integers(1, 220),
    nk=st.integers(1, 220),
    head_dim=st.sampled_from([8, 16]),
    value_dim=st.sampled_from([None, 5]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
    kind=st.sampled_from(["sliding_window", "local", "document", "padding", "dense bool", "causal band"]),
    lse_in_loss=st.booleans(),
)
def test_kernel_equals_the_spec_for_any_shape_and_mask(
    batch, kv_heads, group, nq, nk, head_dim, value_dim, dtype, kind, lse_in_loss
):
    """Ragged blocks, Nq != Nk, grouped heads (and one kv head, whose gradients split over chunks),
    Dv != D, rows with no key at all, an lse that enters the loss."""
    g = torch.Generator().manual_seed(nq * 1000 + nk)
    q, k, v = qkv_inputs(
        batch, kv_heads * group, kv_heads, nq, nk, head_dim, dv=value_dim, dtype=dtype, requires_grad=True
    )
    causal = False
    if kind == "sliding_window":
        mask = masks.sliding_window(int(torch.randint(1, 120, (1,), generator=g)))
    elif kind == "local":
        mask = masks.local(int(torch.randint(0, 60, (1,), generator=g)))
    elif kind == "document":
        mask = masks.document(torch.sort(torch.randint(0, 5, (batch, nk), generator=g)).values)
        causal = nq == nk
    elif kind == "padding":
        mask = masks.padding(torch.randint(0, nk + 1, (batch,), generator=g))
    elif kind == "dense bool":
        mask = torch.rand(batch, 1, nq, nk, generator=g) < 0.7
    else:
        mask, causal = masks.sliding_window(40), True
    _check(q, k, v, mask=mask, causal=causal, lse_in_loss=lse_in_loss)


@needs_kernel
def test_dense_bias_runs_in_the_kernel_and_a_bias_that_needs_gradients_does_not(kernel_calls):
    q, k, v = qkv_inputs(2, 2, 2, 150, 150, 16, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, 1, 150, 150, dtype=torch.float64)
    _check(q, k, v, mask=masks.sliding_window(70), bias=bias)
    assert kernel_calls == {"forward": 1, "backward": 1}
    bias.requires_grad_(True)
    out = qkv.attention(q, k, v, mask=masks.sliding_window(70), bias=bias, backend="blockwise")
    golden = qkv.reference.attention(q, k, v, mask=masks.sliding_window(70).to_dense(2, 2, 150, 150), bias=bias)
    grad_out = torch.randn_like(golden)
    (gb,) = torch.autograd.grad(out, bias, grad_out)
    (gold,) = torch.autograd.grad(golden, bias, grad_out)
    assert accuracy.max_error(gb, gold) < 1e-12
    assert kernel_calls["backward"] == 1  # the bias gradient came from the per-block path


@needs_kernel
def test_inputs_strided_as_modules_make_them_and_scattered_block_sparse_keys(kernel_calls):
    """q, k, v as views of (B, N, H, D) projections; a layout whose kept tiles are not contiguous
    gives blocks whose keys are several runs (segments) of consecutive keys."""
    b, n, h, d = 2, 300, 4, 16
    qkv_proj = torch.randn(b, n, 3, h, d, requires_grad=True)
    q, k, v = (qkv_proj[:, :, i].transpose(1, 2) for i in range(3))  # (B, N, H, D) -> (B, H, N, D)
    _check(q, k, v, mask=masks.sliding_window(90))
    layout = torch.zeros(-(-n // 32), -(-n // 32), dtype=torch.bool)
    layout[:, 0] = True
    layout[torch.arange(layout.shape[0]), torch.arange(layout.shape[0])] = True  # first column + diagonal
    layout[3, 7] = True
    plan = bplan._plan(masks.block_sparse(layout, 32), False, (b, h, n, n), torch.device("cpu"))
    assert any(isinstance(keys, torch.Tensor) for keys in plan.keys)
    as_float64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    _check(*as_float64, mask=masks.block_sparse(layout, 32))
    assert kernel_calls["forward"] == 2


@needs_kernel
def test_inputs_expanded_along_the_sequence_or_batch_equal_the_spec():
    """A key shared by every position (row stride 0) or a batch broadcast (batch stride 0)."""
    q, _, v = qkv_inputs(2, 2, 2, 150, 150, 8, dtype=torch.float64, requires_grad=True)
    one_key = torch.randn(1, 2, 1, 8, dtype=torch.float64, requires_grad=True)
    k = one_key.expand(2, 2, 150, 8)  # row stride 0
    _check(q, k, v, mask=masks.sliding_window(40))
    shared = torch.randn(1, 2, 150, 8, dtype=torch.float64, requires_grad=True)
    _check(q, shared.expand(2, 2, 150, 8), v, mask=masks.local(30))  # batch stride 0


@needs_kernel
def test_rows_with_no_key_give_zeros_and_no_gradient():
    q, k, v = qkv_inputs(1, 2, 2, 100, 100, 8, dtype=torch.float32, requires_grad=True)
    mask = masks.padding(torch.tensor([0]))  # no key for anyone
    out, lse = qkv.attention(q, k, v, mask=mask, return_lse=True, backend="blockwise")
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    ends = masks.sliding_window(20) & masks.from_function(lambda b, h, i, j: i % 37 != 5)  # row 5, 42, 79 empty
    _check(q, k, v, mask=ends)


def test_without_the_kernel_blockwise_falls_back_to_torchs_fused_kernels(monkeypatch, kernel_calls):
    monkeypatch.setattr(cpu_kernel, "ENABLED", False)
    assert "disabled" in cpu_kernel.status()
    q, k, v = qkv_inputs(1, 4, 2, 400, 400, 16, dtype=torch.float32, requires_grad=True)
    _check(q, k, v, mask=masks.sliding_window(100))
    assert kernel_calls == {"forward": 0, "backward": 0}


def test_a_failed_build_is_reported_and_falls_back(monkeypatch, kernel_calls):
    monkeypatch.setattr(cpu_kernel, "_ops", None)
    monkeypatch.setattr(cpu_kernel, "_failure", "CalledProcessError: the compiler failed")
    assert not cpu_kernel.available()
    assert "not built (CalledProcessError" in cpu_kernel.status()
    q, k, v = qkv_inputs(1, 2, 2, 200, 200, 16, dtype=torch.float32, requires_grad=True)
    _check(q, k, v, mask=masks.sliding_window(50))
    assert kernel_calls == {"forward": 0, "backward": 0}


@needs_kernel
def test_masks_with_a_tile_per_block_go_to_the_kernel_in_chunks_of_bounded_memory(monkeypatch, kernel_calls):
    """A document mask needs a tile per block; past KERNEL_TILE_BYTES of them the blocks go in
    another kernel call (forward and backward), so tiles never hold O(N x keys) memory."""
    monkeypatch.setattr(kernel, "KERNEL_TILE_BYTES", 64 * 128 * 8 * 3)  # about three float64 tiles
    q, k, v = qkv_inputs(2, 2, 1, 640, 640, 8, dtype=torch.float64, requires_grad=True)
    ids = torch.sort(torch.randint(0, 6, (2, 640), generator=torch.Generator().manual_seed(3))).values
    _check(q, k, v, mask=masks.document(ids), causal=True, lse_in_loss=True)
    assert kernel_calls["forward"] > 2 and kernel_calls["backward"] == kernel_calls["forward"]
    layout = torch.rand(20, 20, generator=torch.Generator().manual_seed(4)) < 0.3
    layout[torch.arange(20), torch.arange(20)] = True
    _check(q, k, v, mask=masks.block_sparse(layout, 32) & masks.padding(torch.tensor([600, 500])))


@needs_kernel
def test_additive_score_mods_run_in_the_kernel_unless_their_tensors_need_gradients(kernel_calls):
    """ALiBi and a frozen relative-position table join the kernel's tiles; a table that is being
    trained, and mods that are not additive, take the per-block path that differentiates them."""
    from qkv import mods

    q, k, v = qkv_inputs(2, 4, 2, 300, 300, 16, dtype=torch.float64, requires_grad=True)
    window = masks.sliding_window(100)
    dense = window.to_dense(2, 4, 300, 300)
    table = torch.randn(32, 4, dtype=torch.float64)
    cases = [mods.alibi(4), mods.relative_position_bias(table, 32, 128), mods.compose(mods.alibi(4), mods.alibi(4))]
    for mod in cases:
        _check(
            q, k, v, mask=window, bias=mod.additive_bias(2, 4, 300, 300, dtype=torch.float64)
        )  # the spec's dense form
        before = dict(kernel_calls)
        out = qkv.attention(q, k, v, mask=window, bias=mod, backend="blockwise")
        golden = qkv.reference.attention(q, k, v, mask=dense, bias=mod)
        assert accuracy.max_error(out, golden) < 1e-12, mod
        grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
        golden_grads = torch.autograd.grad(golden, (q, k, v), torch.ones_like(golden))
        assert all(accuracy.max_error(g, gold) < 1e-12 for g, gold in zip(grads, golden_grads)), mod
        assert kernel_calls["forward"] == before["forward"] + 1 and kernel_calls["backward"] == before["backward"] + 1
    trained = mods.relative_position_bias(table.clone().requires_grad_(), 32, 128)
    not_additive = mods.compose(mods.alibi(4), mods.softcap(5.0))
    for mod in (trained, not_additive):
        before = dict(kernel_calls)
        out = qkv.attention(q, k, v, mask=window, bias=mod, backend="blockwise")
        assert accuracy.max_error(out, qkv.reference.attention(q, k, v, mask=dense, bias=mod)) < 1e-12
        assert kernel_calls == before, mod
    (g_table,) = torch.autograd.grad(
        qkv.attention(q, k, v, mask=window, bias=trained, backend="blockwise").sum(), trained.table
    )
    (gold,) = torch.autograd.grad(qkv.reference.attention(q, k, v, mask=dense, bias=trained).sum(), trained.table)
    assert accuracy.max_error(g_table, gold) < 1e-10


@needs_kernel
def test_half_precision_runs_in_the_kernel_in_float32(kernel_calls):
    """bfloat16 and float16 inputs are computed in float32 by the kernel and returned in their dtype:
    closer to the spec than attention computed in half precision."""
    for dtype in (torch.bfloat16, torch.float16):
        q, k, v = qkv_inputs(1, 4, 2, 500, 500, 32, dtype=dtype, requires_grad=True)
        _check(q, k, v, mask=masks.sliding_window(120))
        out = qkv.attention(q, k, v, mask=masks.sliding_window(120), backend="blockwise")
        golden = qkv.reference.attention(q, k, v, mask=masks.sliding_window(120).to_dense(1, 4, 500, 500))
        dense = masks.sliding_window(120).to_dense(1, 4, 500, 500)
        plain = accuracy.plain_attention(q.detach(), k.detach(), v.detach(), mask=dense)
        assert out.dtype == dtype
        assert accuracy.max_error(out, golden) <= accuracy.max_error(plain, golden)
    assert kernel_calls["forward"] == 4 and kernel_calls["backward"] == 2
