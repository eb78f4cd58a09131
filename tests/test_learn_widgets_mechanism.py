"""The course's mechanism widgets on small fixed inputs: each fact recomputed by hand in float64,
the views' kinds and shapes, float32 against float64, JSON without NaN, and bad arguments refused."""

from __future__ import annotations

import json
import math

import pytest
import torch

import qkv
from qkv.learn import LearnError
from qkv.learn.widget import VIEW_KINDS, Env
from qkv.learn.widgets import WIDGETS
from qkv.learn.widgets._toy import attention_inputs, embed, generator, projection
from qkv.learn.widgets.cross_attention import PAIRS
from qkv.learn.widgets.cross_attention import D as CROSS_D
from qkv.learn.widgets.saturation import HEADS, SWEEP, TOKENS
from qkv.learn.widgets.soft_lookup import KEYS, QUERIES

MINE = ("soft-lookup", "lab", "saturation", "mask-editor", "cross-attention", "shuffle", "positions")

# (widget, args): the defaults and a few changed settings of each
CASES = [
    ("soft-lookup", {}),
    ("soft-lookup", {"query": "horse", "sharpness": 3.5}),
    ("soft-lookup", {"query": "truck", "sharpness": 0.1}),
    ("lab", {}),
    ("lab", {"mask": "causal", "heads": 3, "head": 2, "d_k": 32, "scaled": False}),
    ("lab", {"text": "a dog saw a cat", "query": "saw", "positional": "rotary", "temperature": 0.5}),
    ("lab", {"mask": "sliding_window", "window": 2, "positional": "sinusoidal", "d_k": 5}),
    ("saturation", {}),
    ("saturation", {"d_k": 1024, "scaled": True}),
    ("saturation", {"d_k": 2, "scaled": False}),
    ("mask-editor", {}),
    ("mask-editor", {"preset": "padding", "length": 3, "text": "one two three four five"}),
    ("mask-editor", {"preset": "sliding_window", "window": 3}),
    ("mask-editor", {"preset": "custom", "text": "a b c", "mask": [[False] * 3, [True, True, False], [True] * 3]}),
    ("cross-attention", {}),
    ("cross-attention", {"self": True}),
    ("cross-attention", {"target": "le chien est sur le tapis", "source": "the dog is on the mat"}),
    ("shuffle", {}),
    ("shuffle", {"positional": "sinusoidal", "seed": 7}),
    ("shuffle", {"positional": "rotary", "text": "one two three four five six seven"}),
    ("positions", {}),
    ("positions", {"kind": "rotary", "dim": 32, "length": 20, "offset": 7}),
    ("positions", {"kind": "sinusoidal", "dim": 6, "length": 64, "offset": 0}),
]


@pytest.fixture(scope="module")
def env32() -> Env:
    return Env()


@pytest.fixture(scope="module")
def env64() -> Env:
    return Env(dtype=torch.float64)


def run(name: str, args: dict, env: Env) -> dict:
    return WIDGETS[name].run(args, env).as_json()


def softmax64(scores: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the last axis in float64, written out; rows with no allowed key are zeros."""
    s = scores.double()
    if allowed is not None:
        s = s.masked_fill(~allowed, -math.inf)
    top = s.amax(-1, keepdim=True).clamp(min=-1e300)  # a fully masked row keeps -inf scores: exp gives 0
    e = (s - top).exp()
    total = e.sum(-1, keepdim=True)
    return torch.where(total > 0, e / total.clamp(min=1e-300), torch.zeros_like(e))


def check_view(view: dict) -> None:
    assert view["kind"] in VIEW_KINDS
    kind = view["kind"]
    if kind == "matrix":
        assert len(view["values"]) == len(view["rows"]) <= 64
        assert all(len(r) == len(view["cols"]) <= 64 for r in view["values"])
    elif kind == "bars":
        assert len(view["values"]) == len(view["labels"])
    elif kind == "lines":
        assert all(len(s["values"]) == len(view["x"]) for s in view["series"]) and view["series"]
    elif kind == "tokens":
        assert len(view["weights"]) == len(view["tokens"])
        assert all(0 <= w <= 1 for w in view["weights"])
    elif kind == "table":
        assert all(len(r) == len(view["columns"]) for r in view["rows"])
    else:
        assert isinstance(view["text"], str) and view["text"]


def agree(a, b, tol: float, where: str = "") -> None:
    """Facts from float32 and float64 runs: equal ints, bools, strings and None; numbers within ``tol``."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), where
        assert abs(a - b) <= tol, (where, a, b)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            agree(x, y, tol, f"{where}[{i}]")
    else:
        assert type(a) is type(b) and a == b, (where, a, b)


def test_all_mechanism_widgets_are_registered():
    assert set(MINE) <= set(WIDGETS)
    for name in MINE:
        described = WIDGETS[name].describe()
        json.dumps(described, allow_nan=False)
        assert described["models"] == []


@pytest.mark.parametrize(("name", "args"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_views_facts_json_and_precisions(name, args, env32, env64):
    widget = WIDGETS[name]
    result = run(name, args, env32)
    assert list(result["facts"]) == list(widget.facts)
    json.dumps(result, allow_nan=False)
    assert result["views"]
    for view in result["views"]:
        check_view(view)
    precise = run(name, args, env64)
    assert [v["kind"] for v in precise["views"]] == [v["kind"] for v in result["views"]]
    agree(result["facts"], precise["facts"], tol=2e-3 if name == "soft-lookup" else 1e-3, where=name)


# ---------------------------------------------------------------------------------------------
# soft-lookup


@pytest.mark.parametrize("query", list(QUERIES))
@pytest.mark.parametrize("sharpness", [0.1, 1.0, 4.3, 20.0])
def test_soft_lookup_is_the_weighted_average_by_hand(query, sharpness, env64):
    facts = run("soft-lookup", {"query": query, "sharpness": sharpness}, env64)["facts"]
    q = torch.tensor(QUERIES[query], dtype=torch.float64)
    k = torch.tensor([vec for vec, _ in KEYS.values()], dtype=torch.float64)
    v = torch.tensor([value for _, value in KEYS.values()], dtype=torch.float64)
    w = softmax64(sharpness * (k @ q))  # (6,)
    top = int(w.argmax())
    assert facts["weights"] == pytest.approx(w.tolist(), abs=1e-4)
    assert facts["top_key"] == top and facts["top_token"] == list(KEYS)[top]
    assert facts["top_weight"] == pytest.approx(float(w[top]), abs=1e-4)
    assert facts["output"] == pytest.approx(float(w @ v), abs=0.01)
    assert facts["hard_output"] == float(v[top])
    assert facts["entropy"] == pytest.approx(float(-(w * w.log()).sum()), abs=1e-4)


def test_soft_lookup_sharpness_moves_from_average_to_argmax(env32):
    entropies = [
        run("soft-lookup", {"query": "kitten", "sharpness": s}, env32)["facts"]["entropy"]
        for s in (0.1, 0.5, 1, 2, 5, 20)
    ]
    assert entropies == sorted(entropies, reverse=True) and entropies[0] > 1.75 and entropies[-1] < 1e-3
    sharp = run("soft-lookup", {"query": "kitten", "sharpness": 20}, env32)["facts"]
    assert sharp["output"] == pytest.approx(sharp["hard_output"], rel=1e-3)
    soft = run("soft-lookup", {"query": "kitten"}, env32)["facts"]
    assert soft["top_token"] == "cat" and soft["output"] > 10 * soft["hard_output"]  # the bus's value leaks in
    table = run("soft-lookup", {"query": "kitten"}, env32)["views"][1]
    assert table["rows"][-1][-1] == soft["output"] and table["rows"][-1][2] == pytest.approx(1.0, abs=1e-4)


def test_soft_lookup_refuses_bad_arguments(env32):
    for args in ({"query": "zebra"}, {"sharpness": 0.0}, {"sharpness": 25}, {"sharp": 1}):
        with pytest.raises(LearnError):
            run("soft-lookup", args, env32)


# ---------------------------------------------------------------------------------------------
# lab


def lab_by_hand(
    words, *, d_k=8, heads=2, head=0, scaled=True, temperature=1.0, mask="none", window=3, positional="none"
):
    q, k, _ = attention_inputs(words, torch.float64, heads, d_k, positional)  # (1, H, N, d_k)
    n = len(words)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    allowed = {
        "none": torch.ones(n, n, dtype=torch.bool),
        "causal": j <= i,
        "sliding_window": (j <= i) & (j > i - window),
    }
    scale = 1 / math.sqrt(d_k) if scaled else 1.0
    scores = q[0, head] @ k[0, head].T * scale / temperature
    return softmax64(scores, allowed[mask]), allowed[mask]


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"mask": "causal", "d_k": 3, "heads": 1},
        {"mask": "sliding_window", "window": 2, "head": 1, "temperature": 2.5},
        {"positional": "rotary", "d_k": 16, "scaled": False, "heads": 4, "head": 3},
        {"positional": "sinusoidal", "text": "big dogs chase small cats and big cats chase mice", "query": "cats"},
    ],
)
def test_lab_weights_by_hand(args, env64):
    facts = run("lab", args, env64)["facts"]
    words = args.get("text", "the cat sat on the mat").split()
    hand_args = {key: value for key, value in args.items() if key not in ("text", "query")}
    w, _ = lab_by_hand(words, **hand_args)
    assert facts["tokens"] == words
    assert torch.allclose(torch.tensor(facts["weights"], dtype=torch.float64), w, atol=1e-4)
    query = words.index(args.get("query", "cat"))
    assert facts["query_index"] == query
    assert facts["top_key"] == int(w[query].argmax()) and facts["top_token"] == words[facts["top_key"]]
    assert facts["top_weight"] == pytest.approx(float(w[query].max()), abs=1e-4)
    row = w[query][w[query] > 0]
    assert facts["entropy"] == pytest.approx(float(-(row * row.log()).sum()), abs=1e-4)


def test_lab_repeated_rows_are_equal_only_when_the_computation_says_so(env32):
    def same(**args):
        return run("lab", args, env32)["facts"]["repeated_rows_equal"]

    assert same() is True
    assert same(heads=4, head=3, d_k=64, scaled=False) is True
    assert same(mask="causal") is False
    assert same(mask="sliding_window", window=12) is False
    assert same(positional="sinusoidal") is False
    assert same(positional="rotary") is False
    assert same(text="every word here is new", query="word") is None
    facts = run("lab", {}, env32)["facts"]
    assert facts["weights"][0] == facts["weights"][4]  # 'the' at 0 and at 4, the rows the fact speaks of


def test_lab_views_mask_cells_and_saturate_without_scaling(env32):
    views = run("lab", {"mask": "causal"}, env32)["views"]
    scaled = next(v for v in views if v["title"] == "Scaled scores")
    assert all((cell is None) == (j > i) for i, r in enumerate(scaled["values"]) for j, cell in enumerate(r))
    tokens = next(v for v in views if v["kind"] == "tokens")
    assert tokens["focus"] == 1 and sum(tokens["weights"]) == pytest.approx(1.0, abs=1e-3)
    out = next(v for v in views if v["title"].startswith("Output"))
    assert len(out["cols"]) == 8
    flat = run("lab", {"d_k": 256, "scaled": True}, env32)["facts"]["top_weight"]
    sharp = run("lab", {"d_k": 256, "scaled": False}, env32)["facts"]["top_weight"]
    assert sharp > 0.99 > flat


def test_lab_refuses_bad_arguments(env32):
    bad = [
        ({"heads": 2, "head": 2}, "head"),
        ({"query": "dog"}, "not a word of the text"),
        ({"positional": "rotary", "d_k": 7}, "even"),
        ({"text": " ".join(["w"] * 13), "query": "w"}, "at most 12 words"),
        ({"d_k": 300}, "d_k"),
        ({"mask": "block_sparse"}, "mask"),
        ({"text": "   "}, "text"),
    ]
    for args, message in bad:
        with pytest.raises(LearnError, match=message):
            run("lab", args, env32)


# ---------------------------------------------------------------------------------------------
# saturation


def test_saturation_facts_by_hand(env64):
    g = generator("saturation", 0)
    q, k = torch.randn(2, HEADS, TOKENS, SWEEP[-1], generator=g, dtype=torch.float64).unbind(0)
    for d_k, scaled in ((64, False), (8, True), (1024, False)):
        facts = run("saturation", {"d_k": d_k, "scaled": scaled}, env64)["facts"]
        scale = 1 / math.sqrt(d_k) if scaled else 1.0
        p = softmax64(q[..., :d_k] @ k[..., :d_k].transpose(-2, -1) * scale)  # (H, N, N)
        jac = torch.diag_embed(p) - p[..., :, None] * p[..., None, :]
        assert facts["peak"] == pytest.approx(float(p.amax(-1).mean()), abs=1e-4)
        assert facts["entropy"] == pytest.approx(float(torch.special.entr(p).sum(-1).mean()), abs=1e-4)
        assert facts["gradient"] == pytest.approx(float(jac.square().sum((-2, -1)).sqrt().mean()), abs=1e-4)


def test_saturation_unscaled_falls_scaled_stays_flat(env32):
    unscaled = run("saturation", {"scaled": False}, env32)
    assert unscaled["facts"]["entropy_direction"] == "fall" and unscaled["facts"]["gradient_direction"] == "fall"
    scaled = run("saturation", {"scaled": True}, env32)
    assert scaled["facts"]["entropy_direction"] == "flat" and scaled["facts"]["gradient_direction"] == "flat"
    peak = unscaled["views"][0]
    assert peak["x"] == list(SWEEP) and peak["log_x"] is True
    curve = next(s["values"] for s in peak["series"] if s["name"].startswith("unscaled"))
    assert curve == sorted(curve) and curve[-1] > 0.9 > 0.5 > curve[0]
    facts = [run("saturation", {"d_k": d, "scaled": False}, env32)["facts"]["peak"] for d in SWEEP]
    assert facts == curve


def test_saturation_refuses_a_d_k_off_the_sweep(env32):
    for args in ({"d_k": 3}, {"d_k": 2048}, {"scaled": "yes"}):
        with pytest.raises(LearnError):
            run("saturation", args, env32)


# ---------------------------------------------------------------------------------------------
# mask-editor


@pytest.mark.parametrize(
    ("args", "rule"),
    [
        ({"preset": "none"}, lambda i, j: True),
        ({}, lambda i, j: j <= i),
        ({"preset": "sliding_window", "window": 3}, lambda i, j: i - 3 < j <= i),
        ({"preset": "padding", "length": 2}, lambda i, j: j < 2),
        ({"preset": "padding", "length": 9}, lambda i, j: True),
    ],
)
def test_mask_editor_presets_by_hand(args, rule, env64):
    result = run("mask-editor", args, env64)
    facts = result["facts"]
    n = 6
    allowed = [[bool(rule(i, j)) for j in range(n)] for i in range(n)]
    assert facts["allowed"] == allowed
    assert facts["kept_fraction"] == pytest.approx(sum(map(sum, allowed)) / n**2, abs=1e-4)
    assert facts["row_sums"] == [1.0] * n and facts["empty_rows"] == [] and facts["zero_output_rows"] == []
    assert facts["any_nan"] is False
    cells, weights = result["views"][0], result["views"][1]
    assert cells["editable"] == "mask" and cells["values"] == [[1 if c else None for c in r] for r in allowed]
    q, k, _ = attention_inputs("the cat sat on the mat".split(), torch.float64, 1, 8, "none")
    w = softmax64(q[0, 0] @ k[0, 0].T / math.sqrt(8), torch.tensor(allowed))
    for i in range(n):
        for j in range(n):
            assert (weights["values"][i][j] is None) == (not allowed[i][j])
            if allowed[i][j]:
                assert weights["values"][i][j] == pytest.approx(float(w[i, j]), abs=1e-4)


def test_mask_editor_custom_mask_with_empty_rows_gives_zeros_not_nan(env32):
    grid = [[True, False, True, False], [False] * 4, [False, False, True, True], [False] * 4]
    result = run("mask-editor", {"text": "w x y z", "preset": "custom", "mask": grid}, env32)
    facts = result["facts"]
    assert facts["allowed"] == grid
    assert facts["row_sums"] == [1.0, 0.0, 1.0, 0.0]
    assert facts["empty_rows"] == [1, 3] and facts["zero_output_rows"] == [1, 3]
    assert facts["any_nan"] is False and facts["kept_fraction"] == 0.25
    text = result["views"][-1]
    assert text["kind"] == "text" and "NaN" in text["text"] and "'x' (row 1)" in text["text"]
    assert run("mask-editor", {"text": "w x y z", "preset": "custom"}, env32)["facts"]["kept_fraction"] == 1.0
    assert run("mask-editor", {"mask": None}, env32)["facts"] == run("mask-editor", {}, env32)["facts"]
    assert all(v["kind"] != "text" for v in run("mask-editor", {}, env32)["views"])
    # a drawn mask sent with another preset: the preset decides, and the page is told
    drawn = run("mask-editor", {"preset": "causal", "mask": [[True] * 6] * 6}, env32)
    assert drawn["facts"] == run("mask-editor", {"preset": "causal"}, env32)["facts"]
    assert "not used" in drawn["views"][-1]["text"]


def test_mask_editor_refuses_bad_masks(env32):
    bad = [
        ({"preset": "custom", "mask": [[True, False], [True, True]]}, "6×6"),
        ({"preset": "custom", "mask": [[True, 1], [True, True]]}, "true/false"),
        ({"preset": "custom", "mask": [[True, True], [True]]}, "square"),
        ({"text": " ".join("abcdefghijk")}, "at most 10 words"),
        ({"length": 0}, "length"),
    ]
    for args, message in bad:
        with pytest.raises(LearnError, match=message):
            run("mask-editor", args, env32)


# ---------------------------------------------------------------------------------------------
# cross-attention


def test_cross_attention_by_hand(env64):
    target, source = "le petit chat dort".split(), "the small cat sleeps on the mat".split()
    facts = run("cross-attention", {"target": " ".join(target), "source": " ".join(source)}, env64)["facts"]
    assert facts["shape"] == [4, 7] and facts["tokens_query"] == target and facts["tokens_key"] == source
    x_q = embed([PAIRS.get(w, w) for w in target], torch.float64, dim=CROSS_D, seed=1)
    x_k = embed(source, torch.float64, dim=CROSS_D, seed=1)
    w_qk = projection("qk", 0, CROSS_D, CROSS_D, torch.float64, seed=1)
    w = softmax64((x_q @ w_qk) @ (x_k @ w_qk).T / math.sqrt(CROSS_D))
    assert facts["top_key_of"] == w.argmax(-1).tolist()
    assert facts["top_key_of"] == [0, 1, 2, 3]  # the built-in alignment: each word finds its partner


def test_cross_attention_default_and_self(env32):
    cross = run("cross-attention", {}, env32)
    assert cross["facts"]["top_key_of"] == [0, 1, 2, 3]
    assert cross["views"][0]["rows"] == "le chat est assis".split()
    assert cross["views"][0]["cols"] == "the cat is sitting".split()
    own = run("cross-attention", {"self": True, "source": "ignored words here"}, env32)["facts"]
    assert own["shape"] == [4, 4] and own["tokens_key"] == own["tokens_query"] == "le chat est assis".split()
    odd = run("cross-attention", {"target": "chat", "source": "a b cat d e"}, env32)["facts"]
    assert odd["shape"] == [1, 5] and odd["top_key_of"] == [2]
    with pytest.raises(LearnError, match="source"):
        run("cross-attention", {"source": " ".join(["w"] * 13)}, env32)
    with pytest.raises(LearnError, match="self"):
        run("cross-attention", {"self": 1}, env32)


# ---------------------------------------------------------------------------------------------
# shuffle


def self_attention_by_hand(words, positional):
    q, k, v = attention_inputs(words, torch.float64, 1, 8, positional)
    return softmax64(q[0, 0] @ k[0, 0].T / math.sqrt(8)) @ v[0, 0]


@pytest.mark.parametrize("positional", ["none", "sinusoidal", "rotary"])
@pytest.mark.parametrize("seed", [0, 1, 42])
def test_shuffle_by_hand(positional, seed, env64):
    text = "a quick brown fox jumps over the lazy dog"
    facts = run("shuffle", {"text": text, "positional": positional, "seed": seed}, env64)["facts"]
    words = text.split()
    perm = facts["permutation"]
    assert sorted(perm) == list(range(len(words))) and perm != list(range(len(words)))
    out = self_attention_by_hand(words, positional)
    out_shuffled = self_attention_by_hand([words[i] for i in perm], positional)
    difference = float((out[perm] - out_shuffled).abs().max())
    assert facts["max_difference"] == pytest.approx(difference, abs=1e-5)
    assert facts["equivariant"] is (positional == "none")
    if positional != "none":
        assert facts["max_difference"] > 1e-2


def test_shuffle_views_and_bad_text(env32):
    result = run("shuffle", {}, env32)
    moved, shuffled = result["views"][0], result["views"][1]
    assert torch.allclose(torch.tensor(moved["values"]), torch.tensor(shuffled["values"]), atol=1e-4)
    assert "same output" in result["views"][-1]["text"]
    two = run("shuffle", {"text": "yes no", "seed": 5}, env32)["facts"]
    assert two["permutation"] == [1, 0]
    with pytest.raises(LearnError, match="at least 2 words"):
        run("shuffle", {"text": "alone"}, env32)
    with pytest.raises(LearnError, match="seed"):
        run("shuffle", {"seed": -1}, env32)


# ---------------------------------------------------------------------------------------------
# positions


@pytest.mark.parametrize(("dim", "length", "offset"), [(16, 32, 3), (2, 10, 9), (64, 64, 0), (10, 40, 31)])
def test_sinusoidal_dot_products_are_the_cosine_sum(dim, length, offset, env64):
    result = run("positions", {"kind": "sinusoidal", "dim": dim, "length": length, "offset": offset}, env64)
    omega = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    expected = float(torch.cos(offset * omega).sum())  # Σ sin(iω)sin((i+o)ω) + cos(iω)cos((i+o)ω)
    line = result["views"][1]
    assert line["x"] == list(range(length - offset))
    assert line["series"][0]["values"] == pytest.approx([expected] * (length - offset), abs=1e-4)
    assert result["facts"]["relative_only"] is True and result["facts"]["max_difference"] < 1e-6
    pe = torch.tensor(result["views"][0]["values"])
    assert pe.shape == (length, dim)
    assert float(pe[1, 0]) == pytest.approx(math.sin(1.0), abs=1e-3)


@pytest.mark.parametrize(("dim", "length", "offset"), [(16, 32, 3), (64, 64, 31), (2, 5, 1)])
def test_rotary_scores_depend_on_the_offset_only(dim, length, offset, env32):
    result = run("positions", {"kind": "rotary", "dim": dim, "length": length, "offset": offset}, env32)
    grid = torch.tensor(result["views"][0]["values"])  # (L, L): q at i, k at j
    assert grid.shape == (length, length)
    for d in range(-length + 1, length):
        diagonal = torch.diagonal(grid, d)
        assert float(diagonal.max() - diagonal.min()) < 2e-3
    line = torch.tensor(result["views"][1]["series"][0]["values"])
    assert torch.allclose(line, torch.diagonal(grid, offset), atol=2e-3)
    assert result["facts"]["relative_only"] is True
    assert result["facts"]["max_difference"] == pytest.approx(float((line - line.mean()).abs().max()), abs=2e-3)
    # an absolute encoding would not pass: the same q, k at positions (i, i + offset) without turning them
    # gives a constant, but with the turn the score really changes with the offset
    other = run("positions", {"kind": "rotary", "dim": dim, "length": length, "offset": 0}, env32)
    assert other["views"][1]["series"][0]["values"][0] != pytest.approx(line[0].item(), abs=1e-3)


def test_positions_refuses_bad_arguments(env32):
    for args, message in (
        ({"dim": 7}, "even"),
        ({"length": 4, "offset": 4}, "below"),
        ({"dim": 66}, "dim"),
        ({"kind": "alibi"}, "kind"),
    ):
        with pytest.raises(LearnError, match=message):
            run("positions", args, env32)


def test_widgets_use_qkv_for_the_attention(monkeypatch, env32):
    """The widgets' weights are qkv's: a changed qkv.attention_weights shows in the facts."""
    real = qkv.attention_weights
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(qkv, "attention_weights", spy)
    for name in ("soft-lookup", "lab", "mask-editor", "cross-attention"):
        calls.clear()
        run(name, {}, env32)
        assert calls, name
