"""The blockwise path in plain torch ops, on any device and for any score modifier (differentiated through)."""

from __future__ import annotations

import torch
from torch import Tensor

from qkv.backends.blockwise.plan import (
    _block_allowed,
    _block_of,
    _Grads,
    _key_positions,
    _Plan,
    _query_blocks,
    _Spec,
    _take,
)
from qkv.backends.common import crossovers
from qkv.backends.common.interface import Call, Offer

NAME = "portable"


def refuse(call: Call) -> str | None:
    """Plain torch ops compute every call."""
    return None


def estimate(call: Call) -> Offer:
    """Per key tile kept, against torch's kernel on every tile of the dense call (as torch's per-block kernels)."""
    return Offer(1.0 / crossovers.current().dense_enough, "plain torch ops per block, on any device")


def _forward(q: Tensor, k: Tensor, v: Tensor, spec: _Spec, plan: _Plan) -> tuple[Tensor, Tensor]:
    b, hq, nq, _ = q.shape
    hkv, dv = v.shape[1], v.shape[3]
    out = torch.zeros(b, hq, nq, dv, dtype=q.dtype, device=q.device)
    lse = torch.full((b, hq, nq), float("-inf"), dtype=spec.acc, device=q.device)
    tiny = torch.finfo(spec.acc).tiny
    lowest = torch.finfo(spec.acc).min
    for r, q0, bq, keys in _query_blocks(plan, nq):
        s, _ = _block_scores(spec, q.narrow(2, q0, bq), _take(k, keys), q0, keys, plan.needs_mask[r])
        # softmax in place; a row with no allowed key has max -inf -> clamped, exp -> 0, sum 0
        m = s.amax(dim=-1, keepdim=True).clamp_(min=lowest)  # (B, Hq, bq, 1)
        e = s.sub_(m).exp_()  # (B, Hq, bq, R), unnormalized probabilities
        total = e.sum(dim=-1, keepdim=True)  # (B, Hq, bq, 1)
        eg = e.view(b, hkv, hq // hkv, bq, -1)  # (B, Hq, bq, R) -> (B, Hkv, G, bq, R)
        vg = _take(v, keys).to(spec.acc).unsqueeze(2)  # (B, Hkv, R, Dv) -> (B, Hkv, 1, R, Dv)
        block_out = (eg @ vg).view(b, hq, bq, dv)  # (B, Hkv, G, bq, Dv) -> (B, Hq, bq, Dv)
        out[:, :, q0 : q0 + bq] = block_out / total.clamp(min=tiny)
        lse[:, :, q0 : q0 + bq] = (m + total.log()).squeeze(-1)  # -inf where total = 0
    return out, lse


def _backward(
    q, k, v, out, lse, grad_out, grad_lse, spec: _Spec, plan: _Plan, grads: _Grads, mod_tensors: list[Tensor]
) -> None:
    """Per block: recompute the probabilities from the saved lse, then FlashAttention's backward."""
    acc = spec.acc
    b, hq, nq, _ = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    dq, dmods = grads.dq, grads.dmods
    grad_out = grad_out.to(acc)
    # delta_i = Σ_j P_ij dP_ij = dO_i · O_i; an lse gradient enters as P_ij * dlse_i
    delta = (grad_out * out.to(acc)).sum(-1)  # (B, Hq, Nq)
    if grad_lse is not None:
        delta = delta - torch.nan_to_num(grad_lse.to(acc), posinf=0.0, neginf=0.0)
    for r, q0, bq, keys in _query_blocks(plan, nq):
        q_blk = q.narrow(2, q0, bq)
        k_sel, v_sel = _take(k, keys), _take(v, keys)
        raw_in = None
        if spec.bias is not None and not isinstance(spec.bias, Tensor):
            with torch.enable_grad():
                s, raw_in = _block_scores(spec, q_blk, k_sel, q0, keys, plan.needs_mask[r], differentiable=True)
        else:
            s, _ = _block_scores(spec, q_blk, k_sel, q0, keys, plan.needs_mask[r])
        blk_lse = lse[:, :, q0 : q0 + bq, None].clamp(min=torch.finfo(acc).max * -1)  # (B, Hq, bq, 1)
        probs = torch.exp(s.detach() - blk_lse)  # 0 where masked and in rows with no key
        r_len = probs.shape[-1]
        do_blk = grad_out[:, :, q0 : q0 + bq]  # (B, Hq, bq, Dv)
        pg = probs.view(b, hkv, group, bq, r_len)  # (B, Hq, bq, R) -> (B, Hkv, G, bq, R)
        dog = do_blk.view(b, hkv, group, bq, -1)  # (B, Hq, bq, Dv) -> (B, Hkv, G, bq, Dv)
        dv_sel = (pg.transpose(-2, -1) @ dog).sum(2)  # (B, Hkv, G, R, bq) @ (B, Hkv, G, bq, Dv) -> (B, Hkv, R, Dv)
        vg = v_sel.to(acc).unsqueeze(2)  # (B, Hkv, R, Dv) -> (B, Hkv, 1, R, Dv)
        dp = (dog @ vg.transpose(-2, -1)).view(
            b, hq, bq, r_len
        )  # (B, Hkv, G, bq, Dv) @ (B, Hkv, 1, Dv, R) -> (B, Hq, bq, R)
        ds = probs * (dp - delta[:, :, q0 : q0 + bq, None])  # (B, Hq, bq, R): d loss / d modified score
        if raw_in is not None:
            mod_grads = torch.autograd.grad(s, [raw_in, *mod_tensors], ds, allow_unused=True)
            ds = mod_grads[0]
            for i, g in enumerate(mod_grads[1:]):
                if g is not None:
                    dmods[i] += g
        if grads.dbias is not None:
            _add_bias_grad(grads.dbias, ds, q0, bq, keys)
        ds = ds * spec.scale
        dsg = ds.view(b, hkv, group, bq, r_len)  # (B, Hq, bq, R) -> (B, Hkv, G, bq, R)
        kg = k_sel.to(acc).unsqueeze(2)  # (B, Hkv, R, D) -> (B, Hkv, 1, R, D)
        dq[:, :, q0 : q0 + bq] = (dsg @ kg).view(
            b, hq, bq, -1
        )  # (B, Hkv, G, bq, R) @ (B, Hkv, 1, R, D) -> (B, Hq, bq, D)
        qg = q_blk.to(acc).view(b, hkv, group, bq, -1)  # (B, Hq, bq, D) -> (B, Hkv, G, bq, D)
        dk_sel = (dsg.transpose(-2, -1) @ qg).sum(2)  # (B, Hkv, G, R, bq) @ (B, Hkv, G, bq, D) -> (B, Hkv, R, D)
        grads.add_kv(keys, dk_sel, dv_sel)


def _block_scores(
    spec: _Spec,
    q_blk: Tensor,
    k_sel: Tensor,
    q0: int,
    keys: Tensor | slice,
    needs_mask: bool,
    differentiable: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Scaled, modified, masked scores of one block ``(B, Hq, bq, R)`` and the raw scores (for mods).

    ``differentiable=True`` (under ``torch.enable_grad``) makes the raw scores an autograd
    leaf, so the backward pass can differentiate a score modifier through them.
    """
    b, hq, bq, _ = q_blk.shape
    hkv, r = k_sel.shape[1], k_sel.shape[2]
    qg = q_blk.to(spec.acc).view(b, hkv, hq // hkv, bq, -1)  # (B, Hq, bq, D) -> (B, Hkv, G, bq, D)
    kg = k_sel.to(spec.acc).unsqueeze(2)  # (B, Hkv, R, D) -> (B, Hkv, 1, R, D)
    s = (qg @ kg.transpose(-2, -1)) * spec.scale  # (B, Hkv, G, bq, D) @ (B, Hkv, 1, D, R) -> (B, Hkv, G, bq, R)
    s = s.view(b, hq, bq, r)  # (B, Hkv, G, bq, R) -> (B, Hq, bq, R)
    if differentiable:
        s = s.detach().requires_grad_(True)
    device = q_blk.device
    q_idx = torch.arange(q0, q0 + bq, device=device)[None, None, :, None]  # (1, 1, bq, 1)
    kv_idx = _key_positions(keys, device)[None, None, None, :]  # (1, 1, 1, R)
    raw = None
    if isinstance(spec.bias, Tensor):
        s = s + _block_of(spec.bias, q0, bq, keys).to(spec.acc)
    elif spec.bias is not None:
        raw = s
        b_idx = torch.arange(b, device=device)[:, None, None, None]  # (B, 1, 1, 1)
        h_idx = torch.arange(hq, device=device)[None, :, None, None]  # (1, Hq, 1, 1)
        s = spec.bias(s, b_idx, h_idx, q_idx, kv_idx, spec.nq, spec.nk)
    if needs_mask:
        outside = ~_block_allowed(spec, b, hq, q_idx, kv_idx, q0, bq, keys)
        # out of place when autograd may need the modifier's output
        s = s.masked_fill(outside, float("-inf")) if differentiable else s.masked_fill_(outside, float("-inf"))
    return s, raw


def _add_bias_grad(dbias: Tensor, ds: Tensor, q0: int, bq: int, keys: Tensor | slice) -> None:
    """Add one block's score gradient into a (broadcast) bias gradient."""
    g = ds
    for axis in (0, 1):
        if dbias.shape[axis] == 1:
            g = g.sum(axis, keepdim=True)
    if dbias.shape[2] == 1:
        g = g.sum(2, keepdim=True)
        rows = dbias
    else:
        rows = dbias.narrow(2, q0, bq)
    if dbias.shape[3] == 1:
        rows += g.sum(3, keepdim=True)
    elif isinstance(keys, slice):
        rows[..., keys] += g
    else:
        rows.index_add_(3, keys, g)
