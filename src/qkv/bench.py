"""`qkv bench`: qkv against its peers, measured side by side in one run.

For each mask pattern and sequence length, every peer runs the same attention
on the same inputs:

- ``qkv``: ``qkv.attention(..., backend="auto")`` with the structured mask;
- ``sdpa+mask``: torch's ``scaled_dot_product_attention`` with the equivalent dense bool mask;
- ``sdpa``: torch's fused kernel with no mask at all (``is_causal`` for causal),
  the speed of dense attention on this machine; for sparse patterns it computes
  a different function and is shown only as a yardstick;
- ``flex``: compiled FlexAttention with the equivalent block mask; its compile
  time and block-mask build time are reported separately, not in its speed;
- ``naive``: softmax(Q Kᵀ) V with the mask, materialized (skipped where its
  N × N scores would not fit comfortably in memory).

Speed is useful work per second: 4·D·(allowed query–key pairs) floating-point
operations per head for the forward pass, 2.5× that for the backward pass (the
FlashAttention convention). Ratios are qkv's speed over the peer's: above 1
means qkv is faster. Peak extra memory is the growth of the process's resident
set during one call (Linux), beyond the inputs.
"""

from __future__ import annotations

import ctypes
import gc
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

import qkv
from qkv import masks, mods
from qkv.backends.blockwise import cpu_kernel
from qkv.backends.common import crossovers

PEERS = ("qkv", "sdpa+mask", "sdpa", "flex", "naive")
NAIVE_MAX_N = 4096


@dataclass(frozen=True)
class Pattern:
    """A mask pattern, built for one sequence length."""

    name: str
    mask: masks.Mask | None  # what qkv gets
    causal: bool
    dense: torch.Tensor | None  # the same pattern as a bool (Nq, Nk) tensor, for sdpa and naive
    mask_mod: Callable | None  # the same pattern for FlexAttention


def patterns(
    n: int, names: tuple[str, ...], window: int = 256, seed: int = 0, device: str | torch.device = "cpu"
) -> list[Pattern]:
    """The mask patterns at length ``n``, each as qkv's mask, a dense bool tensor and a FlexAttention mask_mod,
    with every tensor on ``device`` (the random documents and layouts are drawn on the CPU: the same on any device)."""
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(n, device=device)[:, None]  # (N, 1)
    j = torch.arange(n, device=device)[None, :]  # (1, N)
    out = []
    for name in names:
        if name == "dense":
            out.append(Pattern(name, None, False, None, None))
        elif name == "causal":
            out.append(Pattern(name, None, True, j <= i, lambda b, h, qi, ki: ki <= qi))
        elif name == "sliding_window":
            out.append(
                Pattern(
                    f"sliding_window({window})",
                    masks.sliding_window(window),
                    False,
                    (j <= i) & (j > i - window),
                    lambda b, h, qi, ki: (ki <= qi) & (ki > qi - window),
                )
            )
        elif name == "document":
            # packed sequences: documents of random lengths between 64 and n / 4
            lengths, total = [], 0
            while total < n:
                length = int(torch.randint(64, max(65, n // 4), (1,), generator=g))
                lengths.append(min(length, n - total))
                total += lengths[-1]
            doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(device)  # (N,)
            out.append(
                Pattern(
                    f"document({len(lengths)} docs)",
                    masks.document(doc),
                    False,
                    doc[:, None] == doc[None, :],
                    lambda b, h, qi, ki, doc=doc: doc[qi] == doc[ki],
                )
            )
        elif name == "block_sparse":
            block = 128
            nb = math.ceil(n / block)
            layout = torch.rand(nb, nb, generator=g) < 0.15
            layout = (layout | torch.eye(nb, dtype=torch.bool)).to(device)  # every query block sees itself
            dense = layout.repeat_interleave(block, 0).repeat_interleave(block, 1)[:n, :n]
            out.append(
                Pattern(
                    "block_sparse(15%, 128)",
                    masks.block_sparse(layout, block),
                    False,
                    dense,
                    lambda b, h, qi, ki, layout=layout, block=block: layout[qi // block, ki // block],
                )
            )
        else:
            raise ValueError(f"unknown pattern {name!r}")
    return out


def _allowed_pairs(pattern: Pattern, n: int) -> int:
    return n * n if pattern.dense is None else int(pattern.dense.sum())


# ----------------------------------------------------------------------------- measuring


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_resident_bytes() -> int | None:
    """The high-water mark of this process's resident set, in bytes: Linux's ``VmHWM``, else ``ru_maxrss``.

    Not ``ru_maxrss`` on Linux: a process started with ``vfork`` or ``posix_spawn`` (Python's
    ``subprocess`` does) inherits its parent's peak there, so a small child of a large parent
    would report the parent's.
    """
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


def peak_extra_mib(fn: Callable[[], object]) -> float | None:
    """Growth of the resident set's high-water mark during ``fn()``, in MiB (None off Linux)."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    base = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
    except OSError:
        return None
    result = fn()
    peak = _status_kib("VmHWM")
    del result
    if base is None or peak is None:
        return None
    return max(0.0, (peak - base) / 1024)


def measured(x: float | None, spec: str) -> str:
    """A measured number in ``format`` spec ``spec``, or ``-`` where it was not measured (off Linux, a failed peer).

    >>> measured(12.345, ".1f"), measured(None, ".1f")
    ('12.3', '-')
    """
    return "-" if x is None else format(x, spec)


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def wall_clock(call: Callable[[], object]) -> tuple[float, object]:
    """``(seconds, result)`` of one call, by the wall clock."""
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def interleaved(
    calls: dict[str, Callable[[], object]],
    rounds: int,
    timer: Callable[[Callable[[], object]], tuple[float, object]] = wall_clock,
) -> tuple[dict[str, list[float]], dict[str, object]]:
    """The times of each call (``timer``'s, the wall clock's by default), one per round, and each call's last result.

    The calls take turns, one each per round with the order rotating, so a slow
    spell of the machine (clock changes, a neighbour's load) falls on all of them
    alike: ratios of the medians, or of one round's times, hold up better than
    the times do.
    """
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, object] = {}
    for r in range(rounds):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            seconds, results[name] = timer(calls[name])
            times[name].append(seconds)
    return times, results


@dataclass
class Measurement:
    pattern: str
    n: int
    mode: str  # "fwd" or "fwd+bwd"
    seconds: dict[str, float | None] = field(default_factory=dict)
    gflops: dict[str, float | None] = field(default_factory=dict)
    extra_mib: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    qkv_backend: str = ""
    flex_compile_s: float | None = None
    flex_block_mask_s: float | None = None

    def ratio(self, peer: str) -> float | None:
        mine, theirs = self.seconds.get("qkv"), self.seconds.get(peer)
        if not mine or not theirs:
            return None
        return theirs / mine


def allow_recompiles(dynamo_config: object, count: int) -> None:
    """Let torch recompile FlexAttention ``count`` times in this process (a compile per shape and mask), past
    torch's default of 8, after which it would quietly run FlexAttention uncompiled."""
    for name in ("recompile_limit", "accumulated_recompile_limit"):
        setattr(dynamo_config, name, max(getattr(dynamo_config, name), count))


class _Flex:
    """Compiled FlexAttention, if this torch has it; compile time recorded once per shape and mask.

    Every (shape, mask) compiles anew (``dynamic=False``, as FlexAttention is meant to
    run); a full run has dozens of them, past torch's default of 8 recompilations, after
    which it would quietly run FlexAttention uncompiled. The limit is raised for this process.
    """

    RECOMPILES = 256

    def __init__(self) -> None:
        self.error: str | None = None
        try:
            import torch._dynamo.config as dynamo_config
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            allow_recompiles(dynamo_config, self.RECOMPILES)

            self.create_block_mask = create_block_mask
            self.fn = torch.compile(flex_attention, dynamic=False)
        except Exception as error:  # pragma: no cover - depends on the torch build
            self.error = f"unavailable: {error}"
        self.compiled_for: set[tuple] = set()


def _peer_calls(pattern: Pattern, q, k, v, flex: _Flex, m: Measurement) -> dict[str, Callable[[], torch.Tensor]]:
    n = q.shape[2]
    calls: dict[str, Callable[[], torch.Tensor]] = {}
    calls["qkv"] = lambda: qkv.attention(q, k, v, mask=pattern.mask, causal=pattern.causal)
    m.qkv_backend = qkv.explain_dispatch(q, k, v, mask=pattern.mask, causal=pattern.causal).backend
    if pattern.dense is not None:
        calls["sdpa+mask"] = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=pattern.dense)
    calls["sdpa"] = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=pattern.causal)
    if flex.error is None and q.requires_grad and q.device.type == "cpu":
        m.notes["flex"] = "FlexAttention has no backward on the CPU"
    elif flex.error is None:
        start = time.perf_counter()
        block_mask = None
        if pattern.mask_mod is not None:
            block_mask = flex.create_block_mask(pattern.mask_mod, None, None, n, n, device=str(q.device))
        m.flex_block_mask_s = time.perf_counter() - start
        calls["flex"] = lambda: flex.fn(q, k, v, block_mask=block_mask)
    else:
        m.notes["flex"] = flex.error
    if n <= NAIVE_MAX_N:
        scale = q.shape[-1] ** -0.5

        def naive() -> torch.Tensor:
            s = (q @ k.transpose(-2, -1)) * scale  # (B, H, N, D) @ (B, H, D, N) -> (B, H, N, N)
            if pattern.dense is not None:
                s = s.masked_fill(~pattern.dense, float("-inf"))
            return torch.softmax(s, dim=-1) @ v  # (B, H, N, N) @ (B, H, N, D) -> (B, H, N, D)

        calls["naive"] = naive
    else:
        m.notes["naive"] = f"skipped above N={NAIVE_MAX_N} (its N x N scores)"
    return calls


def measure(
    pattern: Pattern,
    n: int,
    backward: bool,
    flex: _Flex,
    *,
    batch: int = 1,
    heads: int = 8,
    head_dim: int = 64,
    repeats: int = 3,
    seed: int = 0,
) -> Measurement:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, n, head_dim, generator=g).requires_grad_(backward) for _ in range(3))
    grad = torch.randn(batch, heads, n, head_dim, generator=g)
    m = Measurement(pattern.name, n, "fwd+bwd" if backward else "fwd")
    calls = _peer_calls(pattern, q, k, v, flex, m)
    work = 4 * head_dim * _allowed_pairs(pattern, n) * batch * heads * (3.5 if backward else 1.0)
    steps: dict[str, Callable[[], object]] = {}
    for peer, call in calls.items():
        if backward:

            def step(call=call):
                out = call()
                (dq, dk, dv) = torch.autograd.grad(out, (q, k, v), grad)
                return dq
        else:

            def step(call=call):
                with torch.no_grad():
                    return call()

        try:
            if peer == "flex":
                start = time.perf_counter()
                step()  # compiles
                m.flex_compile_s = time.perf_counter() - start
            m.extra_mib[peer] = peak_extra_mib(step)  # also the warm-up call
        except Exception as error:  # a peer that cannot run this case is reported, not fatal
            m.notes[peer] = f"failed: {str(error).splitlines()[0][:200]}"
            continue
        steps[peer] = step
    times, _ = interleaved(steps, repeats)
    for peer, ts in times.items():
        m.seconds[peer] = statistics.median(ts)
        m.gflops[peer] = work / m.seconds[peer] / 1e9
    return m


# ----------------------------------------------------------------------------- the command


QUICK = {"patterns": ("dense", "causal", "sliding_window", "document", "block_sparse"), "n": (1024, 4096, 8192)}
FULL = {
    "patterns": ("dense", "causal", "sliding_window", "document", "block_sparse"),
    "n": (512, 1024, 2048, 4096, 8192, 16384),
}


def run(
    ns: tuple[int, ...],
    pattern_names: tuple[str, ...],
    modes: tuple[bool, ...] = (False, True),
    repeats: int = 3,
    on_result: Callable[[Measurement], None] | None = None,
    **shape: int,
) -> list[Measurement]:
    flex = _Flex()
    results = []
    for n in ns:
        for pattern in patterns(n, pattern_names):
            for backward in modes:
                if backward and n > 8192:
                    continue  # the dense-mask peer's backward needs several N x N buffers
                m = measure(pattern, n, backward, flex, repeats=repeats, **shape)
                results.append(m)
                if on_result is not None:
                    on_result(m)
    return results


def environment() -> dict:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "device": "cpu",
        "blockwise_kernel": cpu_kernel.status(),
    }


def to_json(results: list[Measurement]) -> dict:
    return {
        "environment": environment(),
        "definition": "ratio = peer seconds / qkv seconds (above 1: qkv faster); gflops = useful work per second",
        "results": [dict(asdict(m), ratios={p: m.ratio(p) for p in PEERS if p != "qkv"}) for m in results],
    }


def table(results: list[Measurement]):
    """A rich table of the results."""
    from rich.table import Table

    t = Table(title="qkv vs peers (ratio = peer time / qkv time; above 1: qkv faster)")
    for column in (
        "pattern",
        "N",
        "pass",
        "qkv backend",
        "qkv ms",
        "qkv GFLOP/s",
        "vs sdpa+mask",
        "vs sdpa (no mask)",
        "vs flex",
        "vs naive",
        "qkv MiB",
        "sdpa+mask MiB",
        "flex MiB",
        "flex compile s",
    ):
        t.add_column(column, justify="right")

    for m in results:
        t.add_row(
            m.pattern,
            str(m.n),
            m.mode,
            m.qkv_backend,
            measured(m.seconds.get("qkv") and m.seconds["qkv"] * 1e3, ".1f"),
            measured(m.gflops.get("qkv"), ".1f"),
            measured(m.ratio("sdpa+mask"), ".1f"),
            measured(m.ratio("sdpa"), ".2f"),
            measured(m.ratio("flex"), ".2f"),
            measured(m.ratio("naive"), ".1f"),
            measured(m.extra_mib.get("qkv"), ".0f"),
            measured(m.extra_mib.get("sdpa+mask"), ".0f"),
            measured(m.extra_mib.get("flex"), ".0f"),
            measured(m.flex_compile_s, ".1f"),
        )
    return t


# ----------------------------------------------------------------------------- long sequences


LONG_QUICK = (8192, 16384, 32768)
LONG_FULL = (8192, 16384, 32768, 65536, 131072, 262144)
LONG_PATTERNS = ("sliding_window", "causal", "document")
LONG_QUADRATIC_MAX_N = 65536  # causal attention's work grows as N²: longer runs take minutes on a CPU
LONG_DENSE_MAX_N = 16384  # sdpa+mask holds the N x N bool mask and scores
LONG_FLEX_MAX_N = 32768  # FlexAttention's block mask is built from the N x N mask_mod on the CPU (once per case)
LONG_DOCUMENT = 4096  # packed documents of this many tokens


@dataclass
class LongMeasurement:
    """One long call, forward only: each peer's seconds and peak extra MiB, and why a peer did not run."""

    pattern: str
    n: int
    seconds: dict[str, float] = field(default_factory=dict)
    extra_mib: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    plan_bytes: int = 0

    def ratio(self, peer: str) -> float | None:
        mine, theirs = self.seconds.get("qkv"), self.seconds.get(peer)
        return theirs / mine if mine and theirs else None


def _long_pattern(name: str, n: int, window: int = 256) -> tuple[masks.Mask | None, bool, Callable]:
    """``(qkv's mask, causal, FlexAttention's mask_mod)`` of a long pattern."""
    if name == "sliding_window":
        return masks.sliding_window(window), False, lambda b, h, qi, ki: (ki <= qi) & (ki > qi - window)
    if name == "causal":
        return None, True, lambda b, h, qi, ki: ki <= qi
    if name == "document":
        doc = torch.arange(n) // LONG_DOCUMENT  # (N,)
        return masks.document(doc), False, lambda b, h, qi, ki: doc[qi] == doc[ki]
    raise ValueError(f"unknown pattern {name!r}")


def _long_flex() -> tuple[Callable | None, Callable | None, str]:
    """FlexAttention compiled if it compiles here, else eager: ``(attention, create_block_mask, how)``."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except Exception as error:  # pragma: no cover - depends on the torch build
        return None, None, f"unavailable: {error}"
    try:
        import torch._dynamo.config as dynamo_config

        allow_recompiles(dynamo_config, _Flex.RECOMPILES)
        compiled = torch.compile(flex_attention, dynamic=False)
        q = torch.randn(1, 1, 256, 16)
        compiled(q, q, q, block_mask=create_block_mask(lambda b, h, qi, ki: ki <= qi, None, None, 256, 256, "cpu"))
        return compiled, create_block_mask, "compiled"
    except Exception as error:  # no compiler on this machine: eager flex (slow, for the record)
        return flex_attention, create_block_mask, f"eager (compile failed: {str(error).splitlines()[0][:80]})"


def measure_long(
    name: str, n: int, flex: tuple[Callable | None, Callable | None, str], *, head_dim: int = 64, repeats: int = 2
) -> LongMeasurement:
    """qkv (blockwise), SDPA with a dense mask and FlexAttention on one long forward call (B = H = 1)."""
    from qkv.backends.blockwise import plan as blockwise_plan

    mask, causal, mask_mod = _long_pattern(name, n)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, head_dim, generator=g) for _ in range(3))
    m = LongMeasurement(repr(mask) if mask is not None else "causal", n)
    m.plan_bytes = blockwise_plan._plan(mask, causal, (1, 1, n, n), torch.device("cpu")).nbytes
    steps: dict[str, Callable[[], object]] = {
        "qkv": lambda: qkv.attention(q, k, v, mask=mask, causal=causal, backend="blockwise"),
    }
    if n <= LONG_DENSE_MAX_N:

        def sdpa() -> torch.Tensor:
            i = torch.arange(n)
            dense = mask_mod(None, None, i[:, None], i[None, :])  # (N, N): built inside, counted in its memory
            return F.scaled_dot_product_attention(q, k, v, attn_mask=dense)

        steps["sdpa+mask"] = sdpa
    else:
        m.notes["sdpa+mask"] = f"skipped above N={LONG_DENSE_MAX_N} (its N x N mask and scores)"
    attend, block_mask_of, how = flex
    if attend is None or block_mask_of is None:
        m.notes["flex"] = how
    elif n > LONG_FLEX_MAX_N:
        m.notes["flex"] = f"skipped above N={LONG_FLEX_MAX_N} (its block mask is built from the N x N mask_mod)"
    else:
        # built once, as a model would (qkv's plans of offset-invariant masks are kept alike); its time and
        # memory are reported beside flex's, not in them
        built: list[object] = []
        start = time.perf_counter()
        build_mib = peak_extra_mib(lambda: built.append(block_mask_of(mask_mod, None, None, n, n, "cpu")))
        m.notes["flex"] = f"{how}; block mask built in {time.perf_counter() - start:.2f} s"
        if build_mib is not None:
            m.notes["flex"] += f", {build_mib:.0f} MiB"
        steps["flex"] = lambda: attend(q, k, v, block_mask=built[0])
    for peer, step in list(steps.items()):
        with torch.no_grad():
            try:
                m.extra_mib[peer] = peak_extra_mib(step)  # also the warm-up call
            except Exception as error:  # a peer that cannot run this case is reported, not fatal
                m.notes[peer] = f"failed: {str(error).splitlines()[0][:120]}"
                del steps[peer]
    with torch.no_grad():
        times, _ = interleaved(steps, repeats)
    m.seconds = {peer: statistics.median(ts) for peer, ts in times.items()}
    return m


def run_long(
    ns: tuple[int, ...],
    names: tuple[str, ...] = LONG_PATTERNS,
    on_result: Callable[[LongMeasurement], None] | None = None,
) -> list[LongMeasurement]:
    """`measure_long` for each pattern and length (causal only up to ``LONG_QUADRATIC_MAX_N``)."""
    flex = _long_flex()
    results = []
    for name in names:
        for n in ns:
            if name == "causal" and n > LONG_QUADRATIC_MAX_N:
                continue
            m = measure_long(name, n, flex)
            results.append(m)
            if on_result is not None:
                on_result(m)
    return results


def long_line(m: LongMeasurement) -> str:
    """One result as a line: times, ratios (peer time / qkv time) and peak extra MiB, side by side."""

    def mib(peer: str) -> str:
        return measured(m.extra_mib.get(peer), ".0f")

    parts = [
        f"{m.pattern:>22} N={m.n:<7} qkv {m.seconds.get('qkv', float('nan')) * 1e3:9.1f} ms {mib('qkv'):>5} MiB"
        f" (plan {m.plan_bytes / 1024:.0f} KiB)"
    ]
    for peer in ("sdpa+mask", "flex"):
        r = m.ratio(peer)
        if r is not None:
            parts.append(f"{peer} {r:.1f}x {mib(peer)} MiB")
        else:
            parts.append(f"{peer} - ({m.notes.get(peer, 'not run')})")
    if m.ratio("flex") is not None:
        parts[-1] += f" [{m.notes['flex']}]"
    return "  ".join(parts)


# ----------------------------------------------------------------------------- the ring


RING_WORLDS = (1, 2, 4)
RING_N = 8192


def run_ring(
    n: int = RING_N,
    worlds: tuple[int, ...] = RING_WORLDS,
    *,
    heads: int = 4,
    dim: int = 64,
    window: int = 256,
    on_result: Callable[[int, list[dict]], None] | None = None,
    timeout: float = 900.0,
) -> dict[int, list[dict]]:
    """Ring attention (`qkv.distributed`) on ``W`` local gloo processes for each ``W`` of ``worlds``: per case and
    layout, the tiles each rank computes, their balance (max / mean), the ring's forward and forward + backward
    times, one process's time, and the largest difference to one process's result (`qkv.distributed.demo`)."""
    from qkv.distributed import spawn
    from qkv.distributed.demo import _spawned

    results = {}
    for world in worlds:
        rows = spawn(_spawned, world, (n, heads, dim, window), timeout=timeout)[0]
        results[world] = rows
        if on_result is not None:
            on_result(world, rows)
    return results


def ring_lines(world: int, rows: list[dict]) -> list[str]:
    """One line per case and layout of one ``W``: balance, tiles, times, largest difference."""
    return [
        f"{row['case']:>22} W={world} {row['layout']:<10} balance {row['balance']:.2f} (tiles "
        f"{', '.join(map(str, row['tiles']))})  ring fwd {row['forward']:.3f} s, fwd+bwd "
        f"{row['forward+backward']:.3f} s; one process fwd {row['one process']:.3f} s ({row['threads']} threads "
        f"per rank); max |diff| {row['error']:.1e}"
        for row in rows
    ]


# ----------------------------------------------------------------------------- crossovers


CROSSOVER_SIZES = {"quick": (512, 1024), "full": (256, 512, 1024, 2048)}
CAUSAL_SIZES = {"quick": (64, 128, 512, 2048, 4096), "full": (64, 128, 256, 512, 1024, 2048, 4096)}


def measure_crossovers(
    sizes: tuple[int, ...] = CROSSOVER_SIZES["quick"],
    causal_sizes: tuple[int, ...] = CAUSAL_SIZES["quick"],
    repeats: int = 3,
    heads: int = 8,
    head_dim: int = 64,
) -> dict[str, float | int]:
    """This machine's values for the keys of `qkv.backends.common.crossovers` (forward passes, float32).

    Each is measured as the estimates use it: ``eager`` and ``dense_bias`` as times relative to
    torch's fused kernel; ``dense_enough`` (torch's kernels per block) and ``dense_enough_kernel``
    (qkv's CPU kernel, on calls of ``kernel_min_scores`` or more) as ``kept x sdpa time / blockwise
    time`` over document masks that keep 40-90% of the tiles, the share at which both take as long;
    the causal range as the sizes at which the CPU kernel beats torch's causal kernel.
    """
    table = crossovers.load(user=None)
    g = torch.Generator().manual_seed(0)

    def inputs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = (torch.randn(1, heads, n, head_dim, generator=g) for _ in range(3))
        return q, k, v

    def ratio(calls: dict[str, Callable[[], object]]) -> float:
        """Median over rounds of the first call's time over the second's."""
        with torch.no_grad():
            for call in calls.values():
                call()
            times, _ = interleaved(calls, max(repeats, 1))
        first, second = (times[name] for name in calls)
        return statistics.median(a / b for a, b in zip(first, second))

    found: dict[str, float | int] = {}
    eager, dense_bias = [], []
    for n in sizes:
        q, k, v = inputs(n)
        alibi = mods.alibi(heads)
        sdpa = lambda q=q, k=k, v=v: qkv.attention(q, k, v, backend="sdpa")  # noqa: E731
        eager.append(ratio({"eager": lambda q=q, k=k, v=v: qkv.attention(q, k, v, backend="eager"), "sdpa": sdpa}))
        biased = ratio(
            {
                "alibi": lambda q=q, k=k, v=v, alibi=alibi: qkv.attention(q, k, v, bias=alibi, backend="sdpa"),
                "sdpa": sdpa,
            }
        )
        dense_bias.append(max(biased - 1.0, 0.01))
    found["eager"], found["dense_bias"] = round(statistics.median(eager), 2), round(statistics.median(dense_bias), 2)
    kernel = cpu_kernel.available()
    for key, large in (("dense_enough", False), ("dense_enough_kernel", True)):
        shares = [
            _break_even(n, first_document, inputs, ratio, table.probe_block, kernel=large)
            for n in sizes
            if (n * n >= table.kernel_min_scores) == large and (kernel or not large)
            for first_document in (0.1, 0.3, 0.5)
        ]
        if shares:
            found[key] = round(min(max(statistics.median(shares), 0.05), 0.99), 2)
    if kernel:
        faster = []
        for n in causal_sizes:
            q, k, v = inputs(n)
            with _kernel(True):
                blockwise = ratio(
                    {
                        "blockwise": lambda q=q, k=k, v=v: qkv.attention(q, k, v, causal=True, backend="blockwise"),
                        "sdpa": lambda q=q, k=k, v=v: qkv.attention(q, k, v, causal=True, backend="sdpa"),
                    }
                )
            if blockwise < 1.0:
                faster.append((n, blockwise))
        if faster:
            found["causal_kernel_min_rows"] = faster[0][0]
            found["causal_kernel_max_scores"] = faster[-1][0] ** 2
            found["causal_kernel_cost"] = round(statistics.median(r for _, r in faster), 2)
        else:  # no size where the kernel wins: a range that holds none
            found["causal_kernel_min_rows"] = 2 * max(causal_sizes)
            found["causal_kernel_max_scores"] = max(causal_sizes) ** 2
    return found


def _break_even(
    n: int,
    first_document: float,
    inputs: Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    ratio: Callable[[dict[str, Callable[[], object]]], float],
    block: int,
    kernel: bool,
) -> float:
    """``kept x sdpa time / blockwise time`` for two documents, the first ``first_document`` of the
    sequence: the share of kept tiles at which blockwise would take as long as the dense mask."""
    q, k, v = inputs(n)
    mask = masks.document((torch.arange(n) >= int(first_document * n)).long())
    kinds = mask.tile_kinds(1, 1, n, n, block, block)
    kept = float((kinds != masks.TileKind.EMPTY).float().mean())
    with _kernel(kernel):
        slower = ratio(
            {
                "blockwise": lambda: qkv.attention(q, k, v, mask=mask, backend="blockwise"),
                "sdpa": lambda: qkv.attention(q, k, v, mask=mask, backend="sdpa"),
            }
        )
    return kept / slower


class _kernel:
    """Blockwise with qkv's CPU kernel (``True``) or with torch's kernels per block, for a ``with`` block."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __enter__(self) -> None:
        self.saved = cpu_kernel.ENABLED
        cpu_kernel.ENABLED = self.on and self.saved

    def __exit__(self, *exc: object) -> None:
        cpu_kernel.ENABLED = self.saved
