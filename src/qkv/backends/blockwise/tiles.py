"""Each query block's additive float tile: its mask as 0 / -inf plus a dense bias or an additive score modifier."""

from __future__ import annotations

import torch
from torch import Tensor

from qkv.backends.blockwise.plan import _additive, _block_allowed, _block_of, _key_positions, _offset_invariant, _Spec

# Tiles kept for reuse within a call, at most this many bytes: a band's few tiles are kept, while a
# causal call (a different tile at every offset, O(N²) in all) builds each as it goes.
TILE_CACHE_BYTES = 16 << 20


class _FloatMasks:
    """Each block's additive mask (0 / -inf, plus a dense bias or an additive score modifier's
    values) for the fused kernels, and its empty rows.

    A mask (and modifier) that depends only on ``i' - j`` (causal, windows, ALiBi) gives
    every block at the same offset the same tile: those are built once per call.
    """

    def __init__(self, spec: _Spec, b: int, hq: int, dtype: torch.dtype, device: torch.device) -> None:
        self.spec, self.b, self.hq, self.dtype, self.device = spec, b, hq, dtype, device
        bias_reusable = spec.bias is None or (_additive(spec.bias) and _offset_invariant(spec.bias))
        self.reusable = bias_reusable and _offset_invariant(spec.mask)
        self.cache: dict[tuple[int, int, int], tuple[Tensor, Tensor]] = {}
        self.cached_bytes = 0  # kept tiles stop at TILE_CACHE_BYTES: a causal call's tiles all differ

    def __call__(
        self, q0: int, bq: int, keys: Tensor | slice, needs_mask: bool, empty_rows: bool = True
    ) -> tuple[Tensor | None, Tensor | None]:
        """The block's tile and (with ``empty_rows``) its rows with no key, or None where none is."""
        spec = self.spec
        if not needs_mask and spec.bias is None:
            return None, None
        key = None
        if self.reusable and isinstance(keys, slice):
            key = (q0 + spec.nk - spec.nq - keys.start, bq, keys.stop - keys.start, empty_rows)
            if key in self.cache:
                return self.cache[key]
        tile = None
        q_idx = torch.arange(q0, q0 + bq, device=self.device)[None, None, :, None]  # (1, 1, bq, 1)
        kv_idx = _key_positions(keys, self.device)[None, None, None, :]  # (1, 1, 1, R)
        if needs_mask:
            allowed = _unexpanded(_block_allowed(spec, self.b, self.hq, q_idx, kv_idx, q0, bq, keys))
            tile = torch.where(allowed, 0.0, float("-inf")).to(self.dtype)
        if isinstance(spec.bias, Tensor):
            bias = _block_of(spec.bias, q0, bq, keys).to(self.dtype)
            tile = bias if tile is None else tile + bias
        elif spec.bias is not None:  # an additive score modifier: its values on this block
            b_idx = torch.arange(self.b, device=self.device)[:, None, None, None]  # (B, 1, 1, 1)
            h_idx = torch.arange(self.hq, device=self.device)[None, :, None, None]  # (1, Hq, 1, 1)
            zero = torch.zeros(1, 1, 1, 1, dtype=spec.acc, device=self.device)
            bias = _unexpanded(spec.bias(zero, b_idx, h_idx, q_idx, kv_idx, spec.nq, spec.nk)).to(self.dtype)
            tile = bias if tile is None else tile + bias
        empty = torch.isneginf(tile).all(dim=-1) if empty_rows else None  # (B'|1, H'|1, bq)
        if empty is not None and not bool(empty.any()):
            empty = None  # the usual case: no row without a key, nothing to fix after the kernel
        if key is not None and self.cached_bytes + tile.nbytes <= TILE_CACHE_BYTES:
            self.cache[key] = (tile, empty)
            self.cached_bytes += tile.nbytes
        return tile, empty


def _unexpanded(t: Tensor) -> Tensor:
    """Batch and head axes that are broadcast views (stride 0) back to size 1: a mask that is the
    same for every head is built once, not once per head."""
    for dim in (0, 1):
        if t.shape[dim] > 1 and t.stride(dim) == 0:
            t = t.narrow(dim, 0, 1)
    return t
