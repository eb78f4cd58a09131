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

import collections
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

    # A call's compile-time choices (the kernels' constexpr arguments), handed to the helpers in one piece; STORE_DS
    # (keep the score gradient) is _backward_dq's alone.
    _Options = collections.namedtuple(
        "_Options", "BLOCK_M BLOCK_N BLOCK_D HAS_BIAS HAS_BAND HAS_TILES EVEN_N PRECISION SOFTCAP HAS_ALIBI STORE_DS"
    )
    # What the score rule reads for one (batch, query head): its key head (keys at K + n * skn + d * skd), its
    # bias (BIAS + i * sbm + j * sbn), the stored tile masks and its tile index (TILE_INDEX + qb * stm + kb * stn),
    # the sizes and the modifiers (slope2: its ALiBi slope in base 2).
    _Head = collections.namedtuple(
        "_Head",
        "K skn skd BIAS sbm sbn TILE_MASKS TILE_INDEX stm stn NQ NK D qk_scale OFFSET BAND_LO BAND_HI CAP2 slope2",
    )

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
        """``(block, b, h)`` of this program: its block is axis 0, ``b * H + h`` axis 1 (b and h 64-bit: offsets
        into tensors past 2^31 elements)."""
        bh = tl.program_id(1)
        return tl.program_id(0), (bh // H).to(tl.int64), (bh % H).to(tl.int64)

    @triton.jit
    def _rows(X, sxm, sxd, offs_m, NX, DX, BLOCK_X: tl.constexpr):
        """Rows ``offs_m`` of the matrix at ``X``: ``(len(offs_m), BLOCK_X)``, 0 past ``NX`` rows and ``DX`` columns."""
        offs_x = tl.arange(0, BLOCK_X)
        return tl.load(
            X + offs_m[:, None] * sxm + offs_x[None, :] * sxd,
            mask=(offs_m[:, None] < NX) & (offs_x[None, :] < DX),
            other=0.0,
        )

    @triton.jit
    def _cols(X, sxn, sxd, offs_n, NX, DX, BLOCK_X: tl.constexpr):
        """Rows ``offs_n`` of the matrix at ``X`` as columns ``(BLOCK_X, len(offs_n))`` (keys and values for a dot)."""
        offs_x = tl.arange(0, BLOCK_X)
        return tl.load(
            X + offs_n[None, :] * sxn + offs_x[:, None] * sxd,
            mask=(offs_n[None, :] < NX) & (offs_x[:, None] < DX),
            other=0.0,
        )

    @triton.jit
    def _head(
        b, h, hk, K, skb, skh, skn, skd, BIAS, sbb, sbh, sbm, sbn, TILE_MASKS, TILE_INDEX, stb, sth, stm, stn,
        NQ, NK, D, qk_scale, OFFSET, BAND_LO, BAND_HI, CAP2, SLOPES, HAS_ALIBI: tl.constexpr,
    ):  # fmt: skip
        """The `_Head` of batch ``b``, query head ``h``, which reads key head ``hk``."""
        slope2 = 0.0
        if HAS_ALIBI:
            slope2 = tl.load(SLOPES + h) * 1.4426950408889634
        return _Head(
            K + b * skb + hk * skh, skn, skd, BIAS + b * sbb + h * sbh, sbm, sbn,
            TILE_MASKS, TILE_INDEX + b * stb + h * sth, stm, stn,
            NQ, NK, D, qk_scale, OFFSET, BAND_LO, BAND_HI, CAP2, slope2,
        )  # fmt: skip

    @triton.jit
    def _query_block(
        Q, sqb, sqh, sqm, sqd, K, skb, skh, skn, skd, BIAS, sbb, sbh, sbm, sbn,
        TILE_MASKS, TILE_INDEX, stb, sth, stm, stn, H, G, NQ, NK, D, qk_scale, OFFSET, BAND_LO, BAND_HI, CAP2, SLOPES,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HAS_ALIBI: tl.constexpr,
    ):  # fmt: skip
        """What a program over (query block, batch x query head) starts from: ``(qb, b, h, offs_m, q, head)``,
        q ``(BLOCK_M, BLOCK_D)``; grouped-query attention: query head h reads key head h // G."""
        qb, b, h = _program(H)
        head = _head(
            b, h, h // G, K, skb, skh, skn, skd, BIAS, sbb, sbh, sbm, sbn, TILE_MASKS, TILE_INDEX, stb, sth, stm, stn,
            NQ, NK, D, qk_scale, OFFSET, BAND_LO, BAND_HI, CAP2, SLOPES, HAS_ALIBI,
        )  # fmt: skip
        offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
        q = _rows(Q + b * sqb + h * sqh, sqm, sqd, offs_m, NQ, D, BLOCK_D)
        return qb, b, h, offs_m, q, head

    @triton.jit
    def _tile_list(FULL_NUM, FULL_IDX, NUM, IDX, lists, rows, PARTIAL: tl.constexpr):
        """``(count, IDX_ptr)``: how many FULL tiles (PARTIAL ones with ``PARTIAL``) a program visits and where
        their block indices start."""
        if PARTIAL:
            count = tl.load(NUM + lists)
            IDX_ptr = IDX + rows
        else:
            count = tl.load(FULL_NUM + lists)
            IDX_ptr = FULL_IDX + rows
        return count, IDX_ptr

    @triton.jit
    def _row_stats(LSE, DELTA, offs_m, NQ):
        """The backward pass's ``(lse2, delta)`` of rows ``offs_m``: the log-sum-exp in base 2 (+inf where a row
        has no key: its probabilities are 0) and ``rowsum(dO * O)``."""
        in_rows = offs_m < NQ
        lse = tl.load(LSE + offs_m, mask=in_rows, other=float("inf"))
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
        return lse2, tl.load(DELTA + offs_m, mask=in_rows, other=0.0)

    @triton.jit
    def _scores(q, qb, start_n, head, PARTIAL_TILE: tl.constexpr, opts):
        """The scores ``(BLOCK_M, BLOCK_N)`` of query block ``qb`` against the keys from ``start_n``, in base 2
        (-inf where it may not attend), and those keys ``(BLOCK_D, BLOCK_N)``."""
        offs_m = qb * opts.BLOCK_M + tl.arange(0, opts.BLOCK_M)
        offs_n0 = tl.arange(0, opts.BLOCK_N)
        offs_n = start_n + offs_n0
        k = _cols(head.K, head.skn, head.skd, offs_n, head.NK, head.D, opts.BLOCK_D)  # (BLOCK_D, BLOCK_N)
        s = tl.dot(q, k, input_precision=opts.PRECISION) * head.qk_scale  # (BLOCK_M, BLOCK_N)
        if opts.HAS_BIAS:
            bias = tl.load(
                head.BIAS + offs_m[:, None] * head.sbm + offs_n[None, :] * head.sbn,
                mask=(offs_m[:, None] < head.NQ) & (offs_n[None, :] < head.NK),
                other=0.0,
            )
            s += bias.to(tl.float32) * 1.4426950408889634
        if opts.HAS_ALIBI:  # score + slope_h * (j - i'), in base 2
            s += head.slope2 * (offs_n[None, :] - offs_m[:, None] - head.OFFSET).to(tl.float32)
        if opts.SOFTCAP:  # cap * tanh(score / cap); in base 2 the cap is cap * log2(e)
            s = head.CAP2 * _tanh(s / head.CAP2)
        if PARTIAL_TILE:
            if opts.HAS_BAND:
                d = offs_m[:, None] + head.OFFSET - offs_n[None, :]
                s = tl.where((d >= head.BAND_LO) & (d <= head.BAND_HI), s, float("-inf"))
            if opts.HAS_TILES:
                which = tl.load(head.TILE_INDEX + qb * head.stm + (start_n // opts.BLOCK_N) * head.stn)
                local_m = tl.arange(0, opts.BLOCK_M)
                tile = tl.maximum(which, 0).to(tl.int64)  # -1: none stored for this tile (the band alone masks it)
                offs_tile = local_m[:, None] * opts.BLOCK_N + offs_n0[None, :]
                stored = tl.load(head.TILE_MASKS + tile * (opts.BLOCK_M * opts.BLOCK_N) + offs_tile)
                s = tl.where((stored != 0) | (which < 0), s, float("-inf"))
        if not opts.EVEN_N:
            s = tl.where(offs_n[None, :] < head.NK, s, float("-inf"))
        return s, k

    @triton.jit
    def _dscores(s, p, dp, delta, CAP2, SOFTCAP: tl.constexpr):
        """The gradient of the (scaled, biased) scores, from ``dp = dO vᵀ``; through ``cap * tanh(x / cap)`` it is
        times ``1 - tanh²`` (0 where masked)."""
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            t = s / CAP2
            ds = ds * tl.where(s == float("-inf"), 0.0, 1.0 - t * t)
        return ds

    @triton.jit
    def _forward(
        Q, K, V, OUT, LSE, BIAS, TILE_MASKS, TILE_INDEX, KV_NUM, KV_IDX, FULL_NUM, FULL_IDX,
        sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod, slb, slh,
        sbb, sbh, sbm, sbn, snb, snh, snm, sib, sih, sim, stb, sth, stm, stn,
        H, G, NQ, NK, D, DV, qk_scale, OFFSET, BAND_LO, BAND_HI, CAP2, SLOPES,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_BAND: tl.constexpr, HAS_TILES: tl.constexpr, EVEN_N: tl.constexpr,
        PRECISION: tl.constexpr, SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
    ):  # fmt: skip
        opts: tl.constexpr = _Options(
            BLOCK_M, BLOCK_N, BLOCK_D, HAS_BIAS, HAS_BAND, HAS_TILES, EVEN_N, PRECISION, SOFTCAP, HAS_ALIBI, False
        )
        qb, b, h, offs_m, q, head = _query_block(
            Q, sqb, sqh, sqm, sqd, K, skb, skh, skn, skd, BIAS, sbb, sbh, sbm, sbn, TILE_MASKS, TILE_INDEX, stb, sth,
            stm, stn, H, G, NQ, NK, D, qk_scale, OFFSET, BAND_LO, BAND_HI, CAP2, SLOPES, BLOCK_M, BLOCK_D, HAS_ALIBI,
        )  # fmt: skip
        V_head = V + b * svb + (h // G) * svh
        lists = b * snb + h * snh + qb * snm
        rows = b * sib + h * sih + qb * sim
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
        for partial in tl.static_range(2):  # the FULL tiles (no mask), then the PARTIAL ones
            count, IDX_ptr = _tile_list(FULL_NUM, FULL_IDX, KV_NUM, KV_IDX, lists, rows, partial == 1)
            for t in range(count):
                start_n = tl.load(IDX_ptr + t) * BLOCK_N
                s, _k = _scores(q, qb, start_n, head, partial == 1, opts)
                m_new = tl.maximum(m_i, tl.max(s, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: nothing to rescale
                p = tl.math.exp2(s - m_safe[:, None])
                alpha = tl.math.exp2(m_i - m_safe)
                v = _rows(V_head, svn, svd, start_n + tl.arange(0, BLOCK_N), NK, DV, BLOCK_DV)  # (BLOCK_N, BLOCK_DV)
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
                m_i = m_new
        empty = l_i == 0.0
        out = acc / tl.where(empty, 1.0, l_i)[:, None]
        lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
        in_rows = offs_m < NQ
        offs_dv = tl.arange(0, BLOCK_DV)
        tl.store(
            OUT + b * sob + h * soh + offs_m[:, None] * som + offs_dv[None, :] * sod,
            out.to(OUT.dtype.element_ty),
            mask=in_rows[:, None] & (offs_dv[None, :] < DV),
        )
        tl.store(LSE + b * slb + h * slh + offs_m, lse, mask=in_rows)

    @triton.jit
    def _backward_dq(
        Q, K, V, DO, LSE, DELTA, DQ, DS, BIAS, TILE_MASKS, TILE_INDEX, KV_NUM, KV_IDX, FULL_NUM, FULL_IDX,
        sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdm, sdd, slb, slh,
        sbb, sbh, sbm, sbn, ssb, ssh, ssm, ssn, snb, snh, snm, sib, sih, sim, stb, sth, stm, stn,
        sgb, sgh, sgm, sgd, H, G, NQ, NK, D, DV, scale, qk_scale, OFFSET, BAND_LO, BAND_HI, CAP2, SLOPES,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_BAND: tl.constexpr, HAS_TILES: tl.constexpr, EVEN_N: tl.constexpr,
        PRECISION: tl.constexpr, SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, STORE_DS: tl.constexpr,
    ):  # fmt: skip
        opts: tl.constexpr = _Options(
            BLOCK_M, BLOCK_N, BLOCK_D, HAS_BIAS, HAS_BAND, HAS_TILES, EVEN_N, PRECISION, SOFTCAP, HAS_ALIBI, STORE_DS
        )
        qb, b, h, offs_m, q, head = _query_block(
            Q, sqb, sqh, sqm, sqd, K, skb, skh, skn, skd, BIAS, sbb, sbh, sbm, sbn, TILE_MASKS, TILE_INDEX, stb, sth,
            stm, stn, H, G, NQ, NK, D, qk_scale, OFFSET, BAND_LO, BAND_HI, CAP2, SLOPES, BLOCK_M, BLOCK_D, HAS_ALIBI,
        )  # fmt: skip
        do = _rows(DO + b * sdb + h * sdh, sdm, sdd, offs_m, NQ, DV, BLOCK_DV)  # (BLOCK_M, BLOCK_DV)
        lse2, delta = _row_stats(LSE + b * slb + h * slh, DELTA + b * slb + h * slh, offs_m, NQ)
        V_head = V + b * svb + (h // G) * svh
        DS_row = DS + b * ssb + h * ssh
        lists = b * snb + h * snh + qb * snm
        rows = b * sib + h * sih + qb * sim
        in_rows = offs_m < NQ
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for partial in tl.static_range(2):
            count, IDX_ptr = _tile_list(FULL_NUM, FULL_IDX, KV_NUM, KV_IDX, lists, rows, partial == 1)
            for t in range(count):
                start_n = tl.load(IDX_ptr + t) * BLOCK_N
                s, k = _scores(q, qb, start_n, head, partial == 1, opts)
                p = tl.math.exp2(s - lse2[:, None])  # (BLOCK_M, BLOCK_N)
                offs_n = start_n + tl.arange(0, BLOCK_N)
                v = _cols(V_head, svn, svd, offs_n, NK, DV, BLOCK_DV)  # (BLOCK_DV, BLOCK_N)
                dp = tl.dot(do, v, input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
                ds = _dscores(s, p, dp, delta, CAP2, SOFTCAP)
                if opts.STORE_DS:
                    tl.store(
                        DS_row + offs_m[:, None] * ssm + offs_n[None, :] * ssn,
                        ds,
                        mask=in_rows[:, None] & (offs_n[None, :] < NK),
                    )
                dq += tl.dot(ds.to(k.dtype), tl.trans(k), input_precision=PRECISION)
        dq = dq * scale
        offs_d = tl.arange(0, BLOCK_D)
        tl.store(
            DQ + b * sgb + h * sgh + offs_m[:, None] * sgm + offs_d[None, :] * sgd,
            dq.to(DQ.dtype.element_ty),
            mask=in_rows[:, None] & (offs_d[None, :] < D),
        )

    @triton.jit
    def _backward_dkdv(
        Q, K, V, DO, LSE, DELTA, DK, DV_out, BIAS, TILE_MASKS, TILE_INDEX, Q_NUM, Q_IDX, FULL_NUM, FULL_IDX,
        sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdm, sdd, slb, slh,
        sbb, sbh, sbm, sbn, snb, snh, snm, sib, sih, sim, stb, sth, stm, stn,
        sgb, sgh, sgn, sgd, sub, suh, sun, sud, HKV, G, NQ, NK, D, DV, scale, qk_scale, OFFSET, BAND_LO, BAND_HI,
        CAP2, SLOPES, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_BAND: tl.constexpr, HAS_TILES: tl.constexpr, EVEN_N: tl.constexpr,
        PRECISION: tl.constexpr, SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
    ):  # fmt: skip
        opts: tl.constexpr = _Options(
            BLOCK_M, BLOCK_N, BLOCK_D, HAS_BIAS, HAS_BAND, HAS_TILES, EVEN_N, PRECISION, SOFTCAP, HAS_ALIBI, False
        )
        kb, b, hk = _program(HKV)
        start_n = kb * BLOCK_N
        offs_n = start_n + tl.arange(0, BLOCK_N)
        v = _cols(V + b * svb + hk * svh, svn, svd, offs_n, NK, DV, BLOCK_DV)  # (BLOCK_DV, BLOCK_N)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
        for g in range(G):
            h = hk * G + g  # every query head of the group reads this key head
            head = _head(
                b, h, hk, K, skb, skh, skn, skd, BIAS, sbb, sbh, sbm, sbn, TILE_MASKS, TILE_INDEX, stb, sth, stm, stn,
                NQ, NK, D, qk_scale, OFFSET, BAND_LO, BAND_HI, CAP2, SLOPES, HAS_ALIBI,
            )  # fmt: skip
            lists = b * snb + h * snh + kb * snm
            rows = b * sib + h * sih + kb * sim
            for partial in tl.static_range(2):
                count, IDX_ptr = _tile_list(FULL_NUM, FULL_IDX, Q_NUM, Q_IDX, lists, rows, partial == 1)
                for t in range(count):
                    qb = tl.load(IDX_ptr + t)
                    offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
                    q = _rows(Q + b * sqb + h * sqh, sqm, sqd, offs_m, NQ, D, BLOCK_D)  # (BLOCK_M, BLOCK_D)
                    do = _rows(DO + b * sdb + h * sdh, sdm, sdd, offs_m, NQ, DV, BLOCK_DV)  # (BLOCK_M, BLOCK_DV)
                    lse2, delta = _row_stats(LSE + b * slb + h * slh, DELTA + b * slb + h * slh, offs_m, NQ)
                    s, _k = _scores(q, qb, start_n, head, partial == 1, opts)
                    p = tl.math.exp2(s - lse2[:, None])  # (BLOCK_M, BLOCK_N)
                    dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)  # (BLOCK_N, BLOCK_DV)
                    dp = tl.dot(do, v, input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
                    ds = _dscores(s, p, dp, delta, CAP2, SOFTCAP)
                    dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)  # (BLOCK_N, BLOCK_D)
        dk = dk * scale
        in_keys = offs_n < NK
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        tl.store(
            DK + b * sgb + hk * sgh + offs_n[:, None] * sgn + offs_d[None, :] * sgd,
            dk.to(DK.dtype.element_ty),
            mask=in_keys[:, None] & (offs_d[None, :] < D),
        )
        tl.store(
            DV_out + b * sub + hk * suh + offs_n[:, None] * sun + offs_dv[None, :] * sud,
            dv.to(DV_out.dtype.element_ty),
            mask=in_keys[:, None] & (offs_dv[None, :] < DV),
        )


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


def _plan_args(plan: TilePlan, b: int, h: int, forward: bool) -> tuple[list[Tensor], list[int]]:
    """The kernels' plan arrays, expanded over ``(B, H)`` (stride 0 where the plan is shared), and their strides."""
    if forward:
        arrays = [plan.kv_num_blocks, plan.kv_indices, plan.full_kv_num_blocks, plan.full_kv_indices]
    else:
        arrays = [plan.q_num_blocks, plan.q_indices, plan.full_q_num_blocks, plan.full_q_indices]
    arrays = [a.expand(b, h, *a.shape[2:]) for a in arrays]
    strides = [*arrays[0].stride(), *arrays[1].stride()[:3]]
    assert arrays[0].stride() == arrays[2].stride(), "both lists of a plan share their strides"
    assert arrays[1].stride()[:3] == arrays[3].stride()[:3] and (arrays[1].shape[3] == 1 or arrays[1].stride(3) == 1)
    return arrays, strides


def _tile_args(plan: TilePlan, b: int, h: int, device: torch.device) -> tuple[Tensor, Tensor, list[int]]:
    if plan.tile_masks is None or plan.tile_index is None:
        dummy = torch.zeros(1, dtype=torch.int8, device=device)
        return dummy, torch.full((1,), -1, dtype=torch.int32, device=device), [0, 0, 0, 0]
    index = plan.tile_index.expand(b, h, *plan.tile_index.shape[2:])
    return plan.tile_masks, index, list(index.stride())


def _bias_args(bias: Tensor | None, shape: tuple[int, int, int, int], device: torch.device) -> tuple[Tensor, list[int]]:
    if bias is None:
        return torch.zeros(1, dtype=torch.float32, device=device), [0, 0, 0, 0]
    full = bias.expand(*shape)  # (B, Hq, Nq, Nk), stride 0 where the bias broadcasts
    return full, list(full.stride())


def _band_args(plan: TilePlan) -> tuple[int, int]:
    return (plan.band.lo, plan.band.hi) if plan.band is not None else (-NO_BOUND, NO_BOUND)


def _mod_args(softcap: float | None, slopes: Tensor | None, device: torch.device) -> list[object]:
    """``CAP2, SLOPES``: the cap in base 2 (0: none) and the ALiBi slopes (a dummy where none)."""
    cap2 = 0.0 if softcap is None else softcap * LOG2E
    if slopes is None:
        return [cap2, torch.zeros(1, dtype=torch.float32, device=device)]
    return [cap2, slopes.to(device=device, dtype=torch.float32).contiguous()]


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
    lo, hi = _band_args(plan)
    grid = (math.ceil(nq / plan.block_m), b * hq)
    with _launching():
        _forward[grid](
            q, k, v, out, lse, bias_t, tile_masks, tile_index, *lists,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride()[:2], *bias_strides,
            *list_strides, *tile_strides,
            hq, hq // hkv, nq, nk, d, dv, scale * LOG2E, nk - nq, lo, hi, *_mod_args(softcap, slopes, q.device),
            BLOCK_DV=padded(dv), **launch_config(max(d, dv)),
            **_launch_options(q, plan, nk, bias, softcap, slopes),
        )  # fmt: skip
    return out, lse


def backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None,
    plan: TilePlan,
    scale: float,
    out: Tensor,
    lse: Tensor,
    grad_out: Tensor,
    grad_lse: Tensor | None,
    bias_grad: bool,
    softcap: float | None = None,
    slopes: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
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
    ds_strides = list(ds.stride()) if ds is not None else [0, 0, 0, 0]
    tile_masks, tile_index, tile_strides = _tile_args(plan, b, hq, q.device)
    bias_t, bias_strides = _bias_args(bias, (b, hq, nq, nk), q.device)
    lo, hi = _band_args(plan)
    options = _launch_options(q, plan, nk, bias, softcap, slopes)
    mod_args = _mod_args(softcap, slopes, q.device)
    common = (hq // hkv, nq, nk, d, dv_dim, scale, scale * LOG2E, nk - nq, lo, hi, *mod_args)
    lists, list_strides = _plan_args(plan, b, hq, forward=True)
    with _launching():
        _backward_dq[(math.ceil(nq / plan.block_m), b * hq)](
            q, k, v, grad_out, lse, delta, dq, ds_arg, bias_t, tile_masks, tile_index, *lists,
            *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *lse.stride()[:2], *bias_strides, *ds_strides,
            *list_strides, *tile_strides, *dq.stride(), hq, *common,
            BLOCK_DV=padded(dv_dim), STORE_DS=ds is not None, **launch_config(max(d, dv_dim)), **options,
        )  # fmt: skip
    lists, list_strides = _plan_args(plan, b, hq, forward=False)
    with _launching():
        _backward_dkdv[(math.ceil(nk / plan.block_n), b * hkv)](
            q, k, v, grad_out, lse, delta, dk, dv, bias_t, tile_masks, tile_index, *lists,
            *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *lse.stride()[:2], *bias_strides,
            *list_strides, *tile_strides, *dk.stride(), *dv.stride(), hkv, *common,
            BLOCK_DV=padded(dv_dim), **launch_config(max(d, dv_dim)), **options,
        )  # fmt: skip
    return dq, dk, dv, ds
