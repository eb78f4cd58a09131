"""The course's trained and production widgets: bottleneck, vit-digits, kv-cache, sparse-cost, pruning.

Each widget runs with its defaults and with changed arguments; its facts are
recomputed independently (by hand, from the models' own parts, or with another
qkv route), its views have the declared kinds and shapes, the result is JSON,
float32 and float64 agree, and bad arguments raise `LearnError`.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from qkv.learn import LearnError
from qkv.learn.widget import VIEW_KINDS, Env
from qkv.learn.widgets import WIDGETS


@pytest.fixture(scope="module")
def env():
    return Env()


@pytest.fixture(scope="module")
def env64(env):
    return Env(dtype=torch.float64, loader=env.model)  # the same loaded models: they load once


def check_result(name, result):
    """Facts keys as declared; views of known kinds with consistent shapes; strict JSON."""
    widget = WIDGETS[name]
    assert set(result.facts) == set(widget.facts)
    for view in result.views:
        assert view["kind"] in VIEW_KINDS
        if view["kind"] == "bars":
            assert len(view["labels"]) == len(view["values"]) > 0
        if view["kind"] == "lines":
            assert all(len(s["values"]) == len(view["x"]) for s in view["series"])
        if view["kind"] == "matrix":
            assert len(view["values"]) == len(view["rows"])
            assert all(len(row) == len(view["cols"]) for row in view["values"])
        if view["kind"] == "table":
            assert all(len(row) == len(view["columns"]) for row in view["rows"])
    json.dumps(result.as_json(), allow_nan=False)


def views_of(result, kind):
    return [v for v in result.views if v["kind"] == kind]


# --- sparse-cost -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length, window", [(2048, 128), (512, 64), (1024, 256)])
def test_sparse_cost_counts_and_agreement(env, length, window):
    args = {} if (length, window) == (2048, 128) else {"length": length, "window": window}
    result = WIDGETS["sparse-cost"].run(args, env)
    check_result("sparse-cost", result)
    f = result.facts
    # query i sees keys i - window + 1 .. i: min(i + 1, window) of them
    assert f["kept_fraction"] == sum(min(i + 1, window) for i in range(length)) / length**2
    assert f["dense_mask_bytes"] == length * length
    assert 0 <= f["max_difference"] < 1e-5
    assert f["ms_dense"] > 0 and f["ms_blockwise"] > 0
    assert f["speedup"] == pytest.approx(f["ms_dense"] / f["ms_blockwise"], rel=1e-3)
    assert views_of(result, "bars")[0]["values"] == [f["ms_dense"], f["ms_blockwise"]]


def test_sparse_cost_float64_agrees(env, env64):
    f32 = WIDGETS["sparse-cost"].run({"length": 512}, env).facts
    f64 = WIDGETS["sparse-cost"].run({"length": 512}, env64).facts
    assert f64["kept_fraction"] == f32["kept_fraction"] and f64["dense_mask_bytes"] == f32["dense_mask_bytes"]
    assert f64["max_difference"] < 1e-12 < f32["max_difference"] < 1e-5


@pytest.mark.parametrize("args", [{"length": 300}, {"window": 100}, {"heads": 4}, {"length": "2048"}])
def test_sparse_cost_bad_args(env, args):
    with pytest.raises(LearnError, match="sparse-cost"):
        WIDGETS["sparse-cost"].run(args, env)


# --- bottleneck ----------------------------------------------------------------------------------------------


def test_bottleneck_default_attention_beats_the_fixed_vector(env):
    from qkv.experiments.bottleneck import BOS, copy_batch
    from qkv.learn.widgets import bottleneck

    result = WIDGETS["bottleneck"].run({}, env)
    check_result("bottleneck", result)
    f = result.facts
    assert f["lengths"] == [4, 8, 16]
    assert 0 <= f["accuracy_plain"] <= 1 and 0 <= f["accuracy_attention"] <= 1
    assert f["accuracy_attention"] > f["accuracy_plain"] + 0.15  # the lesson's claim, at length 16
    # recompute the held-out accuracy from the trained models, decoding greedily here
    models, seconds = bottleneck.trained(16, 0)
    assert seconds > 0
    src, _ = copy_batch(bottleneck.EVAL_SAMPLES, 16, vocab=16, generator=torch.Generator().manual_seed(10_000 + 1600))
    for name in ("attention", "plain"):
        with torch.no_grad():
            ids = models[name].greedy_decode(src, max_len=16, bos_id=BOS)
        assert f[f"accuracy_{name}"] == pytest.approx((ids == src).double().mean().item(), abs=2e-3)
    by_position = views_of(result, "lines")[0]
    assert by_position["x"] == list(range(1, 17))
    mean = sum(by_position["series"][0]["values"]) / 16
    assert mean == pytest.approx(f["accuracy_attention"], abs=1e-4)
    by_length = views_of(result, "lines")[1]
    assert by_length["x"] == f["lengths"] and by_length["series"][1]["values"][-1] == round(f["accuracy_plain"], 5)


def test_bottleneck_changed_args_and_float64(env, env64):
    short = WIDGETS["bottleneck"].run({"length": 4, "seed": 3}, env)
    check_result("bottleneck", short)
    assert short.facts["lengths"] == [4]
    assert len(views_of(short, "lines")) == 1
    assert short.facts["accuracy_attention"] > 0.5 and short.facts["accuracy_plain"] > 1 / 16  # above chance
    f64 = WIDGETS["bottleneck"].run({"length": 4, "seed": 3}, env64).facts
    assert f64["lengths"] == short.facts["lengths"]
    for key in ("accuracy_attention", "accuracy_plain"):
        assert f64[key] == pytest.approx(short.facts[key], abs=0.02)


@pytest.mark.parametrize("args", [{"length": 5}, {"seed": 10}, {"seed": -1}, {"steps": 3}])
def test_bottleneck_bad_args(env, args):
    with pytest.raises(LearnError, match="bottleneck"):
        WIDGETS["bottleneck"].run(args, env)


# --- vit-digits ----------------------------------------------------------------------------------------------


def hand_attention(model, image, layer, head):
    """The (17, 17) probabilities of ``layer``'s ``head``, by hand in float64 from the model's own weights."""
    model = copy.deepcopy(model).double()
    from qkv.learn.vit import patches

    with torch.no_grad():
        x = model.embed(patches(image[None].double()))  # (1, 16, E)
        x = torch.cat([model.cls, x], dim=1) + model.positions  # (1, 17, E)
        for block in model.encoder.layers[:layer]:
            x = block(x)
        block = model.encoder.layers[layer]
        h = block.attn_norm(x)[0]  # (17, E)
        attn = block.self_attn
        d = attn.head_dim
        q = attn.q_proj(h)[:, head * d : (head + 1) * d]  # (17, D)
        k = attn.k_proj(h)[:, head * d : (head + 1) * d]  # (17, D)
        return torch.softmax(q @ k.T / math.sqrt(d), dim=-1)  # (17, 17)


@pytest.mark.parametrize(
    "args", [{}, {"index": 7, "layer": 1, "head": 2, "patch": 6}, {"index": 99, "layer": 0, "head": 3, "patch": 16}]
)
def test_vit_digits_facts_match_the_model(env, args):
    from qkv.learn.vit import accuracy, digits
    from qkv.learn.widgets import vit_digits

    result = WIDGETS["vit-digits"].run(args, env)
    check_result("vit-digits", result)
    f = result.facts
    a = {"index": 0, "layer": 0, "head": 0, "patch": 0, **args}
    run = vit_digits.trained()
    data = digits()
    image = data.test_images[a["index"]]
    assert f["label"] == int(data.test_labels[a["index"]])
    with torch.no_grad():
        assert f["prediction"] == int(run.model(image[None]).argmax())
    assert f["test_accuracy"] == pytest.approx(accuracy(run.model, data.test_images, data.test_labels), abs=1e-12)
    assert f["test_accuracy"] > 0.9
    assert f["train_seconds"] > 0
    weights = hand_attention(run.model, image, a["layer"], a["head"])[a["patch"]]  # (17,)
    assert f["top_patch"] == int(weights[1:].argmax()) + 1
    pixels, attention = views_of(result, "matrix")
    assert len(pixels["values"]) == 8 and all(len(r) == 8 for r in pixels["values"])
    assert torch.allclose(torch.tensor(pixels["values"], dtype=torch.float64), image.double(), atol=1e-4)
    grid = torch.tensor(attention["values"], dtype=torch.float64)  # (4, 4)
    assert grid.shape == (4, 4)
    assert torch.allclose(grid.flatten(), weights[1:], atol=1e-4)
    assert f"{weights[0].item():.3f}" in attention["caption"]


def test_vit_digits_float64_agrees(env, env64):
    args = {"index": 3, "layer": 1, "head": 1, "patch": 0}
    f32 = WIDGETS["vit-digits"].run(args, env).facts
    f64 = WIDGETS["vit-digits"].run(args, env64).facts
    assert {k: f64[k] for k in ("prediction", "label", "top_patch", "train_seconds")} == {
        k: f32[k] for k in ("prediction", "label", "top_patch", "train_seconds")
    }
    assert f64["test_accuracy"] == pytest.approx(f32["test_accuracy"], abs=1 / 360 + 1e-12)


@pytest.mark.parametrize("args", [{"index": 100}, {"layer": 2}, {"head": 4}, {"patch": 17}, {"index": 1.5}])
def test_vit_digits_bad_args(env, args):
    with pytest.raises(LearnError, match="vit-digits"):
        WIDGETS["vit-digits"].run(args, env)


# --- kv-cache ------------------------------------------------------------------------------------------------


def test_kv_cache_default(env):
    result = WIDGETS["kv-cache"].run({}, env)
    check_result("kv-cache", result)
    f = result.facts
    lm = env.model("smollm2")
    n = len(lm.encode("The capital of France is"))
    assert f["same_tokens"] is True
    assert f["max_logit_difference"] < 1e-3  # exact up to float rounding
    # 30 layers × keys and values × 3 kv heads × (prompt + 12) positions × 64 dims × 4 bytes
    assert f["cache_bytes"] == 30 * 2 * 3 * (n + 12) * 64 * 4
    assert f["speedup"] == pytest.approx(f["ms_per_token_full"] / f["ms_per_token_cached"], rel=1e-2)
    # the text the cached run generated is what qkv's own generate (contiguous cache) gives
    table = views_of(result, "table")[0]
    assert table["rows"][0][1] == lm.generate("The capital of France is", max_new_tokens=12)
    assert table["rows"][0][1] == table["rows"][0][2]


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["int8", "paged"])
def test_kv_cache_other_kinds(env, env64, cache):
    args = {"prompt": "Water boils at", "tokens": 5, "cache": cache}
    result = WIDGETS["kv-cache"].run(args, env)
    check_result("kv-cache", result)
    f = result.facts
    n = len(env.model("smollm2").encode("Water boils at"))
    if cache == "int8":  # int8 keys and values plus one float32 scale per (token, head) vector
        assert f["cache_bytes"] == 30 * 2 * 3 * (n + 5) * (64 + 4)
        assert 0 < f["max_logit_difference"] < 5.0
    else:  # the pages in use: 16 tokens each
        assert f["cache_bytes"] == 30 * 2 * 3 * math.ceil((n + 4) / 16) * 16 * 64 * 4
        assert f["max_logit_difference"] < 1e-3
        return
    f64 = WIDGETS["kv-cache"].run(args, env64).facts  # the model runs in its own precision
    assert f64["cache_bytes"] == f["cache_bytes"] and f64["same_tokens"] == f["same_tokens"]
    assert f64["max_logit_difference"] == pytest.approx(f["max_logit_difference"], rel=0.1, abs=1e-4)


@pytest.mark.parametrize(
    "args, match",
    [
        ({"tokens": 25}, "tokens"),
        ({"tokens": 3}, "tokens"),
        ({"cache": "fp8"}, "cache"),
        ({"prompt": "word " * 40}, "at most 32 tokens"),
        ({"prompt": "   "}, "prompt"),
    ],
)
def test_kv_cache_bad_args(env, args, match):
    with pytest.raises(LearnError, match=match):
        WIDGETS["kv-cache"].run(args, env)


# --- pruning -------------------------------------------------------------------------------------------------


def test_pruning_owned_parameters_match_physical_pruning():
    from qkv.learn.widgets.pruning import owned_parameters
    from qkv.nn import MultiHeadAttention, prune_heads

    g = torch.Generator().manual_seed(3)
    for bias in (True, False):
        for _ in range(6):
            mha = MultiHeadAttention(24, 6, num_kv_heads=3, bias=bias)
            heads = {h for h in range(6) if torch.rand((), generator=g) < 0.5}
            before = sum(p.numel() for p in mha.parameters())
            expected = owned_parameters(mha, heads)
            prune_heads(mha, sorted(heads))
            assert before - sum(p.numel() for p in mha.parameters()) == expected


@pytest.mark.slow
def test_pruning_none_removed(env):
    from qkv.learn.widgets.pruning import HELD_OUT_TEXT

    result = WIDGETS["pruning"].run({"removed": 0}, env)
    check_result("pruning", result)
    f = result.facts
    assert f["perplexity"] == f["perplexity_full"] and f["agreement"] == 1.0 and f["parameters_removed"] == 0
    lm = env.model("smollm2")
    ids = torch.tensor([lm.encode(HELD_OUT_TEXT)])
    with torch.no_grad():
        logits = lm.model(ids)[0].double()  # (N, V)
    assert f["perplexity_full"] == pytest.approx(math.exp(F.cross_entropy(logits[:-1], ids[0, 1:]).item()), rel=1e-4)


def test_pruning_default_equals_physical_pruning(env):
    from qkv.learn.widgets.pruning import HELD_OUT_TEXT, chosen_heads
    from qkv.nn import prune_heads

    result = WIDGETS["pruning"].run({}, env)
    check_result("pruning", result)
    f = result.facts
    lm = env.model("smollm2")
    plan = chosen_heads(lm, 27, "importance")
    assert sum(len(h) for h in plan.values()) == 27
    assert sum(views_of(result, "bars")[0]["values"]) == 27
    pruned = copy.deepcopy(lm.model)
    before = sum(p.numel() for p in pruned.parameters())
    prune_heads(pruned, {layer: sorted(heads) for layer, heads in plan.items()})
    assert before - sum(p.numel() for p in pruned.parameters()) == f["parameters_removed"] > 0
    ids = torch.tensor([lm.encode(HELD_OUT_TEXT)])
    with torch.no_grad():
        cut, full = pruned(ids)[0], lm.model(ids)[0]  # (N, V) each
    del pruned
    ppl = math.exp(F.cross_entropy(cut[:-1].double(), ids[0, 1:]).item())
    assert f["perplexity"] == pytest.approx(ppl, rel=1e-3)
    assert f["perplexity"] > f["perplexity_full"]
    agree = (cut[:-1].argmax(-1) == full[:-1].argmax(-1)).double().mean().item()
    assert f["agreement"] == pytest.approx(agree, abs=2 / len(ids[0]))  # a near-tie may flip one position


@pytest.mark.slow
def test_pruning_random_order_and_float64(env, env64):
    args = {"removed": 54, "order": "random"}
    f = WIDGETS["pruning"].run(args, env).facts
    importance = WIDGETS["pruning"].run({"removed": 54}, env).facts
    assert f["perplexity_full"] == importance["perplexity_full"]
    assert f["perplexity"] != importance["perplexity"]  # another set of heads
    assert 0 <= f["agreement"] < 1
    f64 = WIDGETS["pruning"].run(args, env64).facts
    assert f64 == pytest.approx(f, rel=1e-9)  # the model runs in its own precision


@pytest.mark.parametrize("args", [{"removed": 271}, {"removed": -9}, {"order": "largest"}, {"heads": 3}])
def test_pruning_bad_args(env, args):
    with pytest.raises(LearnError, match="pruning"):
        WIDGETS["pruning"].run(args, env)
