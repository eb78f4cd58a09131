"""Positional encodings: the paper's sinusoid, learned tables, and RoPE in both layouts."""

from __future__ import annotations

import math

import pytest
import torch

import qkv
from qkv.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    half_split_to_interleaved,
)


def test_sinusoidal_matches_the_papers_formula():
    e = 16
    table = SinusoidalPositionalEncoding(e)(torch.arange(60))  # (N, E)
    expected = torch.tensor(
        [
            [math.sin(p / 10000 ** (i / e)) if i % 2 == 0 else math.cos(p / 10000 ** ((i - 1) / e)) for i in range(e)]
            for p in range(60)
        ]
    )
    torch.testing.assert_close(table, expected, atol=1e-6, rtol=0)


def test_sinusoidal_takes_any_position_shape_and_dtype():
    pe = SinusoidalPositionalEncoding(8)
    positions = torch.tensor([[0, 1, 2], [5, 6, 7]])  # (B, N)
    out = pe(positions, dtype=torch.float64)
    assert out.shape == (2, 3, 8) and out.dtype == torch.float64
    torch.testing.assert_close(out[1, 0], pe(torch.tensor([5]), dtype=torch.float64)[0])


def test_learned_embedding_looks_up_its_table_and_rejects_positions_beyond_it():
    pos = LearnedPositionalEmbedding(10, 4)
    torch.testing.assert_close(pos(torch.tensor([3, 9])), pos.weight[[3, 9]])
    with pytest.raises(qkv.AttentionError, match="positions: position 10 is beyond the learned table"):
        pos(torch.arange(11))


def _hf_rotate_half(x):
    """HF transformers' Llama ``rotate_half``."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _hf_llama_rope(x, positions, base):
    """HF ``LlamaRotaryEmbedding`` + ``apply_rotary_pos_emb`` for one tensor (B, H, N, D)."""
    d = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    freqs = (inv_freq[None, :, None] @ positions[None, None, :].float()).transpose(1, 2)  # (1, N, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(x.dtype)[:, None], emb.sin().to(x.dtype)[:, None]
    return x * cos + _hf_rotate_half(x) * sin


def _gptj_rope(x, positions, base):
    """GPT-J / RoFormer: rotate every two (interleaved pairs)."""
    d = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2).double() / d))
    angles = positions.double()[:, None] * inv_freq  # (N, D/2)
    sin, cos = angles.sin().repeat_interleave(2, -1), angles.cos().repeat_interleave(2, -1)
    x1, x2 = x[..., ::2], x[..., 1::2]
    rotated = torch.stack((-x2, x1), dim=-1).flatten(-2)
    return x * cos + rotated * sin


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_half_split_rotary_matches_hf_llama(dtype):
    x = torch.randn(2, 3, 7, 16).to(dtype)
    positions = torch.arange(5, 12)
    ours = RotaryEmbedding(16, base=500000.0).apply(x, positions)
    expected = _hf_llama_rope(x, positions, 500000.0)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, expected, atol=0, rtol=0)


def test_interleaved_rotary_matches_gptj():
    x = torch.randn(2, 3, 7, 16, dtype=torch.float64)
    positions = torch.arange(7)
    ours = RotaryEmbedding(16, interleaved=True).apply(x, positions)
    torch.testing.assert_close(ours, _gptj_rope(x, positions, 10000.0), atol=1e-6, rtol=0)


def test_half_split_equals_interleaved_after_permuting_dims():
    d = 12
    x = torch.randn(2, 2, 5, d)
    positions = torch.arange(3, 8)
    perm = half_split_to_interleaved(d)
    half = RotaryEmbedding(d).apply(x, positions)
    inter = RotaryEmbedding(d, interleaved=True).apply(x[..., perm], positions)
    torch.testing.assert_close(inter, half[..., perm], atol=1e-6, rtol=0)
    inverse = torch.argsort(perm)
    torch.testing.assert_close(inter[..., inverse], half, atol=1e-6, rtol=0)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_scores_depend_only_on_relative_position(interleaved):
    rope = RotaryEmbedding(16, interleaved=interleaved)
    q, k = torch.randn(2, 1, 1, 1, 16, dtype=torch.float64).unbind(0)

    def score(i, j):
        return float((rope.apply(q, torch.tensor([i])) * rope.apply(k, torch.tensor([j]))).sum())

    for i, j in [(3, 1), (10, 2), (0, 5)]:
        for shift in (1, 17, 250):
            assert score(i + shift, j + shift) == pytest.approx(score(i, j), abs=1e-4)
    # and it does depend on the relative position
    assert abs(score(3, 1) - score(1, 3)) > 1e-3


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_preserves_norms_and_position_zero_is_identity(interleaved):
    rope = RotaryEmbedding(8, interleaved=interleaved)
    x = torch.randn(1, 2, 6, 8)
    out = rope.apply(x, torch.arange(100, 106))
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    assert torch.equal(rope.apply(x, torch.zeros(6, dtype=torch.long)), x)


def test_rotary_takes_per_row_positions():
    rope = RotaryEmbedding(8)
    x = torch.randn(2, 3, 4, 8)
    positions = torch.tensor([[0, 1, 2, 3], [7, 8, 9, 10]])  # (B, N)
    out = rope.apply(x, positions)
    torch.testing.assert_close(out[1:], rope.apply(x[1:], positions[1]))
    torch.testing.assert_close(out[:1], rope.apply(x[:1], positions[0]))


def test_positional_errors_name_the_argument():
    with pytest.raises(qkv.AttentionError, match="head_dim: expected a positive even integer"):
        RotaryEmbedding(7)
    rope = RotaryEmbedding(8)
    with pytest.raises(qkv.AttentionError, match="positions: expected an integer tensor"):
        rope.apply(torch.randn(1, 1, 3, 8), torch.arange(3.0))
    with pytest.raises(qkv.AttentionError, match=r"positions: expected shape \(N=3,\)"):
        rope.apply(torch.randn(1, 1, 3, 8), torch.arange(4))
    with pytest.raises(qkv.AttentionError, match=r"x: expected \(B, H, N, D=8\)"):
        rope.apply(torch.randn(1, 3, 8), torch.arange(3))
    with pytest.raises(qkv.AttentionError, match="embed_dim"):
        SinusoidalPositionalEncoding(5)


def test_attention_alone_is_permutation_equivariant_and_positions_break_it():
    """Permuting the tokens permutes a position-free attention layer's output; with rotary it does not."""
    from qkv.nn import MultiHeadAttention
    from qkv.positional import RotaryEmbedding

    torch.manual_seed(3)
    x = torch.randn(2, 9, 32)  # (B, N, E)
    perm = torch.randperm(9)
    plain = MultiHeadAttention(32, 4).eval()
    torch.testing.assert_close(plain(x[:, perm]), plain(x)[:, perm])
    rotary = MultiHeadAttention(32, 4, rotary=RotaryEmbedding(8)).eval()
    rotary.load_state_dict(plain.state_dict(), strict=False)
    assert (rotary(x[:, perm]) - rotary(x)[:, perm]).abs().max() > 1e-2
    sinusoidal = SinusoidalPositionalEncoding(32)
    with_positions = lambda t: plain(t + sinusoidal(torch.arange(9)))  # noqa: E731
    assert (with_positions(x[:, perm]) - with_positions(x)[:, perm]).abs().max() > 1e-2


@pytest.mark.parametrize("interleaved", [False, True])
def test_apply_from_equals_apply_at_consecutive_positions(interleaved):
    rope = RotaryEmbedding(16, base=1000.0, interleaved=interleaved)
    x = torch.randn(2, 3, 5, 16)
    for start in (0, 7, 300):  # 300 + 5 grows the kept table past its first size
        expected = rope.apply(x, torch.arange(start, start + 5))
        torch.testing.assert_close(rope.apply_from(x, start), expected, atol=0, rtol=0)


def test_apply_from_follows_the_module_to_another_dtype():
    rope = RotaryEmbedding(8)
    x = torch.randn(1, 1, 3, 8, dtype=torch.float64)
    rope.apply_from(x.float(), 2)  # keeps a float32 table
    rope = rope.to(torch.float64)  # inv_freq is now a new float64 tensor: the table is rebuilt from it
    expected = x * torch.cat([a := torch.arange(2, 5, dtype=torch.float64)[:, None] * rope.inv_freq] * 2, -1).cos()
    expected = expected + rope.rotate(x) * torch.cat([a, a], -1).sin()
    torch.testing.assert_close(rope.apply_from(x, 2), expected, atol=1e-12, rtol=0)


def test_tables_made_under_inference_mode_serve_training():
    rope = RotaryEmbedding(8)
    with torch.inference_mode():
        rope.apply_from(torch.randn(1, 1, 4, 8), 0)
    x = torch.randn(1, 1, 4, 8, requires_grad=True)
    rope.apply_from(x, 0).sum().backward()  # would fail if the kept cos/sin were inference tensors
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_apply_from_rejects_bad_start():
    rope = RotaryEmbedding(8)
    with pytest.raises(qkv.AttentionError, match="start: expected an integer position >= 0"):
        rope.apply_from(torch.randn(1, 1, 2, 8), -1)
