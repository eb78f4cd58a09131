"""Structured masks and score modifiers through `qkv.attention`: every backend equals the dense spec."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qkv
from qkv import accuracy, masks, mods
from tests.conftest import ALL_BACKENDS, qkv_inputs


def _mask_cases(b, hq, nq, nk):
    g = torch.Generator().manual_seed(7)
    doc = torch.sort(torch.randint(0, 4, (b, nk), generator=g)).values  # (B, Nk) packed segments
    layout = torch.rand(-(-nq // 16), -(-nk // 16), generator=g) < 0.4
    return {
        "causal": masks.causal(),
        "sliding_window": masks.sliding_window(19),
        "local": masks.local(7),
        "padding": masks.padding(torch.randint(1, nk + 1, (b,), generator=g)),
        "document & causal": masks.document(doc) & masks.causal(),
        "block_sparse": masks.block_sparse(layout, 16),
        "window | global": masks.sliding_window(8) | masks.global_tokens([0, 5]),
        "dilated": masks.dilated(6, 3),
        "from_function": masks.from_function(lambda b, h, i, j: (i + j + h) % 3 != 0),
        "~local": ~masks.local(2),
    }


SHAPES = [(2, 4, 2, 70, 70, 16), (1, 3, 1, 33, 130, 8), (1, 2, 2, 130, 45, 8)]


@pytest.fixture(params=["kernel", "torch kernels"])
def blockwise_path(request, monkeypatch):
    """Blockwise with its own CPU kernel (where built), and with torch's fused kernels per block."""
    from qkv.backends.blockwise import cpu_kernel

    if request.param == "torch kernels":
        monkeypatch.setattr(cpu_kernel, "ENABLED", False)
    return request.param


@pytest.fixture
def torch_kernels(monkeypatch):
    """Blockwise with torch's fused kernels per block (and strided runs of them), not its own."""
    from qkv.backends.blockwise import cpu_kernel

    monkeypatch.setattr(cpu_kernel, "ENABLED", False)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", list(_mask_cases(1, 1, 64, 64)))
def test_structured_masks_equal_their_dense_form_on_every_backend(shape, name, blockwise_path):
    b, hq, hkv, nq, nk, d = shape
    mask = _mask_cases(b, hq, nq, nk)[name]
    q, k, v = qkv_inputs(b, hq, hkv, nq, nk, d, dtype=torch.float64, requires_grad=True)
    dense = mask.to_dense(b, hq, nq, nk)
    golden, golden_lse = qkv.reference.attention(q, k, v, mask=dense, return_lse=True)
    grad_out = torch.randn_like(golden)
    golden_grads = torch.autograd.grad(golden, (q, k, v), grad_out)
    for backend in ALL_BACKENDS:
        out = qkv.attention(q, k, v, mask=mask, backend=backend)
        assert accuracy.max_error(out, golden) < 1e-12, backend
        for g, gold in zip(torch.autograd.grad(out, (q, k, v), grad_out), golden_grads):
            assert accuracy.max_error(g, gold) < 1e-12, backend
        if backend != "sdpa":
            _, lse = qkv.attention(q, k, v, mask=mask, backend=backend, return_lse=True)
            assert torch.equal(torch.isneginf(lse), torch.isneginf(golden_lse))
            assert accuracy.max_error(lse, golden_lse) < 1e-12
    weights = qkv.attention_weights(q, k, mask=mask)
    assert accuracy.max_error(weights, qkv.reference.attention_weights(q, k, mask=dense)) < 1e-12
    rows = torch.tensor([nq - 1, 0, nq // 2])
    assert accuracy.max_error(qkv.attention_weights(q, k, mask=mask, rows=rows), weights[:, :, rows]) < 1e-12


def _mod_cases(hq):
    table = torch.randn(16, hq, dtype=torch.float64, requires_grad=True)
    return {
        "alibi": mods.alibi(hq),
        "softcap": mods.softcap(2.0),
        "temperature": mods.temperature(0.7),
        "relative_position_bias": mods.relative_position_bias(table, num_buckets=16, max_distance=40),
        "compose": mods.compose(mods.alibi(hq), mods.softcap(3.0)),
        "from_function": mods.from_function(lambda s, b, h, i, j: s + 0.1 * torch.cos((i - j).to(s.dtype) + h)),
    }


@pytest.mark.parametrize("name", list(_mod_cases(4)))
@pytest.mark.parametrize("with_mask", [False, True])
def test_score_mods_equal_their_dense_form_on_every_backend(name, with_mask):
    b, hq, hkv, nq, nk, d = 2, 4, 2, 75, 90, 8
    mod = _mod_cases(hq)[name]
    mask = masks.sliding_window(30) if with_mask else None
    q, k, v = qkv_inputs(b, hq, hkv, nq, nk, d, dtype=torch.float64, requires_grad=True)
    tables = [t for t in getattr(mod, "__dict__", {}).values() if isinstance(t, torch.Tensor) and t.requires_grad]
    leaves = [q, k, v, *tables]
    # the dense form, written out: the mod applied to the full score matrix, then masked softmax @ v
    group = hq // hkv
    keys = k.repeat_interleave(group, 1)  # (B, Hkv, Nk, D) -> (B, Hq, Nk, D)
    scores = q @ keys.transpose(-2, -1) * d**-0.5  # (B, Hq, Nq, D) @ (B, Hq, D, Nk) -> (B, Hq, Nq, Nk)
    modified = mod.apply(scores)  # (B, Hq, Nq, Nk)
    dense_mask = None if mask is None else mask.to_dense(b, hq, nq, nk)
    if dense_mask is not None:
        assert dense_mask.any(-1).all()  # no empty row here: the dense softmax below needs none
        modified = modified.masked_fill(~dense_mask, float("-inf"))
    dense = torch.softmax(modified, dim=-1) @ v.repeat_interleave(group, 1)  # (B, Hq, Nq, Nk) @ (B, Hq, Nk, Dv)
    grad_out = torch.randn_like(dense)
    dense_grads = torch.autograd.grad(dense, leaves, grad_out)
    golden = qkv.reference.attention(q, k, v, bias=mod, mask=dense_mask)
    golden_grads = torch.autograd.grad(golden, leaves, grad_out)
    assert accuracy.max_error(golden, dense) < 1e-12  # the spec takes a mod as the dense form says
    for g, gold in zip(golden_grads, dense_grads):
        assert accuracy.max_error(g, gold) < 1e-11
    for backend in ALL_BACKENDS:
        if backend == "sdpa" and not mod.additive:
            with pytest.raises(qkv.AttentionError, match="not an additive bias"):
                qkv.attention(q, k, v, bias=mod, mask=mask, backend=backend)
            continue
        out = qkv.attention(q, k, v, bias=mod, mask=mask, backend=backend)
        assert accuracy.max_error(out, golden) < 1e-12, backend
        got = torch.autograd.grad(out, leaves, grad_out)
        for g, gold in zip(got, golden_grads):
            assert accuracy.max_error(g, gold) < 1e-11, backend
    rows = torch.tensor([3, nq - 1])
    full = qkv.attention_weights(q, k, bias=mod, mask=mask)
    assert accuracy.max_error(qkv.attention_weights(q, k, bias=mod, mask=mask, rows=rows), full[:, :, rows]) < 1e-12


def test_reference_with_a_mod_equals_the_mod_applied_to_dense_scores():
    q, k, v = qkv_inputs(1, 2, 2, 6, 6, 4, dtype=torch.float64)
    mod = mods.softcap(1.5)
    scores = q @ k.transpose(-2, -1) * 0.5  # (B, H, Nq, D) @ (B, H, D, Nk) -> (B, H, Nq, Nk)
    expected = torch.softmax(mod.apply(scores), -1) @ v
    torch.testing.assert_close(qkv.reference.attention(q, k, v, bias=mod), expected)


def test_auto_runs_sparse_masks_blockwise_and_dense_ones_fused():
    q, k, v = qkv_inputs(1, 2, 2, 1024, 1024, 16)
    window = qkv.explain_dispatch(q, k, v, mask=masks.sliding_window(64))
    assert window.backend == "blockwise" and "keeps" in window.reason
    padding = qkv.explain_dispatch(q, k, v, mask=masks.padding([1000]))
    assert padding.backend == "sdpa"
    from qkv.backends.blockwise import cpu_kernel

    causal_backend = "blockwise" if cpu_kernel.available() else "sdpa"  # the CPU kernel skips finer
    assert qkv.explain_dispatch(q, k, v, mask=masks.causal()).backend == causal_backend  # same as causal=True
    assert qkv.explain_dispatch(q, k, v, causal=True).backend == causal_backend
    assert qkv.explain_dispatch(q[:, :, :100], k[:, :, :100], v[:, :, :100], causal=True).backend == "sdpa"
    long = qkv_inputs(1, 2, 2, 4096, 4096, 16)
    assert qkv.explain_dispatch(*long, causal=True).backend == "sdpa"  # torch's kernel is as fast here
    softcap = qkv.explain_dispatch(q, k, v, bias=mods.softcap(30.0), causal=True)
    assert softcap.backend == "blockwise" and "softcap" in softcap.reason


def test_blockwise_memory_stays_linear_in_sequence_length():
    """A 16k-token sliding window: dense scores would need 1 GiB; blockwise stays within a few MiB."""
    from qkv.bench import peak_extra_mib

    n = 16384
    q, k, v = qkv_inputs(1, 1, 1, n, n, 16)
    mib = peak_extra_mib(lambda: qkv.attention(q, k, v, mask=masks.sliding_window(128), backend="blockwise"))
    if mib is None:
        pytest.skip("peak memory is read from /proc (Linux)")
    assert mib < 64, f"{mib:.0f} MiB"


def test_structured_mask_for_another_batch_is_a_clear_error():
    q, k, v = qkv_inputs(2, 2, 2, 8, 8, 4)
    with pytest.raises(qkv.AttentionError, match="^mask:|padding"):
        qkv.attention(q, k, v, mask=masks.padding([3, 4, 5]))
    with pytest.raises(qkv.AttentionError, match="^bias:"):
        qkv.attention(q, k, v, bias=mods.alibi(8))


_BLOCK_DISTANCE = torch.arange(10)[:, None] - torch.arange(10)[None, :]  # (query block, key block): i - j
RUN_CASES = [
    ((2, 4, 2, 600, 600, 16), masks.sliding_window(100)),
    ((1, 2, 2, 600, 600, 8), masks.local(70)),
    ((1, 6, 2, 600, 600, 8), masks.sliding_window(64)),  # groups of 3 query heads per kv head
    ((1, 2, 1, 700, 560, 8), masks.sliding_window(90)),  # Nq > Nk: the first 140 rows see no key
    # a band of whole 64-blocks: full tiles, windows that slide, no mask tile at all
    ((2, 2, 2, 640, 640, 8), masks.block_sparse((_BLOCK_DISTANCE >= 0) & (_BLOCK_DISTANCE <= 2), 64)),
]


@pytest.mark.parametrize(("shape", "mask"), RUN_CASES, ids=lambda x: repr(x))
def test_blockwise_runs_of_sliding_blocks_equal_the_spec(shape, mask, torch_kernels):
    """Long enough that consecutive query blocks go through the fused kernel as one strided call."""
    from qkv.backends.blockwise import fused, tiles
    from qkv.backends.blockwise import plan as bplan

    b, hq, hkv, nq, nk, d = shape
    plan = bplan._plan(mask, False, (b, hq, nq, nk), torch.device("cpu"))
    spec = bplan._Spec(mask, None, False, 1.0, nq, nk, torch.float64)
    float_masks = tiles._FloatMasks(spec, b, hq, torch.float64, torch.device("cpu"))
    for longest in (fused.FORWARD_RUN, fused.BACKWARD_RUN):
        assert max(r1 - r0 for r0, r1 in fused._runs(plan, nq, float_masks, longest)) > 1
    q, k, v = qkv_inputs(b, hq, hkv, nq, nk, d, dtype=torch.float64, requires_grad=True)
    dense = mask.to_dense(b, hq, nq, nk)
    golden, golden_lse = qkv.reference.attention(q, k, v, mask=dense, return_lse=True)
    grad_out = torch.randn_like(golden)
    golden_grads = torch.autograd.grad(golden, (q, k, v), grad_out)
    out, lse = qkv.attention(q, k, v, mask=mask, backend="blockwise", return_lse=True)
    assert accuracy.max_error(out, golden) < 1e-12
    assert torch.equal(torch.isneginf(lse), torch.isneginf(golden_lse))
    assert accuracy.max_error(lse, golden_lse) < 1e-12
    for g, gold in zip(torch.autograd.grad(out, (q, k, v), grad_out), golden_grads):
        assert accuracy.max_error(g, gold) < 1e-12


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(150, 420),
    extra_queries=st.integers(-40, 40),
    window=st.integers(1, 150),
    group=st.sampled_from([1, 2, 3]),
    batch=st.integers(1, 2),
    kind=st.sampled_from(["sliding_window", "local"]),
)
def test_blockwise_runs_equal_the_spec_for_any_band(n, extra_queries, window, group, batch, kind):
    """Bands of any width, lengths that leave ragged last blocks, Nq != Nk, grouped heads;
    with torch's kernels in strided runs (the CPU kernel has its own property test)."""
    from qkv.backends.blockwise import cpu_kernel

    cpu_kernel.ENABLED, enabled = False, cpu_kernel.ENABLED  # hypothesis runs no fixture per example
    try:
        _band_equals_the_spec(n, extra_queries, window, group, batch, kind)
    finally:
        cpu_kernel.ENABLED = enabled


def _band_equals_the_spec(n, extra_queries, window, group, batch, kind):
    nq, nk = n + extra_queries, n
    mask = masks.sliding_window(window) if kind == "sliding_window" else masks.local(window)
    q, k, v = qkv_inputs(batch, 2 * group, 2, nq, nk, 8, dtype=torch.float64, requires_grad=True)
    golden, golden_lse = qkv.reference.attention(q, k, v, mask=mask.to_dense(batch, 2 * group, nq, nk), return_lse=True)
    out, lse = qkv.attention(q, k, v, mask=mask, backend="blockwise", return_lse=True)
    assert accuracy.max_error(out, golden) < 1e-12
    assert torch.equal(torch.isneginf(lse), torch.isneginf(golden_lse))
    assert accuracy.max_error(lse, golden_lse) < 1e-12
    grad_out = torch.randn_like(golden)
    for g, gold in zip(torch.autograd.grad(out, (q, k, v), grad_out), torch.autograd.grad(golden, (q, k, v), grad_out)):
        assert accuracy.max_error(g, gold) < 1e-12


def test_blockwise_plans_a_band_once_per_shape_and_other_masks_on_every_call(monkeypatch):
    """A mask that depends only on i' - j is planned once per call shape; a document mask whose
    ids change in place between calls is planned again, so the second call sees the new ids."""
    from qkv.backends import blockwise

    calls = []
    original = blockwise._plan
    monkeypatch.setattr(blockwise, "_plan", lambda *args: calls.append(args) or original(*args))
    q, k, v = qkv_inputs(1, 2, 2, 200, 200, 8, dtype=torch.float64)
    window = masks.sliding_window(30)
    for _ in range(3):
        qkv.attention(q, k, v, mask=window, backend="blockwise")
    assert len(calls) == 1
    qkv.attention(q[:, :, :150], k, v, mask=window, backend="blockwise")
    assert len(calls) == 2
    ids = torch.zeros(1, 200, dtype=torch.long)
    doc = masks.document(ids)
    first = qkv.attention(q, k, v, mask=doc, backend="blockwise")
    ids[:, 100:] = 1  # two documents now
    second = qkv.attention(q, k, v, mask=doc, backend="blockwise")
    assert len(calls) == 4
    golden = qkv.reference.attention(q, k, v, mask=doc.to_dense(1, 2, 200, 200))
    assert accuracy.max_error(second, golden) < 1e-12 and accuracy.max_error(first, golden) > 1e-3


@pytest.mark.parametrize(
    "mask_shape", [(2, 1, 1, 300), (1, 1, 200, 1), (2, 3, 200, 300), (1, 3, 1, 300), (200, 300)], ids=str
)
def test_dense_masks_that_broadcast_over_queries_or_keys_equal_the_spec_blockwise(mask_shape, blockwise_path):
    """A padding mask (B, 1, 1, Nk) is the same for every query row: each query block gets its
    tiles, not only the first (as auto runs it when the lse is asked for)."""
    q, k, v = qkv_inputs(2, 3, 3, 200, 300, 8, dtype=torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(11)
    mask = torch.rand(mask_shape, generator=g) < 0.7
    if mask_shape == (2, 1, 1, 300):  # a real padding mask: the second sequence is 190 keys long
        mask = (torch.arange(300) < torch.tensor([300, 190])[:, None])[:, None, None, :]
    golden, golden_lse = qkv.reference.attention(q, k, v, mask=mask, return_lse=True)
    grad_out = torch.randn_like(golden)
    golden_grads = torch.autograd.grad(golden, (q, k, v), grad_out)
    for backend in ("blockwise", "auto"):
        out, lse = qkv.attention(q, k, v, mask=mask, return_lse=True, backend=backend)
        assert accuracy.max_error(out, golden) < 1e-12 and accuracy.max_error(lse, golden_lse) < 1e-12
        for grad, gold in zip(torch.autograd.grad(out, (q, k, v), grad_out), golden_grads):
            assert accuracy.max_error(grad, gold) < 1e-12
    assert qkv.explain_dispatch(q, k, v, mask=mask, return_lse=True).backend == "blockwise"
