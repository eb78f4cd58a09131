"""Score modifiers the triton kernels compute in place: soft-capping and ALiBi, recognised by their values.

A modifier arrives as an object with the protocol of `qkv.mods.ScoreMod` (this backend
imports no mod class). It runs in the kernel when it names its parameter (``cap``, or
``slopes`` for an additive mod) and its values on a small probe equal the kernel's formula:

- soft-capping, ``cap * tanh(score / cap)``;
- ALiBi, ``score + slopes[h] * (j - i')`` (slopes that need no gradient).

Any other additive modifier is computed as a dense bias (`dense_bias`); any other
modifier is refused.

>>> import math, torch
>>> class Cap:                                   # the ScoreMod protocol: a callable on the scores
...     cap = 2.0
...     def __call__(self, score, b, h, q_idx, kv_idx, nq, nk):
...         return self.cap * torch.tanh(score / self.cap)
>>> kernel_mod(Cap(), heads=4)
KernelMod(softcap=2.0, slopes=None)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PROBE_QUERIES_KEYS = (3, 5)  # the probe's queries and keys (Nq < Nk: the alignment is checked too)


@dataclass(frozen=True)
class KernelMod:
    """What the kernel adds to its scores: a cap, or ALiBi slopes ``(Hq,)``."""

    softcap: float | None = None
    slopes: Tensor | None = None


def _softcap(mod: object) -> float | None:
    cap = getattr(mod, "cap", None)
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap > 0 or cap == float("inf"):
        return None
    score = torch.linspace(-6.0 * cap, 6.0 * cap, 49, dtype=torch.float64).view(1, 1, 1, 49)  # (1, 1, 1, 49)
    zero = torch.zeros(1, 1, 1, 1, dtype=torch.long)
    try:
        got = mod(score, zero, zero, zero, torch.arange(49).view(1, 1, 1, 49), 1, 49)  # type: ignore[operator]
    except Exception:  # noqa: BLE001 - a rule that cannot take the probe is not a cap
        return None
    expected = cap * torch.tanh(score / cap)
    ok = isinstance(got, Tensor) and got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-12, atol=0)
    return float(cap) if ok else None


def _alibi(mod: object, heads: int) -> Tensor | None:
    slopes = getattr(mod, "slopes", None)
    if not (isinstance(slopes, Tensor) and slopes.shape == (heads,) and getattr(mod, "additive", False)):
        return None
    if slopes.requires_grad or not slopes.is_floating_point():
        return None  # learnt slopes take the dense path, which carries their gradient
    nq, nk = PROBE_QUERIES_KEYS
    with torch.device(slopes.device):  # the probe's indices where the slopes are
        b = torch.zeros(1, 1, 1, 1, dtype=torch.long)
        h = torch.arange(heads).view(1, heads, 1, 1)
        i = torch.arange(nq).view(1, 1, nq, 1)
        j = torch.arange(nk).view(1, 1, 1, nk)
        try:
            got = mod.bias(b, h, i, j, nq, nk, torch.float64)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a bias that cannot take the probe is not ALiBi
            return None
    distance = (j - (i + nk - nq)).cpu()  # j - i'
    expected = slopes.detach().cpu().double().view(1, heads, 1, 1) * distance  # slope_h * (j - i')
    if not isinstance(got, Tensor):
        return None
    try:
        ok = torch.allclose(got.cpu().double().expand_as(expected), expected, rtol=1e-12, atol=0)
    except RuntimeError:
        return None
    return slopes.detach() if ok else None


def kernel_mod(mod: object, heads: int) -> KernelMod | None:
    """The in-kernel form of score modifier ``mod`` for a call with ``heads`` query heads, or None."""
    with torch.device("cpu"):  # the probes run on the CPU, whatever torch's default device
        cap = _softcap(mod)
        slopes = None if cap is not None else _alibi(mod, heads)
    if cap is not None:
        return KernelMod(softcap=cap)
    if slopes is not None:
        return KernelMod(slopes=slopes)
    return None


def dense_bias(mod: object, shape: tuple[int, int, int, int], device: torch.device, dtype: torch.dtype) -> Tensor:
    """An additive modifier as its dense bias ``(B'|1, H'|1, Nq, Nk)`` (the protocol's ``additive_bias``)."""
    bias: Tensor = mod.additive_bias(*shape, device=device, dtype=dtype)  # type: ignore[attr-defined]
    return bias
