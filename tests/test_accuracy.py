"""Every backend against the float64 reference on random shapes, masks, biases and dtypes.

The tolerance is an error budget (qkv.accuracy): at most 3x what a plain
same-dtype computation errs against float64, plus one unit of rounding.

Lengths are small (most bugs show on a few rows) or sit on the blockwise backend's
block edges (``BLOCK_Q`` query rows, ``BLOCK_K`` keys, ``KERNEL_ROWS`` rows per kernel
block): one row short of an edge, on it, one past it, so a case spans two blocks or
ends in a ragged one. The long sweeps, up to a few hundred rows, are marked slow.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qkv
from qkv import accuracy
from qkv.backends.blockwise.kernel import KERNEL_ROWS
from qkv.backends.blockwise.plan import BLOCK_K, BLOCK_Q
from tests.conftest import FAST_BACKENDS, qkv_inputs

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# one short of a block edge, on it, one past it: 31, 32, 33, 63, 64, 65, 95, ..., 129
EDGES = sorted({n + d for n in (KERNEL_ROWS, BLOCK_K, BLOCK_Q, 3 * BLOCK_K, 2 * BLOCK_Q) for d in (-1, 0, 1)})


def sizes(longest: int, shortest: int = 1) -> st.SearchStrategy[int]:
    """Sequence lengths from ``shortest`` to ``longest``: small ones, block edges, any."""
    small = [st.integers(shortest, 17)] if shortest <= 17 else []
    edges = [n for n in EDGES if shortest <= n <= longest]
    return st.one_of(*small, st.sampled_from(edges), st.integers(shortest, longest))


@st.composite
def problems(draw, dtypes=DTYPES, longest=2 * BLOCK_Q + 2, shortest=1):
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    b = draw(st.integers(1, 2))
    hkv = draw(st.integers(1, 3))
    hq = hkv * draw(st.integers(1, 3))
    nq = draw(sizes(longest, shortest))
    nk = draw(sizes(longest, shortest))
    d = draw(st.sampled_from([1, 3, 8, 16, 33]))
    dv = draw(st.sampled_from([d, 5]))
    dtype = draw(st.sampled_from(dtypes))
    q, k, v = qkv_inputs(b, hq, hkv, nq, nk, d, dv, dtype, generator=g)
    kwargs = {"causal": draw(st.booleans())}
    mask_kind = draw(st.sampled_from(["none", "full", "2d", "padding"]))
    if mask_kind == "full":
        mask = torch.rand(b, hq, nq, nk, generator=g) > 0.4  # (B, Hq, Nq, Nk), some rows empty
        mask[:, :, 0] = False
        kwargs["mask"] = mask
    elif mask_kind == "2d":
        kwargs["mask"] = torch.rand(nq, nk, generator=g) > 0.3  # (Nq, Nk)
    elif mask_kind == "padding":
        lengths = torch.randint(1, nk + 1, (b,), generator=g)
        kwargs["mask"] = (torch.arange(nk)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, Nk)
    bias_kind = draw(st.sampled_from(["none", "per-head", "2d"]))
    if bias_kind == "per-head":
        kwargs["bias"] = torch.randn(1, hq, nq, nk, generator=g).to(dtype)
    elif bias_kind == "2d":
        kwargs["bias"] = (2 * torch.randn(nq, nk, generator=g)).to(dtype)
    kwargs["scale"] = draw(st.sampled_from([None, 1.0, 0.3]))
    return q, k, v, kwargs


# The budget's baseline must itself be near the spec: a budget taken from a wrong spec (or a wrong
# plain run) would grow to admit anything. Plain same-dtype attention errs under 16 units of
# rounding at the values' magnitude on these problems; 64 leaves room.
PLAIN_ROUNDINGS = 64


def _near_the_spec(plain: torch.Tensor, golden: torch.Tensor, dtype: torch.dtype, magnitude: float) -> float:
    """The plain run's error against the spec, asserted to be a few units of rounding."""
    error = accuracy.max_error(plain, golden)
    bound = PLAIN_ROUNDINGS * torch.finfo(dtype).eps * max(1.0, magnitude) + accuracy.ABS_FLOOR[dtype]
    assert error <= bound, f"plain {dtype} attention errs {error:.3g} against the spec (more than {bound:.3g})"
    return error


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_outputs_match_reference_within_budget(problem):
    _outputs_match(problem)


def _outputs_match(problem):
    q, k, v, kwargs = problem
    golden = qkv.reference.attention(q, k, v, **kwargs)
    plain = accuracy.plain_attention(q, k, v, **kwargs)
    allowed = accuracy.budget(_near_the_spec(plain, golden, q.dtype, v.abs().max().item()), q.dtype)
    for backend in FAST_BACKENDS:
        out = qkv.attention(q, k, v, backend=backend, **kwargs)
        assert out.dtype == q.dtype and out.shape == golden.shape
        assert not out.isnan().any(), backend
        assert accuracy.max_error(out, golden) <= allowed, backend
    reference_backend = qkv.attention(q, k, v, backend="reference", **kwargs)
    assert reference_backend.dtype == q.dtype
    rounding = accuracy.ABS_FLOOR[q.dtype] + plain.abs().max().item() * 2 * torch.finfo(q.dtype).eps
    assert accuracy.max_error(reference_backend, golden) <= rounding


@settings(max_examples=60, deadline=None)
@given(problems())
def test_lse_matches_reference(problem):
    _lse_matches(problem)


def _lse_matches(problem):
    q, k, v, kwargs = problem
    _, golden = qkv.reference.attention(q, k, v, return_lse=True, **kwargs)
    _, plain = accuracy.plain_attention(q, k, v, return_lse=True, **kwargs)
    finite = golden[torch.isfinite(golden)]
    magnitude = finite.abs().max().item() if finite.numel() else 1.0
    allowed = accuracy.budget(_near_the_spec(plain, golden, q.dtype, magnitude), q.dtype)
    for backend in ("eager", "blockwise", "auto", "reference"):
        _, lse = qkv.attention(q, k, v, backend=backend, return_lse=True, **kwargs)
        assert lse.dtype == (torch.float64 if q.dtype == torch.float64 else torch.float32)
        assert lse.shape == q.shape[:3]
        assert torch.equal(torch.isneginf(lse), torch.isneginf(golden)), "empty rows must have lse = -inf"
        assert accuracy.max_error(lse, golden) <= allowed, backend


@settings(max_examples=40, deadline=None)
@given(problems(dtypes=(torch.float32,)))
def test_gradients_match_reference_within_budget(problem):
    _gradients_match(problem)


def _gradients_match(problem):
    q, k, v, kwargs = problem
    bias = kwargs.get("bias")
    leaves = [q, k, v] + ([bias] if bias is not None else [])
    for t in leaves:
        t.requires_grad_(True)
    # drawn from its own seed: an example hypothesis replays gets the same upstream gradient
    grad_out = torch.randn(q.shape[:3] + v.shape[-1:], generator=torch.Generator().manual_seed(q.numel()))

    def grads(fn):
        out = fn()
        return torch.autograd.grad(out, leaves, grad_out.to(out.dtype))

    golden = grads(lambda: qkv.reference.attention(q, k, v, **kwargs))
    plain = grads(lambda: accuracy.plain_attention(q, k, v, **kwargs))
    # A gradient that is exactly 0 in theory (a key alone in its row) comes out of
    # cancelling terms as big as the other gradients: the floor scales with them.
    magnitude = max(1.0, max(g.abs().max().item() for g in golden))
    for backend in FAST_BACKENDS:
        got = grads(lambda backend=backend: qkv.attention(q, k, v, backend=backend, **kwargs))
        for name, g, p, gold in zip("qkvb", got, plain, golden):
            assert not g.isnan().any(), (backend, name)
            plain_error = _near_the_spec(p, gold, q.dtype, magnitude)
            allowed = accuracy.budget(plain_error, q.dtype) + accuracy.ABS_FLOOR[q.dtype] * magnitude
            assert accuracy.max_error(g, gold) <= allowed, (backend, name)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(longest=4 * BLOCK_Q + 40, shortest=BLOCK_Q - 1))
def test_long_sequences_match_reference_within_budget(problem):
    """One to five query blocks: outputs and lse in every dtype, gradients in float32."""
    _outputs_match(problem)
    _lse_matches(problem)
    if problem[0].dtype == torch.float32:
        _gradients_match(problem)
