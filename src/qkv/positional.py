"""Positional information: sinusoidal and learned embeddings (added to tokens), rotary (applied to q, k).

- `SinusoidalPositionalEncoding`: the fixed encoding of Vaswani et al. (2017),
  ``PE[p, 2i] = sin(p / base^(2i/E))``, ``PE[p, 2i+1] = cos(p / base^(2i/E))``.
- `LearnedPositionalEmbedding`: a trained table ``(max_length, E)`` (BERT, GPT-2).
- `RotaryEmbedding`: RoPE (Su et al., 2021) rotates pairs of query/key dims by an
  angle proportional to the position, so ``q·k`` depends only on the relative
  position. Two pairings: half-split ``(x_i, x_{i+D/2})`` as in Llama / HF
  ``rotate_half``, and interleaved ``(x_{2i}, x_{2i+1})`` as in RoFormer / GPT-J /
  llama.cpp.

ALiBi is a score modifier, not an embedding: it lives in ``qkv.mods`` (``mods.alibi``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qkv.errors import AttentionError

INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _check_positions(positions: object) -> Tensor:
    if not isinstance(positions, Tensor) or positions.dtype not in INTEGER_DTYPES:
        given = positions.dtype if isinstance(positions, Tensor) else type(positions).__name__
        raise AttentionError(
            f"positions: expected an integer tensor of token positions, e.g. torch.arange(N), got {given}"
        )
    if positions.numel() and int(positions.min()) < 0:
        raise AttentionError(f"positions: expected positions >= 0, got minimum {int(positions.min())}")
    return positions


def _check_even(name: str, value: int) -> None:
    if not isinstance(value, int) or value <= 0 or value % 2:
        raise AttentionError(f"{name}: expected a positive even integer (dims come in pairs), got {value!r}")


class SinusoidalPositionalEncoding(nn.Module):
    """The fixed sine/cosine encoding of "Attention Is All You Need"; no parameters.

    ``forward(positions)`` returns ``(..., E)`` for integer positions of any shape::

        PE[p, 2i]   = sin(p / base ** (2i / E))
        PE[p, 2i+1] = cos(p / base ** (2i / E))

    computed in float64 and returned in ``dtype`` (float32 by default), so it has no
    length limit and no precision loss at large positions beyond the final rounding.

    >>> import math, torch
    >>> from qkv.positional import SinusoidalPositionalEncoding
    >>> pe = SinusoidalPositionalEncoding(8)
    >>> table = pe(torch.arange(5))                  # (N=5, E=8)
    >>> table.shape
    torch.Size([5, 8])
    >>> round(table[3, 2].item(), 6) == round(math.sin(3 / 10000 ** (2 / 8)), 6)
    True
    """

    def __init__(self, embed_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        _check_even("embed_dim", embed_dim)
        self.embed_dim = embed_dim
        self.base = float(base)

    def forward(self, positions: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        positions = _check_positions(positions)
        i = torch.arange(0, self.embed_dim, 2, dtype=torch.float64, device=positions.device)  # (E/2,): 2i
        inv_freq = self.base ** (-i / self.embed_dim)  # (E/2,)
        angles = positions.to(torch.float64)[..., None] * inv_freq  # (...) -> (..., E/2)
        pe = torch.stack([angles.sin(), angles.cos()], dim=-1)  # (..., E/2) -> (..., E/2, 2)
        return pe.flatten(-2).to(dtype)  # (..., E/2, 2) -> (..., E): sin at even dims, cos at odd

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, base={self.base}"


class LearnedPositionalEmbedding(nn.Module):
    """A trained position table ``weight (max_length, E)`` (BERT's ``position_embeddings``).

    ``forward(positions)`` looks positions up; one at or beyond ``max_length`` raises
    `qkv.AttentionError` instead of an index error deep inside torch.

    >>> import torch
    >>> from qkv.positional import LearnedPositionalEmbedding
    >>> pos = LearnedPositionalEmbedding(16, 8)
    >>> pos(torch.arange(4)).shape                   # (N=4, E=8)
    torch.Size([4, 8])
    >>> pos(torch.tensor([16]))
    Traceback (most recent call last):
    ...
    qkv.errors.AttentionError: positions: position 16 is beyond the learned table (max_length=16, ...
    """

    def __init__(self, max_length: int, embed_dim: int) -> None:
        super().__init__()
        self.max_length = max_length
        self.embed_dim = embed_dim
        self.weight = nn.Parameter(torch.empty(max_length, embed_dim))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, positions: Tensor) -> Tensor:
        positions = _check_positions(positions)
        if positions.numel() and int(positions.max()) >= self.max_length:
            raise AttentionError(
                f"positions: position {int(positions.max())} is beyond the learned table "
                f"(max_length={self.max_length}, positions 0..{self.max_length - 1}); "
                "use shorter inputs or a model with a longer table"
            )
        return self.weight[positions]  # (...) -> (..., E)

    def extra_repr(self) -> str:
        return f"max_length={self.max_length}, embed_dim={self.embed_dim}"


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE), applied to queries and keys ``(B, H, N, D)``.

    Pair ``i`` of head dims is rotated by the angle ``p · base^(-2i/D)`` at position
    ``p``; a rotation is orthogonal, so ``(R_p q)·(R_s k) = q·R_{s-p} k`` depends only
    on ``s - p``. ``interleaved`` picks which dims form pair ``i``:

    - ``False`` (half-split, Llama / HF ``rotate_half``): ``(x[i], x[i + D/2])``.
    - ``True`` (RoFormer, GPT-J, llama.cpp / GGUF): ``(x[2i], x[2i + 1])``.

    Angles are computed in float32 and cos/sin cast to ``x.dtype`` before the
    product, as HF transformers does, so half-precision results match it.

    >>> import torch
    >>> from qkv.positional import RotaryEmbedding
    >>> rope = RotaryEmbedding(8)
    >>> q, k = torch.randn(2, 1, 1, 1, 8).unbind(0)       # (B=1, H=1, N=1, D=8) each
    >>> def score(i, j):                                   # q at position i, k at position j
    ...     return (rope.apply(q, torch.tensor([i])) * rope.apply(k, torch.tensor([j]))).sum()
    >>> torch.allclose(score(7, 3), score(104, 100), atol=1e-5)     # only i - j matters
    True
    >>> torch.equal(rope.apply(q, torch.tensor([0])), q)  # position 0 is the identity
    True
    """

    inv_freq: Tensor

    def __init__(self, head_dim: int, base: float = 10000.0, interleaved: bool = False) -> None:
        super().__init__()
        _check_even("head_dim", head_dim)
        self.head_dim = head_dim
        self.base = float(base)
        self.interleaved = bool(interleaved)
        inv_freq = 1.0 / (self.base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))  # (D/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        # (device, dtype) -> (inv_freq it came from, its version, cos (L, D), signed sin (L, D)); see _tables
        self._table_cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, int, Tensor, Tensor]] = {}

    def cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """float32 ``(cos, sin)``, each ``(..., N, D)`` for positions ``(..., N)``, in this layout."""
        positions = _check_positions(positions)
        angles = positions.to(torch.float32)[..., None] * self.inv_freq.to(
            positions.device
        )  # (..., N) -> (..., N, D/2)
        if self.interleaved:
            angles = angles.repeat_interleave(2, dim=-1)  # (..., N, D/2) -> (..., N, D): a0 a0 a1 a1 ...
        else:
            angles = torch.cat([angles, angles], dim=-1)  # (..., N, D/2) -> (..., N, D): a0 a1 ... a0 a1 ...
        return angles.cos(), angles.sin()

    def rotate(self, x: Tensor) -> Tensor:
        """The 90° turn of every pair, ``(a, b) -> (-b, a)``, in this layout; ``(..., D) -> (..., D)``."""
        return self._swap(x) * self._signs(x.device, x.dtype)

    def _swap(self, x: Tensor) -> Tensor:
        """Each pair ``(a, b) -> (b, a)``; with `_signs` this is `rotate` in one product."""
        if self.interleaved:
            pairs: Tensor = x.unflatten(-1, (-1, 2))  # type: ignore[no-untyped-call]  # torch's stub lacks types
            return pairs.flip(-1).flatten(-2)  # (..., D) -> (..., D/2, 2) -> (..., D)
        return torch.roll(x, self.head_dim // 2, dims=-1)  # (x1, x2) -> (x2, x1), halves of D

    def _signs(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """``(D,)``: -1 where `rotate` takes the pair's second member, +1 where it takes the first."""
        half = self.head_dim // 2
        if self.interleaved:
            return torch.tensor([-1.0, 1.0], device=device, dtype=dtype).repeat(half)  # -1 +1 -1 +1 ...
        return torch.cat([torch.full((half,), -1.0), torch.ones(half)]).to(device, dtype)  # -1 ... -1 +1 ... +1

    def _turn(self, x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
        """``x * cos + rotate(x) * sin``, with the signs of `rotate` folded into ``signed_sin``.

        Two products and a sum, not a fused multiply-add: the same roundings as HF's
        ``apply_rotary_pos_emb``, so results match it bit for bit.
        """
        return x * cos + self._swap(x) * signed_sin

    def _tables(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``cos`` and signed ``sin`` in ``dtype``, ``(L, D)`` for positions ``0..L-1`` with ``L >= length``.

        Kept between calls and grown by doubling, so a decoder step looks its
        position up instead of recomputing the angles in every layer. Rebuilt when
        ``inv_freq`` changes (a new tensor after ``.to(...)``, or edited in place).
        """
        key = (device, dtype)
        inv_freq = self.inv_freq
        kept = self._table_cache.get(key)
        if kept is not None and kept[0] is inv_freq and kept[1] == inv_freq._version and kept[2].shape[0] >= length:
            return kept[2], kept[3]
        size = max(256, 1 << max(length - 1, 0).bit_length())
        # normal tensors even when called under inference_mode: a later training step saves them for backward
        with torch.inference_mode(False), torch.no_grad():
            cos, sin = self.cos_sin(torch.arange(size, device=device))  # (L, D) each, float32
            cos, sin = cos.to(dtype), sin.to(dtype) * self._signs(device, dtype)
        self._table_cache[key] = (inv_freq, inv_freq._version, cos, sin)
        return cos, sin

    def apply_from(self, x: Tensor, start: int) -> Tensor:
        """`apply` at consecutive positions ``start, start+1, ...`` (a sequence, or new tokens after a cache).

        The same numbers as ``apply(x, torch.arange(start, start + N))``, from tables kept between calls.
        """
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[-1] != self.head_dim:
            given = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise AttentionError(f"x: expected (B, H, N, D={self.head_dim}), got {given}")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise AttentionError(f"start: expected an integer position >= 0, got {start!r}")
        n = x.shape[2]
        cos, sin = self._tables(start + n, x.device, x.dtype)  # (L, D) each
        return self._turn(x, cos[start : start + n], sin[start : start + n])  # tables sliced to (N, D)

    def apply(self, x: Tensor, positions: Tensor) -> Tensor:  # type: ignore[override]  # public name, not Module.apply
        """Rotate ``x (B, H, N, D)`` for positions ``(N,)`` (shared by the batch) or ``(B, N)``."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[-1] != self.head_dim:
            given = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise AttentionError(f"x: expected (B, H, N, D={self.head_dim}), got {given}")
        positions = _check_positions(positions)
        n = x.shape[2]
        if (
            positions.dim() not in (1, 2)
            or positions.shape[-1] != n
            or (positions.dim() == 2 and positions.shape[0] not in (1, x.shape[0]))
        ):
            raise AttentionError(
                f"positions: expected shape (N={n},) or (B={x.shape[0]}, N={n}), got {tuple(positions.shape)}"
            )
        cos, sin = self.cos_sin(positions.to(x.device))  # (N, D) or (B, N, D)
        if positions.dim() == 2:
            cos, sin = cos[:, None], sin[:, None]  # (B, N, D) -> (B, 1, N, D)
        return self._turn(x, cos.to(x.dtype), sin.to(x.dtype) * self._signs(x.device, x.dtype))

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Same as `apply`."""
        return self.apply(x, positions)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}, interleaved={self.interleaved}"


def half_split_to_interleaved(head_dim: int) -> Tensor:
    """The permutation ``perm`` of head dims with ``interleaved(x[..., perm]) == half_split(x)[..., perm]``.

    ``perm = [0, D/2, 1, D/2 + 1, ...]``: it moves pair ``(i, i + D/2)`` to ``(2i, 2i + 1)``.
    Permuting the output rows of a q/k projection by ``perm`` converts weights trained
    for half-split RoPE into weights for interleaved RoPE (llama.cpp's GGUF conversion
    does this to HF Llama checkpoints); ``torch.argsort(perm)`` converts back.

    >>> from qkv.positional import half_split_to_interleaved
    >>> half_split_to_interleaved(8).tolist()
    [0, 4, 1, 5, 2, 6, 3, 7]
    """
    _check_even("head_dim", head_dim)
    half = head_dim // 2
    return torch.stack([torch.arange(half), torch.arange(half) + half], dim=-1).flatten()  # (D/2, 2) -> (D,)


__all__ = [
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "half_split_to_interleaved",
]
