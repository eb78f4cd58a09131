"""qkv.distributed: ring attention across 2 and 4 gloo processes equals one process, in float64, to the last bits.

Each world size is spawned once (module fixtures) and runs every case in its
processes; the tests below read the results. Outputs, log-sum-exp and the
gradients of q, k and v are compared with the float64 spec on the full
sequence, for causal, sliding-window, document, block-sparse and function
masks, a score mod, both layouts and lengths not divisible by the world size,
the chunk count or the block size. Errors: a rank with bad arguments makes
every rank raise its message; a rank that dies makes the launcher fail fast.
"""

from __future__ import annotations

import math
import multiprocessing
import time

import pytest
import torch
import torch.distributed as dist

import qkv
from qkv import distributed, masks, mods
from qkv.distributed import demo
from qkv.distributed import layout as layouts
from qkv.distributed.views import GlobalMask
from qkv.masks import TileKind

B, HQ, HKV, D = 2, 4, 2, 16
LENGTHS = {2: 150, 4: 203}  # not divisible by W, 2W or the block-sparse block (16)
EXACT = 1e-12  # float64 ring vs the float64 spec: a few ulps of the merge


# ---------------------------------------------------------------------------
# the cases, run inside the spawned processes


def _inputs(n: int, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    shapes = {"q": (B, HQ, n, D), "k": (B, HKV, n, D), "v": (B, HKV, n, D), "g": (B, HQ, n, D), "glse": (B, HQ, n)}
    draw = {name: torch.randn(shape, generator=generator, dtype=torch.float64) for name, shape in shapes.items()}
    return {name: t.to(dtype) for name, t in draw.items()}


def _masks(n: int) -> dict[str, dict[str, object]]:
    generator = torch.Generator().manual_seed(11)
    ids = torch.sort(torch.randint(0, 5, (n,), generator=generator)).values  # packed documents
    layout = torch.rand(-(-n // 16), -(-n // 16), generator=generator) < 0.35
    n_rows = n

    def some_rows_see_nothing(b, h, q_idx, kv_idx):  # rows i % 7 == 3 are fully masked
        return (q_idx % 7 != 3) & (kv_idx <= q_idx) & (kv_idx >= q_idx - n_rows // 3)

    return {
        "causal flag": {"causal": True},
        "causal mask": {"mask": masks.causal()},
        "sliding window": {"mask": masks.sliding_window(37)},
        "document causal": {"mask": masks.document(ids), "causal": True},
        "block sparse": {"mask": masks.block_sparse(layout, 16)},
        "alibi causal": {"causal": True, "score_mod": mods.alibi(HQ)},
        "softcap local": {"mask": masks.local(20), "score_mod": mods.softcap(3.0)},
        "empty rows": {"mask": masks.from_function(some_rows_see_nothing)},
        "no mask": {},
    }


def _compare(
    rank: int, n: int, layouts_: tuple[str, ...], case: dict[str, object], dtype: torch.dtype = torch.float64
) -> dict[str, dict[str, float]]:
    """Per layout, the largest difference to the spec of out, lse, dq, dk, dv (a loss on out and lse)."""
    x = _inputs(n, dtype)
    kwargs = dict(case)
    spec_kwargs = {name: value for name, value in kwargs.items() if name != "score_mod"}
    spec_kwargs["bias"] = kwargs.get("score_mod")
    full = [x[name].clone().requires_grad_() for name in "qkv"]
    out, lse = qkv.reference.attention(*full, return_lse=True, **spec_kwargs)
    ((out * x["g"].double()).sum() + (lse.nan_to_num(neginf=0.0) * x["glse"].double()).sum()).backward()
    results = {}
    for layout in layouts_:
        local = [distributed.shard(x[name], layout=layout).requires_grad_() for name in "qkv"]
        got, got_lse = distributed.ring_attention(*local, layout=layout, return_lse=True, **kwargs)
        g, glse = distributed.shard(x["g"], layout=layout), distributed.shard(x["glse"], dim=-1, layout=layout)
        ((got * g).sum() + (got_lse.nan_to_num(neginf=0.0) * glse).sum()).backward()
        pairs = {
            "out": (got, distributed.shard(out, layout=layout)),
            "lse": (got_lse, distributed.shard(lse, dim=-1, layout=layout)),
            **{
                f"d{name}": (t.grad, distributed.shard(f.grad, layout=layout)) for name, t, f in zip("qkv", local, full)
            },
        }
        errors = {}
        for name, (a, b) in pairs.items():
            a, b = a.detach().double(), b.detach()
            if not torch.equal(a == float("-inf"), b == float("-inf")):
                errors[name] = math.inf  # -inf lse exactly where the spec has it
                continue
            gap = (a.nan_to_num(neginf=0.0) - b.nan_to_num(neginf=0.0)).abs()
            errors[name] = float(gap.max()) if gap.numel() else 0.0  # a rank may hold nothing (N < 2W)
        results[layout] = errors
    results["spec"] = {"empty rows": float((lse == float("-inf")).sum())}  # rows that see no key, in the spec
    return results


def _nan_pattern(rank: int, n: int, layout: str) -> tuple[bool, int]:
    """A NaN key: the rows that attend it are NaN, exactly the spec's rows, and only those."""
    x = _inputs(n)
    x["k"][0, 0, n // 3] = float("nan")
    spec = qkv.reference.attention(x["q"], x["k"], x["v"], mask=masks.sliding_window(29))
    local = [distributed.shard(x[name], layout=layout) for name in "qkv"]
    out = distributed.ring_attention(*local, mask=masks.sliding_window(29), layout=layout)
    want = distributed.shard(spec, layout=layout)
    return bool(torch.equal(out.isnan(), want.isnan())), int(want.isnan().any(-1).sum())  # same rows; how many


def _mod_table_gradient(rank: int, n: int) -> float:
    """A learned relative-position table: the ranks' shares of its gradient sum to the spec's gradient."""
    x = _inputs(n)
    start = torch.randn(16, HQ, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    spec_table, ring_table = start.clone().requires_grad_(), start.clone().requires_grad_()
    spec_mod = mods.relative_position_bias(spec_table, num_buckets=16, max_distance=64)
    out = qkv.reference.attention(x["q"], x["k"], x["v"], bias=spec_mod, causal=True)
    (out * x["g"]).sum().backward()
    local = [distributed.shard(x[name]) for name in "qkv"]
    ring_mod = mods.relative_position_bias(ring_table, num_buckets=16, max_distance=64)
    got = distributed.ring_attention(*local, score_mod=ring_mod, causal=True)
    (got * distributed.shard(x["g"])).sum().backward()
    total = ring_table.grad.clone()
    dist.all_reduce(total)  # this rank's share, summed as for any replicated parameter
    return float((total - spec_table.grad).abs().max())


def _half_precision(rank: int, n: int) -> tuple[float, float]:
    """bfloat16: the ring's error and one process's error, both against the float64 spec."""
    x = _inputs(n)
    spec = qkv.reference.attention(x["q"], x["k"], x["v"], causal=True)
    q, k, v = (x[name].to(torch.bfloat16) for name in "qkv")
    one = qkv.attention(q, k, v, causal=True).double()
    ring = distributed.ring_attention(*(distributed.shard(t) for t in (q, k, v)), causal=True).double()
    local_spec = distributed.shard(spec)
    return float((ring - local_spec).abs().max()), float((distributed.shard(one) - local_spec).abs().max())


def _round_trips(rank: int, world_size: int, n: int) -> dict[str, bool]:
    x = torch.randn(3, n, 5, generator=torch.Generator().manual_seed(3))
    out = {}
    for layout in layouts.LAYOUTS:
        for dim in (1, -2):
            part = distributed.shard(x, dim=dim, layout=layout)
            out[f"{layout} dim {dim}"] = bool(torch.equal(distributed.gather(part, dim=dim, layout=layout), x))
        part = distributed.shard(x, dim=1, layout=layout).requires_grad_()
        weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        (distributed.gather(part, dim=1, layout=layout) * weight).sum().backward()
        # every rank's loss uses every position: the gradient is W times this rank's part of the weight
        want = world_size * distributed.shard(weight, dim=1, layout=layout)
        out[f"{layout} gradient"] = bool(torch.allclose(part.grad, want))
    return out


def _error(fn) -> str:
    try:
        fn()
    except qkv.AttentionError as exc:
        return str(exc)
    return "no error"


def _errors(rank: int, world_size: int, n: int) -> dict[str, str]:
    x = _inputs(n)
    q, k, v = (distributed.shard(x[name]) for name in "qkv")
    last = world_size - 1
    out = {}
    out["bad layout"] = _error(lambda: distributed.ring_attention(q, k, v, layout="ring" if rank == last else "zigzag"))
    out["short q"] = _error(lambda: distributed.ring_attention(q[:, :, 3:] if rank == 1 else q, k, v))
    out["3-D q"] = _error(lambda: distributed.ring_attention(q[0] if rank == 0 else q, k, v))

    def boom(b, h, q_idx, kv_idx):
        raise ValueError("this rule fails on rank 0")

    rule = masks.from_function(boom) if rank == 0 else masks.causal()
    out["failing rule"] = _error(lambda: distributed.ring_attention(q, k, v, mask=rule))
    out["disagreeing scale"] = _error(lambda: distributed.ring_attention(q, k, v, scale=1.0 + rank))
    out["gather shapes"] = _error(lambda: distributed.gather(q if rank else q[:, :1]))
    out["dense mask"] = _error(lambda: distributed.ring_attention(q, k, v, mask=torch.ones(n, n, dtype=torch.bool)))
    # the group still works after all of these
    spec = qkv.reference.attention(x["q"], x["k"], x["v"], causal=True)
    after = distributed.ring_attention(q, k, v, causal=True)
    out["works after"] = str(float((after - distributed.shard(spec)).abs().max()) < EXACT)
    return out


# Which cases each world runs, per layout: every case in zigzag on two ranks, enough of them elsewhere to
# cross every chunk boundary (the processes share two CPU cores with the rest of the suite).
CONTIGUOUS_CASES = ("causal flag", "sliding window", "block sparse", "empty rows")
WIDE_CASES = ("causal flag", "sliding window", "document causal", "block sparse")


def _plan_of_cases(world_size: int) -> dict[str, tuple[str, ...]]:
    names = list(_masks(8)) if world_size == 2 else list(WIDE_CASES)
    contiguous = CONTIGUOUS_CASES if world_size == 2 else WIDE_CASES
    return {name: ("zigzag", "contiguous") if name in contiguous else ("zigzag",) for name in names}


def _suite(rank: int, world_size: int) -> dict[str, object]:
    n = LENGTHS[world_size]
    results: dict[str, object] = {}
    started = time.perf_counter()
    cases = _masks(n)
    for name, layouts_ in _plan_of_cases(world_size).items():
        compared = _compare(rank, n, layouts_, cases[name])
        for layout in layouts_:
            results[f"{layout}: {name}"] = compared[layout]
        results[f"spec: {name}"] = compared["spec"]
    results["float32 causal"] = _compare(rank, n, ("zigzag",), {"causal": True}, torch.float32)["zigzag"]
    results["nan"] = _nan_pattern(rank, n, "zigzag")
    results["round trips"] = _round_trips(rank, world_size, n)
    results["mod table"] = _mod_table_gradient(rank, n)
    results["bfloat16"] = _half_precision(rank, n)
    results["errors"] = _errors(rank, world_size, n)
    results["demo"] = demo.run(rank, world_size, 4 * 64 * world_size, 2, 16, 48)
    results["seconds"] = time.perf_counter() - started
    return results


def _dies_on_rank_one(rank: int, world_size: int) -> None:
    if rank == 1:
        raise ValueError("rank 1 gave up before the ring")
    x = torch.randn(1, 1, 8, 4)
    distributed.ring_attention(x, x, x)  # waits for rank 1, which never comes


# ---------------------------------------------------------------------------
# the spawned worlds


def _run(fn, world_size: int, timeout: float = 240.0):
    context = multiprocessing.get_context("forkserver")
    # one import for every world below (symbolic_shapes: torch imports it lazily on a first backward)
    context.set_forkserver_preload(["torch", "torch.fx.experimental.symbolic_shapes", "qkv.distributed"])
    return distributed.spawn(fn, world_size, timeout=timeout, start_method="forkserver")


@pytest.fixture(scope="module")
def world2() -> list[dict[str, object]]:
    return _run(_suite, 2)


@pytest.fixture(scope="module")
def world4() -> list[dict[str, object]]:
    return _run(_suite, 4)


def _case_names(world_size: int) -> list[str]:
    return [f"{layout}: {name}" for name, layouts_ in _plan_of_cases(world_size).items() for layout in layouts_]


@pytest.mark.parametrize("case", _case_names(2))
def test_two_ranks_equal_one_process_in_float64(world2, case):
    for rank, results in enumerate(world2):
        assert max(results[case].values()) < EXACT, (rank, results[case])


@pytest.mark.parametrize("case", _case_names(4))
def test_four_ranks_equal_one_process_in_float64(world4, case):
    for rank, results in enumerate(world4):
        assert max(results[case].values()) < EXACT, (rank, results[case])


def test_fully_masked_rows_give_zeros_and_minus_infinity(world2):
    # the case's mask leaves rows without any key; their out, lse and gradients match the spec's 0, -inf, 0
    for results in world2:
        assert results["spec: empty rows"]["empty rows"] > 0
        for layout in ("zigzag", "contiguous"):
            assert max(results[f"{layout}: empty rows"].values()) < EXACT


def test_float32_within_a_float32_error(world2, world4):
    for results in world2 + world4:
        assert max(results["float32 causal"].values()) < 1e-4, results["float32 causal"]


def test_a_score_mods_table_gets_each_ranks_share_of_its_gradient(world2, world4):
    assert all(results["mod table"] < EXACT for results in world2 + world4)


def test_bfloat16_errs_about_as_much_as_one_process(world2, world4):
    for results in world2 + world4:
        ring, one = results["bfloat16"]
        assert ring <= 2 * one + 1e-3, (ring, one)  # one rounding to bfloat16 per piece before the merge


def test_a_nan_input_stays_nan_exactly_where_the_spec_has_it(world2, world4):
    for world in (world2, world4):
        assert all(results["nan"][0] for results in world)
        nan_rows = sum(results["nan"][1] for results in world)
        assert 0 < nan_rows < B * HQ * LENGTHS[len(world)]  # some rows are NaN, not all


def test_shard_then_gather_is_the_identity_and_gather_is_differentiable(world2, world4):
    for results in world2 + world4:
        assert all(results["round trips"].values()), results["round trips"]


def test_a_rank_with_bad_arguments_makes_every_rank_raise_its_message(world2, world4):
    for world in (world2, world4):
        last = len(world) - 1
        for results in world:
            errors = results["errors"]
            assert errors["bad layout"].startswith(f"ring_attention on rank {last}: layout: expected 'zigzag'")
            assert errors["short q"].startswith("q: rank "), errors["short q"]
            assert "rank 1 holds" in errors["short q"] and "but the zigzag layout of N = " in errors["short q"]
            assert errors["3-D q"].startswith("ring_attention on rank 0: q: expected a 4-D tensor")
            assert errors["failing rule"].startswith("ring_attention on rank 0: ValueError: this rule fails on rank 0")
            assert errors["disagreeing scale"].startswith("ring_attention: the ranks disagree on scale")
            assert errors["gather shapes"].startswith("gather: rank 0's part differs") or errors[
                "gather shapes"
            ].startswith("gather: rank 1's part differs"), errors["gather shapes"]
            assert "mask: expected a qkv.masks.Mask in global positions" in errors["dense mask"]
            assert errors["works after"] == "True"


def test_the_demo_checks_the_ring_against_one_process_and_shows_the_balance(world2, world4):
    for world in (world2, world4):
        rows = world[0]["demo"]
        assert {(row["case"], row["layout"]) for row in rows} == {
            (case, layout) for case in ("causal", "sliding_window(48)") for layout in layouts.LAYOUTS
        }
        assert all(row["error"] < 1e-5 and row["error64"] < 1e-5 for row in rows)
        causal = {row["layout"]: row["balance"] for row in rows if row["case"] == "causal"}
        assert causal["zigzag"] <= 1.05
        assert causal["contiguous"] > 1.3
        text = demo.report(rows, len(world), 4 * 64 * len(world), 2, 16)
        assert "zigzag" in text and "balance" in text and f"{causal['contiguous']:.2f}" in text


def test_a_rank_that_dies_fails_the_run_quickly_with_its_message():
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="rank 1 failed: ValueError: rank 1 gave up before the ring"):
        _run(_dies_on_rank_one, 2, timeout=60.0)
    assert time.monotonic() - started < 60.0


# ---------------------------------------------------------------------------
# without processes: layouts, the views of masks, the balance of work


@pytest.mark.parametrize("n", [0, 1, 7, 8, 150, 203])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_layouts_cut_like_tensor_split_and_cover_every_position_once(n, world_size):
    x = torch.arange(n)
    for name, parts in (("contiguous", world_size), ("zigzag", 2 * world_size)):
        sizes = [len(chunk) for chunk in torch.tensor_split(x, parts)]
        assert [b - a for a, b in layouts.chunks(n, parts)] == sizes
        held = [i for spans in layouts.spans(n, world_size, name) for a, b in spans for i in range(a, b)]
        assert sorted(held) == list(range(n))
    zigzag = layouts.spans(n, world_size, "zigzag")
    cut = layouts.chunks(n, 2 * world_size)
    assert all(zigzag[r] == (cut[r], cut[2 * world_size - 1 - r]) for r in range(world_size))


def test_lengths_that_do_not_match_the_layout_are_refused():
    assert layouts.check_lengths("q", [37, 37, 38, 38], "zigzag") == 150
    assert layouts.check_lengths("q", [38, 38, 37, 37], "contiguous") == 150
    with pytest.raises(qkv.AttentionError, match="rank 1 holds 37 and rank 3 holds 38 positions"):
        layouts.check_lengths("q", [38, 37, 37, 38], "contiguous")
    with pytest.raises(qkv.AttentionError, match="layout: expected 'zigzag' or 'contiguous', got 'ring'"):
        layouts.check_layout("ring")


def _dense_kinds(dense: torch.Tensor, bq: int, bk: int) -> torch.Tensor:
    b, h, nq, nk = dense.shape
    pad = torch.nn.functional.pad
    rows, cols = -(-nq // bq), -(-nk // bk)
    some = pad(dense, (0, cols * bk - nk, 0, rows * bq - nq), value=False).view(b, h, rows, bq, cols, bk)
    every = pad(dense, (0, cols * bk - nk, 0, rows * bq - nq), value=True).view(b, h, rows, bq, cols, bk)
    kinds = torch.where(every.all(5).all(3), 2, torch.where(some.any(5).any(3), 1, 0))
    return kinds.to(torch.int8)


def _view_masks(n: int) -> list[masks.Mask]:
    generator = torch.Generator().manual_seed(2)
    ids = torch.sort(torch.randint(0, 5, (n,), generator=generator)).values
    layout = torch.rand(-(-n // 16), -(-n // 16), generator=generator) < 0.5
    return [
        masks.causal(), masks.sliding_window(20), masks.local(7), masks.dilated(5, 3), ~masks.causal(),
        masks.document(ids) & masks.causal(), masks.block_sparse(layout, 16), masks.padding([n // 2, n]),
        masks.causal() & masks.sliding_window(33) | masks.global_tokens([0, 5]),
    ]  # fmt: skip


@pytest.mark.parametrize("index", range(9))
def test_a_mask_seen_at_global_offsets_is_the_slice_of_the_global_mask(index):
    n = 150
    mask = _view_masks(n)[index]
    full = mask.to_dense(2, 2, n, n)
    generator = torch.Generator().manual_seed(index)
    for _ in range(12):
        q0, k0 = (int(torch.randint(0, n - 1, (1,), generator=generator)) for _ in range(2))
        q1 = int(torch.randint(q0 + 1, n + 1, (1,), generator=generator))
        k1 = int(torch.randint(k0 + 1, n + 1, (1,), generator=generator))
        view = GlobalMask(mask, q0, k0, q1 - q0, k1 - k0, n, n)
        dense = view.to_dense(2, 2, q1 - q0, k1 - k0)
        assert torch.equal(dense, full[:, :, q0:q1, k0:k1])
        for bq, bk in ((64, 32), (16, 16), (7, 5), (q1 - q0, k1 - k0)):
            want = _dense_kinds(dense, bq, bk)
            got = view.tile_kinds(2, 2, q1 - q0, k1 - k0, bq, bk).expand_as(want)
            # EMPTY only where nothing may attend, FULL only where everything may (PARTIAL is always safe)
            assert ((got == int(TileKind.EMPTY)) <= (want == 0)).all()
            assert ((got == int(TileKind.FULL)) <= (want == 2)).all()
            if (bq, bk) == (q1 - q0, k1 - k0):  # the one tile that decides whether a block is skipped: exact
                assert torch.equal(got, want)


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_zigzag_balances_causal_work_and_contiguous_does_not(world_size):
    n = 16384 + 37  # not divisible by anything useful
    zigzag = distributed.tile_counts(n, world_size, causal=True, layout="zigzag")
    contiguous = distributed.tile_counts(n, world_size, causal=True, layout="contiguous")
    assert distributed.balance(zigzag) <= 1.05
    assert distributed.balance(contiguous) >= 2 - 1.0 / world_size - 0.05  # (2W - 1) / W: the last rank's load
    square = (-(-n // 64)) ** 2
    assert 0.5 * square < sum(zigzag) < 0.6 * square  # the triangle, and the chunks' edge tiles


def test_sliding_window_work_is_spread_too():
    counts = distributed.tile_counts(8192, 4, masks.sliding_window(512), layout="zigzag")
    assert distributed.balance(counts) <= 1.1
    assert sum(counts) < 0.2 * (8192 // 64) ** 2  # the band, not the square


def test_without_a_process_group_every_function_says_how_to_start_one():
    assert not dist.is_initialized()
    x = torch.randn(1, 1, 4, 2)
    calls = (lambda: distributed.shard(x), lambda: distributed.gather(x), lambda: distributed.ring_attention(x, x, x))
    for call in calls:
        with pytest.raises(qkv.AttentionError, match="no torch.distributed process group is initialised"):
            call()


# ---------------------------------------------------------------------------
# the wider sweep (CI): odd world sizes and a world of one, lengths from nothing on some ranks to several blocks


def _sweep(rank: int, world_size: int) -> dict[str, float]:
    results = {}
    for n in (1, 3, 2 * world_size + 1, 67, 301):
        cases = _masks(n)
        for name in ("causal flag", "sliding window", "document causal", "block sparse", "alibi causal", "empty rows"):
            compared = _compare(rank, n, layouts.LAYOUTS, cases[name])
            for layout in layouts.LAYOUTS:
                results[f"N={n} {layout}: {name}"] = max(compared[layout].values())
    return results


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [3, 2, 1])
def test_a_sweep_of_lengths_and_odd_world_sizes_equals_one_process(world_size):
    for results in _run(_sweep, world_size, timeout=600.0):
        worst = max(results, key=results.get)
        assert results[worst] < EXACT, (worst, results[worst])


def test_views_of_a_structured_mask_are_reused_and_let_go():
    import gc
    import weakref

    from qkv.distributed import plan

    problem = plan.Problem(1, 1, 300, 300, 2, "zigzag")
    mask = masks.sliding_window(40)
    first = plan.pieces(problem, 0, 1, mask, None)
    again = plan.pieces(problem, 0, 1, mask, None)
    assert [p.mask for p in first] == [p.mask for p in again] and any(p.mask is not None for p in first)
    assert all(a.mask is b.mask for a, b in zip(first, again))  # the same view objects: plans are memoized
    gone = weakref.ref(mask)
    del mask, first, again
    for width in range(plan.VIEWS_KEPT + 1):  # other masks' views push this one's out
        plan.pieces(problem, 0, 1, masks.sliding_window(41 + width), None)
    gc.collect()
    assert gone() is None


@pytest.mark.slow
def test_the_demo_runs_under_torchrun():
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed beside this Python")
    command = [str(torchrun) if torchrun.exists() else "torchrun", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(distributed.launch.free_port()),
               "-m", "qkv.distributed.demo", "--length", "512", "--timeout", "120"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ring attention on 2 gloo processes" in result.stdout
    assert result.stdout.count("zigzag") == 2 and result.stdout.count("contiguous") == 2
