"""The experiments: registry, files written, verdicts that follow from the tables, seeded runs.

Every run here is ``size="smoke"``: seconds long, far too small to learn, so the
verdicts are not asserted true. What is asserted is that each verdict is the
stated criterion applied to the written table, recomputed here independently.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import qkv
from qkv import experiments
from qkv.experiments import bottleneck, efficiency, heads, positional, scaling
from qkv.experiments.common import (
    Experiment,
    check,
    decide,
    fit_power_law,
    jsonable,
    median_interval,
    num_threads,
    verdict_of,
)

NAMES = ["bottleneck", "scaling", "positional", "heads", "efficiency"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def expected_verdict(checks):
    """The rule, written out again: a failed part fails the claim; an undecided one leaves it inconclusive."""
    passed = [c["passed"] for c in checks.values()]
    return False if not passed or False in passed else "inconclusive" if None in passed else True


class Recorder:
    """A progress sink that remembers what it was told."""

    def __init__(self) -> None:
        self.totals: list[int] = []
        self.done = 0

    def start(self, total: int, description: str) -> None:
        self.totals.append(total)

    def advance(self, steps: int = 1, description: str | None = None) -> None:
        self.done += steps


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on a loaded machine several threads spin against each other and
    a seconds-long smoke run can take ten times longer. (Seeded numbers assume a fixed thread count.)"""
    with num_threads(1):
        yield


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory, _one_thread):
    """Each experiment once at smoke size: (result, written JSON, progress recorder, out dir)."""
    out = tmp_path_factory.mktemp("experiments")
    runs = {}
    for name in NAMES:
        recorder = Recorder()
        result = experiments.run(name, size="smoke", out=out, progress=recorder)
        runs[name] = (result, json.loads((out / f"{name}.json").read_text()), recorder, out)
    return runs


# ----------------------------------------------------------------------------- registry


def test_list_experiments_names_all_eight_with_their_claims():
    listed = experiments.list_experiments()
    assert [e.name for e in listed] == [*NAMES, "kv-cache", "pruning", "coreference"]
    for e in listed:
        assert isinstance(e, Experiment)
        assert e.claim.rstrip('"').endswith(".") and len(e.claim) > 40, e.name
        assert e.criterion and e.method and e.title
        assert set(e.sizes) == {"smoke", "quick", "full"}
    assert "1/√d_k" in experiments.EXPERIMENTS["scaling"].claim
    assert "order" in experiments.EXPERIMENTS["positional"].claim


def test_unknown_experiment_is_an_attention_error_that_lists_the_known_ones(tmp_path):
    with pytest.raises(qkv.AttentionError, match="unknown name 'bottlenek'") as info:
        experiments.run("bottlenek", out=tmp_path, progress=False)
    for name in NAMES:
        assert name in str(info.value)
    assert not list(tmp_path.iterdir()), "nothing is written for a bad name"


def test_bad_size_and_seed_are_attention_errors(tmp_path):
    with pytest.raises(qkv.AttentionError, match="size: unknown size 'huge'"):
        experiments.run("positional", size="huge", out=tmp_path, progress=False)
    with pytest.raises(qkv.AttentionError, match="seed: expected an int"):
        experiments.run("positional", size="smoke", seed="1", out=tmp_path, progress=False)


def test_an_experiment_that_cannot_run_here_says_why(tmp_path):
    base = experiments.EXPERIMENTS["positional"]
    needy = Experiment(**{**base.__dict__, "name": "needy", "requires": lambda: "package gt-model is not installed"})
    with pytest.raises(qkv.AttentionError, match="needy: cannot run here: package gt-model is not installed"):
        needy.run(out_dir=tmp_path, size="smoke")


def test_experiments_import_no_user_surface():
    """Layering: experiments/ sits under cli.py and explorer/, never above them."""
    import ast

    folder = Path(experiments.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(("qkv.cli", "qkv.explorer")), f"{path.name} imports {name}"


# ----------------------------------------------------------------------------- files and records


@pytest.mark.parametrize("name", NAMES)
def test_smoke_run_writes_json_and_png(smoke_runs, name):
    result, doc, recorder, out = smoke_runs[name]
    assert result.json_path == out / f"{name}.json" and result.png_path == out / f"{name}.png"
    for key in (
        "claim",
        "verdict",
        "criterion",
        "checks",
        "results",
        "summary",
        "parameters",
        "seed",
        "runtime_s",
        "torch_version",
        "num_threads",
        "size",
    ):
        assert key in doc, key
    assert doc["claim"] == experiments.EXPERIMENTS[name].claim
    assert doc["torch_version"] == torch.__version__ and doc["size"] == "smoke"
    assert doc["verdict"] in (True, False, "inconclusive") and doc["verdict"] == result.verdict
    assert doc["date"].endswith("Z") and doc["combine"] == "all"
    assert doc["rule_changed"] == (experiments.EXPERIMENTS[name].rule_changed or None)
    assert isinstance(doc["results"], list) and doc["results"] and all(isinstance(r, dict) for r in doc["results"])
    assert doc["summary"].strip()
    png = result.png_path.read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 20_000, "a real, non-trivial picture"
    assert recorder.totals and recorder.done == recorder.totals[-1], "the progress bar ends full"


@pytest.mark.parametrize("name", NAMES)
def test_verdict_follows_from_the_checks_and_the_summary_is_honest(smoke_runs, name):
    _, doc, _, _ = smoke_runs[name]
    assert doc["checks"], "a verdict needs a criterion"
    assert doc["verdict"] == expected_verdict(doc["checks"])
    if doc["verdict"] is False:
        assert "not supported" in doc["summary"]
        failed = [k for k, c in doc["checks"].items() if c["passed"] is False]
        assert all(k in doc["summary"] for k in failed)
    if doc["verdict"] == "inconclusive":
        assert "Inconclusive" in doc["summary"]


# ----------------------------------------------------------------------------- the criteria, recomputed from the table


def _exponent(xs, ys):
    slope, _ = np.polyfit(np.log(xs), np.log(ys), 1)
    return float(slope)


def test_bottleneck_verdict_follows_from_its_table(smoke_runs):
    _, doc, _, _ = smoke_runs["bottleneck"]
    acc = {(r["model"], r["length"]): r["token_accuracy"] for r in doc["results"]}
    lengths = sorted({r["length"] for r in doc["results"]})
    assert {r["model"] for r in doc["results"]} == {"gru", "gru+attention", "transformer"}
    short, long = lengths[0], lengths[-1]
    drop = acc[("gru", short)] - acc[("gru", long)]
    gains = [acc[(m, long)] - acc[("gru", long)] for m in ("gru+attention", "transformer")]
    expected = drop >= bottleneck.FORGETS and all(g >= bottleneck.MARGIN for g in gains)
    assert doc["verdict"] == expected
    assert doc["checks"]["bottleneck forgets long inputs"]["value"] == pytest.approx(drop)
    for r in doc["results"]:
        assert 0.0 <= r["sequence_accuracy"] <= r["token_accuracy"] <= 1.0


def test_scaling_verdict_follows_from_its_table(smoke_runs):
    _, doc, _, _ = smoke_runs["scaling"]
    stats = {(r["d_k"], r["scaled"]): r for r in doc["results"] if r["part"] == "statistics"}
    trained = {(r["d_k"], r["scaled"]): r for r in doc["results"] if r["part"] == "training"}
    dks = sorted({d for d, _ in stats})
    k_unscaled = _exponent(dks, [stats[(d, False)]["score_std"] for d in dks])
    k_scaled = _exponent(dks, [stats[(d, True)]["score_std"] for d in dks])
    big = dks[-1]
    ratio = stats[(big, False)]["grad_scores_median"] / stats[(big, True)]["grad_scores_median"]
    dt = max(d for d, _ in trained)
    loss_ratio = trained[(dt, True)]["final_loss"] / trained[(dt, False)]["final_loss"]
    expected = (
        0.4 <= k_unscaled <= 0.6
        and abs(k_scaled) <= 0.1
        and stats[(big, False)]["max_prob"] >= scaling.SATURATES
        and ratio <= scaling.VANISHES
        and loss_ratio <= scaling.TRAINS_BETTER
    )
    assert doc["verdict"] == expected
    # the physics does not need training: even at smoke size the scores grow like √d_k
    assert 0.4 <= k_unscaled <= 0.6 and abs(k_scaled) <= 0.1


def test_positional_verdict_follows_from_its_table(smoke_runs):
    _, doc, _, _ = smoke_runs["positional"]
    row = {r["encoding"]: r for r in doc["results"]}
    assert set(row) == {"none", "sinusoidal", "learned", "rotary"}
    none = row["none"]
    encodings = ("sinusoidal", "learned", "rotary")
    expected = (
        none["equivariance_error"] <= positional.EQUIVARIANT
        and none["accuracy"] - none["order_free_ceiling"] <= positional.BLIND
        and all(row[e]["equivariance_error"] >= positional.BROKEN for e in ("sinusoidal", "learned", "rotary"))
        and all(row[e]["accuracy"] - none["accuracy"] >= positional.RESTORES for e in encodings)
    )
    assert doc["verdict"] == expected
    # symmetry needs no training: without positions the model is equivariant, with any encoding it is not
    assert none["equivariance_error"] <= positional.EQUIVARIANT
    assert all(row[e]["equivariance_error"] >= positional.BROKEN for e in ("sinusoidal", "learned", "rotary"))


def test_heads_verdict_follows_from_its_table(smoke_runs):
    _, doc, _, _ = smoke_runs["heads"]
    models = [r for r in doc["results"] if r["part"] == "model"]
    counts = sorted({r["heads"] for r in models})

    def mean(key, h):
        values = [r[key] for r in models if r["heads"] == h]
        return sum(values) / len(values)

    def steps(h):
        values = [
            r["steps_to_target"] if r["steps_to_target"] is not None else r["steps"] + 1
            for r in models
            if r["heads"] == h
        ]
        return sum(values) / len(values)

    best = min((h for h in counts if h > 1), key=steps)
    reached = all(r["steps_to_target"] is not None for r in models if r["heads"] == best)
    times = [mean("ms_per_step", h) for h in counts]
    expected = (
        reached
        and steps(best) / steps(1) <= heads.FASTER
        and len({r["parameters"] for r in models}) == 1
        and max(times) / min(times) <= heads.COMPARABLE_TIME
        and mean("diversity_bits", counts[-1]) >= heads.DIVERSE
    )
    assert doc["verdict"] == expected
    assert len({r["parameters"] for r in models}) == 1, "head count does not change the parameters"
    for r in models:
        assert r["steps_to_target"] is None or r["steps_to_target"] <= r["steps"]
    assert set(doc["series"]["accuracy_curves"]) == {str(h) for h in counts}
    head_rows = [r for r in doc["results"] if r["part"] == "head"]
    assert len([r for r in head_rows if r["heads"] == counts[-1]]) == counts[-1]


def _decided(values, bound, at_least):
    """5 to 8 values: the 90% interval of their median is their range; decided only if it is on one side."""
    if len(values) < 5:
        return None
    low, high = min(values), max(values)
    if at_least:
        return True if low >= bound else False if high < bound else None
    return True if high <= bound else False if low > bound else None


def test_efficiency_verdict_follows_from_its_table(smoke_runs):
    _, doc, _, _ = smoke_runs["efficiency"]
    rows, fit_from = doc["results"], doc["parameters"]["fit_from"]

    def round_exponents(method):
        pts = sorted((r["n"], r["round_seconds"]) for r in rows if r["method"] == method and r["n"] >= fit_from)
        return [_exponent([n for n, _ in pts], [t[i] for _, t in pts]) for i in range(len(pts[0][1]))]

    def memory_exponent(method):
        pts = [
            (r["n"], r["peak_mib"])
            for r in rows
            if r["method"] == method
            and r["n"] >= fit_from
            and r["peak_mib"] is not None
            and r["peak_mib"] >= efficiency.MEMORY_FLOOR_MIB
        ]
        return _exponent(*zip(*pts)) if len(pts) >= 2 else None

    def ok(value, bound, at_least):
        return value is not None and (value >= bound if at_least else value <= bound)

    largest = max(r["n"] for r in rows if r["method"] == "gru")
    at = {r["method"]: r["round_seconds"] for r in rows if r["n"] == largest}
    parts = [_decided(round_exponents(m), efficiency.QUADRATIC, True) for m in ("dense (eager)", "dense (sdpa)")]
    parts += [_decided(round_exponents(m), efficiency.LINEAR, False) for m in ("gru", "sliding window", "block-sparse")]
    parts.append(ok(memory_exponent("dense (eager)"), efficiency.QUADRATIC, True))
    parts += [ok(memory_exponent(m), efficiency.LINEAR, False) for m in ("sliding window", "block-sparse")]
    parts.append(_decided([a / b for a, b in zip(at["gru"], at[efficiency.BATCHED])], efficiency.PARALLEL, True))
    expected = False if False in parts else "inconclusive" if None in parts else True
    assert doc["verdict"] == expected
    assert all(len(r["round_seconds"]) == doc["parameters"]["rounds"] for r in rows), "every workload, every round"
    n = 256
    pairs = {r["method"]: r["query_key_pairs"] for r in rows if r["n"] == n}
    assert pairs["dense (eager)"] == n * n and pairs["sliding window"] < n * n and pairs["block-sparse"] < n * n


def _timing_rows(exponents_by_round):
    """Efficiency rows whose per-round times follow t = N^k_r for the given per-round exponents."""
    rows = []
    for method in (*efficiency.METHODS, efficiency.BATCHED):
        for n in (1024, 2048, 4096):
            ks = exponents_by_round.get(method, [1.0] * 5)
            penalty = 3.0 if method == "gru" else 1.0
            rows.append(
                {
                    "method": method,
                    "n": n,
                    "round_seconds": [penalty * n**k * 1e-7 for k in ks],
                    "seconds": penalty * n * 1e-7,
                    "peak_mib": n / 100 * (n / 1024 if "eager" in method else 1),
                }
            )
    return rows


def test_efficiency_timing_verdict_is_inconclusive_inside_its_noise_margin():
    """Regression: a timing part used to flip between runs; one whose rounds straddle the threshold is undecided."""
    quadratic = {"dense (eager)": [2.0] * 5, "dense (sdpa)": [2.0] * 5}
    checks = efficiency.criterion_checks(_timing_rows(quadratic), 1024)
    assert expected_verdict(checks) is True
    straddles = dict(quadratic, **{"dense (sdpa)": [1.5, 1.7, 1.65, 1.55, 1.8]})
    checks = efficiency.criterion_checks(_timing_rows(straddles), 1024)
    assert checks["dense (sdpa): time grows quadratically"]["passed"] is None
    assert expected_verdict(checks) == "inconclusive"
    below = dict(quadratic, **{"dense (sdpa)": [1.2, 1.3, 1.25, 1.1, 1.3]})
    assert expected_verdict(efficiency.criterion_checks(_timing_rows(below), 1024)) is False


def test_timing_experiments_repeat_enough_for_a_noise_margin_in_every_size_but_smoke():
    from qkv.experiments import kv_cache

    for size in ("quick", "full"):
        assert efficiency.SIZES[size]["rounds"] >= 5 and len(kv_cache.SIZES[size]["prompts"]) >= 5
        assert efficiency.SIZES[size]["threads"] == 1 == kv_cache.SIZES[size]["threads"]


# ----------------------------------------------------------------------------- verdicts and noise margins


def test_verdict_of_fails_on_a_failed_part_and_is_inconclusive_on_an_undecided_one():
    yes, no, open_ = check(1, 0, True), check(0, 1, False), check(0.5, 0.5, None)
    assert verdict_of({"a": yes, "b": yes}) is True
    assert verdict_of({"a": yes, "b": open_}) == "inconclusive"
    assert verdict_of({"a": no, "b": open_}) is False and verdict_of({}) is False
    assert verdict_of({"a": no, "b": yes}, "any") is True and verdict_of({"a": no, "b": open_}, "any") == "inconclusive"
    assert verdict_of({"a": no, "b": no}, "any") is False
    with pytest.raises(qkv.AttentionError, match="combine"):
        verdict_of({"a": yes}, "most")


def test_median_interval_covers_the_median_as_often_as_it_says():
    g = torch.Generator().manual_seed(11)
    for n in (5, 7, 9, 15):
        samples = torch.randn(2000, n, generator=g).exp()  # log-normal: median 1
        covered = [lo <= 1.0 <= hi for lo, hi in (median_interval(s.tolist())[1:] for s in samples)]
        assert sum(covered) / len(covered) >= 0.88, n
    assert median_interval([5.0, 1.0, 4.0, 2.0, 3.0]) == (3.0, 1.0, 5.0)
    with pytest.raises(qkv.AttentionError, match="5 or more"):
        median_interval([1.0, 2.0])


def test_decide_needs_the_whole_margin_on_one_side():
    assert decide([2.1, 2.2, 2.3, 2.4, 2.5], 2.0, at_least=True)[3] is True
    assert decide([1.9, 2.2, 2.3, 2.4, 2.5], 2.0, at_least=True)[3] is None
    assert decide([1.5, 1.6, 1.7, 1.8, 1.9], 2.0, at_least=True)[3] is False
    assert decide([1.5, 1.6, 1.7, 1.8, 1.9], 2.0, at_least=False)[3] is True
    assert decide([3.0, 3.0], 2.0, at_least=True)[3] is None, "too few repeats for a margin"


def test_a_rule_changed_after_seeing_data_says_so_in_its_json_and_on_the_docs_page(smoke_runs):
    _, doc, _, _ = smoke_runs["heads"]
    assert doc["rule_changed"] and "0.15" in doc["rule_changed"], "the heads rule was changed after a failed run"
    for name in ("coreference", "pruning", "kv-cache", "efficiency"):
        assert experiments.EXPERIMENTS[name].rule_changed, name
    page = (Path(__file__).resolve().parents[1] / "docs" / "experiments.md").read_text()
    for name, e in experiments.EXPERIMENTS.items():
        section = page.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        if e.rule_changed:
            assert "Rule changed after seeing data" in section, name
        assert "Run:" in section, f"{name}: the page says which run (date, size) its numbers come from"


# ----------------------------------------------------------------------------- seeding


def _without(rows, keys):
    return [{k: v for k, v in r.items() if k not in keys} for r in rows]


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_numbers(smoke_runs, tmp_path, name):
    _, first, _, _ = smoke_runs[name]
    again = experiments.run(name, size="smoke", out=tmp_path, progress=False).to_dict()
    timing = set(first["timing_keys"])
    assert _without(again["results"], timing) == _without(first["results"], timing)
    if not timing:
        assert again["checks"] == first["checks"] and again["verdict"] == first["verdict"]
        assert again["series"] == first["series"]


def test_another_seed_other_numbers(smoke_runs, tmp_path):
    _, first, _, _ = smoke_runs["positional"]
    other = experiments.run("positional", size="smoke", seed=1, out=tmp_path, progress=False)
    assert other.seed == 1 and other.parameters["seed"] == 1
    assert [r["accuracy"] for r in other.results] != [r["accuracy"] for r in first["results"]]


# ----------------------------------------------------------------------------- helpers


def test_power_law_fit_recovers_exponents_and_rejects_bad_input():
    k, c, r2 = fit_power_law([2, 4, 8, 16], [0.5 * n**1.5 for n in (2, 4, 8, 16)])
    assert k == pytest.approx(1.5) and c == pytest.approx(0.5) and r2 == pytest.approx(1.0)
    with pytest.raises(qkv.AttentionError, match="positive"):
        fit_power_law([1, 2], [0.0, 1.0])
    with pytest.raises(qkv.AttentionError, match="two or more"):
        fit_power_law([1], [1.0])


def test_json_is_strict_nan_becomes_null(tmp_path):
    assert jsonable({"x": math.inf, "t": torch.tensor([1.0, math.nan]), "p": Path("a")}) == {
        "x": None,
        "t": [1.0, None],
        "p": "a",
    }
    with pytest.raises(TypeError):
        jsonable(object())


def test_experiment_command_lists_claims_and_rejects_unknown_names(capsys):
    from qkv.cli import main

    assert main(["experiment", "list"]) == 0
    listed = capsys.readouterr().out
    for name in ("bottleneck", "scaling", "positional", "heads", "efficiency", "kv-cache", "pruning", "coreference"):
        assert name in listed
    assert main(["experiment", "nonsense"]) == 2
    assert "unknown name 'nonsense'" in capsys.readouterr().err
