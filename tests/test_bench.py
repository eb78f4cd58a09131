"""`qkv bench` runs its peers side by side and reports ratios (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from qkv import bench
from qkv.cli import main


def test_bench_measures_every_peer_on_the_same_case():
    results = bench.run((256,), ("sliding_window",), modes=(False,), repeats=1)
    (m,) = results
    assert m.qkv_backend in ("blockwise", "sdpa")
    for peer in ("qkv", "sdpa+mask", "sdpa", "naive"):
        assert m.seconds[peer] > 0 and m.gflops[peer] > 0, peer
    assert m.ratio("sdpa+mask") == m.seconds["sdpa+mask"] / m.seconds["qkv"]
    assert "flex" in m.seconds or "flex" in m.notes


def test_flex_peer_stays_compiled_over_a_full_run():
    """A full run compiles FlexAttention for dozens of shapes and masks; past torch's default
    limit of 8 recompilations it would run uncompiled and look tens of times slower."""
    import torch._dynamo.config as dynamo_config

    flex = bench._Flex()
    if flex.error is None:
        full_run = len(bench.FULL["n"]) * len(bench.FULL["patterns"])
        assert dynamo_config.recompile_limit >= full_run
        assert dynamo_config.accumulated_recompile_limit >= full_run


def test_bench_command_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--n", "128", "--pattern", "document", "--repeats", "1", "--section", "attention"]
    assert main([*argv, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["environment"]["threads"] >= 1
    assert "blockwise CPU kernel" in data["environment"]["blockwise_kernel"]
    modes = {r["mode"] for r in data["results"]}
    assert modes == {"fwd", "fwd+bwd"}
    assert all("ratios" in r and r["seconds"]["qkv"] > 0 for r in data["results"])
    assert "document" in capsys.readouterr().out


def test_model_bench_measures_qkv_and_agrees_with_transformers_when_present():
    from qkv import bench_models

    m = bench_models.minilm_embedding(batch=4, rounds=2)
    assert m.rates["qkv"] > 0 and len(m.rounds["qkv"]) == 2
    if "transformers" in m.rates:
        assert m.same_output is True  # the same embeddings, so the speeds compare like with like
    else:
        assert "pip install transformers" in m.notes["transformers"]


def test_interleaved_rounds_rotate_the_order_and_keep_every_time():
    order = []
    calls = {name: (lambda name=name: order.append(name) or name.upper()) for name in ("a", "b", "c")}
    times, results = bench.interleaved(calls, rounds=3)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # each goes first once
    assert results == {"a": "A", "b": "B", "c": "C"}
    assert set(times) == {"a", "b", "c"} and all(len(ts) == 3 and min(ts) >= 0 for ts in times.values())


def test_the_long_section_measures_qkv_against_a_dense_mask_and_says_why_a_peer_is_missing():
    from qkv import bench

    m = bench.measure_long("sliding_window", 2048, (None, None, "unavailable: not in this build"), repeats=1)
    assert m.seconds["qkv"] > 0 and m.ratio("sdpa+mask") is not None
    assert m.plan_bytes > 0 and m.notes["flex"] == "unavailable: not in this build"
    line = bench.long_line(m)
    assert "sdpa+mask" in line and "flex - (unavailable" in line


def test_the_gpu_section_without_a_gpu_is_one_line_and_exit_2(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (["bench", "--section", "gpu"], ["bench", "--device", "cuda"]):
        assert main(argv) == 2
        out = capsys.readouterr().out.strip()
        assert out.count("\n") == 0 and "needs a CUDA GPU" in out and "run it on a machine with one" in out


def test_the_gpu_patterns_live_on_the_device_asked_for():
    for pattern in bench.patterns(512, ("causal", "document", "block_sparse"), device="meta"):
        assert pattern.dense.device.type == "meta"


def test_the_ring_part_reports_balance_times_and_differences_per_world_size():
    seen = []
    ring = bench.run_ring(512, (1, 2), on_result=lambda w, rows: seen.append(w), timeout=120)
    assert seen == [1, 2] and set(ring) == {1, 2}
    for world, rows in ring.items():
        assert {(r["case"], r["layout"]) for r in rows} == {
            (case, layout) for case in ("causal", "sliding_window(256)") for layout in ("zigzag", "contiguous")
        }
        for row in rows:
            assert len(row["tiles"]) == world and row["balance"] >= 1.0 and row["error"] < 1e-5
            assert row["forward"] > 0 and row["forward+backward"] > 0
    zigzag = next(r for r in ring[2] if r["case"] == "causal" and r["layout"] == "zigzag")
    contiguous = next(r for r in ring[2] if r["case"] == "causal" and r["layout"] == "contiguous")
    assert zigzag["balance"] == 1.0 and contiguous["balance"] > 1.2
    lines = bench.ring_lines(2, ring[2])
    assert len(lines) == 4 and all("W=2" in line and "balance" in line for line in lines)


def test_interleaved_takes_its_times_from_the_timer_given():
    ticks = iter([0.5, 0.25, 0.125, 2.0])
    times, results = bench.interleaved(
        {"a": lambda: "A", "b": lambda: "B"}, 2, timer=lambda call: (next(ticks), call())
    )
    assert times == {"a": [0.5, 2.0], "b": [0.25, 0.125]} and results == {"a": "A", "b": "B"}  # b went first in round 2


PARENT = textwrap.dedent(
    """
    import subprocess, sys
    big = bytearray(1536 << 20)
    big[:: 4096] = b"x" * len(big[:: 4096])  # 1.5 GiB resident before the child starts
    child = "from qkv.bench import peak_resident_bytes; print(peak_resident_bytes())"
    print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout)
    """
)


def test_a_childs_peak_memory_is_its_own_not_its_parents():
    """Python starts children with vfork/posix_spawn, and there ``ru_maxrss`` begins at the parent's peak."""
    done = subprocess.run([sys.executable, "-c", PARENT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    peak = int(done.stdout.split()[-1])
    assert 10 << 20 < peak < 1 << 30, peak  # torch and qkv imported: hundreds of MB, not the parent's 1.5 GiB
