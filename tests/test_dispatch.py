"""`auto` picks the fastest backend that computes the same function, and says why."""

from __future__ import annotations

import torch

import qkv
from tests.conftest import qkv_inputs


def test_auto_prefers_sdpa_for_every_call_it_computes_exactly():
    q, k, v = qkv_inputs(b=1, hq=4, hkv=2, nq=6, nk=9, d=8)
    for kwargs in [{}, {"causal": True}, {"mask": torch.rand(6, 9) > 0.5}, {"bias": torch.randn(6, 9)},
                   {"dropout_p": 0.1}]:
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
