"""Block-sparse layouts: a bool matrix of square blocks over the ``(Nq, Nk)`` attention matrix."""

from __future__ import annotations

import torch
from torch import Tensor

from qkv import checks
from qkv.errors import AttentionError
from qkv.masks.base import Mask, brief
from qkv.masks.grid import as_4d
from qkv.masks.tiling import Tiling


class BlockSparse(Mask):
    """``allowed[i, j] = layout[..., i // block_size, j // block_size]``: see `block_sparse`."""

    def __init__(self, layout: Tensor, block_size: int):
        self.layout = layout  # as given: (nQb, nKb), (H, nQb, nKb) or (B, H, nQb, nKb)
        self.block_size = block_size
        self._layout = as_4d(layout)  # (B'|1, H'|1, nQb, nKb)

    def check(self, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
        bs = self.block_size
        want = (-(-num_queries // bs), -(-num_keys // bs))
        b_size, h_size, n_qb, n_kb = self._layout.shape
        if (n_qb, n_kb) != want:
            raise AttentionError(
                f"block_sparse: layout has {n_qb} x {n_kb} blocks, but Nq = {num_queries}, Nk = {num_keys} "
                f"with block_size = {bs} need ceil(Nq / {bs}) x ceil(Nk / {bs}) = {want[0]} x {want[1]}"
            )
        if b_size not in (1, batch) or h_size not in (1, heads):
            raise AttentionError(
                f"block_sparse: layout of shape {tuple(self.layout.shape)} does not broadcast to "
                f"(B={batch}, H={heads}, {n_qb}, {n_kb})"
            )

    def rule(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int) -> Tensor:
        layout = self._layout.to(kv_idx.device)
        bi = b if layout.shape[0] > 1 else b.new_zeros(())
        hi = h if layout.shape[1] > 1 else h.new_zeros(())
        return layout[bi, hi, q_idx // self.block_size, kv_idx // self.block_size]

    def classify_rows(self, t: Tiling, start: int, stop: int) -> Tensor:
        bs = self.block_size
        (q0, q1), (k0, k1) = t.rows(start, stop), t.cols()
        if q0.numel() == 0:
            return torch.zeros(1, 1, 0, t.grid[1], dtype=torch.int8, device=t.device)
        top, bottom = int(q0[0]) // bs, (int(q1[-1]) - 1) // bs + 1  # the layout rows these tile rows touch
        layout = self._layout[:, :, top:bottom].to(t.device)  # (B', H', nL, nLk) layout cells
        # 2-D prefix sums: the number of True cells in any rectangle of the layout in O(1)
        s = layout.int().cumsum(-2, dtype=torch.int32).cumsum(-1, dtype=torch.int32)  # (B', H', nL, nLk)
        s = torch.nn.functional.pad(s, (1, 0, 1, 0))  # (B', H', nL, nLk) -> (B', H', nL + 1, nLk + 1)
        r0, r1 = (q0 // bs - top)[:, None], ((q1 - 1) // bs + 1 - top)[:, None]  # (R, 1): layout rows a tile touches
        c0, c1 = (k0 // bs)[None, :], ((k1 - 1) // bs + 1)[None, :]  # (1, nKb): layout columns
        count = s[..., r1, c1] - s[..., r0, c1] - s[..., r1, c0] + s[..., r0, c0]  # (B', H', R, nKb)
        area = (r1 - r0) * (c1 - c0)  # (R, nKb): cells a tile touches
        return Tiling.kinds(count == area, count == 0)

    def __repr__(self) -> str:
        return f"block_sparse(layout={brief(self.layout, limit=0)}, block_size={self.block_size})"


def block_sparse(layout: Tensor, block_size: int) -> Mask:
    """A bool layout of square blocks: ``allowed[i, j] = layout[..., i // block_size, j // block_size]``.

    ``layout`` is ``(nQb, nKb)``, ``(H, nQb, nKb)`` or ``(B, H, nQb, nKb)`` with
    ``nQb = ceil(Nq / block_size)`` and ``nKb = ceil(Nk / block_size)``. Indices are
    absolute (no bottom-right alignment): the layout is drawn over the full
    ``(Nq, Nk)`` matrix.

    >>> import torch
    >>> layout = torch.tensor([[True, False], [True, True]])
    >>> block_sparse(layout, block_size=2).to_dense(1, 1, 3, 4)[0, 0].int()
    tensor([[1, 1, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 1]], dtype=torch.int32)
    """
    block_size = checks.integer("block_size", block_size, minimum=1, where="block_sparse")
    layout = checks.bool_tensor("layout", layout, fix="for 0/1 integers use layout.bool()", where="block_sparse")
    if layout.dim() not in (2, 3, 4):
        raise AttentionError(
            "block_sparse: layout must be (nQb, nKb), (H, nQb, nKb) or (B, H, nQb, nKb), "
            f"got shape {tuple(layout.shape)}"
        )
    return BlockSparse(layout, block_size)


__all__ = ["BlockSparse", "block_sparse"]
