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

A mod of your own subclasses `ScoreMod` (or `AdditiveMod`) and implements the
public protocol (``__call__`` or `AdditiveMod.bias`, and optionally
`ScoreMod.check` and `ScoreMod.offset_invariant`). One family per module:
`qkv.mods.base` (the protocol and `compose`), `qkv.mods.alibi`,
`qkv.mods.relative_position`, `qkv.mods.pointwise` (softcap, temperature),
`qkv.mods.function`.

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

from qkv.mods.alibi import ALiBi, alibi, alibi_slopes
from qkv.mods.base import AdditiveMod, Compose, ScoreMod, compose
from qkv.mods.function import FromFunction, ScoreFunction, from_function
from qkv.mods.pointwise import Softcap, Temperature, softcap, temperature
from qkv.mods.relative_position import RelativePositionBias, relative_position_bias, relative_position_bucket

__all__ = [
    "ScoreMod",
    "AdditiveMod",
    "ScoreFunction",
    "alibi",
    "alibi_slopes",
    "softcap",
    "temperature",
    "relative_position_bias",
    "relative_position_bucket",
    "from_function",
    "compose",
    # the classes the factories return
    "ALiBi",
    "Compose",
    "FromFunction",
    "RelativePositionBias",
    "Softcap",
    "Temperature",
]
