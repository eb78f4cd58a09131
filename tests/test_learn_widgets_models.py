"""The course's real-model widgets: sentence-order, model-attention, encoder-decoder, head-ablation,
weights-vs-effect and block, each checked against an independent recomputation on MiniLM / SmolLM2."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("gguf", reason="reading GGUF files needs the 'gguf' package: pip install gguf")
pytest.importorskip("tokenizers", reason="the tokenizers need the 'tokenizers' package: pip install tokenizers")

import qkv.learn.widgets  # noqa: E402,F401  (registers the widgets)
from qkv.learn import LearnError  # noqa: E402
from qkv.learn.widget import VIEW_KINDS, WIDGETS, Env  # noqa: E402
from qkv.models import PACKAGES  # noqa: E402

CAT = "The cat sat on the mat because it was tired."


def _need(name: str) -> None:
    package = PACKAGES[name]
    if not package.is_installed():
        pytest.skip(f"weight package {package.distribution} not installed: {package.install_command}")


@pytest.fixture(scope="module")
def env() -> Env:
    _need("minilm")
    _need("smollm2")
    return Env()


@pytest.fixture(scope="module")
def env64(env: Env) -> Env:
    return Env(dtype=torch.float64, loader=env.model)  # the same loaded models, facts computed in float64


def run(env: Env, name: str, **args):
    result = WIDGETS[name].run(args, env)
    widget = WIDGETS[name]
    assert set(result.facts) == set(widget.facts)
    json.dumps(result.as_json(), allow_nan=False)  # plain JSON, no NaN / inf
    for view in result.views:
        assert view["kind"] in VIEW_KINDS
    return result


def views_of(result, kind):
    return [v for v in result.views if v["kind"] == kind]


def agree(a, b, atol=1e-4):
    """Facts of a float32 and a float64 run: equal, or numbers within atol."""
    if isinstance(a, bool) or isinstance(a, (str, int)) and not isinstance(a, float):
        return a == b
    if isinstance(a, float):
        return math.isclose(a, b, abs_tol=atol, rel_tol=1e-4)
    if isinstance(a, list):
        return len(a) == len(b) and all(agree(x, y, atol) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(agree(a[k], b[k], atol) for k in a)
    return a == b


def layer_input(model, ids, layer):
    """The hidden states entering ``layer`` (1, N, E) and leaving it, from a plain forward pass of the model."""
    seen = {}
    module = model.model.layers[layer]
    handles = [
        module.register_forward_pre_hook(lambda m, args: seen.setdefault("in", args[0])),
        module.register_forward_hook(lambda m, args, out: seen.setdefault("out", out)),
    ]
    try:
        with torch.no_grad():
            model.model(torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    return seen["in"], seen["out"]


def zero_head_columns(attention, head):
    """An independent way to silence a head: zero its slice of out_proj's input (a hook on out_proj)."""
    d = attention.head_dim

    def hook(module, args):
        x = args[0].clone()
        x[..., head * d : (head + 1) * d] = 0
        return (x,)

    return attention.out_proj.register_forward_pre_hook(hook)


@pytest.mark.parametrize(
    "name, args",
    [
        ("sentence-order", {}),
        ("model-attention", {}),
        ("model-attention", {"model": "smollm2", "layer": 12, "head": 2, "query": "cat"}),
        ("encoder-decoder", {}),
        ("head-ablation", {}),
        ("weights-vs-effect", {}),
        ("block", {}),
        ("block", {"residual": False, "layer": 4}),
    ],
)
def test_float32_and_float64_facts_agree(env, env64, name, args):
    a, b = run(env, name, **args), run(env64, name, **args)
    for key in a.facts:
        assert agree(a.facts[key], b.facts[key]), (key, a.facts[key], b.facts[key])


# -- sentence-order ---------------------------------------------------------------------------------------


def test_sentence_order_same_words_other_order(env):
    facts = run(env, "sentence-order").facts
    assert facts["same_words"] is True
    assert facts["similarity_bag"] == 1.0  # the same bag of word embeddings
    assert facts["similarity_model"] < 0.9999  # positions made the embeddings differ
    minilm = env.model("minilm")
    with torch.no_grad():  # independent: mean over tokens of the last hidden states, by hand in float64
        rows = []
        for text in ("the dog bit the man", "the man bit the dog"):
            hidden = minilm.model(torch.tensor([minilm.encode(text)]))[0].double()  # (N, E)
            rows.append(hidden.mean(0))
    expected = float(torch.nn.functional.cosine_similarity(rows[0], rows[1], dim=0))
    assert facts["similarity_model"] == pytest.approx(expected, abs=1e-5)


def test_sentence_order_different_words(env):
    text, other = "a kitten sleeps on the warm sofa", "stock prices fell sharply today"
    result = run(env, "sentence-order", text=text, other=other)
    facts = result.facts
    assert facts["same_words"] is False
    minilm = env.model("minilm")
    table = minilm.model.embeddings.tokens.weight.detach().double()  # (V, E)
    means = [table[torch.tensor(minilm.encode(t)[1:-1])].mean(0) for t in (text, other)]  # without [CLS] / [SEP]
    expected = float(means[0] @ means[1] / (means[0].norm() * means[1].norm()))
    assert facts["similarity_bag"] == pytest.approx(expected, abs=1e-5)
    assert facts["similarity_bag"] < 0.99
    bars = views_of(result, "bars")[0]
    assert len(bars["values"]) == 2 and "no positions" in bars["caption"]


def test_sentence_order_refuses_a_long_text(env):
    with pytest.raises(LearnError, match="at most 32 tokens"):
        run(env, "sentence-order", text="word " * 40)


# -- model-attention ----------------------------------------------------------------------------------------


def test_model_attention_default_head_reads_cat_from_it(env):
    result = run(env, "model-attention")
    facts = result.facts
    minilm = env.model("minilm")
    ids = minilm.encode(CAT)
    assert facts["tokens"] == minilm.tokenizer.tokens(ids)
    assert facts["query_index"] == facts["tokens"].index("it")
    assert facts["top_token"] == "cat" and facts["top_weight"] > 0.5
    # independent: the layer's q/k projections and a float64 softmax, per head
    x, _ = layer_input(minilm, ids, 5)
    attn = minilm.model.layers[5].self_attn
    with torch.no_grad():
        q = attn.q_proj(x).double().view(len(ids), 12, 32).transpose(0, 1)  # (1, N, E) -> (N, H, D) -> (H, N, D)
        k = attn.k_proj(x).double().view(len(ids), 12, 32).transpose(0, 1)  # (H, N, D)
    probs = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(32), dim=-1)  # (H, N, N)
    row = probs[11, facts["query_index"]]
    assert facts["top_key"] == int(row.argmax())
    assert facts["top_weight"] == pytest.approx(float(row.max()), abs=1e-5)
    assert facts["entropy"] == pytest.approx(float(-(row * row.log()).sum()), abs=1e-4)
    assert facts["head_top_tokens"] == [facts["tokens"][int(j)] for j in probs[:, facts["query_index"]].argmax(-1)]
    (tokens_view,) = views_of(result, "tokens")
    assert tokens_view["focus"] == facts["query_index"]
    np.testing.assert_allclose(tokens_view["weights"], row.numpy(), atol=1e-4)
    (matrix,) = views_of(result, "matrix")
    assert len(matrix["values"]) == len(ids) and all(len(r) == len(ids) for r in matrix["values"])
    (table,) = views_of(result, "table")
    assert len(table["rows"]) == 12


def test_model_attention_decoder_is_causal(env):
    result = run(env, "model-attention", model="smollm2", layer=12, head=2, query="CAT", text="The cat sat. It purred.")
    facts = result.facts
    assert facts["tokens"][facts["query_index"]] == " cat"
    assert len(facts["head_top_tokens"]) == 9
    (matrix,) = views_of(result, "matrix")
    n = len(facts["tokens"])
    assert all(matrix["values"][i][j] == 0 for i in range(n) for j in range(i + 1, n))
    assert facts["top_key"] <= facts["query_index"]


@pytest.mark.parametrize(
    "args, message",
    [
        ({"layer": 6}, "layer: minilm has layers 0 to 5, got 6"),
        ({"model": "smollm2", "head": 9}, "head: smollm2 has heads 0 to 8, got 9"),
        ({"query": "dog"}, "query: 'dog' is not a word"),
        ({"query": "the cat"}, "query: expected one word"),
        ({"layer": 30}, "layer: expected an integer from 0 to 29"),
        ({"text": "cat " * 40}, "at most 32 tokens"),
    ],
)
def test_model_attention_bad_arguments(env, args, message):
    with pytest.raises(LearnError, match=message):
        run(env, "model-attention", **args)


# -- encoder-decoder ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, layer, head", [("The cat sat on the mat.", 2, 3), ("Birds sing at dawn, loudly.", 5, 7)]
)
def test_encoder_decoder_future_weight(env, text, layer, head):
    result = run(env, "encoder-decoder", text=text, layer=layer, head=head)
    facts = result.facts
    assert facts["decoder_future_weight"] == 0.0  # causal: exact zeros above the diagonal
    assert facts["encoder_future_weight"] > 0.01
    w = env.model("minilm").attentions(text).weights[layer, head].double().numpy()  # (N, N)
    assert facts["encoder_future_weight"] == pytest.approx(np.triu(w, 1).sum(-1).mean(), abs=1e-5)
    assert facts["tokens_encoder"][0] == "[CLS]" and facts["tokens_encoder"][-1] == "[SEP]"
    assert facts["tokens_decoder"] == env.model("smollm2").attentions(text).tokens
    enc, dec = views_of(result, "matrix")
    assert "MiniLM" in enc["title"] and "SmolLM2" in dec["title"] and "causal" in dec["title"]
    assert len(enc["values"]) == len(facts["tokens_encoder"]) and len(dec["values"]) == len(facts["tokens_decoder"])


# -- head-ablation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer, head", [(3, 4), (17, 8)])
def test_head_ablation_matches_zeroing_the_head(env, layer, head):
    text = "The cat sat on the"
    facts = run(env, "head-ablation", text=text, layer=layer, head=head).facts
    smol = env.model("smollm2")
    attention = smol.model.layers[layer].self_attn
    assert not attention._forward_pre_hooks  # the widget left the shared model as it was
    ids = torch.tensor([smol.encode(text)])
    with torch.no_grad():
        full = torch.log_softmax(smol.model(ids)[0, -1].double(), -1)  # (V,)
        handle = zero_head_columns(attention, head)
        try:
            ablated = torch.log_softmax(smol.model(ids)[0, -1].double(), -1)
        finally:
            handle.remove()
    top = torch.topk(full, 5).indices
    assert facts["top_tokens"] == smol.tokenizer.tokens(top.tolist())
    np.testing.assert_allclose(facts["top_probs"], full[top].exp().numpy(), atol=1e-5)
    np.testing.assert_allclose(facts["ablated_probs"], ablated[top].exp().numpy(), atol=1e-5)
    kl = float((full.exp() * (full - ablated)).sum())
    assert facts["kl"] == pytest.approx(kl, abs=1e-4, rel=1e-3)
    assert facts["prob_change"] == pytest.approx(facts["ablated_probs"][0] - facts["top_probs"][0], abs=2e-6)
    assert facts["top1_changed"] == (int(ablated.argmax()) != int(top[0]))


def test_head_ablation_default_moves_the_distribution(env):
    result = run(env, "head-ablation")
    assert result.facts["kl"] > 0.3 and result.facts["top1_changed"]
    (bars,) = views_of(result, "bars")
    assert len(bars["values"]) == len(bars["compare"]) == 5 and len(bars["series"]) == 2


# -- weights-vs-effect -------------------------------------------------------------------------------------------


def test_weights_vs_effect_against_single_ablations(env):
    facts = run(env, "weights-vs-effect").facts
    minilm = env.model("minilm")
    att = minilm.attentions(CAT)
    q, t = att.tokens.index("it"), att.tokens.index("cat")
    heads = facts["heads"]
    assert len(heads) == 72 and [(h["layer"], h["head"]) for h in heads[:2]] == [(0, 0), (0, 1)]
    weight = np.array([h["weight"] for h in heads])
    effect = np.array([h["effect"] for h in heads])
    np.testing.assert_allclose(weight, att.weights[:, :, q, t].reshape(-1).numpy(), atol=1e-5)
    ids = torch.tensor([minilm.encode(CAT)])
    with torch.no_grad():
        full = minilm.model(ids)[0, q].double()
        for layer, head in [(5, 11), (1, 7), (3, 0)]:
            handle = zero_head_columns(minilm.model.layers[layer].self_attn, head)
            try:
                ablated = minilm.model(ids)[0, q].double()
            finally:
                handle.remove()
            expected = 1 - float(full @ ablated / (full.norm() * ablated.norm()))
            assert effect[layer * 12 + head] == pytest.approx(expected, abs=2e-5)
    scipy_stats = pytest.importorskip("scipy.stats")
    assert facts["rank_correlation"] == pytest.approx(scipy_stats.spearmanr(weight, effect).statistic, abs=1e-3)
    best = int(weight.argmax())
    assert facts["top_weight_head"] == f"L{best // 12} H{best % 12}"
    best = int(effect.argmax())
    assert facts["top_effect_head"] == f"L{best // 12} H{best % 12}"
    share = float((att.weights[:, :, q].argmax(-1) == t).double().mean())
    assert facts["share_on_target"] == pytest.approx(share, abs=1e-6)


def test_weights_vs_effect_views_and_cache(env):
    args = {"text": "A dog chased the ball until it was tired.", "query": "it", "target": "dog"}
    first = run(env, "weights-vs-effect", **args)
    first.facts["heads"].clear()  # a caller changing its copy changes nothing for the next caller
    again = run(env, "weights-vs-effect", **args)
    assert len(again.facts["heads"]) == 72
    (table,) = views_of(again, "table")
    (bars,) = views_of(again, "bars")
    assert len(table["rows"]) == 8 and len(bars["labels"]) == len(bars["compare"]) == 12
    weights = [h["weight"] for h in again.facts["heads"]]
    # the bars are the 12 largest weights, to 5 decimals (a weight on a rounding edge may round either way)
    assert bars["values"] == pytest.approx(sorted(weights, reverse=True)[:12], abs=1e-5)


def test_weights_vs_effect_bad_target(env):
    with pytest.raises(LearnError, match="target: 'horse' is not a word"):
        run(env, "weights-vs-effect", target="horse")


# -- block ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [0, 2, 5])
def test_block_traces_the_real_layer(env, layer):
    text = "The cat sat on the mat."
    with_res = run(env, "block", text=text, layer=layer).facts
    without = run(env, "block", text=text, layer=layer, residual=False).facts
    minilm = env.model("minilm")
    x, out = layer_input(minilm, minilm.encode(text), layer)  # the layer's input and output in a plain pass
    cos = torch.nn.functional.cosine_similarity(x[0].double(), out[0].double(), dim=-1)
    assert with_res["similarity_in_out"] == pytest.approx(float(cos.mean()), abs=1e-5)
    with torch.no_grad():
        a = minilm.model.layers[layer].self_attn(x)
    ratio = (a[0].double().norm(dim=-1) / x[0].double().norm(dim=-1)).mean()
    assert with_res["attention_norm_ratio"] == pytest.approx(float(ratio), abs=1e-5)
    assert without["attention_norm_ratio"] == pytest.approx(with_res["attention_norm_ratio"], abs=1e-6)
    assert without["similarity_in_out"] < with_res["similarity_in_out"] - 0.2  # without residuals it collapses
    assert with_res["ffn_norm_ratio"] > 0


def test_block_views(env):
    result = run(env, "block", residual=False)
    lengths, cosines = views_of(result, "bars")
    assert len(lengths["values"]) == 5 and "norm(f)" in lengths["labels"][-1]
    assert len(cosines["values"]) == len(cosines["compare"]) == len(cosines["labels"])
    (table,) = views_of(result, "table")
    assert len(table["rows"]) == len(cosines["labels"])
    with pytest.raises(LearnError, match="residual: expected true or false"):
        run(env, "block", residual="no")
