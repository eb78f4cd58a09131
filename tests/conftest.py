"""Shared helpers: fresh, non-trivial random inputs with fixed seeds."""

from __future__ import annotations

import pytest
import torch

FAST_BACKENDS = ("eager", "sdpa", "blockwise", "auto")
ALL_BACKENDS = ("reference", "eager", "sdpa", "blockwise", "auto")


def pytest_configure(config):
    import os
    import tempfile

    config.addinivalue_line("markers", "slow: a long sweep, run once in CI (QKV_RUN_SLOW=1), not in every test run")
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped, with the reason, where there is none)")
    # The user's own qkv files (course progress, measured dispatch crossovers) never steer a test:
    # every run starts with an empty qkv home of its own.
    os.environ["QKV_HOME"] = tempfile.mkdtemp(prefix="qkv-test-home-")
    # Without a GPU the Triton kernels run in triton's interpreter, which must be chosen before anything
    # (torch's compiler included) imports triton: its own helpers are defined for one mode or the other.
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked slow unless QKV_RUN_SLOW=1 (.ci/run sets it)."""
    import os

    if os.environ.get("QKV_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set QKV_RUN_SLOW=1 to run it (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def qkv_inputs(
    b=2,
    hq=4,
    hkv=None,
    nq=9,
    nk=None,
    d=16,
    dv=None,
    dtype=torch.float32,
    requires_grad=False,
    generator=None,
):
    """(q, k, v) with shapes (B, Hq, Nq, D), (B, Hkv, Nk, D), (B, Hkv, Nk, Dv)."""
    hkv = hq if hkv is None else hkv
    nk = nq if nk is None else nk
    dv = d if dv is None else dv
    q = torch.randn(b, hq, nq, d, generator=generator).to(dtype)
    k = torch.randn(b, hkv, nk, d, generator=generator).to(dtype)
    v = torch.randn(b, hkv, nk, dv, generator=generator).to(dtype)
    return tuple(t.requires_grad_(requires_grad) for t in (q, k, v))


# Fixed seeds, also for hypothesis: every run draws the same examples.
import os  # noqa: E402

from hypothesis import Phase, settings  # noqa: E402

settings.register_profile("qkv", derandomize=True, database=None)
# Under the mutation check (tests/mutants.py) a failing example is all that counts: no shrinking.
settings.register_profile("qkv-mutant", settings.get_profile("qkv"), phases=[Phase.explicit, Phase.generate])
settings.load_profile("qkv-mutant" if os.environ.get("QKV_MUTANT") else "qkv")
