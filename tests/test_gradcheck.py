"""float64 gradcheck on every backend: q, k, v and a tensor bias, with masks that leave rows empty."""

from __future__ import annotations

import pytest
import torch

import qkv
from tests.conftest import ALL_BACKENDS, qkv_inputs


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dv", [2, 3], ids=["Dv!=D", "Dv=D"])  # blockwise runs fused kernels only when Dv = D
def test_gradcheck(backend, causal, dv):
    q, k, v = qkv_inputs(b=1, hq=4, hkv=2, nq=5, nk=4, d=3, dv=dv, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(1, 4, 5, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(1, 1, 5, 4) > 0.3
    mask[0, 0, 3] = False  # one row with no key

    def fn(q, k, v, bias):
        return qkv.attention(q, k, v, mask=mask, bias=bias, causal=causal, backend=backend)

    assert torch.autograd.gradcheck(fn, (q, k, v, bias))


@pytest.mark.parametrize("backend", ("reference", "eager", "blockwise"))
def test_gradcheck_through_lse(backend):
    q, k, v = qkv_inputs(b=1, hq=2, nq=4, nk=6, d=3, dtype=torch.float64, requires_grad=True)

    def fn(q, k, v):
        out, lse = qkv.attention(q, k, v, causal=True, return_lse=True, backend=backend)
        return out, lse

    assert torch.autograd.gradcheck(fn, (q, k, v))
