"""`auto` picks the fastest backend that computes the same function, and says why."""

from __future__ import annotations

import torch

import qkv
from tests.conftest import qkv_inputs


def test_auto_prefers_sdpa_for_every_call_it_computes_exactly():
    q, k, v = qkv_inputs(b=1, hq=4, hkv=2, nq=6, nk=9, d=8)
    for kwargs in [
        {},
        {"causal": True},
        {"mask": torch.rand(6, 9) > 0.5},
        {"bias": torch.randn(6, 9)},
        {"dropout_p": 0.1},
    ]:
        decision = qkv.explain_dispatch(q, k, v, **kwargs)
        assert decision.backend == "sdpa" and decision.rejected == ()
        assert "exactly" in decision.reason


def test_auto_routes_lse_to_a_backend_that_returns_it():
    q, k, v = qkv_inputs(b=1, hq=2, nq=4, d=8)
    decision = qkv.explain_dispatch(q, k, v, return_lse=True)
    assert decision.backend == "blockwise"
    assert dict(decision.rejected)["sdpa"].endswith("does not return the log-sum-exp")
    assert "not 'sdpa'" in str(decision)
    with_dropout = qkv.explain_dispatch(q, k, v, return_lse=True, dropout_p=0.1)
    assert with_dropout.backend == "eager"
    assert [name for name, _ in with_dropout.rejected] == ["sdpa", "blockwise"]


def test_an_explicit_backend_is_honoured():
    q, k, v = qkv_inputs(b=1, hq=2, nq=4, d=8)
    for name in ("reference", "eager", "sdpa"):
        decision = qkv.explain_dispatch(q, k, v, backend=name)
        assert decision.backend == name and decision.reason == "requested by the caller"


def test_auto_runs_dense_ish_structured_masks_blockwise_where_the_kernel_beats_a_dense_mask(monkeypatch):
    """With the CPU kernel a document mask keeping 60-90% of the key tiles runs blockwise on large
    calls (faster than SDPA with the dense mask there) and with SDPA on small ones."""
    from qkv import masks
    from qkv.backends.blockwise import cpu_kernel
    from qkv.backends.common import crossovers

    table = crossovers.current()

    def kept(mask, n):
        kinds = mask.tile_kinds(1, 2, n, n, table.probe_block, table.probe_block)
        return float((kinds != masks.TileKind.EMPTY).float().mean())

    large, small = qkv_inputs(1, 2, 2, 1024, 1024, 8), qkv_inputs(1, 2, 2, 512, 512, 8)
    two_docs = {n: masks.document((torch.arange(n) >= 128).long()) for n in (1024, 512)}  # first document: one tile
    assert table.dense_enough < kept(two_docs[1024], 1024) <= table.dense_enough_kernel  # 50 of 64 tiles
    assert table.dense_enough < kept(two_docs[512], 512)  # 10 of 16 tiles
    expected = "blockwise" if cpu_kernel.available() else "sdpa"
    assert qkv.explain_dispatch(*large, mask=two_docs[1024]).backend == expected
    assert qkv.explain_dispatch(*small, mask=two_docs[512]).backend == "sdpa"
    monkeypatch.setattr(cpu_kernel, "ENABLED", False)  # torch's per-block path: the dense mask wins
    assert qkv.explain_dispatch(*large, mask=two_docs[1024]).backend == "sdpa"


def test_auto_runs_causal_attention_blockwise_on_the_cpu_from_128_to_2048_queries():
    """Where the CPU kernel is built: prefill and training-sized causal calls run blockwise;
    decoding steps (one query) and short prompts stay with sdpa, and so does dropout."""
    from qkv.backends.blockwise import cpu_kernel

    long, short = qkv_inputs(1, 4, 2, 256, 256, 16), qkv_inputs(1, 4, 2, 64, 64, 16)
    step = (long[0][:, :, -1:], long[1], long[2])  # one new query against a cache of 256 keys
    expected = "blockwise" if cpu_kernel.available() else "sdpa"
    assert qkv.explain_dispatch(*long, causal=True).backend == expected
    assert qkv.explain_dispatch(*short, causal=True).backend == "sdpa"
    assert qkv.explain_dispatch(*step, causal=True).backend == "sdpa"
    assert qkv.explain_dispatch(*long, causal=True, dropout_p=0.1).backend == "sdpa"
