"""MultiHeadAttention: parity with torch.nn.MultiheadAttention, GQA, RoPE, dropout, KV-cache decoding."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv.cache import ContiguousCache, Int8Cache, PagedCache, PagePool
from qkv.nn import MultiHeadAttention
from qkv.positional import RotaryEmbedding

E, H = 16, 4


def _torch_inputs(theirs, *xs):
    """torch's layout for its module: (B, N, E) or (N, B, E)."""
    return xs if theirs.batch_first else tuple(x.transpose(0, 1) for x in xs)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("cross", [False, True], ids=["packed in_proj", "separate kdim/vdim"])
@pytest.mark.parametrize("bias", [True, False])
def test_from_torch_matches_outputs_and_per_head_weights(batch_first, cross, bias):
    kdim, vdim = (6, 10) if cross else (None, None)
    theirs = torch.nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first).eval()
    ours = MultiHeadAttention.from_torch(theirs).eval()
    assert (ours.kdim, ours.vdim) == (kdim or E, vdim or E)
    x = torch.randn(3, 5, E)
    key = torch.randn(3, 7, kdim) if cross else x
    value = torch.randn(3, 7, vdim) if cross else x
    nk = key.shape[1]
    key_padding_mask = torch.zeros(3, nk, dtype=torch.bool)  # torch: True = ignore
    key_padding_mask[1, -2:] = True
    key_padding_mask[2, :1] = True
    attn_mask = torch.rand(5, nk) < 0.3  # torch: True = not allowed
    attn_mask[:, 2] = False  # every query keeps a key
    expected, expected_w = theirs(
        *_torch_inputs(theirs, x, key, value),
        key_padding_mask=key_padding_mask,
        attn_mask=attn_mask,
        need_weights=True,
        average_attn_weights=False,
    )
    if not batch_first:
        expected = expected.transpose(0, 1)
    mask = ~key_padding_mask[:, None, None, :] & ~attn_mask  # ours: True = may attend
    out, w = ours(x, key if cross else None, value if cross else None, mask=mask, need_weights=True)
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(w, expected_w, atol=2e-6, rtol=1e-5)


def test_from_torch_float_attn_mask_is_our_bias():
    theirs = torch.nn.MultiheadAttention(E, H, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(theirs)
    x = torch.randn(2, 6, E)
    float_mask = torch.randn(6, 6)
    expected, _ = theirs(x, x, x, attn_mask=float_mask)
    torch.testing.assert_close(ours(x, bias=float_mask), expected, atol=2e-6, rtol=1e-5)


def test_from_torch_copies_training_mode_dtype_and_dropout():
    theirs = torch.nn.MultiheadAttention(E, H, dropout=0.25, batch_first=True).double()
    ours = MultiHeadAttention.from_torch(theirs)
    assert ours.training and ours.dropout == 0.25 and ours.q_proj.weight.dtype == torch.float64
    with pytest.raises(qkv.AttentionError, match="add_bias_kv"):
        MultiHeadAttention.from_torch(torch.nn.MultiheadAttention(E, H, add_bias_kv=True))


def _plain_attention(mha, x, causal=False):
    """The textbook computation, head by head, with kv heads repeated for GQA."""
    b, n, _ = x.shape
    d = mha.head_dim
    q = mha.q_proj(x).view(b, n, mha.num_heads, d).transpose(1, 2)
    k = mha.k_proj(x).view(b, n, mha.num_kv_heads, d).transpose(1, 2)
    v = mha.v_proj(x).view(b, n, mha.num_kv_heads, d).transpose(1, 2)
    group = mha.num_heads // mha.num_kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    s = q @ k.transpose(-2, -1) / d**0.5
    if causal:
        s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    out = torch.softmax(s, -1) @ v
    return mha.out_proj(out.transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1], ids=["MHA", "GQA", "MQA"])
def test_grouped_heads_read_their_kv_head(num_kv_heads):
    mha = MultiHeadAttention(E, H, num_kv_heads=num_kv_heads).eval()
    assert mha.k_proj.weight.shape == (num_kv_heads * 4, E)
    x = torch.randn(2, 5, E)
    torch.testing.assert_close(mha(x, causal=True), _plain_attention(mha, x, causal=True), atol=1e-6, rtol=1e-5)


def test_head_dim_may_differ_from_embed_dim_over_heads():
    mha = MultiHeadAttention(10, 3, head_dim=6)
    assert mha.q_proj.weight.shape == (18, 10) and mha.out_proj.weight.shape == (10, 18)
    assert mha(torch.randn(1, 4, 10)).shape == (1, 4, 10)


def test_rotary_is_applied_to_queries_and_keys():
    rope = RotaryEmbedding(4, interleaved=True)
    mha = MultiHeadAttention(E, H, rotary=rope).eval()
    x = torch.randn(2, 5, E)
    positions = torch.arange(5)
    q = rope.apply(mha.q_proj(x).view(2, 5, H, 4).transpose(1, 2), positions)
    k = rope.apply(mha.k_proj(x).view(2, 5, H, 4).transpose(1, 2), positions)
    v = mha.v_proj(x).view(2, 5, H, 4).transpose(1, 2)
    expected = mha.out_proj(qkv.attention(q, k, v, causal=True).transpose(1, 2).reshape(2, 5, E))
    torch.testing.assert_close(mha(x, causal=True), expected)


def test_padding_mask_equals_dropping_the_padded_keys():
    mha = MultiHeadAttention(E, H).eval()
    x = torch.randn(1, 6, E)
    mask = torch.tensor([[True] * 4 + [False] * 2])[:, None, None, :]  # (B, 1, 1, Nk)
    out = mha(x, mask=mask)
    torch.testing.assert_close(out[:, :4], mha(x[:, :4]), atol=1e-6, rtol=1e-5)


def test_dropout_only_in_training():
    mha = MultiHeadAttention(E, H, dropout=0.5).eval()
    x = torch.randn(2, 6, E)
    eval_out = mha(x)
    assert torch.equal(mha(x), eval_out)  # eval: deterministic, no dropout
    no_dropout = MultiHeadAttention(E, H).eval()
    no_dropout.load_state_dict(mha.state_dict())
    torch.testing.assert_close(no_dropout(x), eval_out)
    mha.train()
    first, second = mha(x), mha(x)
    assert not torch.allclose(first, eval_out, atol=1e-3) and not torch.allclose(first, second, atol=1e-3)


def test_need_weights_are_the_exact_probabilities():
    mha = MultiHeadAttention(E, H, num_kv_heads=2).eval()
    x = torch.randn(2, 5, E)
    _, w = mha(x, causal=True, need_weights=True)
    assert w.shape == (2, H, 5, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, H, 5))
    assert torch.equal(w.triu(1), torch.zeros_like(w))


def test_head_mask_scales_each_heads_output():
    mha = MultiHeadAttention(E, H).eval()
    x = torch.randn(2, 5, E)
    head_mask = torch.tensor([[1.0, 0.0, 0.5, 1.0], [0.0, 1.0, 1.0, 2.0]])  # (B, H)
    q = mha.q_proj(x).view(2, 5, H, 4).transpose(1, 2)
    k = mha.k_proj(x).view(2, 5, H, 4).transpose(1, 2)
    v = mha.v_proj(x).view(2, 5, H, 4).transpose(1, 2)
    heads = qkv.attention(q, k, v) * head_mask[:, :, None, None]
    expected = mha.out_proj(heads.transpose(1, 2).reshape(2, 5, E))
    torch.testing.assert_close(mha(x, head_mask=head_mask), expected)


def _cache(kind, batch, heads, head_dim, max_length=12):
    if kind == "contiguous":
        return ContiguousCache(batch, heads, max_length, head_dim)
    if kind == "paged":
        return PagedCache(PagePool(num_pages=batch * 4, page_size=3, heads=heads, head_dim=head_dim), batch)
    return Int8Cache(batch, heads, max_length, head_dim)


CONFIGS = {
    "plain": dict(),
    "gqa": dict(num_kv_heads=2),
    "mqa+rope": dict(num_kv_heads=1, rotary=RotaryEmbedding(4)),
    "gqa+rope interleaved": dict(num_kv_heads=2, rotary=RotaryEmbedding(4, interleaved=True)),
}


@pytest.mark.parametrize("kind", ["contiguous", "paged", "int8"])
@pytest.mark.parametrize("config", list(CONFIGS), ids=str)
def test_decoding_with_a_cache_equals_the_full_sequence(kind, config):
    mha = MultiHeadAttention(E, H, **CONFIGS[config]).eval()
    x = torch.randn(2, 8, E)
    full = mha(x, causal=True)
    cache = _cache(kind, 2, mha.num_kv_heads, mha.head_dim)
    with torch.no_grad():
        steps = [mha(x[:, :3], causal=True, cache=cache)]  # prefill
        steps += [mha(x[:, i : i + 1], causal=True, cache=cache) for i in range(3, 8)]  # one token at a time
    decoded = torch.cat(steps, dim=1)
    assert cache.length == 8
    if kind == "int8":
        # int8 quantizes each key/value vector to within max|x| / 254; the result stays within 1%
        torch.testing.assert_close(decoded, full, atol=0.01 * float(full.detach().abs().max()), rtol=0)
        again = _cache(kind, 2, mha.num_kv_heads, mha.head_dim)
        with torch.no_grad():
            at_once = mha(x, causal=True, cache=again)  # the same quantized keys, stored at once
        torch.testing.assert_close(decoded, at_once, atol=1e-6, rtol=1e-5)
    else:
        torch.testing.assert_close(decoded, full, atol=1e-6, rtol=1e-5)


def test_weights_with_a_cache_cover_the_whole_past():
    mha = MultiHeadAttention(E, H).eval()
    x = torch.randn(1, 5, E)
    _, full_w = mha(x, causal=True, need_weights=True)
    cache = ContiguousCache(1, H, 8, 4)
    with torch.no_grad():
        mha(x[:, :4], causal=True, cache=cache)
        _, w = mha(x[:, 4:], causal=True, cache=cache, need_weights=True)
    assert w.shape == (1, H, 1, 5)
    torch.testing.assert_close(w, full_w[:, :, 4:], atol=1e-6, rtol=1e-5)


def test_errors_name_the_argument_and_what_was_given():
    with pytest.raises(qkv.AttentionError, match="embed_dim: 10 is not divisible by num_heads = 3"):
        MultiHeadAttention(10, 3)
    with pytest.raises(qkv.AttentionError, match="num_kv_heads: 3 must divide num_heads = 4"):
        MultiHeadAttention(E, 4, num_kv_heads=3)
    with pytest.raises(qkv.AttentionError, match="rotary: built for head_dim 8, but this module's head_dim is 4"):
        MultiHeadAttention(E, 4, rotary=RotaryEmbedding(8))
    with pytest.raises(qkv.AttentionError, match="dropout"):
        MultiHeadAttention(E, 4, dropout=1.0)
    mha = MultiHeadAttention(E, H)
    with pytest.raises(qkv.AttentionError, match=r"query: expected shape \(B, N, 16\) .*got \(2, 5, 8\)"):
        mha(torch.randn(2, 5, 8))
    with pytest.raises(qkv.AttentionError, match=r"query: expected shape \(B, N, 16\), got \(5, 16\)"):
        mha(torch.randn(5, 16))
    with pytest.raises(qkv.AttentionError, match="query: dtype torch.float64 differs"):
        mha(torch.randn(1, 5, E, dtype=torch.float64))
    with pytest.raises(qkv.AttentionError, match="key: batch size 3 differs from query's 1"):
        mha(torch.randn(1, 5, E), torch.randn(3, 5, E))
    with pytest.raises(qkv.AttentionError, match="value: given without key"):
        mha(torch.randn(1, 5, E), value=torch.randn(1, 5, E))
    with pytest.raises(qkv.AttentionError, match="cache: a KV cache appends the keys of self-attention"):
        mha(torch.randn(1, 5, E), torch.randn(1, 5, E), cache=ContiguousCache(1, H, 8, 4))
    with pytest.raises(qkv.AttentionError, match=r"head_mask: expected a tensor \(H=4,\)"):
        mha(torch.randn(1, 5, E), head_mask=torch.ones(3))
    with pytest.raises(qkv.AttentionError, match="mask: expected dtype torch.bool"):
        mha(torch.randn(1, 5, E), mask=torch.ones(5, 5))
