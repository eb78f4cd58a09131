"""Attention backends. Each module exposes the same three names:

- ``NAME``: the string users pass as ``backend=``;
- ``TAKES_MASK_OBJECTS`` / ``TAKES_SCORE_MODS``: whether it takes structured
  masks (the protocol of `qkv.masks.Mask`) and score modifiers (callables with
  the protocol of `qkv.mods.ScoreMod`) as they are; if not, `qkv.functional`
  hands it dense bool masks and dense additive biases;
- ``unsupported(q, k, v, *, mask, bias, causal, scale, dropout_p, return_lse)``:
  None if the backend computes this call exactly, else the reason it cannot;
- ``attention(q, k, v, *, mask, bias, causal, scale, dropout_p, return_lse)``:
  ``(out, lse or None)``.

Inputs arrive checked by `qkv.functional`: dense masks and biases are 4-D and
broadcast to ``(B, Hq, Nq, Nk)``. Backends never import each other, nor
`qkv.masks` / `qkv.mods` (they rely on the protocols only).
"""

from qkv.backends import blockwise, eager, reference, sdpa

BACKENDS = {module.NAME: module for module in (reference, eager, sdpa, blockwise)}

__all__ = ["BACKENDS"]
