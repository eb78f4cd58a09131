"""Mods of the score alone: Gemma-2's `softcap` and `temperature` (no index enters them)."""

from __future__ import annotations

import torch
from torch import Tensor

from qkv import checks
from qkv.mods.base import ScoreMod


class OfScore(ScoreMod):
    """A mod of the score alone, ``score -> of(score)``: subclasses implement `of`."""

    def of(self, score: Tensor) -> Tensor:
        """The modified score, elementwise, in ``score``'s dtype."""
        raise NotImplementedError(f"{type(self).__name__}: a mod of the score alone implements of()")

    def __call__(
        self, score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        return self.of(score)


class Softcap(OfScore):
    """``cap · tanh(score / cap)``: see `softcap`."""

    def __init__(self, cap: float):
        self.cap = cap

    def of(self, score: Tensor) -> Tensor:
        return self.cap * torch.tanh(score / self.cap)

    def __repr__(self) -> str:
        return f"softcap({self.cap})"


def softcap(cap: float) -> ScoreMod:
    """Gemma-2's logit soft-capping: ``cap · tanh(score / cap)``, scores squashed into ``(-cap, cap)``.

    >>> import torch
    >>> softcap(50.0).apply(torch.tensor([1.0, 100.0, 1e4]).view(1, 1, 1, 3))
    tensor([[[[ 0.9999, 48.2014, 50.0000]]]])
    """
    return Softcap(checks.positive_number("cap", cap, where="softcap"))


class Temperature(OfScore):
    """``score / t``: see `temperature`."""

    def __init__(self, t: float):
        self.t = t

    def of(self, score: Tensor) -> Tensor:
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
    return Temperature(checks.positive_number("t", t, where="temperature"))


__all__ = ["OfScore", "Softcap", "Temperature", "softcap", "temperature"]
