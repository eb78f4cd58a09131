"""What a sliding window saves: `qkv.attention` with `qkv.masks.sliding_window` on two backends, timed.

For a sequence of ``length`` random queries, keys and values (1 batch × 4 heads ×
64 dims, in ``env.dtype``, fixed seed), the same function is computed twice:

- ``sdpa`` with the window written out as a dense ``N × N`` bool tensor (``True`` =
  may attend): every one of the ``N²`` scores is computed, then most are thrown away;
- ``blockwise`` with the mask object itself: the backend asks the mask which
  (query block, key block) tiles are empty and never computes them, so the work
  grows like ``N · window`` instead of ``N²``.

Facts: ``max_difference`` (largest absolute difference of the two outputs: the
same function), ``kept_fraction`` (allowed scores / all ``N²``, counted from the
dense mask), ``dense_mask_bytes`` (the dense mask's bytes, one per entry),
``ms_dense`` / ``ms_blockwise`` (median wall-clock of a few interleaved runs, after
a warm-up run each) and ``speedup`` (``ms_dense / ms_blockwise``).

Caveats: timings are of this machine at this moment (other programs share the
cores); the blockwise backend here is qkv's CPU kernel, and on a GPU the peers
are different kernels, so the ratio is not a GPU number.

>>> from qkv.learn.widget import Env
>>> from qkv.learn.widgets import WIDGETS
>>> facts = WIDGETS["sparse-cost"].run({"length": 512, "window": 64}, Env()).facts
>>> facts["kept_fraction"] == sum(min(i + 1, 64) for i in range(512)) / 512**2, facts["dense_mask_bytes"]
(True, 262144)
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

import qkv
from qkv import masks
from qkv.learn.widget import Control, Env, Result, Widget, register

HEADS, HEAD_DIM = 4, 64
SEED = 0


def _timed(fn: Any) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1e3, out


@register
class SparseCost(Widget):
    """Dense-masked SDPA vs the blockwise backend that skips the window's empty tiles."""

    name = "sparse-cost"
    title = "What a sliding window saves"
    controls = (
        Control("length", "select", "sequence length N", 2048, choices=(512, 1024, 2048, 4096)),
        Control("window", "select", "window (keys each query sees)", 128, choices=(64, 128, 256)),
    )
    facts = ("max_difference", "kept_fraction", "dense_mask_bytes", "ms_dense", "ms_blockwise", "speedup")

    def compute(self, args: dict[str, Any], env: Env) -> Result:
        n, window = args["length"], args["window"]
        g = torch.Generator().manual_seed(SEED)
        q, k, v = torch.randn(3, 1, HEADS, n, HEAD_DIM, generator=g, dtype=env.dtype).unbind(0)  # 3 × (B, H, N, D)
        mask = masks.sliding_window(window)
        dense = mask.to_dense(1, 1, n, n)[0, 0]  # (1, 1, N, N) -> (N, N) bool, True = may attend

        def run_dense() -> torch.Tensor:
            return qkv.attention(q, k, v, mask=dense, backend="sdpa")  # (B, H, N, D)

        def run_blockwise() -> torch.Tensor:
            return qkv.attention(q, k, v, mask=mask, backend="blockwise")  # (B, H, N, D)

        repeats = 3 if n >= 4096 else 5
        times: dict[str, list[float]] = {"dense": [], "blockwise": []}
        out_dense = run_dense()  # warm-up: first calls pay for allocation and plans
        out_block = run_blockwise()
        for _ in range(repeats):  # interleaved, so a busy moment hurts both
            ms, out_dense = _timed(run_dense)
            times["dense"].append(ms)
            ms, out_block = _timed(run_blockwise)
            times["blockwise"].append(ms)
        ms_dense = statistics.median(times["dense"])
        ms_block = statistics.median(times["blockwise"])
        kept = int(dense.sum().item())
        facts = {
            "max_difference": float((out_dense - out_block).abs().max().item()),
            "kept_fraction": kept / (n * n),
            "dense_mask_bytes": dense.numel() * dense.element_size(),
            "ms_dense": round(ms_dense, 3),
            "ms_blockwise": round(ms_block, 3),
            "speedup": round(ms_dense / ms_block, 3),
        }
        bars = {
            "kind": "bars",
            "title": f"Milliseconds per call, N = {n}, window = {window} ({HEADS} heads × {HEAD_DIM} dims)",
            "labels": ["sdpa + dense N×N mask", "blockwise (skips empty tiles)"],
            "values": [round(ms_dense, 3), round(ms_block, 3)],
            "caption": f"median of {repeats} interleaved runs each, after a warm-up run",
        }
        mib = facts["dense_mask_bytes"] / 2**20
        text = (
            f"The window keeps **{facts['kept_fraction']:.1%}** of the N² = {n * n:,} scores. The dense route "
            f"stores a {n}×{n} bool mask ({mib:.1f} MiB) and computes every score; the blockwise route reads the "
            f"mask's structure and skips the tiles it rules out: **{facts['speedup']:.1f}×** faster here, and the "
            f"outputs differ by at most {facts['max_difference']:.1e} (rounding: the same function).\n\n"
            "These timings are of this machine at this moment, with other programs sharing its cores; they move "
            "from run to run. The saving grows with N: the dense cost grows like N², the windowed one like "
            "N · window."
        )
        return Result(views=[bars, {"kind": "text", "text": text}], facts=facts)
