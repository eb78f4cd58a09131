"""The triton backend's tile sizes and launch settings measured on this GPU, then the GPU bench with the best.

    python3 scripts/triton_sweep.py [OUT_DIR]

For head dimension 128 (bfloat16, B x N = 16384 tokens, N = 8192, 16 heads), each
candidate ``(block_m, block_n, num_warps, num_stages)`` runs the same calls (dense forward,
dense and causal forward + backward, a document mask forward), the candidates taking turns
round by round (CUDA events, medians). A candidate that fails to build or differs from SDPA by
more than bfloat16's rounding is dropped. The best by geometric mean of its times is printed,
and the GPU bench then runs with it, so its numbers are those of the settings chosen here.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import qkv
from qkv import bench_gpu, masks
from qkv.backends import triton as tb
from qkv.backends.triton import kernels

CANDIDATES = [(64, 64, 8, 3), (128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3)]  # the first: the defaults
N, HEADS = 8192, 16
HEAD_DIMS = (128,)  # the bench's; 64 takes the same candidates where time allows


def use(candidate: tuple[int, int, int, int]) -> None:
    block_m, block_n, warps, stages = candidate
    tb.block_sizes = lambda head_dim, interpreted, dtype=torch.float16: (block_m, block_n)  # type: ignore[assignment]
    kernels.launch_config = lambda head_dim: {"num_warps": warps, "num_stages": stages}  # type: ignore[assignment]


def cases(head_dim: int) -> dict[str, Callable[[], object]]:
    g = torch.Generator(device="cuda").manual_seed(0)
    batch = bench_gpu.TOKENS // N
    q, k, v, grad = (
        torch.randn(batch, HEADS, N, head_dim, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(4)
    )
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    documents = masks.document(torch.arange(N, device="cuda") // 1000)

    def fwd_bwd(causal: bool) -> Callable[[], object]:
        def step() -> object:
            return torch.autograd.grad(qkv.attention(qg, kg, vg, causal=causal, backend="triton"), (qg, kg, vg), grad)

        return step

    return {
        "dense fwd": lambda: qkv.attention(q, k, v, backend="triton"),
        "dense fwd+bwd": fwd_bwd(False),
        "causal fwd+bwd": fwd_bwd(True),
        "document fwd": lambda: qkv.attention(q, k, v, mask=documents, backend="triton"),
        "_check": lambda: (qkv.attention(q, k, v, causal=True, backend="triton").float()
                           - F.scaled_dot_product_attention(q, k, v, is_causal=True).float()).abs().max().item(),
    }  # fmt: skip


def sweep(head_dim: int) -> tuple[tuple[int, int, int, int], dict]:
    calls = cases(head_dim)
    check = calls.pop("_check")
    working = []
    for candidate in CANDIDATES:
        use(candidate)
        try:
            for call in calls.values():
                call()
            difference = check()
        except Exception as error:  # noqa: BLE001 - a candidate that cannot build here is dropped
            print(f"D={head_dim} {candidate}: failed: {str(error).splitlines()[0][:160]}")
            continue
        if difference > 0.02:
            print(f"D={head_dim} {candidate}: differs from sdpa by {difference:.3g}: dropped")
            continue
        working.append(candidate)
    results: dict[str, dict[str, float]] = {}
    for name, call in calls.items():
        steps = {str(c): (lambda c=c, call=call: (use(c), call())) for c in working}
        results[name] = bench_gpu.cuda_interleaved(steps, rounds=8)
    score = {str(c): math.exp(sum(math.log(results[n][str(c)]) for n in calls) / len(calls)) for c in working}
    for c in working:
        times = "  ".join(f"{name} {results[name][str(c)]:7.3f}" for name in calls)
        print(f"D={head_dim} {c}: {times}  (ms; geometric mean {score[str(c)]:.3f})")
    best = min(working, key=lambda c: score[str(c)])
    print(f"D={head_dim}: best {best}")
    return best, {"times_ms": results, "geometric_mean_ms": score}


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "out")
    out.mkdir(parents=True, exist_ok=True)
    record = {}
    best = {}
    for head_dim in HEAD_DIMS:
        best[head_dim], record[head_dim] = sweep(head_dim)
    chosen = best[128]
    use(chosen)
    print(f"qkv bench --section gpu with D=128's best {chosen} (block_m, block_n, num_warps, num_stages)")
    results = bench_gpu.run_gpu(on_result=lambda m: print(bench_gpu.gpu_line(m), flush=True))
    data = {"environment": bench_gpu.environment(), "best": {str(d): b for d, b in best.items()}, "sweep": record,
            "gpu": [vars(m) for m in results]}  # fmt: skip
    (out / "sweep.json").write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
