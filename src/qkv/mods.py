"""How scores are changed: score modifiers, applied to the scaled scores before masking and softmax.

    scores = q @ kᵀ · scale                      (B, H, Nq, Nk)
    scores = mod(scores, b, h, q_idx, kv_idx)    elementwise, this module
    scores[not allowed] = -inf                   masks (`qkv.masks`)
    probs  = softmax(scores)

A `ScoreMod` is FlexAttention's ``score_mod(score, b, h, q_idx, kv_idx)``, told
also the sizes ``Nq`` and ``Nk``: rules about relative positions use the
bottom-right alignment ``i' = i + (Nk - Nq)`` of ``causal=True``, so the same
mod gives the same scores with and without a KV cache. ``h`` is the *query*
head (grouped-query attention shares key heads, not modifiers).

Mods that only add a bias, ``score + f(b, h, i, j)``, say so: their
`ScoreMod.additive_bias` returns the dense bias, which any kernel taking an
additive bias can run.

>>> import torch
>>> from qkv import mods
>>> m = mods.compose(mods.alibi(4), mods.softcap(30.0))
>>> m
compose(alibi(4), softcap(30.0))
>>> scores = torch.randn(2, 4, 5, 5)                   # (B, H, Nq, Nk)
>>> m.apply(scores).shape
torch.Size([2, 4, 5, 5])
>>> mods.alibi(4).additive_bias(2, 4, 5, 5).shape      # (1, H, Nq, Nk): broadcasts over the batch
torch.Size([1, 4, 5, 5])
>>> print(m.additive_bias(2, 4, 5, 5))                 # softcap is not additive
None
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from qkv.errors import AttentionError
from qkv.masks import _check_callable, _grid, _int_arg  # the same index grids and argument checks as masks

ScoreFunction = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
"""``fn(score, b, h, q_idx, kv_idx) -> score``: FlexAttention's ``score_mod``."""


def _positive(where: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise AttentionError(f"{where}: {name} must be a positive number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise AttentionError(f"{where}: {name} must be a positive finite number, got {value}")
    return value


def _bias_dtype(dtype: torch.dtype) -> torch.dtype:
    """Biases are computed in float32 (float64 for float64 scores), then cast to the scores' dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------
# the base classes


class ScoreMod:
    """A change to the scaled scores, elementwise: ``score -> mod(score, b, h, q_idx, kv_idx)``.

    Subclass and implement `__call__` (or use `from_function`). A mod that only
    adds ``f(b, h, i, j)`` also implements `additive_bias`.
    """

    def __call__(
        self, score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        """The modified score, in ``score``'s dtype.

        ``score`` is a float tensor and ``b, h, q_idx, kv_idx`` LongTensors that
        broadcast with it (``q_idx`` in ``[0, Nq)``, ``kv_idx`` in ``[0, Nk)``, ``h`` the
        query head), as for `qkv.masks.Mask.allowed`. Differentiable in ``score``.
        """
        raise NotImplementedError(f"{type(self).__name__}: a ScoreMod subclass implements __call__")

    @property
    def additive(self) -> bool:
        """True when the mod is ``score + bias`` and `additive_bias` gives the bias."""
        return False

    @property
    def offset_invariant(self) -> bool:
        """True when the mod depends on the indices only through ``h`` and ``i' - j`` (as ALiBi and
        relative position biases do): kernels may then reuse one block's values for every
        block at the same offset within a call."""
        return False

    def additive_bias(
        self,
        batch: int,
        heads: int,
        num_queries: int,
        num_keys: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor | None:
        """The dense bias ``(B'|1, H'|1, Nq, Nk)`` if the mod is ``score + bias``, else None.

        ``score + mod.additive_bias(...)`` equals ``mod(score, ...)`` on the full grid;
        it lets kernels that take an additive bias run the mod.
        """
        return None

    def apply(self, scores: Tensor) -> Tensor:
        """The mod on a dense ``(B, H, Nq, Nk)`` score tensor (indices built for you).

        >>> import torch
        >>> temperature(2.0).apply(torch.ones(1, 1, 2, 2))
        tensor([[[[0.5000, 0.5000],
                  [0.5000, 0.5000]]]])
        """
        if not isinstance(scores, Tensor) or scores.dim() != 4:
            got = f"shape {tuple(scores.shape)}" if isinstance(scores, Tensor) else type(scores).__name__
            raise AttentionError(f"scores: expected a 4-D tensor (B, H, Nq, Nk), got {got}")
        batch, heads, num_queries, num_keys = scores.shape
        b, h, q, k = _grid(batch, heads, num_queries, num_keys, scores.device)
        return self(scores, b, h, q, k, num_queries, num_keys)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _AdditiveMod(ScoreMod):
    """``score + bias(b, h, i, j)``; subclasses implement `_bias`."""

    def _bias(
        self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int, dtype: torch.dtype
    ) -> Tensor:
        """The bias in ``dtype``, in the smallest shape that broadcasts (no axis it ignores)."""
        raise NotImplementedError

    def _check_heads(self, heads: int) -> None:
        """Raise AttentionError if the mod cannot serve ``heads`` query heads."""

    def __call__(
        self, score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        bias = self._bias(b, h, q_idx, kv_idx, num_queries, num_keys, _bias_dtype(score.dtype))
        return score + bias.to(score.dtype)

    @property
    def additive(self) -> bool:
        return True

    def additive_bias(
        self,
        batch: int,
        heads: int,
        num_queries: int,
        num_keys: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        sizes = {"batch": (batch, 1), "heads": (heads, 1), "num_queries": (num_queries, 0), "num_keys": (num_keys, 0)}
        for name, (value, minimum) in sizes.items():
            _int_arg("additive_bias", name, value, minimum)
        self._check_heads(heads)
        b, h, q, k = _grid(batch, heads, num_queries, num_keys, device)
        bias = self._bias(b, h, q, k, num_queries, num_keys, _bias_dtype(dtype)).to(dtype)
        bias = bias[(None,) * (4 - bias.dim())]  # (..., Nq', Nk') -> (1, ..., Nq', Nk'), 4 axes
        return bias.expand(*bias.shape[:2], num_queries, num_keys)  # (B'|1, H'|1, Nq, Nk)


# ---------------------------------------------------------------------------
# ALiBi


def alibi_slopes(num_heads: int) -> Tensor:
    """The ALiBi head slopes of Press et al. (2022), float64 ``(num_heads,)``.

    For ``n`` a power of two: ``2^(-8/n · (h+1))``. Otherwise the slopes of the
    closest smaller power of two ``c``, then every other slope of ``2c`` heads
    (as the paper's code and HF BLOOM's ``build_alibi_tensor`` do).

    >>> alibi_slopes(4)
    tensor([0.2500, 0.0625, 0.0156, 0.0039], dtype=torch.float64)
    """
    num_heads = _int_arg("alibi", "num_heads", num_heads, 1)
    closest = 2 ** math.floor(math.log2(num_heads))
    base = 2.0 ** (-8.0 / closest)
    slopes = [base ** (h + 1) for h in range(closest)]
    if closest != num_heads:
        extra = 2.0 ** (-8.0 / (2 * closest))
        slopes += [extra ** (2 * h + 1) for h in range(num_heads - closest)]
    return torch.tensor(slopes, dtype=torch.float64)


class ALiBi(_AdditiveMod):
    """``score + slopes[h] · (j - i')``: see `alibi`."""

    def __init__(self, slopes: Tensor, num_heads: int | None):
        self.slopes = slopes  # (H,) float
        self._num_heads = num_heads  # for the repr, when built from a head count

    offset_invariant = True

    def _check_heads(self, heads: int) -> None:
        if heads != self.slopes.shape[0]:
            raise AttentionError(
                f"alibi: has {self.slopes.shape[0]} slopes (one per query head) but the call has "
                f"{heads} heads; build it with alibi({heads})"
            )

    def _bias(
        self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int, dtype: torch.dtype
    ) -> Tensor:
        slopes = self.slopes.to(device=kv_idx.device, dtype=dtype)
        return slopes[h] * (kv_idx - (q_idx + (num_keys - num_queries))).to(dtype)  # slope · (j - i')

    def __repr__(self) -> str:
        if self._num_heads is not None:
            return f"alibi({self._num_heads})"
        slopes = self.slopes
        shown = [round(s, 6) for s in slopes.tolist()] if slopes.numel() <= 8 else f"<{tuple(slopes.shape)}>"
        return f"alibi(slopes={shown})"


def alibi(num_heads: int | Tensor | Sequence[float] | None = None, *, slopes: Tensor | None = None) -> ScoreMod:
    """ALiBi (Press et al., 2022): ``score + slope[h] · (j - i')``, with ``i' = i + (Nk - Nq)``.

    ``alibi(num_heads)`` uses the standard slopes (`alibi_slopes`); ``alibi(slopes)``
    (or ``alibi(slopes=...)``) takes a 1-D float tensor, one slope per query head.

    Sign and alignment: the bias is ``slope · (j - i')``, the paper's causal form:
    ``0`` for the query's own position and ``-slope · distance`` for a key
    ``distance`` positions in the past. Use it with a causal mask: future keys
    (``j > i'``) would get a *positive* bias. Softmax ignores a per-row constant,
    so this equals BLOOM's ``slope · j``. For a symmetric bidirectional variant,
    ``-slope · |i' - j|``, write it with `from_function`.

    >>> import torch
    >>> alibi(8).slopes[:3]
    tensor([0.5000, 0.2500, 0.1250], dtype=torch.float64)
    >>> alibi(1).additive_bias(1, 1, 3, 3)[0, 0]      # 1 head, slope 2^-8 · (j - i')
    tensor([[ 0.0000,  0.0039,  0.0078],
            [-0.0039,  0.0000,  0.0039],
            [-0.0078, -0.0039,  0.0000]])
    """
    if (num_heads is None) == (slopes is None):
        raise AttentionError("alibi: give exactly one of num_heads (standard slopes) or slopes (one per query head)")
    if isinstance(num_heads, Tensor) or (isinstance(num_heads, Sequence) and not isinstance(num_heads, str)):
        num_heads, slopes = None, num_heads  # alibi(tensor): the slopes, given positionally
    if slopes is not None:
        slopes = torch.as_tensor(slopes)
        if not slopes.is_floating_point() or slopes.dim() != 1 or slopes.numel() == 0:
            raise AttentionError(
                f"alibi: slopes must be a non-empty 1-D float tensor (one slope per query head), "
                f"got dtype {slopes.dtype} and shape {tuple(slopes.shape)}"
            )
        if not torch.isfinite(slopes).all():
            raise AttentionError(f"alibi: slopes must be finite, got {slopes.tolist()}")
        return ALiBi(slopes.detach().to(torch.float64), None)
    num_heads = _int_arg("alibi", "num_heads", num_heads, 1)
    return ALiBi(alibi_slopes(num_heads), num_heads)


# ---------------------------------------------------------------------------
# T5 relative position bias


def relative_position_bucket(
    relative_position: Tensor, num_buckets: int, max_distance: int, bidirectional: bool = True
) -> Tensor:
    """T5's bucket of a relative position ``j - i'`` (Raffel et al., 2020; HF ``T5Attention``).

    With ``bidirectional``, half the buckets are for keys after the query. In each
    half, distances below ``n/2`` get a bucket each (``n`` the buckets of that half);
    larger ones share log-spaced buckets up to ``max_distance``, and farther ones
    the last bucket. Unidirectional: keys after the query all fall in bucket 0.
    Computed in float32 like the original, so pretrained tables line up exactly.

    >>> import torch
    >>> relative_position_bucket(torch.tensor([-200, -20, -3, 0, 3, 20]), 32, 128)
    tensor([15, 10,  3,  0, 19, 26])
    """
    n = num_buckets
    bucket = torch.zeros_like(relative_position)
    if bidirectional:
        n //= 2
        bucket = bucket + (relative_position > 0).long() * n
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = n // 2
    # log-spaced past max_exact (distance < max_exact is exact; the clamp only avoids log(0))
    log_ratio = torch.log(distance.clamp(min=max_exact).float() / max_exact) / math.log(max_distance / max_exact)
    far = max_exact + (log_ratio * (n - max_exact)).long()
    far = far.clamp(max=n - 1)
    return bucket + torch.where(distance < max_exact, distance, far)


class RelativePositionBias(_AdditiveMod):
    """``score + table[bucket(j - i'), h]``: see `relative_position_bias`."""

    def __init__(self, table: Tensor, num_buckets: int, max_distance: int, bidirectional: bool):
        self.table = table  # (num_buckets, H), learnable
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional

    offset_invariant = True

    def _check_heads(self, heads: int) -> None:
        if heads != self.table.shape[1]:
            raise AttentionError(
                f"relative_position_bias: table has {self.table.shape[1]} heads (shape "
                f"{tuple(self.table.shape)} = (num_buckets, H)) but the call has {heads} heads"
            )

    def _bias(
        self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int, dtype: torch.dtype
    ) -> Tensor:
        relative = kv_idx - (q_idx + (num_keys - num_queries))  # j - i'
        bucket = relative_position_bucket(relative, self.num_buckets, self.max_distance, self.bidirectional)
        table = self.table.to(kv_idx.device)  # (num_buckets, H), in its own dtype: __call__ casts the bias
        return table[bucket, h]  # gather at broadcast(bucket, h) -> (1, H, Nq, Nk); differentiable in table

    def __repr__(self) -> str:
        return (
            f"relative_position_bias(table={tuple(self.table.shape)}, num_buckets={self.num_buckets}, "
            f"max_distance={self.max_distance}, bidirectional={self.bidirectional})"
        )


def relative_position_bias(
    table: Tensor, num_buckets: int, max_distance: int, bidirectional: bool = True
) -> ScoreMod:
    """T5's learned relative position bias: ``score + table[bucket(j - i'), h]``.

    ``table`` is a float ``(num_buckets, H)`` tensor, typically an ``nn.Parameter``
    (gradients flow into it); buckets follow `relative_position_bucket`. T5 does not
    scale its scores: call attention with ``scale=1.0`` to reproduce it.

    >>> import torch
    >>> table = torch.arange(8.0).view(8, 1)                     # 8 buckets, 1 head
    >>> m = relative_position_bias(table, num_buckets=8, max_distance=16)
    >>> m.additive_bias(1, 1, 3, 3)[0, 0]                       # bucket(j - i') read from the table
    tensor([[0., 5., 6.],
            [1., 0., 5.],
            [2., 1., 0.]])
    """
    if not isinstance(table, Tensor) or not table.is_floating_point() or table.dim() != 2:
        got = f"dtype {table.dtype}, shape {tuple(table.shape)}" if isinstance(table, Tensor) else type(table).__name__
        raise AttentionError(
            f"relative_position_bias: table must be a float tensor (num_buckets, H), got {got}"
        )
    if not isinstance(bidirectional, bool):
        raise AttentionError(
            f"relative_position_bias: bidirectional must be True or False, got {type(bidirectional).__name__}"
        )
    num_buckets = _int_arg("relative_position_bias", "num_buckets", num_buckets, 4 if bidirectional else 2)
    if table.shape[0] != num_buckets:
        raise AttentionError(
            f"relative_position_bias: table must have num_buckets = {num_buckets} rows (num_buckets, H), "
            f"got shape {tuple(table.shape)}"
        )
    max_exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
    max_distance = _int_arg("relative_position_bias", "max_distance", max_distance, max_exact + 1)
    return RelativePositionBias(table, num_buckets, max_distance, bidirectional)


# ---------------------------------------------------------------------------
# softcap, temperature, functions, composition


class Softcap(ScoreMod):
    """``cap · tanh(score / cap)``: see `softcap`."""

    def __init__(self, cap: float):
        self.cap = cap

    def __call__(
        self, score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        return self.cap * torch.tanh(score / self.cap)

    def __repr__(self) -> str:
        return f"softcap({self.cap})"


def softcap(cap: float) -> ScoreMod:
    """Gemma-2's logit soft-capping: ``cap · tanh(score / cap)``, scores squashed into ``(-cap, cap)``.

    >>> import torch
    >>> softcap(50.0).apply(torch.tensor([1.0, 100.0, 1e4]).view(1, 1, 1, 3))
    tensor([[[[ 0.9999, 48.2014, 50.0000]]]])
    """
    return Softcap(_positive("softcap", "cap", cap))


class Temperature(ScoreMod):
    """``score / t``: see `temperature`."""

    def __init__(self, t: float):
        self.t = t

    def __call__(
        self, score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        return score / self.t

    def __repr__(self) -> str:
        return f"temperature({self.t})"


def temperature(t: float) -> ScoreMod:
    """Divide the scores by ``t > 0``: ``t > 1`` flattens the weights, ``t < 1`` sharpens them.

    >>> import torch
    >>> s = torch.tensor([[[[0.0, 2.0]]]])
    >>> torch.softmax(temperature(2.0).apply(s), -1)
    tensor([[[[0.2689, 0.7311]]]])
    """
    return Temperature(_positive("temperature", "t", t))


class FromFunction(ScoreMod):
    """A mod given as ``fn(score, b, h, q_idx, kv_idx) -> score``: see `from_function`."""

    def __init__(self, fn: ScoreFunction):
        self.fn = fn

    def __call__(
        self, score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        out = self.fn(score, b, h, q_idx, kv_idx)
        if not isinstance(out, Tensor):
            raise AttentionError(f"from_function: fn must return a tensor of scores, got {type(out).__name__}")
        return out.to(score.dtype)

    def __repr__(self) -> str:
        return f"from_function({getattr(self.fn, '__name__', repr(self.fn))})"


def from_function(fn: ScoreFunction) -> ScoreMod:
    """A mod from ``fn(score, b, h, q_idx, kv_idx) -> score`` (FlexAttention's ``score_mod``).

    Indices are absolute (``fn`` is not told ``Nq`` and ``Nk``; close over them if
    needed). The result is cast back to the score's dtype. Not additive, even if
    ``fn`` adds: fused kernels that take a bias cannot see inside it.

    >>> import torch
    >>> def symmetric_alibi(score, b, h, q_idx, kv_idx):     # -slope · |i - j|, for Nq == Nk
    ...     return score - 0.5 * (q_idx - kv_idx).abs()
    >>> from_function(symmetric_alibi).apply(torch.zeros(1, 1, 3, 3))[0, 0]
    tensor([[ 0.0000, -0.5000, -1.0000],
            [-0.5000,  0.0000, -0.5000],
            [-1.0000, -0.5000,  0.0000]])
    """
    _check_callable("from_function", fn, "fn(score, b, h, q_idx, kv_idx) -> score")
    return FromFunction(fn)


class Compose(ScoreMod):
    """Mods applied left to right: see `compose`."""

    def __init__(self, parts: Sequence[ScoreMod]):
        self.parts = tuple(q for p in parts for q in (p.parts if isinstance(p, Compose) else (p,)))

    def __call__(
        self, score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        for part in self.parts:
            score = part(score, b, h, q_idx, kv_idx, num_queries, num_keys)
        return score

    @property
    def additive(self) -> bool:
        return all(part.additive for part in self.parts)

    @property
    def offset_invariant(self) -> bool:
        return all(part.offset_invariant for part in self.parts)

    def additive_bias(
        self,
        batch: int,
        heads: int,
        num_queries: int,
        num_keys: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor | None:
        if not self.additive:
            return None
        biases = [p.additive_bias(batch, heads, num_queries, num_keys, device, dtype) for p in self.parts]
        return sum(biases[1:], biases[0])  # each (B'|1, H'|1, Nq, Nk): broadcasting sum

    def __repr__(self) -> str:
        return "compose(" + ", ".join(repr(p) for p in self.parts) + ")"


def compose(*mods: ScoreMod) -> ScoreMod:
    """Apply ``mods`` left to right: ``compose(m1, m2)(s) = m2(m1(s))``.

    Additive iff every part is; the bias is then the sum of the parts' biases.

    >>> import torch
    >>> m = compose(temperature(2.0), softcap(1.0))
    >>> m
    compose(temperature(2.0), softcap(1.0))
    >>> m.apply(torch.full((1, 1, 1, 1), 2.0))              # tanh(2.0 / 2)
    tensor([[[[0.7616]]]])
    >>> compose(alibi(2), alibi(2)).additive
    True
    """
    if not mods:
        raise AttentionError("compose: expected at least one ScoreMod, got none")
    for i, mod in enumerate(mods):
        if not isinstance(mod, ScoreMod):
            raise AttentionError(
                f"compose: argument {i} must be a qkv.mods.ScoreMod, got {type(mod).__name__}; "
                "turn a function into one with mods.from_function(fn)"
            )
    return Compose(mods)


__all__ = [
    "ScoreMod",
    "ScoreFunction",
    "alibi",
    "alibi_slopes",
    "softcap",
    "temperature",
    "relative_position_bias",
    "relative_position_bucket",
    "from_function",
    "compose",
]
