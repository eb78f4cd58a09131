"""The triton backend's tile plan (block lists, counts, bands, stored tile masks), on the CPU, without triton.

The strongest check: the plan, read back as a dense mask (FULL tiles allowed, EMPTY ones
not, PARTIAL ones by the band and the stored tile), is the mask's own dense form.
"""

from __future__ import annotations

import math

import pytest
import torch

import qkv
from qkv import masks
from qkv.backends.common import causal_allowed
from qkv.backends.triton import plan as tplan
from qkv.backends.triton.plan import EMPTY, FULL, PARTIAL, Band, build_plan


def read_back(plan: tplan.TilePlan, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """The dense bool ``(B, H, Nq, Nk)`` mask the kernels compute from ``plan``, walking its forward lists."""
    b, h, nq, nk = shape
    bm, bn = plan.block_m, plan.block_n
    nqb, nkb = math.ceil(nq / bm), math.ceil(nk / bn)
    out = torch.zeros(b, h, nqb * bm, nkb * bn, dtype=torch.bool)
    i = torch.arange(nqb * bm)[:, None]
    j = torch.arange(nkb * bn)[None, :]
    band = torch.ones_like(i * j, dtype=torch.bool)
    if plan.band is not None:
        d = i + (nk - nq) - j
        band = (d >= plan.band.lo) & (d <= plan.band.hi)
    for bi in range(b):
        for hi in range(h):
            pb, ph = min(bi, plan.kinds.shape[0] - 1), min(hi, plan.kinds.shape[1] - 1)
            for r in range(nqb):
                rows = slice(r * bm, (r + 1) * bm)
                for c in plan.full_kv_indices[pb, ph, r, : plan.full_kv_num_blocks[pb, ph, r]].tolist():
                    out[bi, hi, rows, c * bn : (c + 1) * bn] = True
                for c in plan.kv_indices[pb, ph, r, : plan.kv_num_blocks[pb, ph, r]].tolist():
                    cols = slice(c * bn, (c + 1) * bn)
                    tile = band[rows, cols].clone()
                    if plan.tile_index is not None and plan.tile_index[pb, ph, r, c] >= 0:
                        tile &= plan.tile_masks[plan.tile_index[pb, ph, r, c]].bool()
                    out[bi, hi, rows, cols] = tile
    return out[:, :, :nq, :nk]


IDS = torch.tensor([0] * 20 + [1] * 7 + [2] * 23)  # three documents in 50 positions
LAYOUT = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
CASES = {
    "none": (None, False),
    "causal": (None, True),
    "causal mask object": (masks.causal(), False),
    "sliding window": (masks.sliding_window(9), False),
    "sliding window and causal": (masks.sliding_window(9), True),
    "local": (masks.local(4), False),
    "dilated": (masks.dilated(4, dilation=3), False),
    "document": (masks.document(IDS), False),
    "document and causal": (masks.document(IDS), True),
    "padding": (masks.padding([17, 50]), False),
    "block sparse": (masks.block_sparse(LAYOUT, 13), False),
    "from_function": (masks.from_function(lambda b, h, i, j: (i * 7 + j * 3 + h) % 5 != 0), False),
    "not causal": (~masks.causal(), False),
}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("nq", [50, 31])
def test_the_plan_read_back_is_the_mask(name, nq):
    mask, causal = CASES[name]
    b, h, nk = 2, 2, 50
    shape = (b, h, nq, nk)
    try:
        mask is None or mask.check(*shape)
    except qkv.AttentionError:
        pytest.skip("this mask is written for Nq = Nk")
    dense = torch.ones(b, h, nq, nk, dtype=torch.bool) if mask is None else mask.to_dense(*shape).clone()
    if causal:
        dense &= causal_allowed(nq, nk)
    for blocks in [(16, 16), (16, 32), (32, 16)]:
        plan = build_plan(mask, causal, shape, *blocks)
        assert torch.equal(read_back(plan, shape), dense), blocks


def test_a_dense_mask_tensor_plans_like_its_mask_object():
    mask = masks.document(IDS) & masks.causal()
    dense = mask.to_dense(1, 1, 50, 50)
    shape = (1, 1, 50, 50)
    from_tensor, from_object = build_plan(dense, False, shape, 16, 16), build_plan(mask, False, shape, 16, 16)
    assert torch.equal(from_tensor.kinds, from_object.kinds)
    assert torch.equal(read_back(from_tensor, shape), dense)


def test_empty_tiles_are_never_listed_and_full_tiles_need_no_mask():
    plan = build_plan(masks.sliding_window(16), False, (1, 1, 128, 128), 16, 16)
    kinds = plan.kinds[0, 0]
    for r in range(kinds.shape[0]):
        full = plan.full_kv_indices[0, 0, r, : plan.full_kv_num_blocks[0, 0, r]].tolist()
        partial = plan.kv_indices[0, 0, r, : plan.kv_num_blocks[0, 0, r]].tolist()
        assert full == (kinds[r] == FULL).nonzero().flatten().tolist()
        assert partial == (kinds[r] == PARTIAL).nonzero().flatten().tolist()
    # a window of 16 over blocks of 16: the diagonal tile and the one before it are partial, none full
    assert (kinds == EMPTY).sum() == 8 * 8 - (8 + 7) and plan.tiles_visited == 15
    assert plan.band == Band(0, 15) and plan.tile_masks is None


def test_the_transposed_lists_hold_the_same_tiles():
    plan = build_plan(masks.document(IDS) & masks.sliding_window(20), True, (1, 1, 50, 50), 16, 16)
    pairs = set()
    for r in range(plan.kinds.shape[2]):
        for num, idx in ((plan.kv_num_blocks, plan.kv_indices), (plan.full_kv_num_blocks, plan.full_kv_indices)):
            pairs |= {(r, c) for c in idx[0, 0, r, : num[0, 0, r]].tolist()}
    transposed = set()
    for c in range(plan.kinds.shape[3]):
        for num, idx in ((plan.q_num_blocks, plan.q_indices), (plan.full_q_num_blocks, plan.full_q_indices)):
            transposed |= {(r, c) for r in idx[0, 0, c, : num[0, 0, c]].tolist()}
    assert pairs == transposed == {tuple(t) for t in (plan.kinds[0, 0] != EMPTY).nonzero().tolist()}
    # each direction's partial and full lists share one width, so the kernels read both with one set of strides
    assert plan.kv_indices.shape == plan.full_kv_indices.shape and plan.q_indices.shape == plan.full_q_indices.shape


@pytest.mark.parametrize(
    ("mask", "band"),
    [
        (masks.causal(), Band(0, tplan.NO_BOUND)),
        (masks.sliding_window(5), Band(0, 4)),
        (masks.local(3), Band(-3, 3)),
        (~masks.causal(), Band(-tplan.NO_BOUND, -1)),
        (masks.sliding_window(8) & masks.local(2), Band(0, 2)),
        (masks.dilated(3, dilation=2), None),  # holes: stored tiles instead
        (masks.document(IDS), None),  # not offset invariant
    ],
)
def test_offset_invariant_masks_of_one_interval_are_bands(mask, band):
    assert tplan.band_of(mask, 50, 50) == band


def test_a_band_applies_with_queries_after_a_cache():
    """Two new queries after 48 cached keys (bottom-right causal): both blocks see every key, no mask needed."""
    plan = build_plan(None, True, (1, 1, 2, 50), 16, 16)
    assert plan.kinds[0, 0].tolist() == [[FULL, FULL, FULL, PARTIAL]]


def test_masks_that_depend_on_the_batch_or_head_plan_per_batch_and_head():
    plan = build_plan(masks.padding([10, 40]), False, (2, 4, 32, 48), 16, 16)
    assert plan.kinds.shape[:2] == (2, 1)
    assert plan.full_kv_num_blocks[:, 0, 0].tolist() == [0, 2]
    assert plan.kv_num_blocks[:, 0, 0].tolist() == [1, 1]


def test_rows_with_no_key_list_no_tile():
    mask = masks.from_function(lambda b, h, i, j: (i >= 16) & (j <= i))
    plan = build_plan(mask, False, (1, 1, 40, 40), 16, 16)
    assert plan.kv_num_blocks[0, 0, 0] == 0 and plan.full_kv_num_blocks[0, 0, 0] == 0


def test_block_lists_pad_with_a_valid_index():
    counts, indices = tplan.block_lists(torch.tensor([[False, True, True], [False, False, False]]), width=3)
    assert counts.tolist() == [2, 0] and indices.tolist() == [[1, 2, 0], [0, 0, 0]]


def test_plans_are_kept_only_for_masks_that_cannot_change():
    from qkv.backends import triton as tb

    cpu = torch.device("cpu")
    window = masks.sliding_window(8)
    first = tb.plan_for(window, False, (1, 2, 64, 64), 16, cpu)
    assert tb.plan_for(window, False, (3, 2, 64, 64), 16, cpu) is first  # the batch does not change the plan
    assert tb.plan_for(None, True, (1, 1, 64, 64), 16, cpu) is tb.plan_for(None, True, (1, 1, 64, 64), 16, cpu)
    ids = torch.zeros(64, dtype=torch.long)
    document = masks.document(ids)
    before = tb.plan_for(document, False, (1, 1, 64, 64), 16, cpu)
    ids[32:] = 1  # the caller changes the documents in place: the next call plans them again
    after = tb.plan_for(document, False, (1, 1, 64, 64), 16, cpu)
    assert after is not before and after.tiles_visited < before.tiles_visited


def test_plans_of_masks_holding_tensors_are_kept_while_the_tensors_are_unchanged():
    from qkv.backends import triton as tb

    cpu = torch.device("cpu")
    ids = torch.zeros(64, dtype=torch.long)
    ids[40:] = 1
    document = masks.document(ids)
    first = tb.plan_for(document, False, (1, 1, 64, 64), 16, cpu)
    assert tb.plan_for(document, False, (1, 1, 64, 64), 16, cpu) is first  # unchanged: planned once
    assert tb.plan_for(document, False, (2, 1, 64, 64), 16, cpu) is not first  # another batch: its own plan
    rule = masks.from_function(lambda b, h, i, j: i >= j)  # a Python rule may read anything: planned every call
    assert tb.plan_for(rule, False, (1, 1, 64, 64), 16, cpu) is not tb.plan_for(rule, False, (1, 1, 64, 64), 16, cpu)
