"""Head pruning: physically smaller projections that compute what zeroing those heads computes."""

from __future__ import annotations

import copy

import pytest
import torch

import qkv
from qkv.nn import DecoderConfig, MultiHeadAttention, TransformerDecoder, prune_heads
from qkv.positional import RotaryEmbedding

E = 24


def _params(module):
    return sum(p.numel() for p in module.parameters())


def _silenced(num_heads, heads):
    mask = torch.ones(num_heads)
    mask[list(heads)] = 0.0
    return mask


CASES = [
    # (num_heads, num_kv_heads, heads to prune, kv heads left)
    (6, 6, [1, 4], 4),
    (6, 3, [0], 3),  # GQA: kv head 0 still serves query head 1
    (6, 3, [2, 3], 2),  # GQA: kv head 1 loses both its query heads and goes
    (6, 2, [0, 4, 5], 2),  # GQA: uneven groups remain (2 and 1 query heads)
    (6, 1, [0, 1, 2, 3, 4], 1),  # MQA
]


@pytest.mark.parametrize("num_heads,num_kv_heads,heads,kv_left", CASES)
def test_pruned_module_equals_zeroing_those_heads(num_heads, num_kv_heads, heads, kv_left):
    mha = MultiHeadAttention(E, num_heads, num_kv_heads=num_kv_heads, rotary=RotaryEmbedding(4)).eval()
    x = torch.randn(2, 7, E)
    expected = mha(x, causal=True, head_mask=_silenced(num_heads, heads))
    _, full_weights = mha(x, causal=True, need_weights=True)
    before = _params(mha)
    assert prune_heads(mha, heads) is mha
    d = mha.head_dim
    assert mha.num_heads == num_heads - len(heads) and mha.num_kv_heads == kv_left
    assert mha.q_proj.weight.shape == (mha.num_heads * d, E) and mha.out_proj.weight.shape == (E, mha.num_heads * d)
    assert mha.k_proj.weight.shape == (kv_left * d, E) and mha.v_proj.bias.shape == (kv_left * d,)
    removed_q = len(heads) * d * (E + 1) + len(heads) * d * E  # q_proj rows (+ bias), out_proj columns
    removed_kv = 2 * (num_kv_heads - kv_left) * d * (E + 1)
    assert _params(mha) == before - removed_q - removed_kv
    out, weights = mha(x, causal=True, need_weights=True)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    kept = [h for h in range(num_heads) if h not in heads]
    torch.testing.assert_close(weights, full_weights[:, kept])
    assert mha.head_ids == kept and mha.pruned_heads == set(heads)


def test_pruning_twice_uses_original_head_indices():
    mha = MultiHeadAttention(E, 6, num_kv_heads=3).eval()
    x = torch.randn(2, 5, E)
    expected = mha(x, head_mask=_silenced(6, [1, 2, 5]))
    prune_heads(mha, [2])
    prune_heads(mha, [5, 2, 1])  # 2 is already gone: ignored
    assert mha.head_ids == [0, 3, 4] and mha.num_kv_heads == 3
    torch.testing.assert_close(mha(x), expected, atol=1e-6, rtol=1e-5)


def test_pruning_every_head_leaves_the_output_bias():
    mha = MultiHeadAttention(E, 4, num_kv_heads=2).eval()
    prune_heads(mha, range(4))
    assert mha.num_heads == 0 and mha.num_kv_heads == 0 and mha.q_proj.weight.shape == (0, E)
    x = torch.randn(2, 5, E)
    out, w = mha(x, need_weights=True)
    torch.testing.assert_close(out, mha.out_proj.bias.expand(2, 5, E))
    assert w.shape == (2, 0, 5, 5)


def _llama():
    cfg = DecoderConfig.llama(
        vocab_size=40, embed_dim=E, num_layers=3, num_heads=6, num_kv_heads=3, ffn_dim=32, tie_embeddings=True
    )
    return TransformerDecoder(cfg).eval()


def test_model_pruning_equals_zeroing_heads_in_each_layer():
    lm = _llama()
    plan = {0: [1], 2: [0, 1, 4]}  # layer 2 loses kv head 0 and keeps uneven groups
    zeroed = copy.deepcopy(lm)
    with torch.no_grad():  # silencing a head = zeroing its columns of out_proj
        for layer, heads in plan.items():
            w = zeroed.layers[layer].self_attn.out_proj.weight
            for h in heads:
                w[:, h * 4 : (h + 1) * 4] = 0.0
    ids = torch.randint(0, 40, (2, 6))
    expected = zeroed(ids)
    before = _params(lm)
    prune_heads(lm, plan)
    assert [layer.self_attn.num_heads for layer in lm.layers] == [5, 6, 3]
    assert [layer.self_attn.num_kv_heads for layer in lm.layers] == [3, 3, 2]
    assert _params(lm) < before
    torch.testing.assert_close(lm(ids), expected, atol=1e-5, rtol=1e-5)
    # a pruned model still decodes with a cache sized for its pruned layers
    cache = lm.new_cache("paged", batch=2, max_length=6, page_size=2)
    with torch.no_grad():
        steps = [lm(ids[:, :2], cache=cache)] + [lm(ids[:, i : i + 1], cache=cache) for i in range(2, 6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=1e-5)


def test_pruning_errors_name_the_problem():
    mha = MultiHeadAttention(E, 4)
    with pytest.raises(qkv.AttentionError, match=r"heads: head indices must be integers in \[0, 4\), got 4"):
        prune_heads(mha, [4])
    with pytest.raises(qkv.AttentionError, match="heads: layer index 3 is out of range; the model has 3"):
        prune_heads(_llama(), {3: [0]})
    with pytest.raises(qkv.AttentionError, match="pass {layer: \\[heads\\]} to prune a model"):
        prune_heads(_llama(), [0])
