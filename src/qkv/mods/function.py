"""Mods given as functions: FlexAttention's ``score_mod(score, b, h, q_idx, kv_idx)`` as a `ScoreMod`."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from qkv import checks
from qkv.errors import AttentionError
from qkv.mods.base import ScoreMod

ScoreFunction = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
"""``fn(score, b, h, q_idx, kv_idx) -> score``: FlexAttention's ``score_mod``."""


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
    checks.callable_arg("fn", fn, "fn(score, b, h, q_idx, kv_idx) -> score", where="from_function")
    return FromFunction(fn)


__all__ = ["FromFunction", "ScoreFunction", "from_function"]
