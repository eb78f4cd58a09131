"""Triton kernels of block-sparse flash attention, forward and backward, driven by a `TilePlan`, and their launchers.

- ``_forward``: one program per (query block, batch x query head); an online softmax over
  the FULL key blocks of its lists (no mask) and then the PARTIAL ones (band rule and/or
  stored tile mask); out and the log-sum-exp.
- ``_backward_dq``: the same programs and lists; recomputes the probabilities from q, k and
  the lse (FlashAttention-2) and accumulates dq (and, for a bias that needs it, the
  score gradient of the visited tiles).
- ``_backward_dkdv``: one program per (key block, batch x key head), over the transposed
  lists of every query head of its group (grouped-query attention reads k and v once,
  never repeated); accumulates dk and dv.

Scores are kept in base 2 (``scale * log2(e)`` folded in) and accumulated in float32.
Head dimensions are padded to a power of two inside (loads are masked). A row with
no allowed key gives out 0 and lse -inf. Everything here needs triton; under
``TRITON_INTERPRET=1`` (set before triton is imported) the kernels run on CPU tensors.
The module imports without triton (the kernels are then not defined).
"""

import contextlib
import importlib.util
import math
import os
from collections.abc import Iterator

import torch
from torch import Tensor

from qkv.backends.triton.plan import NO_BOUND, TilePlan

AVAILABLE = importlib.util.find_spec("triton") is not None
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # read by triton when the kernels below are defined

if AVAILABLE:
    import triton
    import triton.language as tl

    LOG2E = 1.4426950408889634
    LN2 = 0.6931471805599453

    @triton.jit
    def _tanh(x):
        """tanh in float32 to a few ulp: its Taylor series near 0, else ``(1 - e) / (1 + e)``, ``e = exp(-2|x|)``."""
        x2 = x * x
        p = -929569.0 / 638512875.0
        p = p * x2 + 21844.0 / 6081075.0
        p = p * x2 - 1382.0 / 155925.0
        p = p * x2 + 62.0 / 2835.0
        p = p * x2 - 17.0 / 315.0
        p = p * x2 + 2.0 / 15.0
        p = p * x2 - 1.0 / 3.0
        p = p * x2 + 1.0
        e = tl.math.exp2(-2.8853900817779268 * tl.abs(x))  # exp(-2|x|)
        far = (1.0 - e) / (1.0 + e)
        return tl.where(tl.abs(x) < 0.5, x * p, tl.where(x < 0, -far, far))

    @triton.jit
    def _program(H):
        """``(block, b, h)`` of this program: its block is axis 0, ``b * H + h`` axis 1."""
        block = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)  # 64-bit offsets: tensors past 2^31 elements
        h = (bh % H).to(tl.int64)
        return block, b, h

    @triton.jit
    def _slope2(SLOPES, h, HAS_ALIBI: tl.constexpr):
        """Query head h's ALiBi slope in base 2 (0 without ALiBi)."""
        slope2 = 0.0
        if HAS_ALIBI:
            slope2 = tl.load(SLOPES + h) * 1.4426950408889634
        return slope2

    @triton.jit
    def _rows(X, s, b, h, offs_m, in_rows, offs_x, DX):
        """Rows ``offs_m`` of (b, h)'s matrix at ``X`` (strides ``s``: b, h, row, column), ``(len(offs_m),
        len(offs_x))``: 0 outside ``in_rows`` and past ``DX`` columns."""
        return tl.load(
            X + b * s[0] + h * s[1] + offs_m[:, None] * s[2] + offs_x[None, :] * s[3],
            mask=in_rows[:, None] & (offs_x[None, :] < DX),
            other=0.0,
        )

    @triton.jit
    def _store_rows(X, s, b, h, offs_m, in_rows, offs_x, DX, x):
        """`_rows`' store: ``x`` into rows ``offs_m`` of (b, h)'s matrix at ``X``, in its dtype."""
        tl.store(
            X + b * s[0] + h * s[1] + offs_m[:, None] * s[2] + offs_x[None, :] * s[3],
            x.to(X.dtype.element_ty),
            mask=in_rows[:, None] & (offs_x[None, :] < DX),
        )

    @triton.jit
    def _query_block(
        Q, sq, H, G, sizes, SLOPES, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_DV: tl.constexpr, HAS_ALIBI: tl.constexpr,
    ):  # fmt: skip
        """Where a program over (query block, batch x query head) starts: ``(qb, b, h, hk, slope2, offs_m,
        offs_n0, offs_d, offs_dv, in_rows, q)``, q ``(BLOCK_M, BLOCK_D)``."""
        qb, b, h = _program(H)
        hk = h // G  # grouped-query attention: query head h reads key head h // G
        slope2 = _slope2(SLOPES, h, HAS_ALIBI)
        offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n0 = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        in_rows = offs_m < sizes[0]
        q = _rows(Q, sq, b, h, offs_m, in_rows, offs_d, sizes[2])  # (BLOCK_M, BLOCK_D)
        return qb, b, h, hk, slope2, offs_m, offs_n0, offs_d, offs_dv, in_rows, q

    @triton.jit
    def _row_stats(LSE, DELTA, sl, b, h, offs_m, in_rows):
        """``(lse2, delta)`` of rows ``offs_m``: the log-sum-exp in base 2 and ``rowsum(dO * O)``."""
        lse = tl.load(LSE + b * sl[0] + h * sl[1] + offs_m, mask=in_rows, other=float("inf"))
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)  # no key: probabilities 0
        delta = tl.load(DELTA + b * sl[0] + h * sl[1] + offs_m, mask=in_rows, other=0.0)
        return lse2, delta

    @triton.jit
    def _lists(sn, si, b, h, block):
        """Where the tile lists of (b, h)'s ``block`` start: ``(lists, rows)``, offsets of its count and of its
        indices."""
        lists = b * sn[0] + h * sn[1] + block * sn[2]
        rows = b * si[0] + h * si[1] + block * si[2]
        return lists, rows

    @triton.jit
    def _tile_list(FULL_NUM, FULL_IDX, NUM, IDX, lists, rows, PARTIAL: tl.constexpr):
        """``(count, IDX_ptr)``: how many FULL tiles (PARTIAL ones with ``PARTIAL``) a program visits, and where
        their block indices start."""
        if PARTIAL:
            count = tl.load(NUM + lists)
            IDX_ptr = IDX + rows
        else:
            count = tl.load(FULL_NUM + lists)
            IDX_ptr = FULL_IDX + rows
        return count, IDX_ptr

    @triton.jit
    def _scores(
        q, start_n, offs_m, offs_n0, offs_d, K_head, sk, BIAS_row, sb, TILE_MASKS, TILE_INDEX_row, st, sizes, rule,
        slope2, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PARTIAL_TILE: tl.constexpr, HAS_BIAS: tl.constexpr,
        HAS_BAND: tl.constexpr, HAS_TILES: tl.constexpr, EVEN_N: tl.constexpr, PRECISION: tl.constexpr,
        SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
    ):  # fmt: skip
        """The tile's scores ``(BLOCK_M, BLOCK_N)`` in base 2 (-inf where it may not attend), and its keys
        ``(BLOCK_D, BLOCK_N)``. ``sizes``: ``(NQ, NK, D, DV)``; ``rule``: ``(qk_scale, OFFSET, BAND_LO, BAND_HI,
        CAP2)``; the strides ``sk``, ``sb``, ``st`` as the kernels take them."""
        NQ, NK, D = sizes[0], sizes[1], sizes[2]
        qk_scale, OFFSET, BAND_LO, BAND_HI, CAP2 = rule[0], rule[1], rule[2], rule[3], rule[4]
        offs_n = start_n + offs_n0
        in_keys = offs_n < NK
        k = tl.load(
            K_head + offs_n[None, :] * sk[2] + offs_d[:, None] * sk[3],
            mask=in_keys[None, :] & (offs_d[:, None] < D),
            other=0.0,
        )  # (BLOCK_D, BLOCK_N)
        s = tl.dot(q, k, input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        if HAS_BIAS:
            bias = tl.load(
                BIAS_row + offs_m[:, None] * sb[2] + offs_n[None, :] * sb[3],
                mask=(offs_m[:, None] < NQ) & in_keys[None, :],
                other=0.0,
            )
            s += bias.to(tl.float32) * 1.4426950408889634
        if HAS_ALIBI:  # score + slope_h * (j - i'), in base 2
            s += slope2 * (offs_n[None, :] - offs_m[:, None] - OFFSET).to(tl.float32)
        if SOFTCAP:  # cap * tanh(score / cap); in base 2 the cap is cap * log2(e)
            s = CAP2 * _tanh(s / CAP2)
        if PARTIAL_TILE:
            if HAS_BAND:
                d = offs_m[:, None] + OFFSET - offs_n[None, :]
                s = tl.where((d >= BAND_LO) & (d <= BAND_HI), s, float("-inf"))
            if HAS_TILES:
                which = tl.load(TILE_INDEX_row + (start_n // BLOCK_N) * st[3])
                local_m = tl.arange(0, BLOCK_M)
                tile = tl.maximum(which, 0).to(tl.int64)  # -1: none stored for this tile (the band alone masks it)
                offs_tile = local_m[:, None] * BLOCK_N + offs_n0[None, :]
                stored = tl.load(TILE_MASKS + tile * (BLOCK_M * BLOCK_N) + offs_tile)
                s = tl.where((stored != 0) | (which < 0), s, float("-inf"))
        if not EVEN_N:
            s = tl.where(in_keys[None, :], s, float("-inf"))
        return s, k

    @triton.jit
    def _dscores(s, p, dp, delta, CAP2, SOFTCAP: tl.constexpr):
        """The gradient of the (scaled, biased) scores, from ``dp = dO v^T``."""
        ds = p * (dp - delta[:, None])
        if SOFTCAP:  # through cap * tanh(x / cap): times 1 - tanh^2 (0 where masked)
            t = s / CAP2
            ds = ds * tl.where(s == float("-inf"), 0.0, 1.0 - t * t)
        return ds

    @triton.jit
    def _forward_tiles(
        acc, l_i, m_i, q, offs_m, offs_n0, offs_d, offs_dv, NUM_ptr, IDX_ptr, K_head, sk, V_head, sv, BIAS_row, sb,
        TILE_MASKS, TILE_INDEX_row, st, sizes, rule, slope2, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        PARTIAL_TILE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_BAND: tl.constexpr, HAS_TILES: tl.constexpr,
        EVEN_N: tl.constexpr, PRECISION: tl.constexpr, SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
    ):  # fmt: skip
        count = tl.load(NUM_ptr)
        for t in range(count):
            start_n = tl.load(IDX_ptr + t) * BLOCK_N
            s, _k = _scores(
                q, start_n, offs_m, offs_n0, offs_d, K_head, sk, BIAS_row, sb, TILE_MASKS, TILE_INDEX_row, st, sizes,
                rule, slope2, BLOCK_M, BLOCK_N, PARTIAL_TILE, HAS_BIAS, HAS_BAND, HAS_TILES, EVEN_N, PRECISION,
                SOFTCAP, HAS_ALIBI,
            )  # fmt: skip
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: nothing to rescale
            p = tl.math.exp2(s - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            offs_n = start_n + offs_n0
            v = tl.load(
                V_head + offs_n[:, None] * sv[2] + offs_dv[None, :] * sv[3],
                mask=(offs_n[:, None] < sizes[1]) & (offs_dv[None, :] < sizes[3]),
                other=0.0,
            )  # (BLOCK_N, BLOCK_DV)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        return acc, l_i, m_i

    # The kernels' strides are tuples, one a tensor: (b, h, row, column) of q, k, v, do, out and the gradients
    # (sq, sk, sv, sd, so, sg, su), of the bias and the score gradient (sb, ss), and of the tile index (st,
    # (b, h, query block, key block)); (b, h) of the lse and delta (sl); (b, h, block) of the lists' counts
    # (sn) and indices (si). ``sizes``: (NQ, NK, D, DV); ``rule``: the score rule's (qk_scale, OFFSET,
    # BAND_LO, BAND_HI, CAP2).

    @triton.jit
    def _forward(
        Q, K, V, OUT, LSE, BIAS, TILE_MASKS, TILE_INDEX, KV_NUM, KV_IDX, FULL_NUM, FULL_IDX,
        sq, sk, sv, so, sl, sb, sn, si, st, H, G, sizes, rule, SLOPES,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_BAND: tl.constexpr, HAS_TILES: tl.constexpr, EVEN_N: tl.constexpr,
        PRECISION: tl.constexpr, SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
    ):  # fmt: skip
        qb, b, h, hk, slope2, offs_m, offs_n0, offs_d, offs_dv, in_rows, q = _query_block(
            Q, sq, H, G, sizes, SLOPES, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, HAS_ALIBI
        )
        K_head = K + b * sk[0] + hk * sk[1]
        V_head = V + b * sv[0] + hk * sv[1]
        BIAS_row = BIAS + b * sb[0] + h * sb[1]
        TILE_INDEX_row = TILE_INDEX + b * st[0] + h * st[1] + qb * st[2]
        lists, rows = _lists(sn, si, b, h, qb)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
        acc, l_i, m_i = _forward_tiles(
            acc, l_i, m_i, q, offs_m, offs_n0, offs_d, offs_dv, FULL_NUM + lists, FULL_IDX + rows,
            K_head, sk, V_head, sv, BIAS_row, sb, TILE_MASKS, TILE_INDEX_row, st, sizes, rule, slope2,
            BLOCK_M, BLOCK_N, False, HAS_BIAS, HAS_BAND, HAS_TILES, EVEN_N, PRECISION, SOFTCAP, HAS_ALIBI,
        )  # fmt: skip
        acc, l_i, m_i = _forward_tiles(
            acc, l_i, m_i, q, offs_m, offs_n0, offs_d, offs_dv, KV_NUM + lists, KV_IDX + rows,
            K_head, sk, V_head, sv, BIAS_row, sb, TILE_MASKS, TILE_INDEX_row, st, sizes, rule, slope2,
            BLOCK_M, BLOCK_N, True, HAS_BIAS, HAS_BAND, HAS_TILES, EVEN_N, PRECISION, SOFTCAP, HAS_ALIBI,
        )  # fmt: skip
        empty = l_i == 0.0
        out = acc / tl.where(empty, 1.0, l_i)[:, None]
        lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
        _store_rows(OUT, so, b, h, offs_m, in_rows, offs_dv, sizes[3], out)
        tl.store(LSE + b * sl[0] + h * sl[1] + offs_m, lse, mask=in_rows)

    @triton.jit
    def _backward_dq(
        Q, K, V, DO, LSE, DELTA, DQ, DS, BIAS, TILE_MASKS, TILE_INDEX, KV_NUM, KV_IDX, FULL_NUM, FULL_IDX,
        sq, sk, sv, sd, sl, sb, ss, sn, si, st, sg, H, G, sizes, scale, rule, SLOPES,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_BAND: tl.constexpr, HAS_TILES: tl.constexpr, EVEN_N: tl.constexpr,
        PRECISION: tl.constexpr, SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, STORE_DS: tl.constexpr,
    ):  # fmt: skip
        qb, b, h, hk, slope2, offs_m, offs_n0, offs_d, offs_dv, in_rows, q = _query_block(
            Q, sq, H, G, sizes, SLOPES, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, HAS_ALIBI
        )
        do = _rows(DO, sd, b, h, offs_m, in_rows, offs_dv, sizes[3])  # (BLOCK_M, BLOCK_DV)
        lse2, delta = _row_stats(LSE, DELTA, sl, b, h, offs_m, in_rows)
        K_head = K + b * sk[0] + hk * sk[1]
        V_head = V + b * sv[0] + hk * sv[1]
        BIAS_row = BIAS + b * sb[0] + h * sb[1]
        DS_row = DS + b * ss[0] + h * ss[1]
        TILE_INDEX_row = TILE_INDEX + b * st[0] + h * st[1] + qb * st[2]
        lists, rows = _lists(sn, si, b, h, qb)
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for partial in tl.static_range(2):
            count, IDX_ptr = _tile_list(FULL_NUM, FULL_IDX, KV_NUM, KV_IDX, lists, rows, partial == 1)
            for t in range(count):
                start_n = tl.load(IDX_ptr + t) * BLOCK_N
                s, k = _scores(
                    q, start_n, offs_m, offs_n0, offs_d, K_head, sk, BIAS_row, sb, TILE_MASKS, TILE_INDEX_row, st,
                    sizes, rule, slope2, BLOCK_M, BLOCK_N, partial == 1, HAS_BIAS, HAS_BAND, HAS_TILES, EVEN_N,
                    PRECISION, SOFTCAP, HAS_ALIBI,
                )  # fmt: skip
                p = tl.math.exp2(s - lse2[:, None])  # (BLOCK_M, BLOCK_N)
                offs_n = start_n + offs_n0
                v = tl.load(
                    V_head + offs_n[None, :] * sv[2] + offs_dv[:, None] * sv[3],
                    mask=(offs_n[None, :] < sizes[1]) & (offs_dv[:, None] < sizes[3]),
                    other=0.0,
                )  # (BLOCK_DV, BLOCK_N)
                dp = tl.dot(do, v, input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
                ds = _dscores(s, p, dp, delta, rule[4], SOFTCAP)
                if STORE_DS:
                    tl.store(
                        DS_row + offs_m[:, None] * ss[2] + offs_n[None, :] * ss[3],
                        ds,
                        mask=in_rows[:, None] & (offs_n[None, :] < sizes[1]),
                    )
                dq += tl.dot(ds.to(k.dtype), tl.trans(k), input_precision=PRECISION)
        dq = dq * scale
        _store_rows(DQ, sg, b, h, offs_m, in_rows, offs_d, sizes[2], dq)

    @triton.jit
    def _backward_dkdv(
        Q, K, V, DO, LSE, DELTA, DK, DV_out, BIAS, TILE_MASKS, TILE_INDEX, Q_NUM, Q_IDX, FULL_NUM, FULL_IDX,
        sq, sk, sv, sd, sl, sb, sn, si, st, sg, su, HKV, G, sizes, scale, rule, SLOPES,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_BAND: tl.constexpr, HAS_TILES: tl.constexpr,
        EVEN_N: tl.constexpr, PRECISION: tl.constexpr, SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
    ):  # fmt: skip
        kb, b, hk = _program(HKV)
        start_n = kb * BLOCK_N
        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_n0 = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        offs_m0 = tl.arange(0, BLOCK_M)
        in_keys = offs_n < sizes[1]
        K_head = K + b * sk[0] + hk * sk[1]
        v = tl.load(
            V + b * sv[0] + hk * sv[1] + offs_n[None, :] * sv[2] + offs_dv[:, None] * sv[3],
            mask=in_keys[None, :] & (offs_dv[:, None] < sizes[3]),
            other=0.0,
        )  # (BLOCK_DV, BLOCK_N)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
        for g in range(G):
            h = hk * G + g  # every query head of the group reads this key head
            slope2 = _slope2(SLOPES, h, HAS_ALIBI)
            BIAS_row = BIAS + b * sb[0] + h * sb[1]
            lists, rows = _lists(sn, si, b, h, kb)
            for partial in tl.static_range(2):
                count, IDX_ptr = _tile_list(FULL_NUM, FULL_IDX, Q_NUM, Q_IDX, lists, rows, partial == 1)
                for t in range(count):
                    qb = tl.load(IDX_ptr + t)
                    offs_m = qb * BLOCK_M + offs_m0
                    in_rows = offs_m < sizes[0]
                    q = _rows(Q, sq, b, h, offs_m, in_rows, offs_d, sizes[2])  # (BLOCK_M, BLOCK_D)
                    do = _rows(DO, sd, b, h, offs_m, in_rows, offs_dv, sizes[3])  # (BLOCK_M, BLOCK_DV)
                    lse2, delta = _row_stats(LSE, DELTA, sl, b, h, offs_m, in_rows)
                    TILE_INDEX_row = TILE_INDEX + b * st[0] + h * st[1] + qb * st[2]
                    s, _k = _scores(
                        q, start_n, offs_m, offs_n0, offs_d, K_head, sk, BIAS_row, sb, TILE_MASKS, TILE_INDEX_row,
                        st, sizes, rule, slope2, BLOCK_M, BLOCK_N, partial == 1, HAS_BIAS, HAS_BAND, HAS_TILES,
                        EVEN_N, PRECISION, SOFTCAP, HAS_ALIBI,
                    )  # fmt: skip
                    p = tl.math.exp2(s - lse2[:, None])  # (BLOCK_M, BLOCK_N)
                    dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)  # (BLOCK_N, BLOCK_DV)
                    dp = tl.dot(do, v, input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
                    ds = _dscores(s, p, dp, delta, rule[4], SOFTCAP)
                    dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)  # (BLOCK_N, BLOCK_D)
        dk = dk * scale
        _store_rows(DK, sg, b, hk, offs_n, in_keys, offs_d, sizes[2], dk)
        _store_rows(DV_out, su, b, hk, offs_n, in_keys, offs_dv, sizes[3], dv)


@contextlib.contextmanager
def _launching() -> Iterator[None]:
    """Kernels defined under the interpreter launch under it too (triton reads the variable again at launch)."""
    if not INTERPRETED or os.environ.get("TRITON_INTERPRET") == "1":
        yield
        return
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


def padded(n: int) -> int:
    """A head dimension padded to a power of two, at least 16 (what ``tl.dot`` takes)."""
    return max(16, 1 << max(0, math.ceil(math.log2(max(1, n)))))


def _plan_args(plan: TilePlan, b: int, h: int, forward: bool) -> tuple[list[Tensor], list[tuple[int, ...]]]:
    """The kernels' plan arrays, expanded over ``(B, H)`` (stride 0 where the plan is shared), and the strides
    ``sn, si`` (``(b, h, block)`` of the counts and of the indices)."""
    if forward:
        arrays = [plan.kv_num_blocks, plan.kv_indices, plan.full_kv_num_blocks, plan.full_kv_indices]
    else:
        arrays = [plan.q_num_blocks, plan.q_indices, plan.full_q_num_blocks, plan.full_q_indices]
    arrays = [a.expand(b, h, *a.shape[2:]) for a in arrays]
    strides = [arrays[0].stride(), arrays[1].stride()[:3]]
    assert arrays[0].stride() == arrays[2].stride(), "both lists of a plan share their strides"
    assert arrays[1].stride()[:3] == arrays[3].stride()[:3] and (arrays[1].shape[3] == 1 or arrays[1].stride(3) == 1)
    return arrays, strides


def _tile_args(plan: TilePlan, b: int, h: int, device: torch.device) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    if plan.tile_masks is None or plan.tile_index is None:
        dummy = torch.zeros(1, dtype=torch.int8, device=device)
        return dummy, torch.full((1,), -1, dtype=torch.int32, device=device), (0, 0, 0, 0)
    index = plan.tile_index.expand(b, h, *plan.tile_index.shape[2:])
    return plan.tile_masks, index, index.stride()


def _bias_args(
    bias: Tensor | None, shape: tuple[int, int, int, int], device: torch.device
) -> tuple[Tensor, tuple[int, ...]]:
    if bias is None:
        return torch.zeros(1, dtype=torch.float32, device=device), (0, 0, 0, 0)
    full = bias.expand(*shape)  # (B, Hq, Nq, Nk), stride 0 where the bias broadcasts
    return full, full.stride()


def _rule_args(
    plan: TilePlan, scale: float, nq: int, nk: int, softcap: float | None
) -> tuple[float, int, int, int, float]:
    """``rule``: ``(qk_scale, OFFSET, BAND_LO, BAND_HI, CAP2)``, the scale and the cap in base 2 (0: none)."""
    lo, hi = (plan.band.lo, plan.band.hi) if plan.band is not None else (-NO_BOUND, NO_BOUND)
    return scale * LOG2E, nk - nq, lo, hi, 0.0 if softcap is None else softcap * LOG2E


def _slopes_arg(slopes: Tensor | None, device: torch.device) -> Tensor:
    """``SLOPES``: the ALiBi slopes (a dummy where none)."""
    if slopes is None:
        return torch.zeros(1, dtype=torch.float32, device=device)
    return slopes.to(device=device, dtype=torch.float32).contiguous()


def _launch_options(
    q: Tensor, plan: TilePlan, nk: int, bias: Tensor | None, softcap: float | None, slopes: Tensor | None
) -> dict[str, object]:
    """The compile-time options every kernel of a call takes."""
    return {
        "SOFTCAP": softcap is not None, "HAS_ALIBI": slopes is not None,
        "BLOCK_M": plan.block_m, "BLOCK_N": plan.block_n, "BLOCK_D": padded(q.shape[-1]),
        "HAS_BIAS": bias is not None, "HAS_BAND": plan.band is not None, "HAS_TILES": plan.tile_masks is not None,
        "EVEN_N": nk % plan.block_n == 0, "PRECISION": "ieee" if q.dtype == torch.float32 else "tf32",
    }  # fmt: skip


def launch_config(head_dim: int) -> dict[str, int]:
    """The warps per program and the software pipeline's stages of every kernel of a call.

    Measured on an H200 (scripts/triton_sweep.py, D = 128, bfloat16): 4 warps ran dense attention
    1.4x faster forward and 1.9x forward + backward than 8; 128-row tiles need more shared memory
    than an sm90 GPU has (247,808 bytes of 232,448)."""
    return {"num_warps": 4, "num_stages": 3}


def forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None,
    plan: TilePlan,
    scale: float,
    softcap: float | None = None,
    slopes: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``(out (B, Hq, Nq, Dv) in q's dtype, lse (B, Hq, Nq) float32)``; ``softcap`` caps the scores
    (``cap * tanh(score / cap)``), ``slopes (Hq,)`` adds ALiBi's ``slope_h * (j - i')``."""
    b, hq, nq, d = q.shape
    hkv, nk, dv = k.shape[1], k.shape[2], v.shape[3]
    out = torch.empty(b, hq, nq, dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, hq, nq, dtype=torch.float32, device=q.device)
    lists, list_strides = _plan_args(plan, b, hq, forward=True)
    tile_masks, tile_index, tile_strides = _tile_args(plan, b, hq, q.device)
    bias_t, bias_strides = _bias_args(bias, (b, hq, nq, nk), q.device)
    grid = (math.ceil(nq / plan.block_m), b * hq)
    with _launching():
        _forward[grid](
            q, k, v, out, lse, bias_t, tile_masks, tile_index, *lists,
            q.stride(), k.stride(), v.stride(), out.stride(), lse.stride()[:2], bias_strides, *list_strides,
            tile_strides, hq, hq // hkv, (nq, nk, d, dv), _rule_args(plan, scale, nq, nk, softcap),
            _slopes_arg(slopes, q.device),
            BLOCK_DV=padded(dv), **launch_config(max(d, dv)),
            **_launch_options(q, plan, nk, bias, softcap, slopes),
        )  # fmt: skip
    return out, lse


def backward(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, plan: TilePlan, scale: float, out: Tensor, lse: Tensor,
    grad_out: Tensor, grad_lse: Tensor | None, bias_grad: bool, softcap: float | None = None,
    slopes: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:  # fmt: skip
    """``(dq, dk, dv, dscores)``; dscores ``(B, Hq, Nq, Nk)`` float32 (zero outside visited tiles) only with
    ``bias_grad``."""
    b, hq, nq, d = q.shape
    hkv, nk, dv_dim = k.shape[1], k.shape[2], v.shape[3]
    delta = (grad_out.float() * out.float()).sum(-1)  # (B, Hq, Nq): rowsum(dO * O)
    if grad_lse is not None:
        delta = delta - grad_lse.float()  # d lse / d s = p: folded into delta
    delta = delta.contiguous()
    lse = lse.contiguous()
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    ds = torch.zeros(b, hq, nq, nk, dtype=torch.float32, device=q.device) if bias_grad else None
    ds_arg = ds if ds is not None else torch.zeros(1, dtype=torch.float32, device=q.device)
    ds_strides = ds.stride() if ds is not None else (0, 0, 0, 0)
    tile_masks, tile_index, tile_strides = _tile_args(plan, b, hq, q.device)
    bias_t, bias_strides = _bias_args(bias, (b, hq, nq, nk), q.device)
    options = _launch_options(q, plan, nk, bias, softcap, slopes)
    rule, slopes_t = _rule_args(plan, scale, nq, nk, softcap), _slopes_arg(slopes, q.device)
    common = (hq // hkv, (nq, nk, d, dv_dim), scale, rule, slopes_t)
    lists, list_strides = _plan_args(plan, b, hq, forward=True)
    with _launching():
        _backward_dq[(math.ceil(nq / plan.block_m), b * hq)](
            q, k, v, grad_out, lse, delta, dq, ds_arg, bias_t, tile_masks, tile_index, *lists,
            q.stride(), k.stride(), v.stride(), grad_out.stride(), lse.stride()[:2], bias_strides, ds_strides,
            *list_strides, tile_strides, dq.stride(), hq, *common,
            BLOCK_DV=padded(dv_dim), STORE_DS=ds is not None, **launch_config(max(d, dv_dim)), **options,
        )  # fmt: skip
    lists, list_strides = _plan_args(plan, b, hq, forward=False)
    with _launching():
        _backward_dkdv[(math.ceil(nk / plan.block_n), b * hkv)](
            q, k, v, grad_out, lse, delta, dk, dv, bias_t, tile_masks, tile_index, *lists,
            q.stride(), k.stride(), v.stride(), grad_out.stride(), lse.stride()[:2], bias_strides,
            *list_strides, tile_strides, dk.stride(), dv.stride(), hkv, *common,
            BLOCK_DV=padded(dv_dim), **launch_config(max(d, dv_dim)), **options,
        )  # fmt: skip
    return dq, dk, dv, ds
