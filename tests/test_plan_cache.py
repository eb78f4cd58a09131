"""Plans kept per mask while the mask cannot have changed (qkv.backends.common.plans), through qkv.attention."""

from __future__ import annotations

import torch

import qkv
from qkv import masks
from qkv.backends.blockwise import plan as blockwise_plan
from qkv.backends.common.plans import PlanCache, state
from tests.conftest import qkv_inputs


def test_a_mask_changed_in_place_between_calls_is_planned_again():
    q, k, v = qkv_inputs(1, 2, 2, 300, 300, 16, dtype=torch.float64)
    ids = torch.repeat_interleave(torch.arange(3), torch.tensor([100, 100, 100]))
    lengths = torch.tensor([300])
    mask = masks.document(ids) & masks.padding(lengths)  # nested masks holding tensors
    for change in (lambda: None, lambda: ids[150:].fill_(7), lambda: lengths.fill_(120)):
        change()
        dense = mask.to_dense(1, 2, 300, 300)
        got = qkv.attention(q, k, v, mask=mask, backend="blockwise")
        assert torch.allclose(got, qkv.reference.attention(q, k, v, mask=dense), atol=1e-12)


def test_an_unchanged_mask_is_planned_once():
    built = []
    cache = PlanCache(per_mask=2)
    mask = masks.document(torch.zeros(8, dtype=torch.long))
    for _ in range(3):
        cache.get(mask, ("a",), lambda: built.append(1) or len(built))
    assert built == [1]
    assert cache.get(None, ("a",), lambda: "no mask") == cache.get(None, ("a",), lambda: "again") == "no mask"
    dense = torch.ones(8, 8, dtype=torch.bool)
    assert cache.get(dense, ("a",), lambda: "dense") == "dense" and cache.get(dense, ("a",), lambda: "x") == "x"


def test_a_state_holds_its_tensors_so_their_ids_are_not_reused():
    cache = PlanCache()
    mask = masks.padding(torch.tensor([3]))
    cache.get(mask, ("k",), lambda: "plan")
    ((plan, held),) = cache._tables[mask].values()
    assert plan == "plan" and held == [mask.lengths]


def test_what_a_state_cannot_read_is_none():
    assert state(masks.from_function(lambda b, h, i, j: i >= j)) is None
    assert state(masks.sliding_window(4)) == state(masks.sliding_window(4))
    assert state(masks.sliding_window(4)) != state(masks.sliding_window(5))


def test_the_blockwise_memo_keeps_a_document_plan():
    ids = torch.zeros(256, dtype=torch.long)
    mask = masks.document(ids)
    calls = []
    first = blockwise_plan._memo(mask, ("plan",), lambda: calls.append(1) or object())
    assert blockwise_plan._memo(mask, ("plan",), lambda: calls.append(1) or object()) is first and calls == [1]
