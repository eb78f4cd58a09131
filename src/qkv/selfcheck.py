"""`qkv check`: every backend on this machine against the float64 reference, on fresh random inputs.

Each case runs every backend, measures its largest error against
`qkv.reference`, and compares it with the error budget of `qkv.accuracy`
(a small multiple of what a plain same-dtype computation errs). A backend that
cannot run a case on this machine (the Triton kernels without a GPU) is listed
with its reason, not run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qkv import accuracy, reference
from qkv.backends import BACKENDS
from qkv.errors import AttentionError
from qkv.functional import attention, explain_dispatch


@dataclass(frozen=True)
class Case:
    name: str
    shape: tuple[int, int, int, int, int, int]  # (B, Hq, Hkv, Nq, Nk, D)
    dtype: torch.dtype
    causal: bool = False
    masked: bool = False  # a random mask with one query row that sees no key
    biased: bool = False


@dataclass(frozen=True)
class Row:
    case: str
    dtype: str
    backend: str
    error: float | None  # None: not run here (see ``skipped``)
    budget: float
    auto_choice: str
    skipped: str | None = None  # why the backend cannot run this case on this machine

    @property
    def ok(self) -> bool:
        return self.error is None or self.error <= self.budget


CASES = (
    Case("dense", (2, 4, 4, 64, 64, 32), torch.float32),
    Case("causal, Nq < Nk (KV cache)", (1, 4, 4, 7, 64, 32), torch.float32, causal=True),
    Case("grouped-query 8:2", (1, 8, 2, 48, 48, 64), torch.float32, causal=True),
    Case("mask with an empty row + bias", (2, 2, 2, 33, 40, 16), torch.float32, masked=True, biased=True),
    Case("dense", (1, 4, 4, 128, 128, 64), torch.bfloat16),
    Case("causal", (1, 4, 4, 128, 128, 64), torch.float16, causal=True),
)


def _inputs(case: Case, generator: torch.Generator):
    b, hq, hkv, nq, nk, d = case.shape
    q = torch.randn(b, hq, nq, d, generator=generator).to(case.dtype)
    k = torch.randn(b, hkv, nk, d, generator=generator).to(case.dtype)
    v = torch.randn(b, hkv, nk, d, generator=generator).to(case.dtype)
    kwargs: dict = {"causal": case.causal}
    if case.masked:
        mask = torch.rand(b, 1, nq, nk, generator=generator) > 0.3  # (B, 1, Nq, Nk)
        mask[:, :, 0] = False
        kwargs["mask"] = mask
    if case.biased:
        kwargs["bias"] = torch.randn(1, hq, nq, nk, generator=generator).to(case.dtype)
    return q, k, v, kwargs


def run(seed: int = 0) -> list[Row]:
    """One row per (case, backend)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for case in CASES:
        q, k, v, kwargs = _inputs(case, generator)
        golden = reference.attention(q, k, v, **kwargs)
        allowed_budget = accuracy.budget(
            accuracy.max_error(accuracy.plain_attention(q, k, v, **kwargs), golden), case.dtype
        )
        auto = explain_dispatch(q, k, v, **kwargs).backend
        for name in BACKENDS:
            if name == "reference":
                continue
            dtype = str(case.dtype).removeprefix("torch.")
            try:
                explain_dispatch(q, k, v, backend=name, **kwargs)  # the backend's own refusal, before running it
            except AttentionError as refusal:
                why = str(refusal).split(": ", 1)[-1].split("; use backend=")[0]
                rows.append(Row(case.name, dtype, name, None, allowed_budget, auto, skipped=why))
                continue
            err = accuracy.max_error(attention(q, k, v, backend=name, **kwargs), golden)
            rows.append(Row(case.name, dtype, name, err, allowed_budget, auto))
    return rows
