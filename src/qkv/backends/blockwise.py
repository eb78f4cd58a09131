"""Blockwise attention: online over query blocks, skipping the key tiles a mask rules out.

For each block of ``BLOCK_Q`` queries the backend asks the mask which
``BLOCK_K``-wide key tiles are empty, full or partial, gathers only the keys
of non-empty tiles (a view when they are contiguous, as for causal, sliding
window and document masks), and computes that block exactly: scores, score
modifier, per-element mask only where some tile is partial, softmax with its
log-sum-exp, and the product with V. Nothing of size ``Nq × Nk`` is ever
materialized: memory is ``O(BLOCK_Q × keys kept)`` per block.

On the CPU, calls whose score modifier is none or additive (a dense bias,
ALiBi) run in qkv's own kernel (`blockwise_kernel`, ``blockwise_cpu.cpp``; half
precision computed in float32): each plan block becomes kernel blocks of
``KERNEL_ROWS`` queries that share its keys (a slice, or runs of consecutive keys
where the kept tiles are scattered) and its additive mask tile; the kernel
computes, per block, only the keys its rows may attend, with the BLAS products
torch links, all blocks of a call in one parallel pass, forward and backward.

Where the kernel is not built, each block runs in torch's fused flash kernel
(forward and backward), and with other score modifiers in plain torch ops.
Where consecutive blocks keep key windows that slide in step with them (a
sliding window, a local band) and share one mask tile, a run of them is one
fused-kernel call over overlapping strided views of q, k and v: no copies, and
the kernel's fixed cost is paid once per run instead of once per block.

The backward pass is a custom autograd function that recomputes each block's
probabilities from the saved log-sum-exp (as FlashAttention does) and adds
the key and value gradients into place, so training memory stays ``O(N)``.

Masks arrive either as dense bool tensors or as structured mask objects with
the protocol of `qkv.masks.Mask` (``tile_kinds`` and ``allowed``); score
modifiers as dense float tensors or callables with the protocol of
`qkv.mods.ScoreMod`. This file imports neither: it relies on the protocol only.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.backends import blockwise_kernel
from qkv.backends.common import accumulation_dtype

NAME = "blockwise"
TAKES_MASK_OBJECTS = True  # structured masks arrive as they are; others get dense bool tensors
TAKES_SCORE_MODS = True
BLOCK_Q = 64
BLOCK_K = 32
EMPTY, PARTIAL, FULL = 0, 1, 2  # tile kinds, as in qkv.masks.TileKind: AND = min, OR = max


def unsupported(q: Tensor, k: Tensor, v: Tensor, *, dropout_p: float = 0.0, **_: object) -> str | None:
    if dropout_p > 0.0:
        return "dropout is not implemented blockwise"
    return None


# ----------------------------------------------------------------------------- tile plans


def _dense_tile_kinds(mask: Tensor, block_q: int, block_k: int) -> Tensor:
    """Tile kinds of a dense bool mask ``(B', H', Nq, Nk)`` -> int8 ``(B', H', nQb, nKb)``."""
    b, h, nq, nk = mask.shape
    nqb, nkb = math.ceil(nq / block_q), math.ceil(nk / block_k)
    pad = (0, nkb * block_k - nk, 0, nqb * block_q - nq)
    any_true = torch.nn.functional.pad(mask, pad, value=False)
    all_true = torch.nn.functional.pad(mask, pad, value=True)
    any_true = any_true.view(b, h, nqb, block_q, nkb, block_k).any(5).any(3)  # (B', H', nQb, nKb)
    all_true = all_true.view(b, h, nqb, block_q, nkb, block_k).all(5).all(3)  # (B', H', nQb, nKb)
    return torch.where(all_true, FULL, torch.where(any_true, PARTIAL, EMPTY)).to(torch.int8)


def _causal_tile_kinds(nq: int, nk: int, block_q: int, block_k: int, device: torch.device) -> Tensor:
    """Analytic tile kinds of the bottom-right causal mask -> int8 ``(1, 1, nQb, nKb)``."""
    offset = nk - nq
    q_first = torch.arange(0, nq, block_q, device=device)[:, None] + offset  # aligned first row of each block
    q_last = torch.clamp(q_first - offset + block_q, max=nq) - 1 + offset  # aligned last row
    k_first = torch.arange(0, nk, block_k, device=device)[None, :]
    k_last = torch.clamp(k_first + block_k, max=nk) - 1
    kinds = torch.where(k_last <= q_first, FULL, torch.where(k_first <= q_last, PARTIAL, EMPTY))
    return kinds.to(torch.int8)[None, None]  # (nQb, nKb) -> (1, 1, nQb, nKb)


@dataclass
class _Plan:
    """What one forward pass does: the key tiles of each query block."""

    kinds: Tensor  # int8 (B', H', nQb, nKb)
    keys: list[Tensor | slice | None]  # per query block: the key positions kept (None: no key at all)
    needs_mask: list[bool]  # per query block: does any kept tile need a per-element mask?


def _plan(mask: object, causal: bool, shape: tuple[int, int, int, int], device: torch.device) -> _Plan:
    b, h, nq, nk = shape
    kinds = None
    if isinstance(mask, Tensor):
        kinds = _dense_tile_kinds(mask, BLOCK_Q, BLOCK_K)
    elif mask is not None:
        kinds = mask.tile_kinds(b, h, nq, nk, BLOCK_Q, BLOCK_K, device=device).to(torch.int8)
    if causal:
        causal_kinds = _causal_tile_kinds(nq, nk, BLOCK_Q, BLOCK_K, device)
        kinds = causal_kinds if kinds is None else torch.minimum(kinds, causal_kinds)
    if kinds is None:
        kinds = torch.full((1, 1, math.ceil(nq / BLOCK_Q), math.ceil(nk / BLOCK_K)), FULL, dtype=torch.int8)
    kinds = kinds.cpu()
    somewhere = (kinds != EMPTY).flatten(0, 1).any(0)  # (nQb, nKb): some (b, h) may attend
    everywhere = (kinds == FULL).flatten(0, 1).all(0)  # (nQb, nKb): every (b, h) attends all of it
    # Per query block, at once: first and last kept tile, how many are kept, and whether any kept
    # tile needs a per-element mask; one .tolist() each instead of a loop of small tensor ops.
    nkb = somewhere.shape[1]
    cols = torch.arange(nkb)
    first = torch.where(somewhere, cols, nkb).amin(1).tolist()
    last = torch.where(somewhere, cols, -1).amax(1).tolist()
    count = somewhere.sum(1).tolist()
    partial = (somewhere & ~everywhere).any(1).tolist()
    keys: list[Tensor | slice | None] = []
    for r in range(kinds.shape[2]):
        if count[r] == 0:
            keys.append(None)
        elif last[r] - first[r] + 1 == count[r]:  # contiguous tiles: a view of k and v
            keys.append(slice(first[r] * BLOCK_K, min((last[r] + 1) * BLOCK_K, nk)))
        else:
            kept = somewhere[r].nonzero().flatten().tolist()
            index = torch.cat([torch.arange(c * BLOCK_K, min((c + 1) * BLOCK_K, nk)) for c in kept])
            keys.append(index.to(device))
    needs_mask = [bool(p) and c > 0 for p, c in zip(partial, count)]
    return _Plan(kinds, keys, needs_mask)


# Plans (and the kernel's blocks) of masks that depend only on i' - j are kept per mask
# object and call shape: a model that calls attention with the same mask and shapes
# again builds them once. Other masks (their tiles depend on tensors such as lengths or
# document ids that a caller may change in place) are planned on every call.
_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MEMO_NO_MASK: dict = {}
MEMO_PER_MASK = 8  # call shapes kept per mask, the oldest dropped first


def _memo(mask: object, key: tuple, build: Callable[[], object]) -> object:
    if mask is None:
        table = _MEMO_NO_MASK
    elif isinstance(mask, Tensor) or not getattr(mask, "offset_invariant", False):
        return build()
    else:
        try:
            table = _MEMO.setdefault(mask, {})
        except TypeError:  # an object that takes no weak reference
            return build()
    if key not in table:
        if len(table) >= MEMO_PER_MASK:
            table.pop(next(iter(table)))
        table[key] = build()
    return table[key]


# ----------------------------------------------------------------------------- one block


def _take(t: Tensor, keys: Tensor | slice, dim: int = 2) -> Tensor:
    """Keys of ``t`` along ``dim``: a view for a slice, a gather for an index."""
    if isinstance(keys, slice):
        return t.narrow(dim, keys.start, keys.stop - keys.start)
    return t.index_select(dim, keys)


def _block_of(t: Tensor, q0: int, bq: int, keys: Tensor | slice) -> Tensor:
    """Rows ``[q0, q0 + bq)`` and the kept keys of a ``(B', H', Nq|1, Nk|1)`` mask or bias."""
    rows = t.narrow(2, q0, bq) if t.shape[2] != 1 else t
    return _take(rows, keys, dim=3) if t.shape[3] != 1 else rows


def _key_positions(keys: Tensor | slice, device: torch.device) -> Tensor:
    if isinstance(keys, slice):
        return torch.arange(keys.start, keys.stop, device=device)
    return keys


@dataclass
class _Spec:
    """The call's arguments the blocks need (everything but q, k, v)."""

    mask: object
    bias: object
    causal: bool
    scale: float
    nq: int
    nk: int
    acc: torch.dtype


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


def _block_allowed(
    spec: _Spec, b: int, hq: int, q_idx: Tensor, kv_idx: Tensor, q0: int, bq: int, keys: Tensor | slice
) -> Tensor:
    """Per-element mask of one block, broadcastable to ``(B, Hq, bq, R)``."""
    allowed = None
    if isinstance(spec.mask, Tensor):
        allowed = _block_of(spec.mask, q0, bq, keys)
    elif spec.mask is not None:
        device = q_idx.device
        b_idx = torch.arange(b, device=device)[:, None, None, None]  # (B, 1, 1, 1)
        h_idx = torch.arange(hq, device=device)[None, :, None, None]  # (1, Hq, 1, 1)
        allowed = spec.mask.allowed(b_idx, h_idx, q_idx, kv_idx, spec.nq, spec.nk)
    if spec.causal:
        tri = kv_idx <= q_idx + (spec.nk - spec.nq)  # (1, 1, bq, R)
        allowed = tri if allowed is None else allowed & tri
    return allowed


# ----------------------------------------------------------------------------- forward and backward


def _forward(q: Tensor, k: Tensor, v: Tensor, spec: _Spec, plan: _Plan) -> tuple[Tensor, Tensor]:
    b, hq, nq, _ = q.shape
    hkv, dv = v.shape[1], v.shape[3]
    out = torch.zeros(b, hq, nq, dv, dtype=q.dtype, device=q.device)
    lse = torch.full((b, hq, nq), float("-inf"), dtype=spec.acc, device=q.device)
    tiny = torch.finfo(spec.acc).tiny
    lowest = torch.finfo(spec.acc).min
    for r, keys in enumerate(plan.keys):
        if keys is None:
            continue
        q0 = r * BLOCK_Q
        bq = min(BLOCK_Q, nq - q0)
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


_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_CPU_BACKWARD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


def _fused_ok(q: Tensor, v: Tensor, spec: _Spec) -> bool:
    """On the CPU, torch's fused flash kernel runs each block (it returns the lse too).

    It takes an additive float mask, so it serves dense biases and masks; score
    modifiers that are functions of the scores run on the plain per-block path.
    """
    return (
        q.device.type == "cpu"
        and _FLASH_CPU is not None
        and _FLASH_CPU_BACKWARD is not None
        and (spec.bias is None or isinstance(spec.bias, Tensor))
        and v.shape[-1] == q.shape[-1]  # the kernel wants one head size for q, k and v
    )


class _FloatMasks:
    """Each block's additive mask (0 / -inf, plus a dense bias or an additive score modifier's
    values) for the fused kernels, and its empty rows.

    A mask (and modifier) that depends only on ``i' - j`` (causal, windows, ALiBi) gives
    every block at the same offset the same tile: those are built once per call.
    """

    def __init__(self, spec: _Spec, b: int, hq: int, dtype: torch.dtype, device: torch.device) -> None:
        self.spec, self.b, self.hq, self.dtype, self.device = spec, b, hq, dtype, device
        mod_reusable = _additive_mod(spec) and getattr(spec.bias, "offset_invariant", False)
        mask_reusable = spec.mask is None or getattr(spec.mask, "offset_invariant", False)
        self.reusable = (spec.bias is None or mod_reusable) and mask_reusable
        self.cache: dict[tuple[int, int, int], tuple[Tensor, Tensor]] = {}

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
        if needs_mask:
            q_idx = torch.arange(q0, q0 + bq, device=self.device)[None, None, :, None]  # (1, 1, bq, 1)
            kv_idx = _key_positions(keys, self.device)[None, None, None, :]  # (1, 1, 1, R)
            allowed = _unexpanded(_block_allowed(spec, self.b, self.hq, q_idx, kv_idx, q0, bq, keys))
            tile = torch.where(allowed, 0.0, float("-inf")).to(self.dtype)
        if isinstance(spec.bias, Tensor):
            bias = _block_of(spec.bias, q0, bq, keys).to(self.dtype)
            tile = bias if tile is None else tile + bias
        elif spec.bias is not None:  # an additive score modifier: its values on this block
            q_idx = torch.arange(q0, q0 + bq, device=self.device)[None, None, :, None]  # (1, 1, bq, 1)
            kv_idx = _key_positions(keys, self.device)[None, None, None, :]  # (1, 1, 1, R)
            b_idx = torch.arange(self.b, device=self.device)[:, None, None, None]  # (B, 1, 1, 1)
            h_idx = torch.arange(self.hq, device=self.device)[None, :, None, None]  # (1, Hq, 1, 1)
            zero = torch.zeros(1, 1, 1, 1, dtype=spec.acc, device=self.device)
            bias = _unexpanded(spec.bias(zero, b_idx, h_idx, q_idx, kv_idx, spec.nq, spec.nk)).to(self.dtype)
            tile = bias if tile is None else tile + bias
        empty = torch.isneginf(tile).all(dim=-1) if empty_rows else None  # (B'|1, H'|1, bq)
        if empty is not None and not bool(empty.any()):
            empty = None  # the usual case: no row without a key, nothing to fix after the kernel
        if key is not None:
            self.cache[key] = (tile, empty)
        return tile, empty


def _unexpanded(t: Tensor) -> Tensor:
    """Batch and head axes that are broadcast views (stride 0) back to size 1: a mask that is the
    same for every head is built once, not once per head."""
    for dim in (0, 1):
        if t.shape[dim] > 1 and t.stride(dim) == 0:
            t = t.narrow(dim, 0, 1)
    return t


def _expand_heads(t: Tensor, group: int) -> Tensor:
    """(B, Hkv, R, D) -> (B, Hq, R, D): query head h reads kv head h // group."""
    return t if group == 1 else t.repeat_interleave(group, dim=1)


# Query blocks per fused-kernel call where the blocks' key windows slide in step (see _runs).
# The forward kernel gains a little from long runs; the backward one keeps per-call
# gradient buffers that grow with the batch, so short runs serve it best.
FORWARD_RUN = 64
BACKWARD_RUN = 4


def _runs(plan: _Plan, nq: int, float_masks: _FloatMasks, longest: int) -> list[tuple[int, int]]:
    """The query blocks in runs ``[r0, r1)`` that one kernel call computes over strided views.

    Blocks of a run are full size, keep key slices of one length whose start moves
    by ``BLOCK_Q`` from one block to the next (a sliding window, a local band) and
    share one mask tile (none, or an offset-invariant mask's); any other block is a
    run of its own.
    """
    def continues(a: int) -> bool:
        ka, kb = plan.keys[a], plan.keys[a + 1]
        return (
            isinstance(ka, slice)
            and isinstance(kb, slice)
            and (a + 2) * BLOCK_Q <= nq
            and kb.start - ka.start == BLOCK_Q
            and kb.stop - kb.start == ka.stop - ka.start
            and plan.needs_mask[a] == plan.needs_mask[a + 1]
            and (float_masks.reusable or (not plan.needs_mask[a] and float_masks.spec.bias is None))
        )

    runs, r0, blocks = [], 0, len(plan.keys)
    while r0 < blocks:
        r1 = r0 + 1
        while r1 < blocks and r1 - r0 < longest and continues(r1 - 1):
            r1 += 1
        runs.append((r0, r1))
        r0 = r1
    return runs


def _windows(t: Tensor, b: int, start: int, count: int, length: int) -> Tensor:
    """Batch row ``b`` of ``t (B, H, N[, D])`` as ``count`` windows of ``length`` positions, window ``i``
    starting at ``start + i * BLOCK_Q``: a view ``(count, H, length[, D])``; windows may overlap."""
    row = t[b]  # (B, H, N[, D]) -> (H, N[, D])
    st = row.stride()
    size = (count, row.shape[0], length, *row.shape[2:])
    return row.as_strided(size, (BLOCK_Q * st[1], *st), row.storage_offset() + start * st[1])


def _row_of(t: Tensor | None, b: int, heads: slice) -> Tensor | None:
    """Batch row ``b`` and ``heads`` of a mask tile ``(B'|1, H'|1, ...)``, keeping a leading axis
    that broadcasts over windows."""
    if t is None:
        return None
    t = t if t.shape[0] == 1 else t[b : b + 1]
    return t if t.shape[1] == 1 else t[:, heads]


def _head_groups(hq: int, hkv: int) -> list[slice]:
    """Query heads by the position they take in their group: ``heads[j]`` are heads ``j, j + G, ...``,
    which read kv heads ``0, 1, ...`` in order, so each slice pairs with k and v as they are."""
    group = hq // hkv
    return [slice(j, hq, group) for j in range(group)]


def _rows(t: Tensor, b: int, q0: int, count: int) -> Tensor:
    """Rows ``q0 .. q0 + count·BLOCK_Q`` of batch row ``b`` of ``t (B, H, N[, D])``, as ``(H, count, BLOCK_Q[, D])``."""
    rows = t[b].narrow(1, q0, count * BLOCK_Q)  # (H, count·BLOCK_Q[, D])
    return rows.unflatten(1, (count, BLOCK_Q))  # -> (H, count, BLOCK_Q[, D])


def _fused_block_forward(q, k, v, spec: _Spec, q0: int, bq: int, keys, tile_and_empty, out: Tensor, lse: Tensor) -> None:
    """One query block through torch's fused CPU kernel, written into its rows of ``out`` and ``lse``."""
    tile, empty = tile_and_empty
    group = q.shape[1] // k.shape[1]
    block_out, block_lse = _FLASH_CPU(
        q.narrow(2, q0, bq),
        _expand_heads(_take(k, keys), group),
        _expand_heads(_take(v, keys), group),
        0.0,
        False,
        attn_mask=tile,
        scale=spec.scale,
    )  # (B, Hq, bq, Dv), (B, Hq, bq)
    if empty is not None:  # the kernel reports lse 0 for a row with no key; qkv says -inf
        block_lse = block_lse.masked_fill(empty, float("-inf"))
    out.narrow(2, q0, bq).copy_(block_out)
    lse.narrow(2, q0, bq).copy_(block_lse)


def _safe_lse(lse: Tensor, dtype: torch.dtype) -> Tensor:
    """lse for torch's fused backward: 0 instead of -inf in rows with no key (their probabilities are 0 anyway)."""
    return lse.masked_fill(torch.isneginf(lse), 0.0).to(torch.float32 if dtype != torch.float64 else dtype)


def _fused_block_backward(q, k, v, out, safe_lse, grad_out, spec: _Spec, q0: int, bq: int, keys, tile, grads) -> None:
    """One query block's gradients through torch's fused CPU kernel: its rows of dq, added into dk and dv."""
    hkv = k.shape[1]
    group = q.shape[1] // hkv
    dq_blk, dk_sel, dv_sel = _FLASH_CPU_BACKWARD(
        grad_out.narrow(2, q0, bq),
        q.narrow(2, q0, bq),
        _expand_heads(_take(k, keys), group),
        _expand_heads(_take(v, keys), group),
        out.narrow(2, q0, bq),
        safe_lse.narrow(2, q0, bq),
        0.0,
        False,
        attn_mask=tile,
        scale=spec.scale,
    )  # (B, Hq, bq, D), (B, Hq, R, D), (B, Hq, R, Dv)
    if group > 1:  # (B, Hq, R, D) -> (B, Hkv, R, D): sum each group's gradients
        dk_sel, dv_sel = dk_sel.unflatten(1, (hkv, group)).sum(2), dv_sel.unflatten(1, (hkv, group)).sum(2)
    grads.dq.narrow(2, q0, bq).copy_(dq_blk)
    grads.add_kv(keys, dk_sel, dv_sel)


def _forward_fused(q: Tensor, k: Tensor, v: Tensor, spec: _Spec, plan: _Plan) -> tuple[Tensor, Tensor]:
    b, hq, nq, _ = q.shape
    # every block writes its rows; rows of blocks with no key at all stay 0
    alloc = torch.empty if all(keys is not None for keys in plan.keys) else torch.zeros
    out = alloc(b, hq, nq, v.shape[3], dtype=q.dtype, device=q.device)
    lse = torch.full((b, hq, nq), float("-inf"), dtype=spec.acc, device=q.device)
    float_masks = _FloatMasks(spec, b, hq, q.dtype, q.device)
    for r0, r1 in _runs(plan, nq, float_masks, FORWARD_RUN):
        keys = plan.keys[r0]
        if keys is None:
            continue
        q0 = r0 * BLOCK_Q
        bq = min(BLOCK_Q, nq - q0)
        tile, empty = float_masks(q0, bq, keys, plan.needs_mask[r0])
        if r1 - r0 == 1:
            _fused_block_forward(q, k, v, spec, q0, bq, keys, (tile, empty), out, lse)
            continue
        n, length = r1 - r0, keys.stop - keys.start
        # one call per batch row and position in the head group: the windows are strided views
        for i in range(b):
            for heads in _head_groups(hq, k.shape[1]):
                run_out, run_lse = _FLASH_CPU(
                    _windows(q[:, heads], i, q0, n, BLOCK_Q),
                    _windows(k, i, keys.start, n, length),
                    _windows(v, i, keys.start, n, length),
                    0.0,
                    False,
                    attn_mask=_row_of(tile, i, heads),
                    scale=spec.scale,
                )  # (n, Hkv, BLOCK_Q, Dv), (n, Hkv, BLOCK_Q)
                if empty is not None:
                    run_lse = run_lse.masked_fill(_row_of(empty, i, heads)[0], float("-inf"))
                _rows(out[:, heads], i, q0, n).copy_(run_out.transpose(0, 1))  # (n, Hkv, ...) -> (Hkv, n, ...)
                _rows(lse[:, heads], i, q0, n).copy_(run_lse.transpose(0, 1))
    return out, lse


def _backward_fused(q, k, v, out, lse, grad_out, spec: _Spec, plan: _Plan, grads: _Grads) -> None:
    b, hq, nq, _ = q.shape
    hkv = k.shape[1]
    grad_out = grad_out.to(q.dtype)
    safe_lse = _safe_lse(lse, q.dtype)
    float_masks = _FloatMasks(spec, b, hq, q.dtype, q.device)
    for r0, r1 in _runs(plan, nq, float_masks, BACKWARD_RUN):
        keys = plan.keys[r0]
        if keys is None:
            continue
        q0 = r0 * BLOCK_Q
        bq = min(BLOCK_Q, nq - q0)
        tile, _ = float_masks(q0, bq, keys, plan.needs_mask[r0])
        if r1 - r0 == 1:
            _fused_block_backward(q, k, v, out, safe_lse, grad_out, spec, q0, bq, keys, tile, grads)
            continue
        n, length = r1 - r0, keys.stop - keys.start
        for i in range(b):
            for heads in _head_groups(hq, hkv):  # each query head's share goes straight to its kv head
                dq_run, dk_run, dv_run = _FLASH_CPU_BACKWARD(
                    _windows(grad_out[:, heads], i, q0, n, BLOCK_Q),
                    _windows(q[:, heads], i, q0, n, BLOCK_Q),
                    _windows(k, i, keys.start, n, length),
                    _windows(v, i, keys.start, n, length),
                    _windows(out[:, heads], i, q0, n, BLOCK_Q),
                    _windows(safe_lse[:, heads], i, q0, n, BLOCK_Q),
                    0.0,
                    False,
                    attn_mask=_row_of(tile, i, heads),
                    scale=spec.scale,
                )  # (n, Hkv, BLOCK_Q, D), (n, Hkv, R, D), (n, Hkv, R, Dv)
                _rows(grads.dq[:, heads], i, q0, n).copy_(dq_run.transpose(0, 1))  # (n, Hkv, ...) -> (Hkv, n, ...)
                for j in range(n):  # window j's keys start BLOCK_Q·j after the first window's
                    grads.dk[i].narrow(1, keys.start + j * BLOCK_Q, length).add_(dk_run[j])
                    grads.dv[i].narrow(1, keys.start + j * BLOCK_Q, length).add_(dv_run[j])


# ----------------------------------------------------------------------------- the CPU kernel

# The kernel takes blocks of this many query rows; each computes only the keys its own
# rows may attend (a band of 256 costs 288 keys per row at 32 rows, 320 at 64).
KERNEL_ROWS = 32
# A call's blocks go to the kernel in chunks whose mask tiles take at most this much memory
# (masks with a tile per block, such as document masks over long documents, would otherwise
# hold O(N x keys kept) of them).
KERNEL_TILE_BYTES = 32 << 20


def _kernel_ok(q: Tensor, spec: _Spec, mod_tensors: tuple[Tensor, ...]) -> bool:
    """The kernel computes float32 and float64 blocks on the CPU (half precision in float32), with
    a dense bias, an additive score modifier (ALiBi, relative position biases) whose tensors need
    no gradient, or neither."""
    return (
        q.device.type == "cpu"
        and q.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        and (spec.bias is None or isinstance(spec.bias, Tensor) or (_additive_mod(spec) and not mod_tensors))
        and blockwise_kernel.available()
    )


def _additive_mod(spec: _Spec) -> bool:
    """Is the call's bias a score modifier that only adds ``f(b, h, i, j)`` to the scores?"""
    return spec.bias is not None and not isinstance(spec.bias, Tensor) and getattr(spec.bias, "additive", False)


@dataclass
class _KernelBlocks:
    """One kernel call's work: its blocks, their key segments and tiles."""

    blocks: Tensor  # int64 (n, 8): first query row, rows, first key, keys, tile index (-1: none),
    #                 first tile row, first segment, segments (0: the keys are one slice from the first key)
    segments: Tensor  # int64 (m, 2): first key, keys; the runs of consecutive keys of blocks with scattered keys
    tiles: list[Tensor]  # additive (B'|1, H'|1, BLOCK_Q rows or fewer, keys), contiguous


def _kernel_chunks(spec: _Spec, plan: _Plan, b: int, hq: int, dtype: torch.dtype) -> Iterator[_KernelBlocks]:
    """Each plan block as kernel blocks of ``KERNEL_ROWS`` rows sharing its keys and tile (the
    kernel trims a block with one slice of keys to those its rows may attend), in chunks of
    at most ``KERNEL_TILE_BYTES`` of tiles."""
    float_masks = _FloatMasks(spec, b, hq, dtype, torch.device("cpu"))
    rows: list[tuple[int, ...]] = []
    segments: list[tuple[int, int]] = []
    tiles: list[Tensor] = []
    index: dict[int, tuple[Tensor, int]] = {}  # per tile object (kept alive, so ids stay unique): its index
    tile_bytes = 0

    def chunk() -> _KernelBlocks:
        return _KernelBlocks(
            torch.tensor(rows, dtype=torch.int64).reshape(-1, 8),
            torch.tensor(segments, dtype=torch.int64).reshape(-1, 2),
            tiles,
        )

    for r, keys in enumerate(plan.keys):
        if keys is None:
            continue
        q0 = r * BLOCK_Q
        bq = min(BLOCK_Q, spec.nq - q0)
        if isinstance(keys, slice):
            first, length, seg0, nseg = keys.start, keys.stop - keys.start, 0, 0
        else:
            runs = _runs_of(keys)
            first, length, seg0, nseg = -1, len(keys), len(segments), len(runs)
            segments += runs
        tile, _ = float_masks(q0, bq, keys, plan.needs_mask[r], empty_rows=False)
        t = -1
        if tile is not None:
            if id(tile) not in index:  # a reusable tile serves every block at its offset
                full = tile.expand(tile.shape[0], tile.shape[1], bq, length).contiguous()  # (B'|1, H'|1, bq, R)
                if tile_bytes and tile_bytes + full.nbytes > KERNEL_TILE_BYTES:
                    yield chunk()
                    rows, segments, tiles, index, tile_bytes = [], [], [], {}, 0
                    if isinstance(keys, Tensor):
                        seg0 = 0
                        segments += _runs_of(keys)
                tiles.append(full)
                tile_bytes += full.nbytes
                index[id(tile)] = (tile, len(tiles) - 1)
            t = index[id(tile)][1]
        rows += [(q0 + s0, min(KERNEL_ROWS, bq - s0), first, length, t, s0, seg0, nseg) for s0 in range(0, bq, KERNEL_ROWS)]
    if rows:
        yield chunk()


def _runs_of(keys: Tensor) -> list[tuple[int, int]]:
    """Sorted key positions as runs of consecutive ones: ``[(first, length), ...]``."""
    breaks = (torch.nonzero(keys[1:] - keys[:-1] != 1).flatten() + 1).tolist()  # where a run starts anew
    starts, ends = [0, *breaks], [*breaks, len(keys)]
    firsts = keys[starts].tolist()
    return [(f, e - s) for f, s, e in zip(firsts, starts, ends)]


def _last_dim_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _kernel_inputs(q: Tensor, k: Tensor, v: Tensor, spec: _Spec) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v as the kernel takes them: in the accumulation dtype, the last dim contiguous."""
    return tuple(_last_dim_contiguous(t.to(spec.acc)) for t in (q, k, v))


def _forward_kernel(
    q: Tensor, k: Tensor, v: Tensor, spec: _Spec, chunks: Iterable[_KernelBlocks], complete: bool
) -> tuple[Tensor, Tensor]:
    b, hq, nq, _ = q.shape
    out = (torch.empty if complete else torch.zeros)(b, hq, nq, v.shape[3], dtype=q.dtype)
    lse = torch.full((b, hq, nq), float("-inf"), dtype=spec.acc)  # rows in no block: no key at all
    for kb in chunks:
        blockwise_kernel.forward(q, k, v, out, lse, kb.blocks, kb.segments, kb.tiles, spec.scale)
    return out, lse


def _backward_kernel(q, k, v, out, lse, grad_out, grad_lse, spec: _Spec, chunks: Iterable[_KernelBlocks], grads: _Grads) -> None:
    grad_out = _last_dim_contiguous(grad_out.to(q.dtype))
    if grad_lse is not None:
        grad_lse = grad_lse.to(lse.dtype).contiguous()
    for kb in chunks:
        blockwise_kernel.backward(
            q, k, v, out, lse, grad_out, grad_lse, grads.dq, grads.dk, grads.dv, kb.blocks, kb.segments, kb.tiles, spec.scale
        )


def _kernel_work(spec: _Spec, plan: _Plan, b: int, hq: int, dtype: torch.dtype) -> Iterable[_KernelBlocks]:
    """The kernel's chunks for a call: kept (per mask object and shape) where the tiles are few
    and shared (no bias, a mask that depends only on i' - j), else built as they are used."""
    if spec.bias is None and (spec.mask is None or getattr(spec.mask, "offset_invariant", False)):
        key = ("kernel", spec.causal, b, hq, spec.nq, spec.nk, dtype)
        return _memo(spec.mask, key, lambda: list(_kernel_chunks(spec, plan, b, hq, dtype)))
    return _kernel_chunks(spec, plan, b, hq, dtype)


def _mod_tensors(mod: object) -> list[Tensor]:
    """Tensors inside a score modifier that need gradients (e.g. a relative-position table)."""
    found: list[Tensor] = []
    stack = [mod]
    seen: set[int] = set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Tensor):
            if obj.requires_grad:
                found.append(obj)
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return found


class _BlockwiseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias_tensor, spec, plan, *mod_tensors):
        ctx.kernel = _kernel_ok(q, spec, mod_tensors)
        if ctx.kernel:  # out in the accumulation dtype: half precision inputs are computed in float32
            work = _kernel_work(spec, plan, *q.shape[:2], spec.acc)
            complete = all(keys is not None for keys in plan.keys)
            out, lse = _forward_kernel(*_kernel_inputs(q, k, v, spec), spec, work, complete)
        else:
            ctx.fused = _fused_ok(q, v, spec)
            out, lse = (_forward_fused if ctx.fused else _forward)(q, k, v, spec, plan)
        ctx.save_for_backward(q, k, v, bias_tensor, out, lse, *mod_tensors)
        ctx.spec, ctx.plan = spec, plan
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, bias_tensor, out, lse, *mod_tensors = ctx.saved_tensors
        spec, plan = ctx.spec, ctx.plan
        acc = spec.acc
        # every block with keys writes its rows of dq; only blocks without any key leave zeros behind
        dq_alloc = torch.empty_like if all(keys is not None for keys in plan.keys) else torch.zeros_like
        grads = _Grads(
            dq=dq_alloc(q, dtype=acc),
            dk=torch.zeros_like(k, dtype=acc),
            dv=torch.zeros_like(v, dtype=acc),
            dbias=torch.zeros_like(bias_tensor, dtype=acc) if bias_tensor is not None and ctx.needs_input_grad[3] else None,
            dmods=[torch.zeros_like(t) for t in mod_tensors],
        )
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out
        if ctx.kernel and grads.dbias is None:
            work = _kernel_work(spec, plan, *q.shape[:2], acc)
            _backward_kernel(*_kernel_inputs(q, k, v, spec), out, lse, grad_out, grad_lse, spec, work, grads)
        elif not ctx.kernel and ctx.fused and grad_lse is None and grads.dbias is None:
            _backward_fused(q, k, v, out, lse, grad_out, spec, plan, grads)
        else:
            _backward(q, k, v, out, lse, grad_out, grad_lse, spec, plan, grads, mod_tensors)
        dbias = None if grads.dbias is None else grads.dbias.to(bias_tensor.dtype)
        return (grads.dq.to(q.dtype), grads.dk.to(k.dtype), grads.dv.to(v.dtype), dbias, None, None, *grads.dmods)


@dataclass
class _Grads:
    dq: Tensor
    dk: Tensor
    dv: Tensor
    dbias: Tensor | None
    dmods: list[Tensor]

    def add_kv(self, keys: Tensor | slice, dk_sel: Tensor, dv_sel: Tensor) -> None:
        if isinstance(keys, slice):
            self.dk.narrow(2, keys.start, keys.stop - keys.start).add_(dk_sel)
            self.dv.narrow(2, keys.start, keys.stop - keys.start).add_(dv_sel)
        else:
            self.dk.index_add_(2, keys, dk_sel)
            self.dv.index_add_(2, keys, dv_sel)


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
    for r, keys in enumerate(plan.keys):
        if keys is None:
            continue
        q0 = r * BLOCK_Q
        bq = min(BLOCK_Q, nq - q0)
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
        dp = (dog @ vg.transpose(-2, -1)).view(b, hq, bq, r_len)  # (B, Hkv, G, bq, Dv) @ (B, Hkv, 1, Dv, R) -> (B, Hq, bq, R)
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
        dq[:, :, q0 : q0 + bq] = (dsg @ kg).view(b, hq, bq, -1)  # (B, Hkv, G, bq, R) @ (B, Hkv, 1, R, D) -> (B, Hq, bq, D)
        qg = q_blk.to(acc).view(b, hkv, group, bq, -1)  # (B, Hq, bq, D) -> (B, Hkv, G, bq, D)
        dk_sel = (dsg.transpose(-2, -1) @ qg).sum(2)  # (B, Hkv, G, R, bq) @ (B, Hkv, G, bq, D) -> (B, Hkv, R, D)
        grads.add_kv(keys, dk_sel, dv_sel)


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


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: object,
    bias: object,
    causal: bool,
    scale: float,
    dropout_p: float,
    return_lse: bool,
) -> tuple[Tensor, Tensor | None]:
    nq, nk = q.shape[2], k.shape[2]
    spec = _Spec(mask, bias, causal, scale, nq, nk, accumulation_dtype(q.dtype))
    shape = (q.shape[0], q.shape[1], nq, nk)
    plan = _memo(mask, ("plan", causal, shape, q.device), lambda: _plan(mask, causal, shape, q.device))
    bias_tensor = bias if isinstance(bias, Tensor) else None
    mod_tensors = [] if bias is None or bias_tensor is not None else _mod_tensors(bias)
    out, lse = _BlockwiseAttention.apply(q, k, v, bias_tensor, spec, plan, *mod_tensors)
    return out.to(q.dtype), (lse if return_lse else None)
