"""`qkv bench`: qkv against SDPA, FlexAttention and naive attention, side by side."""

from __future__ import annotations

import argparse

from rich.console import Console


def add_parser(commands) -> None:
    bench = commands.add_parser("bench", help="qkv against SDPA, FlexAttention and naive attention, side by side")
    bench.add_argument("--quick", action="store_true", help="N in 1024, 4096, 8192 only")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bench.add_argument("--n", type=int, nargs="+", help="sequence lengths to run")
    bench.add_argument(
        "--pattern",
        nargs="+",
        choices=("dense", "causal", "sliding_window", "document", "block_sparse"),
        help="mask patterns to run",
    )
    bench.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    bench.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    bench.add_argument(
        "--section",
        choices=("all", "attention", "models", "long", "gpu", "hf"),
        default="all",
        help="attention kernels, real models (SmolLM2 generation, MiniLM embedding vs transformers), or both; "
        "long: masked attention from 8k tokens up, time and peak memory against SDPA and FlexAttention, and ring "
        "attention at W = 1, 2, 4 processes (not in all); "
        "gpu: the triton backend against SDPA's fused kernels and FlexAttention on a CUDA GPU (not in all); "
        "hf: a transformers model (SmolLM2-135M, and with a sliding window) on 'eager' with weights, 'sdpa' "
        "without, 'qkv' with and without, at N = 512 and 4096 (not in all)",
    )
    bench.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: the same as --section gpu")
    bench.add_argument(
        "--dtype", nargs="+", choices=("bfloat16", "float16"), default=["bfloat16"], help="--section gpu's dtypes"
    )
    bench.add_argument(
        "--long-full", action="store_true", help="--section long up to 256k tokens (windowed masks; causal to 64k)"
    )
    bench.add_argument(
        "--write-crossovers",
        action="store_true",
        help="measure where backend='auto' should switch backends on this machine and write crossovers.toml "
        "into the qkv directory ($QKV_HOME, else $XDG_DATA_HOME/qkv), which overrides qkv's defaults",
    )
    bench.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    import json

    import torch

    from qkv import bench

    if args.threads:
        torch.set_num_threads(args.threads)
    console.width = max(console.width, 180)  # the table has many columns; a pipe gets them all
    if args.section == "long":
        return _long(args, console)
    if args.section == "gpu" or args.device == "cuda":
        return _gpu(args, console)
    if args.section == "hf":
        return _hf(args, console)
    config = bench.QUICK if args.quick else bench.FULL
    ns = tuple(args.n) if args.n else config["n"]
    names = tuple(args.pattern) if args.pattern else config["patterns"]
    from qkv.backends.blockwise import cpu_kernel

    console.print(
        f"qkv bench: B=1, H=8, D=64, float32, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{cpu_kernel.status()}. Ratios are peer time / qkv time (above 1: qkv faster).",
        markup=False,
    )

    def show(m: bench.Measurement) -> None:
        ratios = "  ".join(f"{peer} {m.ratio(peer):.1f}x" for peer in bench.PEERS[1:] if m.ratio(peer) is not None)
        console.print(
            f"{m.pattern:>24} N={m.n:<6} {m.mode:<8} qkv[{m.qkv_backend}] {m.seconds['qkv'] * 1e3:8.1f} ms "
            f"{m.gflops['qkv']:6.1f} GFLOP/s  {ratios}",
            markup=False,
        )

    if args.write_crossovers:
        return _write_crossovers(args, console)

    results, model_results = [], []
    if args.section in ("all", "attention"):
        results = bench.run(ns, names, repeats=args.repeats, on_result=show)
        console.print(bench.table(results))
    if args.section in ("all", "models"):
        from qkv import bench_models

        model_results = bench_models.run(quick=args.quick)
        for m in model_results:
            mine = next(iter(m.rates))
            rates = "  ".join(f"{peer} {rate:.1f}" for peer, rate in m.rates.items())
            line = f"{m.task} ({m.unit}): {rates}"
            if "transformers" in m.rates:
                line += f"  ->  {mine} / transformers = {m.ratio(mine, 'transformers'):.2f}x"
                spread = m.ratio_range(mine, "transformers")
                if spread is not None and len(m.rounds[mine]) > 1:
                    line += f" (rounds {spread[0]:.2f}-{spread[1]:.2f}x)"
                line += f", same output: {m.same_output}"
            for peer, note in m.notes.items():
                line += f"  [{peer}: {note}]"
            console.print(line, highlight=False, markup=False)
    if args.json:
        data = bench.to_json(results)
        data["models"] = [vars(m) for m in model_results]
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
        console.print(f"wrote {args.json}")
    return 0


def _long(args: argparse.Namespace, console: Console) -> int:
    """`qkv bench --section long`: forward calls from 8k tokens up, qkv's blockwise backend against its peers."""
    import json
    from dataclasses import asdict

    from qkv import bench

    ns = tuple(args.n) if args.n else (bench.LONG_FULL if args.long_full else bench.LONG_QUICK)
    names = tuple(p for p in (args.pattern or bench.LONG_PATTERNS) if p in bench.LONG_PATTERNS)
    console.print(
        "qkv bench --section long: B=1, H=1, D=64, float32, forward; ratio = peer time / qkv time (above 1: qkv "
        "faster); MiB = peak extra resident memory of one call",
        markup=False,
    )
    results = bench.run_long(ns, names, on_result=lambda m: console.print(bench.long_line(m), markup=False))
    console.print(
        f"ring attention (qkv.distributed, gloo on this CPU): B=1, H=4, N={bench.RING_N}, D=64, float32, "
        f"W = {', '.join(map(str, bench.RING_WORLDS))} processes; tiles of 64 x 64 per rank, balance = max / mean",
        markup=False,
    )

    def show(world: int, rows: list[dict]) -> None:
        for line in bench.ring_lines(world, rows):
            console.print(line, markup=False)

    ring = bench.run_ring(bench.RING_N, on_result=show)
    if args.json:
        with open(args.json, "w") as f:
            data = {"environment": bench.environment(), "long": [asdict(m) for m in results], "ring": ring}
            json.dump(data, f, indent=1)
        console.print(f"wrote {args.json}")
    return 0


def _gpu(args: argparse.Namespace, console: Console) -> int:
    """`qkv bench --section gpu`: the triton backend against SDPA and FlexAttention, on the GPU."""
    import json
    from dataclasses import asdict

    import torch

    from qkv import bench_gpu

    if not torch.cuda.is_available():
        console.print(
            "qkv: error: --section gpu needs a CUDA GPU, and torch sees none here (torch.cuda.is_available() is "
            "False): run it on a machine with one, with torch built for CUDA"
        )
        return 2
    ns = tuple(args.n) if args.n else bench_gpu.GPU_N
    names = tuple(args.pattern) if args.pattern else bench_gpu.GPU_PATTERNS
    dtypes = tuple(getattr(torch, name) for name in args.dtype)
    peaks = {str(dtype).removeprefix("torch."): bench_gpu.matmul_tflops(dtype) for dtype in dtypes}
    console.print(
        f"qkv bench --section gpu: {torch.cuda.get_device_name()}, torch {torch.__version__}, H=16, D=128, "
        f"B x N = {bench_gpu.TOKENS}; ratio = peer time / qkv time (above 1: qkv faster), (TFLOP/s); "
        "this GPU's 8192^3 matrix product: " + ", ".join(f"{name} {tf:.0f} TFLOP/s" for name, tf in peaks.items()),
        markup=False,
    )
    results = bench_gpu.run_gpu(
        ns, names, dtypes, on_result=lambda m: console.print(bench_gpu.gpu_line(m, peaks), markup=False)
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": bench_gpu.environment(), "gpu": [asdict(m) for m in results]}, f, indent=1)
        console.print(f"wrote {args.json}")
    return 0


def _hf(args: argparse.Namespace, console: Console) -> int:
    """`qkv bench --section hf`: a transformers model on 'eager', 'sdpa' and 'qkv', forward passes side by side."""
    import json

    import torch

    from qkv import bench_hf

    absent = bench_hf.missing()
    if absent is not None:
        console.print(f"qkv: error: --section hf runs transformers models (read from GGUF): {absent}", markup=False)
        return 2
    ns = tuple(args.n) if args.n else bench_hf.HF_N
    console.print(
        f"qkv bench --section hf: forward pass, batch 1, float32, random token ids, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; peers take turns, median of {bench_hf.ROUNDS} rounds; MiB = peak extra "
        "resident memory of the first round; ratio = peer seconds / qkv seconds (above 1: qkv faster)",
        markup=False,
    )
    current: list[str] = []

    def show(m: bench_hf.HFMeasurement) -> None:
        if not current or current[-1] != m.model:
            current.append(m.model)
            console.print(m.model, markup=False)
        console.print("  " + bench_hf.line(m), markup=False)

    results = bench_hf.run(ns, on_result=show)
    for goal in bench_hf.goals(results):
        console.print(goal, markup=False)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(bench_hf.to_json(results), f, indent=1)
        console.print(f"wrote {args.json}")
    return 0


def _write_crossovers(args: argparse.Namespace, console: Console) -> int:
    """Measure the crossovers (`qkv.bench.measure_crossovers`), write them, show them beside the defaults."""
    from qkv import bench
    from qkv.backends.common import crossovers

    size = "quick" if args.quick else "full"
    console.print("measuring the crossovers (forward passes; a quiet machine gives steadier numbers)...", markup=False)
    values = bench.measure_crossovers(bench.CROSSOVER_SIZES[size], bench.CAUSAL_SIZES[size], repeats=args.repeats)
    defaults = crossovers.load(user=None)
    for key, value in values.items():
        console.print(f"  {key:26} {value!r:>10}   (default {getattr(defaults, key)!r})", markup=False)
    environment = bench.environment()
    note = f"torch {environment['torch']}, {environment['threads']} threads, {environment['blockwise_kernel']}"
    path = crossovers.write(values, note=note)
    console.print(f"wrote {path}; backend='auto' uses it from the next process on (delete it for the defaults)")
    return 0
