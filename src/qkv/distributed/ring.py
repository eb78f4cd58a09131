"""Ring attention: this rank's queries against every rank's keys and values, passed round the ring.

Forward, with ``W`` ranks: at step ``t`` rank ``r`` holds the keys and values of
rank ``(r - t) mod W``; it sends them on to rank ``r + 1`` and receives the next
block from rank ``r - 1`` while it computes its pieces (`qkv.distributed.plan`)
against the block it holds, with `qkv.attention` (``return_lse=True``). The
partial results merge exactly through the log-sum-exp::

    lse = logaddexp(lse_a, lse_b)
    out = exp(lse_a - lse) · out_a + exp(lse_b - lse) · out_b

Backward is a second ring pass. It recomputes each piece with autograd and
feeds it the gradient the merged output passes to it: with ``w = exp(lse_p - lse)``,
``d out_p = w · d out`` and ``d lse_p = w · (rowsum(d out · out_p) - rowsum(d out · out) + d lse)``
(FlashAttention's ``dS = P ∘ (dP - D)`` written per piece). Query gradients stay
on the rank; key and value gradients travel with their block, each rank adding
its share, and arrive at their owner after the last step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from qkv.backends.blockwise.plan import _mod_tensors
from qkv.distributed.group import Exchange, Group
from qkv.distributed.plan import Piece
from qkv.functional import attention
from qkv.mods import ScoreMod


@dataclass
class Ring:
    """One ring attention call's fixed part: who we are, the pieces per source rank, the arguments."""

    rank: int
    world_size: int
    group: Group | None
    plan: list[list[Piece]]  # plan[source]: this rank's pieces against rank source's keys
    key_lengths: list[int]  # local key length of every rank
    scale: float
    acc: torch.dtype  # float32, or float64 for float64 inputs

    def source(self, step: int) -> int:
        """Whose keys this rank holds at ``step``."""
        return (self.rank - step) % self.world_size

    def _next_kv(self, step: int, k: Tensor, v: Tensor) -> Exchange | None:
        """Send this step's block on and receive the next step's (None after the last step)."""
        if step == self.world_size - 1:
            return None
        n = self.key_lengths[self.source(step + 1)]
        shapes = [(*k.shape[:2], n, k.shape[3]), (*v.shape[:2], n, v.shape[3])]
        return Exchange([k, v], shapes, [k.dtype, v.dtype], self.group)

    def _piece(self, piece: Piece, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        (q0, q1), (k0, k1) = piece.q_rows, piece.k_rows
        out, lse = attention(
            q[:, :, q0:q1], k[:, :, k0:k1], v[:, :, k0:k1], mask=piece.mask, bias=piece.mod,
            scale=self.scale, return_lse=True,
        )  # fmt: skip
        return out, lse

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """This rank's ``out (B, Hq, nq, Dv)`` in the accumulation dtype and ``lse (B, Hq, nq)``."""
        b, hq, nq = q.shape[:3]
        out = q.new_zeros(b, hq, nq, v.shape[3], dtype=self.acc)
        lse = q.new_full((b, hq, nq), float("-inf"), dtype=self.acc)
        for step in range(self.world_size):
            pending = self._next_kv(step, k, v)
            for piece in self.plan[self.source(step)]:
                part_out, part_lse = self._piece(piece, q, k, v)
                q0, q1 = piece.q_rows
                _merge(out[:, :, q0:q1], lse[:, :, q0:q1], part_out, part_lse)
            if pending is not None:
                k, v = pending.wait()
        return out, lse

    def backward(
        self, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grad_out: Tensor | None,
        grad_lse: Tensor | None, mod_tensors: list[Tensor],
    ) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:  # fmt: skip
        """Gradients of this rank's q, k, v (and its share of the score mod's tensors)."""
        acc = self.acc
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out
        rows = (grad_out.to(acc) * out.to(acc)).sum(-1)  # (B, Hq, nq): rowsum(d out · out), FlashAttention's D
        dq = torch.zeros_like(q, dtype=acc)
        dmods = [torch.zeros_like(t) for t in mod_tensors]
        incoming: Exchange | None = None
        dk = dv = k
        for step in range(self.world_size):
            pending = self._next_kv(step, k, v)
            dk_part = torch.zeros_like(k, dtype=acc)
            dv_part = torch.zeros_like(v, dtype=acc)
            for piece in self.plan[self.source(step)]:
                grads = self._piece_grads(piece, q, k, v, lse, grad_out, grad_lse, rows, mod_tensors)
                (q0, q1), (k0, k1) = piece.q_rows, piece.k_rows
                for total, grad in (
                    (dq[:, :, q0:q1], grads[0]),
                    (dk_part[:, :, k0:k1], grads[1]),
                    (dv_part[:, :, k0:k1], grads[2]),
                ):
                    if grad is not None:
                        total += grad
                for total, grad in zip(dmods, grads[3:]):
                    if grad is not None:
                        total += grad
            if incoming is not None:
                dk_in, dv_in = incoming.wait()
                dk_part, dv_part = dk_part + dk_in, dv_part + dv_in
            if self.world_size == 1:
                dk, dv = dk_part, dv_part
            else:  # the block's accumulated gradients go on with it; the next block's come in
                n = self.key_lengths[self.source(step + 1)]
                shapes = [(*k.shape[:2], n, k.shape[3]), (*v.shape[:2], n, v.shape[3])]
                incoming = Exchange([dk_part, dv_part], shapes, [acc, acc], self.group)
            if pending is not None:
                k, v = pending.wait()
        if incoming is not None:  # after W steps this rank's own block is back, with every rank's share
            dk, dv = incoming.wait()
        return dq, dk, dv, dmods

    def _piece_grads(
        self, piece: Piece, q: Tensor, k: Tensor, v: Tensor, lse: Tensor, grad_out: Tensor,
        grad_lse: Tensor | None, rows: Tensor, mod_tensors: list[Tensor],
    ) -> tuple[Tensor | None, ...]:  # fmt: skip
        """One piece recomputed with autograd, and its inputs' gradients under the merged output's."""
        (q0, q1), (k0, k1) = piece.q_rows, piece.k_rows
        with torch.enable_grad():
            q_part = q[:, :, q0:q1].detach().requires_grad_()
            k_part = k[:, :, k0:k1].detach().requires_grad_()
            v_part = v[:, :, k0:k1].detach().requires_grad_()
            part_out, part_lse = attention(
                q_part, k_part, v_part, mask=piece.mask, bias=piece.mod, scale=self.scale, return_lse=True
            )
            total_lse = lse[:, :, q0:q1]
            weight = _weight(part_lse.detach(), total_lse)  # (B, Hq, rows): this piece's share of each row
            g_out = grad_out[:, :, q0:q1].to(self.acc)
            g_lse = weight * ((g_out * part_out.detach().to(self.acc)).sum(-1) - rows[:, :, q0:q1])
            if grad_lse is not None:
                g_lse = g_lse + weight * grad_lse[:, :, q0:q1]
            grads = torch.autograd.grad(
                (part_out, part_lse), (q_part, k_part, v_part, *mod_tensors),
                ((weight[..., None] * g_out).to(part_out.dtype), g_lse.to(part_lse.dtype)), allow_unused=True,
            )  # fmt: skip
        return grads


def _weight(part_lse: Tensor, total_lse: Tensor) -> Tensor:
    """``exp(lse_p - lse)``, 0 where the row attends nothing (``lse = -inf``); NaN stays NaN."""
    return torch.where(total_lse == float("-inf"), 0.0, torch.exp(part_lse.to(total_lse.dtype) - total_lse))


def _merge(out: Tensor, lse: Tensor, part_out: Tensor, part_lse: Tensor) -> None:
    """Fold one piece into the running ``(out, lse)`` of its rows, in place."""
    part_lse = part_lse.to(lse.dtype)
    total = torch.logaddexp(lse, part_lse)  # -inf only where neither attends anything
    empty = total == float("-inf")
    keep = torch.where(empty, 0.0, torch.exp(lse - total))[..., None]  # (B, Hq, rows, 1)
    take = torch.where(empty, 0.0, torch.exp(part_lse - total))[..., None]
    out.copy_(out * keep + part_out.to(out.dtype) * take)
    lse.copy_(total)


class RingAttention(torch.autograd.Function):
    """The ring's forward and backward as one autograd node: inputs q, k, v and the score mod's tensors."""

    @staticmethod
    def forward(ctx: Any, ring: Ring, q: Tensor, k: Tensor, v: Tensor, *mod_tensors: Tensor) -> tuple[Tensor, Tensor]:
        out, lse = ring.forward(q, k, v)
        out = out.to(q.dtype)
        ctx.ring = ring
        ctx.save_for_backward(q, k, v, out, lse, *mod_tensors)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor | None, grad_lse: Tensor | None) -> tuple[Tensor | None, ...]:
        q, k, v, out, lse, *mod_tensors = ctx.saved_tensors
        dq, dk, dv, dmods = ctx.ring.backward(q, k, v, out, lse, grad_out, grad_lse, mod_tensors)
        return (None, dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), *dmods)


def mod_tensors(mod: ScoreMod | None) -> list[Tensor]:
    """Tensors inside a score mod that need gradients (a relative-position table, learned slopes): what the
    blockwise backend differentiates too."""
    return _mod_tensors(mod)


__all__ = ["Ring", "RingAttention", "mod_tensors"]
