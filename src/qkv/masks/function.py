"""Rules given as functions: FlexAttention's ``mask_mod(b, h, q_idx, kv_idx)`` as a `Mask`."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor

from qkv import checks
from qkv.errors import AttentionError
from qkv.masks.base import Mask
from qkv.masks.tiling import Tiling

MaskFunction = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""``fn(b, h, q_idx, kv_idx) -> bool tensor``: FlexAttention's ``mask_mod``."""

# Tile kinds are kept for this many tilings per mask (a kernel asks again at every call).
CACHE_SIZE = 32


class FromFunction(Mask):
    """A rule given as ``fn(b, h, q_idx, kv_idx) -> bool tensor``: see `from_function`."""

    def __init__(self, fn: MaskFunction):
        self.fn = fn
        self._cache: OrderedDict[tuple[int | str, ...], Tensor] = OrderedDict()

    def rule(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int) -> Tensor:
        out = self.fn(b, h, q_idx, kv_idx)
        if not isinstance(out, Tensor) or out.dtype != torch.bool:
            got = f"a tensor of dtype {out.dtype}" if isinstance(out, Tensor) else type(out).__name__
            raise AttentionError(f"from_function: fn must return a bool tensor (True = may attend), got {got}")
        return out

    def classify_tiles(self, t: Tiling) -> Tensor:
        device = torch.empty(0, device=t.device).device  # one key for "cuda" and "cuda:0", and for None
        key = (t.batch, t.heads, t.num_queries, t.num_keys, t.block_q, t.block_k, str(device))
        if key not in self._cache:
            self._cache[key] = t.evaluate(self.rule)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key].clone()

    def __repr__(self) -> str:
        return f"from_function({getattr(self.fn, '__name__', repr(self.fn))})"


def from_function(fn: MaskFunction) -> Mask:
    """A mask from ``fn(b, h, q_idx, kv_idx) -> bool tensor`` (FlexAttention's ``mask_mod``).

    ``fn`` receives broadcasting LongTensors of absolute indices and returns a bool
    tensor (True = may attend); it is not told ``Nq`` and ``Nk`` (close over them if
    the rule needs them). `tile_kinds` evaluates ``fn`` a few query blocks at a
    time and caches the answer per ``(batch, heads, Nq, Nk, block_q, block_k, device)``;
    an output that ignores ``b`` (or ``h``) gives tile kinds with ``B' = 1`` (``H' = 1``).

    >>> from qkv.masks import causal
    >>> def even_keys(b, h, q_idx, kv_idx):
    ...     return kv_idx % 2 == 0
    >>> m = from_function(even_keys) & causal()
    >>> m
    from_function(even_keys) & causal()
    >>> m.to_dense(1, 1, 3, 3)[0, 0].int()
    tensor([[1, 0, 0],
            [1, 0, 0],
            [1, 0, 1]], dtype=torch.int32)
    """
    checks.callable_arg("fn", fn, "fn(b, h, q_idx, kv_idx) -> bool tensor", where="from_function")
    return FromFunction(fn)


__all__ = ["FromFunction", "MaskFunction", "from_function"]
