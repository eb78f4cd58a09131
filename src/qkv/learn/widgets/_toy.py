"""Small fixed inputs the mechanism widgets share: word vectors, projections, word lists, rounding.

A word's vector depends only on the word (lower-cased) and a seed, so the same
word always gets the same vector and a repeated word shows what attention does
without positions. Projections are random with entries ``N(0, 1/d_in)``, so a
projected entry has variance about 1. Everything is drawn in float64 from its
own seeded generator and then cast to the dtype asked for: float32 and float64
runs see the same numbers up to that rounding.

>>> x = embed(["the", "cat", "the"], torch.float64)
>>> x.shape, torch.equal(x[0], x[2]), torch.equal(x[0], x[1])
(torch.Size([3, 8]), True, False)
>>> matrix(torch.tensor([[0.123456, float("-inf")]]))
[[0.1235, None]]
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import torch
from torch import Tensor

from qkv.learn.errors import LearnError
from qkv.positional import RotaryEmbedding, SinusoidalPositionalEncoding

D_MODEL = 8  # embedding width: small enough to print every number
DECIMALS = 4  # digits of the numbers a view shows


def generator(*parts: object) -> torch.Generator:
    """A torch generator seeded from ``parts`` (a stable hash: the same parts, the same numbers)."""
    return torch.Generator().manual_seed(zlib.crc32(repr(parts).encode()))


def word_vector(word: str, dim: int = D_MODEL, seed: int = 0) -> Tensor:
    """``(dim,)`` float64, entries N(0, 1): a function of the lower-cased word and the seed only."""
    return torch.randn(dim, generator=generator("word", seed, word.lower()), dtype=torch.float64)


def embed(words: Sequence[str], dtype: torch.dtype, dim: int = D_MODEL, seed: int = 0) -> Tensor:
    """``x (N, dim)``: one `word_vector` per word, in ``dtype``."""
    return torch.stack([word_vector(w, dim, seed) for w in words]).to(dtype)  # N × (dim,) -> (N, dim)


def projection(which: str, head: int, d_in: int, d_out: int, dtype: torch.dtype, seed: int = 0) -> Tensor:
    """``W (d_in, d_out)`` with entries N(0, 1/d_in), for ``which`` in "q", "k", "v".

    Drawn as ``(d_out, d_in)`` and transposed, so the first columns stay the same
    when ``d_out`` grows: turning ``d_k`` up adds dimensions and changes no others.
    """
    w = torch.randn(d_out, d_in, generator=generator("proj", seed, which, head), dtype=torch.float64)
    return (w.T / math.sqrt(d_in)).to(dtype)  # (d_out, d_in) -> (d_in, d_out)


def words_of(widget: str, name: str, text: str, limit: int) -> list[str]:
    """The words of a text control (split on spaces), at most ``limit`` of them, else a `LearnError`."""
    words = text.split()
    if not words:
        raise LearnError(f"{widget}: {name}: expected a few words, e.g. 'the cat sat on the mat', got nothing")
    if len(words) > limit:
        raise LearnError(
            f"{widget}: {name}: expected at most {limit} words (small, readable numbers), got {len(words)}"
        )
    return words


def index_of(widget: str, name: str, word: str, words: Sequence[str]) -> int:
    """The index of the first occurrence of ``word`` in ``words`` (case-insensitive), else a `LearnError`."""
    wanted = word.strip().lower()
    for i, w in enumerate(words):
        if w.lower() == wanted:
            return i
    raise LearnError(f"{widget}: {name}: {word.strip()!r} is not a word of the text; the words are {list(words)}")


def rounded(value: float | Tensor, decimals: int = DECIMALS) -> float:
    """``value`` rounded for a view or a fact (``-0.0`` written as ``0.0``)."""
    return round(float(value), decimals) + 0.0


def row(t: Tensor, decimals: int = DECIMALS) -> list[float]:
    """A 1-D tensor as a list of rounded floats."""
    return [rounded(v, decimals) for v in t.tolist()]


def matrix(t: Tensor, allowed: Tensor | None = None, decimals: int = DECIMALS) -> list[list[float | None]]:
    """A 2-D tensor as rounded nested lists; ±∞, NaN and cells where ``allowed`` is False become None."""
    keep = torch.ones(t.shape, dtype=torch.bool) if allowed is None else allowed
    return [
        [rounded(v, decimals) if ok and math.isfinite(v) else None for v, ok in zip(r, k)]
        for r, k in zip(t.tolist(), keep.tolist())
    ]


def attention_inputs(
    words: list[str], dtype: torch.dtype, heads: int, d_k: int, positional: str
) -> tuple[Tensor, Tensor, Tensor]:
    """``q, k, v (1, heads, N, d_k)`` from the words' fixed embeddings, positions applied as ``positional`` says."""
    x = embed(words, dtype)  # (N, d_model)
    n = len(words)
    if positional == "sinusoidal":
        x = x + SinusoidalPositionalEncoding(D_MODEL)(torch.arange(n), dtype=dtype)  # (N, d_model)
    w = torch.stack(
        [torch.stack([projection(which, h, D_MODEL, d_k, dtype) for h in range(heads)]) for which in "qkv"]
    )  # (3, H, d_model, d_k)
    q, k, v = torch.einsum("nm,chmd->chnd", x, w)[:, None].unbind(0)  # (N, m) x (3, H, m, D) -> 3 × (1, H, N, D)
    if positional == "rotary":
        rope = RotaryEmbedding(d_k)
        q, k = rope.apply(q, torch.arange(n)), rope.apply(k, torch.arange(n))  # (1, H, N, D) each
    return q, k, v
