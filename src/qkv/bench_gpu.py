"""`qkv bench --section gpu`: qkv's triton backend against torch's fused kernels on one CUDA GPU, side by side.

For each mask pattern, sequence length, dtype and mode (forward, forward + backward) every peer
runs the same attention on the same inputs, on the GPU:

- ``qkv``: ``qkv.attention(..., backend="triton")`` with the structured mask (its tiles planned);
- ``sdpa``: torch's ``scaled_dot_product_attention`` with no mask (``is_causal`` for causal):
  FlashAttention's kernel, the speed of dense attention here; for the sparse patterns it
  computes another function and is shown only as a yardstick;
- ``sdpa+mask``: the same with the equivalent dense bool mask (torch's masked kernels);
- ``flex``: compiled FlexAttention with the equivalent block mask (compile and block-mask
  build times are reported apart, not in its speed).

Each call is timed with CUDA events, the peers taking turns round by round (the order rotating),
after warm-up calls; the median of the rounds is kept. Speed is useful work per second,
4·D·(allowed pairs) floating-point operations per head forward, 3.5× that forward and backward,
as in `qkv.bench`. Before timing, qkv's output is compared with the float32 ``sdpa+mask`` result
(or ``sdpa`` where they compute the same function): its largest difference is printed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import qkv
from qkv.bench import Pattern, _allowed_pairs, _Flex, interleaved, patterns

GPU_PEERS = ("qkv", "sdpa", "sdpa+mask", "flex")
GPU_PATTERNS = ("dense", "causal", "sliding_window", "document")
GPU_N = (2048, 8192)
DENSE_MASK_MAX_N = 16384  # sdpa+mask reads an N x N bool mask (and its backward an N x N gradient buffer)
TOKENS = 16384  # batch x sequence length of every call: short sequences come in a larger batch


@dataclass
class GpuMeasurement:
    pattern: str
    n: int
    batch: int
    dtype: str
    mode: str  # "fwd" or "fwd+bwd"
    ms: dict[str, float] = field(default_factory=dict)
    tflops: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    max_difference: float | None = None  # qkv against the float32 reference peer, on the forward output
    flex_compile_s: float | None = None

    def ratio(self, peer: str) -> float | None:
        """Peer time over qkv time: above 1, qkv is faster."""
        mine, theirs = self.ms.get("qkv"), self.ms.get(peer)
        return theirs / mine if mine and theirs else None


def cuda_time(call: Callable[[], object]) -> tuple[float, object]:
    """``(seconds, result)`` of one call on the GPU, between two CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    result = call()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3, result


def cuda_interleaved(steps: dict[str, Callable[[], object]], rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds of each step on the GPU (CUDA events), the steps taking turns round by round
    (`qkv.bench.interleaved`)."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    torch.cuda.synchronize()
    times, _ = interleaved(steps, rounds, timer=cuda_time)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def _calls(pattern: Pattern, q, k, v, flex: _Flex, m: GpuMeasurement) -> dict[str, Callable[[], torch.Tensor]]:
    n = q.shape[2]
    calls: dict[str, Callable[[], torch.Tensor]] = {
        "qkv": lambda: qkv.attention(q, k, v, mask=pattern.mask, causal=pattern.causal, backend="triton"),
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=pattern.causal),
    }
    if pattern.dense is not None and n <= DENSE_MASK_MAX_N:
        calls["sdpa+mask"] = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=pattern.dense)
    elif pattern.dense is not None:
        m.notes["sdpa+mask"] = f"skipped above N={DENSE_MASK_MAX_N} (its N x N mask)"
    if flex.error is not None:
        m.notes["flex"] = flex.error
    else:
        start = time.perf_counter()
        block_mask = None
        if pattern.mask_mod is not None:
            block_mask = flex.create_block_mask(pattern.mask_mod, None, None, n, n, device="cuda")
        m.notes["flex"] = f"block mask built in {time.perf_counter() - start:.2f} s"
        calls["flex"] = lambda: flex.fn(q, k, v, block_mask=block_mask)
    return calls


def measure_gpu(
    pattern: Pattern,
    n: int,
    dtype: torch.dtype,
    backward: bool,
    flex: _Flex,
    *,
    heads: int = 16,
    head_dim: int = 128,
    rounds: int = 10,
) -> GpuMeasurement:
    """One case: every peer's median time and speed, qkv's difference from the reference peer."""
    batch = max(1, TOKENS // n)
    g = torch.Generator(device="cuda").manual_seed(0)

    def draw() -> torch.Tensor:
        return torch.randn(batch, heads, n, head_dim, generator=g, device="cuda", dtype=dtype)

    q, k, v = (draw().requires_grad_(backward) for _ in range(3))
    grad = draw()
    m = GpuMeasurement(pattern.name, n, batch, str(dtype).removeprefix("torch."), "fwd+bwd" if backward else "fwd")
    calls = _calls(pattern, q, k, v, flex, m)
    with torch.no_grad():
        reference_peer = "sdpa" if pattern.dense is None or pattern.name == "causal" else "sdpa+mask"
        if reference_peer in calls:
            mine, theirs = calls["qkv"]().float(), calls[reference_peer]().float()
            m.max_difference = (mine - theirs).abs().max().item()
    steps: dict[str, Callable[[], object]] = {}
    for peer, call in calls.items():
        if backward:

            def step(call=call):
                return torch.autograd.grad(call(), (q, k, v), grad)
        else:

            def step(call=call):
                with torch.no_grad():
                    return call()

        try:
            start = time.perf_counter()
            step()  # the first call: FlexAttention compiles, triton builds its kernels
            torch.cuda.synchronize()
            if peer == "flex":
                m.flex_compile_s = time.perf_counter() - start
        except Exception as error:  # a peer that cannot run this case is reported, not fatal
            m.notes[peer] = f"failed: {str(error).splitlines()[0][:200]}"
            continue
        steps[peer] = step
    work = 4 * head_dim * _allowed_pairs(pattern, n) * batch * heads * (3.5 if backward else 1.0)
    for peer, ms in cuda_interleaved(steps, rounds).items():
        m.ms[peer] = ms
        m.tflops[peer] = work / (ms / 1e3) / 1e12
    return m


def run_gpu(
    ns: tuple[int, ...] = GPU_N,
    names: tuple[str, ...] = GPU_PATTERNS,
    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16,),
    modes: tuple[bool, ...] = (False, True),
    on_result: Callable[[GpuMeasurement], None] | None = None,
    **shape: int,
) -> list[GpuMeasurement]:
    """`measure_gpu` over lengths, patterns, dtypes and modes; refused without a CUDA GPU."""
    if not torch.cuda.is_available():
        raise qkv.AttentionError("qkv bench --section gpu needs a CUDA GPU: torch.cuda.is_available() is False here")
    flex = _Flex()
    results = []
    for n in ns:
        for pattern in patterns(n, names, device="cuda"):
            for dtype in dtypes:
                for backward in modes:
                    m = measure_gpu(pattern, n, dtype, backward, flex, **shape)
                    results.append(m)
                    if on_result is not None:
                        on_result(m)
    return results


def environment() -> dict:
    import triton

    return {"torch": torch.__version__, "triton": triton.__version__, "device": torch.cuda.get_device_name()}


def matmul_tflops(dtype: torch.dtype, n: int = 8192) -> float:
    """This GPU's rate on an ``n x n x n`` matrix product in ``dtype`` (random inputs, median of 10): the
    ceiling the attention speeds are set against."""
    a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
    ms = cuda_interleaved({"matmul": lambda: a @ b}, rounds=10)["matmul"]
    return 2 * n**3 / (ms / 1e3) / 1e12


def gpu_line(m: GpuMeasurement, peaks: dict[str, float] | None = None) -> str:
    """One result as a line: qkv's time and speed (and its share of ``peaks[dtype]``, the matrix-product
    rate), each peer's ratio (peer time / qkv time), notes."""
    mine = m.ms.get("qkv")
    head = f"{m.pattern:>22} N={m.n:<6} B={m.batch:<3} {m.dtype:<8} {m.mode:<8}"
    if mine is None:
        return f"{head} qkv did not run: {m.notes.get('qkv', '?')}"
    parts = [f"{head} qkv {mine:8.3f} ms {m.tflops['qkv']:6.1f} TFLOP/s"]
    if peaks and m.dtype in peaks:
        parts[0] += f" ({m.tflops['qkv'] / peaks[m.dtype]:.0%} of the matrix product)"
    for peer in GPU_PEERS[1:]:
        r = m.ratio(peer)
        parts.append(f"{peer} {r:.2f}x ({m.tflops[peer]:.0f})" if r is not None else f"{peer} -")
    if m.max_difference is not None:
        parts.append(f"max|diff| {m.max_difference:.1e}")
    failed = {p: note for p, note in m.notes.items() if note.startswith("failed") or p == "sdpa+mask"}
    if failed:
        parts.append(str(failed))
    return "  ".join(parts)
