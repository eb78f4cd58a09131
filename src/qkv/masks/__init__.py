"""What may attend: masks as small pure rules. ``True`` means "may attend", always.

A mask is a rule ``rule(b, h, q_idx, kv_idx, Nq, Nk)`` on absolute positions, query
``i`` in ``[0, Nq)`` and key ``j`` in ``[0, Nk)``. Rules that speak of a query's
place in the sequence use the bottom-right alignment of ``causal=True``::

    i' = i + (Nk - Nq)      the query's position among the keys

so that with a KV cache (``Nq < Nk``) the new queries are the last positions.
Build masks with the factories (`causal`, `sliding_window`, `local`, `padding`,
`document`, `block_sparse`, `global_tokens`, `dilated`, `from_function`) and
combine them with ``&``, ``|`` and ``~``.

Every mask answers three questions:

- `Mask.allowed`: the rule, elementwise on broadcasting index tensors
  (FlexAttention's ``mask_mod`` convention, plus the sizes ``Nq`` and ``Nk``),
  checked and expanded to their shape;
- `Mask.to_dense`: the bool ``(B, H, Nq, Nk)`` tensor, the spec of the mask;
- `Mask.tile_kinds`: for each (query block, key block) tile, whether it is
  `TileKind.EMPTY` (skip it), `TileKind.FULL` (no per-element mask needed) or
  `TileKind.PARTIAL`. The built-ins answer from block boundaries alone.

A mask of your own subclasses `Mask` and implements the public protocol
(`Mask.rule`, and optionally `Mask.check`, `Mask.classify_tiles` on a `Tiling`,
`Mask.offset_invariant`); the three answers above then follow. One family per
module: `qkv.masks.base` (the protocol and the combinators), `qkv.masks.grid`
(the index grid a rule is evaluated on), `qkv.masks.tiling`,
`qkv.masks.diagonal`, `qkv.masks.padding`, `qkv.masks.document`,
`qkv.masks.block_sparse`, `qkv.masks.global_tokens`, `qkv.masks.function`.

>>> from qkv import masks
>>> m = masks.sliding_window(2)
>>> m
sliding_window(2)
>>> m.to_dense(1, 1, 4, 4)[0, 0].int()
tensor([[1, 0, 0, 0],
        [1, 1, 0, 0],
        [0, 1, 1, 0],
        [0, 0, 1, 1]], dtype=torch.int32)
>>> m.tile_kinds(1, 1, 4, 4, block_q=2, block_k=2)[0, 0]    # 0 EMPTY, 1 PARTIAL, 2 FULL
tensor([[1, 0],
        [1, 1]], dtype=torch.int8)
>>> masks.causal() & masks.padding([3, 5])
causal() & padding(lengths=[3, 5])
"""

from qkv.backends.common.tile_runs import TileRuns
from qkv.masks.base import And, Mask, Not, Or
from qkv.masks.block_sparse import BlockSparse, block_sparse
from qkv.masks.diagonal import Causal, Dilated, Local, SlidingWindow, causal, dilated, local, sliding_window
from qkv.masks.document import Document, document
from qkv.masks.function import FromFunction, MaskFunction, from_function
from qkv.masks.global_tokens import GlobalTokens, global_tokens
from qkv.masks.padding import Padding, padding
from qkv.masks.tiling import TileKind, Tiling

__all__ = [
    "Mask",
    "TileKind",
    "TileRuns",
    "Tiling",
    "MaskFunction",
    "causal",
    "sliding_window",
    "local",
    "padding",
    "document",
    "block_sparse",
    "global_tokens",
    "dilated",
    "from_function",
    # the classes the factories and combinators return
    "And",
    "BlockSparse",
    "Causal",
    "Dilated",
    "Document",
    "FromFunction",
    "GlobalTokens",
    "Local",
    "Not",
    "Or",
    "Padding",
    "SlidingWindow",
]
