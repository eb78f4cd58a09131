"""qkv.interpret metrics on hand-computed cases; head importance and pruning."""

from __future__ import annotations

import math

import pytest
import torch

import qkv
from qkv.interpret import (
    entropy,
    head_importance,
    mean_distance,
    prune_least_important,
    rank_heads,
    record,
    rollout,
)
from qkv.nn import EncoderConfig, MultiHeadAttention, TransformerEncoder

# entropy ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_uniform_rows_have_entropy_log_n(n):
    w = torch.full((2, 3, 5, n), 1.0 / n)
    torch.testing.assert_close(entropy(w), torch.full((2, 3, 5), math.log(n)))


def test_entropy_of_causal_uniform_rows_counts_only_allowed_keys():
    # query i attends uniformly to keys 0..i: entropy log(i + 1)
    w = torch.tril(torch.ones(6, 6))
    w = w / w.sum(-1, keepdim=True)
    torch.testing.assert_close(entropy(w), torch.log(torch.arange(1, 7, dtype=torch.float32)))


def test_entropy_one_hot_and_masked_rows_are_zero_and_random_rows_are_bounded():
    w = torch.zeros(3, 4)
    w[0, 2] = 1.0  # one key; row 1 fully masked; row 2 mixed
    w[2] = torch.tensor([0.5, 0.25, 0.125, 0.125])
    got = entropy(w)
    assert got[0] == 0 and got[1] == 0 and not got.signbit().any()
    assert math.isclose(got[2].item(), 1.75 * math.log(2), rel_tol=1e-6)
    r = torch.softmax(torch.randn(4, 9, 13) * 3, dim=-1)
    e = entropy(r)
    assert e.shape == (4, 9) and bool((e > 0).all()) and bool((e < math.log(13)).all())


def test_entropy_keeps_float64_and_rejects_bad_input():
    assert entropy(torch.full((3,), 1 / 3, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(qkv.AttentionError, match="weights: .*float"):
        entropy(torch.ones(3, 3, dtype=torch.long))
    with pytest.raises(qkv.AttentionError, match="weights: "):
        entropy([[0.5, 0.5]])


# mean distance ---------------------------------------------------------------


def test_mean_distance_hand_computed():
    uniform = torch.full((4, 4), 0.25)
    # query 0: (0+1+2+3)/4; query 1: (1+0+1+2)/4; query 2: (2+1+0+1)/4; query 3: (3+2+1+0)/4
    torch.testing.assert_close(mean_distance(uniform), torch.tensor([1.5, 1.0, 1.0, 1.5]))
    first_token = torch.zeros(1, 2, 5, 5)
    first_token[..., 0] = 1.0
    torch.testing.assert_close(mean_distance(first_token)[0, 0], torch.arange(5, dtype=torch.float32))


def test_mean_distance_aligns_queries_bottom_right_and_takes_positions():
    # 2 new queries over 5 cached keys: they sit at positions 3 and 4
    w = torch.zeros(2, 5)
    w[0, 0] = 1.0
    w[1, 4] = 1.0
    torch.testing.assert_close(mean_distance(w), torch.tensor([3.0, 0.0]))
    torch.testing.assert_close(mean_distance(w, positions=[1, -1]), torch.tensor([1.0, 0.0]))
    with pytest.raises(qkv.AttentionError, match="positions: expected 2"):
        mean_distance(w, positions=[0, 1, 2])


# rollout ---------------------------------------------------------------------


@pytest.mark.parametrize("residual", [True, False])
def test_identity_attention_rolls_out_to_identity(residual):
    eye = torch.eye(6).expand(2, 3, 6, 6)  # (B, H, N, N)
    torch.testing.assert_close(rollout([eye] * 4, residual=residual), torch.eye(6).expand(2, 6, 6))


def test_rollout_hand_computed_with_residual_and_head_average():
    to_first = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # one head: Â = 0.5 A + 0.5 I = [[1, 0], [0.5, 0.5]];  two layers: Â² = [[1, 0], [0.75, 0.25]]
    layer = to_first.expand(1, 1, 2, 2)
    torch.testing.assert_close(rollout([layer, layer])[0], torch.tensor([[1.0, 0.0], [0.75, 0.25]]))
    torch.testing.assert_close(rollout(torch.stack([layer, layer]))[0], torch.tensor([[1.0, 0.0], [0.75, 0.25]]))
    # two heads (identity, to_first): mean [[1, 0], [0.5, 0.5]]; with residual [[1, 0], [0.25, 0.75]]
    heads = torch.stack([torch.eye(2), to_first])[None]  # (1, 2, 2, 2)
    torch.testing.assert_close(rollout([heads])[0], torch.tensor([[1.0, 0.0], [0.25, 0.75]]))
    torch.testing.assert_close(rollout([heads], residual=False)[0], torch.tensor([[1.0, 0.0], [0.5, 0.5]]))


def test_rollout_of_a_recorded_model_has_stochastic_rows():
    torch.manual_seed(0)
    cfg = EncoderConfig.bert(vocab_size=50, embed_dim=32, num_layers=3, num_heads=4, ffn_dim=64)
    model = TransformerEncoder(cfg).eval()
    with record(model) as rec, torch.no_grad():
        model(torch.randint(0, 50, (2, 7)))
    r = rollout(rec.weights)
    assert r.shape == (2, 7, 7) and bool((r >= 0).all())
    torch.testing.assert_close(r.sum(-1), torch.ones(2, 7))
    # the residual term keeps a token's own share at least 1/2 per layer... in total at least 1/8
    assert bool((torch.diagonal(r, dim1=-2, dim2=-1) >= 0.125 - 1e-6).all())


def test_rollout_rejects_non_square_and_empty_input():
    with pytest.raises(qkv.AttentionError, match=r"weights\[0\]: rollout needs square"):
        rollout([torch.full((1, 2, 3, 5), 0.2)])
    with pytest.raises(qkv.AttentionError, match="weights: expected a non-empty list"):
        rollout([])
    with pytest.raises(qkv.AttentionError, match="weights: "):
        rollout(torch.ones(2, 3, 3))


# head importance -------------------------------------------------------------


def _mha() -> MultiHeadAttention:
    torch.manual_seed(0)
    return MultiHeadAttention(16, 4, backend="sdpa").eval()


def test_head_importance_is_the_abs_gradient_of_the_head_mask():
    mha = _mha()
    x = torch.randn(1, 5, 16)
    target = torch.randn(1, 5, 16)

    def loss_fn(batch):
        return (mha(batch) - target).pow(2).mean()

    got = head_importance(mha, loss_fn, [x])
    xi = torch.ones(4, requires_grad=True)
    (grad,) = torch.autograd.grad((mha(x, head_mask=xi) - target).pow(2).mean(), [xi])
    torch.testing.assert_close(got[0], grad.abs())
    assert all(p.grad is None for p in mha.parameters())  # parameters untouched


def test_head_importance_averages_per_example_and_over_batches():
    mha = _mha()
    xs = [torch.randn(3, 4, 16), torch.randn(2, 4, 16)]

    def loss_fn(batch):
        return mha(batch).pow(2).mean()  # mean over the batch's examples

    got = head_importance(mha, loss_fn, xs)
    per_batch = []
    for batch in xs:
        grads = []
        for example in batch:
            xi = torch.ones(4, requires_grad=True)
            (g,) = torch.autograd.grad(mha(example[None], head_mask=xi).pow(2).mean(), [xi])
            grads.append(g.abs())
        per_batch.append(torch.stack(grads).mean(0))  # E_x |dL(x)/dξ|
    torch.testing.assert_close(got[0], torch.stack(per_batch).mean(0))


def test_a_head_the_output_ignores_has_zero_importance_and_is_pruned_first():
    mha = _mha()
    with torch.no_grad():
        mha.out_proj.weight[:, 4:8] = 0.0  # head 1 never reaches the output
    x = torch.randn(2, 6, 16)
    scores = head_importance(mha, lambda b: mha(b).pow(2).mean(), [x])
    assert scores[0, 1] == 0 and bool((scores[0, [0, 2, 3]] > 0).all())
    assert rank_heads(scores)[0] == (0, 1)
    with torch.no_grad():
        expected = mha(x)
    assert prune_least_important(mha, scores, 1) == {0: [1]}
    assert mha.num_heads == 3 and mha.pruned_heads == {1}
    with torch.no_grad():
        torch.testing.assert_close(mha(x), expected)


def test_importance_of_a_model_uses_prune_numbering_and_nan_for_pruned_heads():
    torch.manual_seed(0)
    cfg = EncoderConfig.bert(vocab_size=50, embed_dim=32, num_layers=2, num_heads=4, ffn_dim=64)
    model = TransformerEncoder(cfg).eval()
    ids = torch.randint(0, 50, (2, 6))
    before = head_importance(model, lambda b: model(b).pow(2).mean(), [ids])
    assert not before.isnan().any()
    qkv.interpret.prune_heads(model, {1: [2]})
    after = head_importance(model, lambda b: model(b).pow(2).mean(), [ids], normalize=True)
    assert after.shape == (2, 4) and math.isnan(after[1, 2]) and not after[0].isnan().any()
    torch.testing.assert_close(after[1, [0, 1, 3]].norm(), torch.tensor(1.0))
    torch.testing.assert_close(after[0].norm(), torch.tensor(1.0))
    plan = prune_least_important(model, after, 4)
    assert sum(len(h) for h in plan.values()) == 4 and 2 not in plan.get(1, [])
    assert sum(layer.self_attn.num_heads for layer in model.layers) == 3


def test_user_head_mask_is_kept_while_measuring():
    mha = _mha()
    x = torch.randn(1, 5, 16)
    silenced = torch.tensor([1.0, 0.0, 1.0, 1.0])
    got = head_importance(mha, lambda b: mha(b, head_mask=silenced).pow(2).mean(), [x])
    assert got[0, 1] == 0 and bool((got[0, [0, 2, 3]] > 0).all())


def test_head_importance_errors_say_how_to_fix():
    mha = _mha()
    x = torch.randn(1, 5, 16)

    def no_grad_loss(batch):
        with torch.no_grad():
            return mha(batch).sum()

    with pytest.raises(qkv.AttentionError, match=r"loss_fn: .*torch.no_grad"):
        head_importance(mha, no_grad_loss, [x])
    with pytest.raises(qkv.AttentionError, match="loss_fn: expected a scalar"):
        head_importance(mha, lambda b: mha(b), [x])
    with pytest.raises(qkv.AttentionError, match="loss_fn: it did not run"):
        head_importance(mha, lambda b: b.sum(), [x])
    with pytest.raises(qkv.AttentionError, match="batches: empty"):
        head_importance(mha, lambda b: mha(b).sum(), [])
    assert not mha._forward_pre_hooks  # hooks removed after errors
    with pytest.raises(qkv.AttentionError, match="count: "):
        prune_least_important(mha, torch.ones(1, 4), 5)
    with pytest.raises(qkv.AttentionError, match="importance: "):
        rank_heads(torch.ones(4))
