"""qkv.mods: each score modifier is the formula it names, and additive ones give the same bias densely."""

from __future__ import annotations

import math

import pytest
import torch

import qkv
from qkv import mods


def grid(batch, heads, nq, nk):
    """Broadcasting indices b (B,1,1,1), h (1,H,1,1), q (1,1,Nq,1), k (1,1,1,Nk)."""
    return (
        torch.arange(batch).view(batch, 1, 1, 1),  # (B,) -> (B, 1, 1, 1)
        torch.arange(heads).view(1, heads, 1, 1),  # (H,) -> (1, H, 1, 1)
        torch.arange(nq).view(1, 1, nq, 1),  # (Nq,) -> (1, 1, Nq, 1)
        torch.arange(nk).view(1, 1, 1, nk),  # (Nk,) -> (1, 1, 1, Nk)
    )


def press_slopes(n: int) -> list[float]:
    """The slopes as written in the ALiBi paper's code (Press et al., 2022)."""

    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + press_slopes(2 * closest)[0::2][: n - closest]


def t5_bucket(relative_position: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    """Mesh TensorFlow's T5 bucketing, one integer at a time (n = query - key)."""
    ret, n = 0, -relative_position
    if bidirectional:
        num_buckets //= 2
        ret += num_buckets if n < 0 else 0
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    return ret + min(large, num_buckets - 1)


# ---------------------------------------------------------------------------
# ALiBi


def test_alibi_slopes_for_eight_heads_are_powers_of_one_half():
    assert mods.alibi(8).slopes.tolist() == [2.0**-k for k in range(1, 9)]


@pytest.mark.parametrize("heads", [1, 2, 3, 6, 12, 16, 24, 40])
def test_alibi_slopes_match_the_paper_for_any_head_count(heads):
    torch.testing.assert_close(mods.alibi_slopes(heads), torch.tensor(press_slopes(heads), dtype=torch.float64))


@pytest.mark.parametrize("nq, nk", [(6, 6), (3, 8)])
def test_alibi_adds_slope_times_signed_distance(nq, nk):
    mod = mods.alibi(4)
    scores = torch.randn(2, 4, nq, nk)
    out = mod.apply(scores)
    for h in range(4):
        for i in range(nq):
            for j in range(nk):
                expected = scores[:, h, i, j] + press_slopes(4)[h] * (j - (i + nk - nq))
                torch.testing.assert_close(out[:, h, i, j], expected)


def test_alibi_softmax_equals_bloom_key_position_form():
    """slope * (j - i') differs from BLOOM's slope * j by a per-row constant: same causal weights."""
    scores = torch.randn(2, 6, 5, 9, dtype=torch.float64)
    slopes = mods.alibi_slopes(6).view(1, 6, 1, 1)  # (H,) -> (1, H, 1, 1)
    bloom = scores + slopes * torch.arange(9, dtype=torch.float64)  # (B, H, Nq, Nk)
    causal = torch.ones(5, 9, dtype=torch.bool).tril(9 - 5)
    ours = mods.alibi(6).apply(scores).masked_fill(~causal, -math.inf).softmax(-1)
    torch.testing.assert_close(ours, bloom.masked_fill(~causal, -math.inf).softmax(-1))


def test_alibi_from_given_slopes():
    slopes = torch.tensor([0.3, -0.1])
    scores = torch.randn(1, 2, 4, 4)
    rel = torch.arange(4)[None, :] - torch.arange(4)[:, None]  # (Nq, Nk): j - i
    expected = scores + slopes.view(1, 2, 1, 1) * rel  # (B, H, Nq, Nk)
    torch.testing.assert_close(mods.alibi(slopes).apply(scores), expected)
    assert repr(mods.alibi(slopes)) == "alibi(slopes=[0.3, -0.1])"
    torch.testing.assert_close(mods.alibi(slopes=slopes).apply(scores), expected)
    assert repr(mods.alibi(num_heads=2)) == "alibi(2)"


# ---------------------------------------------------------------------------
# softcap, temperature, from_function


def test_softcap_and_temperature_are_their_formulas():
    scores = torch.randn(2, 3, 4, 5) * 40
    torch.testing.assert_close(mods.softcap(30.0).apply(scores), 30.0 * torch.tanh(scores / 30.0))
    assert mods.softcap(30.0).apply(scores).abs().max() < 30.0
    torch.testing.assert_close(mods.temperature(0.5).apply(scores), scores * 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_mods_keep_the_score_dtype(dtype):
    scores = torch.randn(1, 4, 3, 5).to(dtype)
    table = torch.randn(8, 4)
    for mod in (
        mods.alibi(4),
        mods.softcap(5.0),
        mods.temperature(2.0),
        mods.relative_position_bias(table, 8, 16),
        mods.from_function(lambda s, b, h, q, k: s + torch.ones((), dtype=torch.float64)),
        mods.compose(mods.alibi(4), mods.softcap(5.0)),
    ):
        assert mod.apply(scores).dtype == dtype, mod


def test_from_function_is_the_function():
    def shifted(score, b, h, q_idx, kv_idx):
        return score * (h + 1) - (q_idx - kv_idx).abs()

    scores = torch.randn(2, 3, 4, 6)
    b, h, q, k = grid(2, 3, 4, 6)
    torch.testing.assert_close(mods.from_function(shifted).apply(scores), shifted(scores, b, h, q, k))
    assert repr(mods.from_function(shifted)) == "from_function(shifted)"
    assert mods.from_function(shifted).additive_bias(2, 3, 4, 6) is None


# ---------------------------------------------------------------------------
# T5 relative position bias


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 16), (6, 7), (10, 1000)])
def test_relative_position_buckets_match_t5(bidirectional, num_buckets, max_distance):
    if not bidirectional and num_buckets == 6:
        max_distance = 4  # any max_distance > max_exact is valid
    rel = torch.arange(-1200, 1201)
    got = mods.relative_position_bucket(rel, num_buckets, max_distance, bidirectional)
    expected = [t5_bucket(r, bidirectional, num_buckets, max_distance) for r in rel.tolist()]
    assert got.tolist() == expected
    assert 0 <= got.min() and got.max() < num_buckets


@pytest.mark.parametrize("nq, nk", [(5, 5), (2, 7)])
def test_relative_position_bias_reads_the_table(nq, nk):
    table = torch.randn(16, 3)
    mod = mods.relative_position_bias(table, num_buckets=16, max_distance=20)
    scores = torch.randn(2, 3, nq, nk)
    out = mod.apply(scores)
    for i in range(nq):
        for j in range(nk):
            bucket = t5_bucket(j - (i + nk - nq), True, 16, 20)
            torch.testing.assert_close(out[:, :, i, j], scores[:, :, i, j] + table[bucket])


def test_gradient_reaches_the_relative_position_table():
    table = torch.randn(8, 2, requires_grad=True)
    mod = mods.relative_position_bias(table, num_buckets=8, max_distance=12, bidirectional=False)
    scores = torch.randn(3, 2, 6, 6, requires_grad=True)
    mod.apply(scores).sum().backward()
    # d(sum)/d table[c, h] = how many (b, i, j) pairs fall in bucket c, for every head
    rel = torch.arange(6)[None, :] - torch.arange(6)[:, None]  # (Nq, Nk): j - i
    counts = torch.bincount(mods.relative_position_bucket(rel, 8, 12, False).flatten(), minlength=8) * 3.0
    torch.testing.assert_close(table.grad, counts[:, None].expand(8, 2))
    torch.testing.assert_close(scores.grad, torch.ones_like(scores))
    assert (counts > 0).sum() > 3  # several buckets in use: the check is not trivial


def test_gradient_reaches_the_table_through_the_dense_bias():
    table = torch.randn(8, 2, requires_grad=True)
    bias = mods.relative_position_bias(table, 8, 12).additive_bias(1, 2, 5, 5)
    (bias * torch.randn(1, 2, 5, 5)).sum().backward()
    assert table.grad is not None and table.grad.abs().sum() > 0


# ---------------------------------------------------------------------------
# composition and additive biases


def test_compose_applies_left_to_right():
    scores = torch.randn(2, 4, 5, 7) * 10
    first, second = mods.temperature(4.0), mods.softcap(2.0)
    torch.testing.assert_close(mods.compose(first, second).apply(scores), 2.0 * torch.tanh(scores / 4.0 / 2.0))
    torch.testing.assert_close(mods.compose(second, first).apply(scores), 2.0 * torch.tanh(scores / 2.0) / 4.0)
    nested = mods.compose(mods.compose(mods.alibi(4), first), second)
    assert repr(nested) == "compose(alibi(4), temperature(4.0), softcap(2.0))"


def additive_cases():
    table = torch.randn(16, 4)
    return {
        "alibi": mods.alibi(4),
        "alibi slopes": mods.alibi(torch.rand(4) + 0.1),
        "t5": mods.relative_position_bias(table, 16, 40),
        "t5 causal": mods.relative_position_bias(table, 16, 40, bidirectional=False),
        "alibi + t5": mods.compose(mods.alibi(4), mods.relative_position_bias(table, 16, 40)),
    }


@pytest.mark.parametrize("name", list(additive_cases()))
@pytest.mark.parametrize("nq, nk", [(9, 9), (4, 11)])
def test_additive_bias_agrees_with_the_mod(name, nq, nk):
    mod = additive_cases()[name]
    scores = torch.randn(3, 4, nq, nk)
    bias = mod.additive_bias(3, 4, nq, nk, dtype=torch.float32)
    assert mod.additive and bias.dim() == 4 and bias.shape[2:] == (nq, nk) and bias.shape[0] in (1, 3)
    assert bias.abs().sum() > 0
    torch.testing.assert_close(scores + bias, mod.apply(scores))
    assert mod.additive_bias(3, 4, nq, nk, dtype=torch.float64).dtype == torch.float64


def test_composed_bias_is_the_sum_of_the_parts():
    a, b = mods.alibi(2), mods.relative_position_bias(torch.randn(8, 2), 8, 16)
    torch.testing.assert_close(
        mods.compose(a, b).additive_bias(1, 2, 6, 6), a.additive_bias(1, 2, 6, 6) + b.additive_bias(1, 2, 6, 6)
    )


@pytest.mark.parametrize(
    "mod", [mods.softcap(10.0), mods.temperature(2.0), mods.compose(mods.alibi(4), mods.softcap(10.0))], ids=repr
)
def test_non_additive_mods_give_no_bias(mod):
    assert not mod.additive and mod.additive_bias(1, 4, 3, 3) is None


def test_dense_bias_drives_attention_like_the_mod():
    q, k, v = torch.randn(3, 2, 4, 5, 8, dtype=torch.float64).unbind(0)  # (B=2, H=4, N=5, D=8) each
    mod = mods.alibi(4)
    scores = mod.apply(q @ k.transpose(-2, -1) / 8**0.5)  # (B, H, Nq, D) @ (B, H, D, Nk) -> (B, H, Nq, Nk)
    expected = scores.softmax(-1) @ v
    bias = mod.additive_bias(2, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(qkv.attention(q, k, v, bias=bias), expected)


# ---------------------------------------------------------------------------
# bad arguments


BAD_ARGUMENTS = [
    (lambda: mods.alibi(0), "num_heads"),
    (lambda: mods.alibi(), "exactly one of num_heads"),
    (lambda: mods.alibi(2, slopes=torch.ones(2)), "exactly one of num_heads"),
    (lambda: mods.alibi(2.5), "num_heads"),
    (lambda: mods.alibi(torch.tensor([1, 2])), "slopes"),
    (lambda: mods.alibi(torch.ones(2, 2)), "slopes"),
    (lambda: mods.alibi(4).additive_bias(1, 8, 3, 3), "heads"),
    (lambda: mods.softcap(0.0), "softcap: cap must"),
    (lambda: mods.softcap(True), "softcap: cap must"),
    (lambda: mods.temperature(-1.0), "temperature: t must"),
    (lambda: mods.temperature(float("inf")), "temperature: t must"),
    (lambda: mods.relative_position_bias(torch.randn(8), 8, 16), "table"),
    (lambda: mods.relative_position_bias(torch.randn(8, 2), 16, 16), "num_buckets"),
    (lambda: mods.relative_position_bias(torch.randn(2, 2), 2, 16), "num_buckets"),
    (lambda: mods.relative_position_bias(torch.randn(8, 2), 8, 2), "max_distance"),
    (lambda: mods.relative_position_bias(torch.randn(8, 2), 8, 16, bidirectional="yes"), "bidirectional"),
    (lambda: mods.relative_position_bias(torch.randn(8, 2), 8, 16).additive_bias(1, 3, 4, 4), "heads"),
    (lambda: mods.from_function("x"), "fn"),
    (lambda: mods.compose(), "compose"),
    (lambda: mods.compose(mods.alibi(2), lambda s, b, h, q, k: s), "argument 1"),
    (lambda: mods.temperature(2.0).apply(torch.randn(3, 3)), "scores"),
]


@pytest.mark.parametrize("make, argument", BAD_ARGUMENTS)
def test_bad_arguments_raise_an_error_naming_the_argument(make, argument):
    with pytest.raises(qkv.AttentionError, match=argument):
        make()
