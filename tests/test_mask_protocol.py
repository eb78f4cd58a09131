"""A mask or a score mod of one's own, written against the public protocol, works where the built-ins work.

The user-defined classes below implement only public methods (``rule``, ``check``,
``classify_tiles``, ``offset_invariant``; ``__call__``, ``bias``) and are checked
against their definitions written out with loops, against ``qkv.reference`` and
through ``qkv.attention`` on the blockwise backend.
"""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv import accuracy, masks, mods
from qkv.masks import TileKind, Tiling
from tests.conftest import qkv_inputs

EMPTY, PARTIAL, FULL = int(TileKind.EMPTY), int(TileKind.PARTIAL), int(TileKind.FULL)

# (B, Hq, Hkv, Nq, Nk, D): several tiles of the blockwise backend's 64 x 32, a KV-cache shape, Nq > Nk
SHAPES = [(2, 4, 2, 130, 130, 8), (1, 2, 1, 20, 150, 8), (1, 2, 2, 100, 70, 8)]


class Stripes(masks.Mask):
    """Key j may be attended iff (j // width + h) is even: depends on the head, not on the query. Rule only."""

    def __init__(self, width: int):
        self.width = width

    def rule(self, b, h, q_idx, kv_idx, num_queries, num_keys):
        return (kv_idx // self.width + h) % 2 == 0  # (1, H, 1, Nk)


class ChunkedCausal(masks.Mask):
    """j <= i' and j, i' in the same chunk of ``size``; tiles classified from their boundaries."""

    def __init__(self, size: int):
        self.size = size
        self.classified = 0  # how often a backend asked for tile kinds

    def rule(self, b, h, q_idx, kv_idx, num_queries, num_keys):
        pos = q_idx + (num_keys - num_queries)
        return (kv_idx <= pos) & (kv_idx // self.size == pos // self.size)

    def classify_tiles(self, tiling: Tiling) -> torch.Tensor:
        self.classified += 1
        (q0, q1), (k0, k1) = tiling.rows(), tiling.cols()
        first, last = (q0 + tiling.offset)[:, None], (q1 - 1 + tiling.offset)[:, None]  # (nQb, 1)
        k_first, k_last = k0[None, :], (k1 - 1)[None, :]  # (1, nKb)
        c = self.size
        empty = (k_first > last) | (k_last // c < first // c) | (k_first // c > last // c)
        full = (first // c == last // c) & (k_first // c == k_last // c) & (first // c == k_first // c)
        return tiling.kinds(full & (k_last <= first), empty)[None, None]  # (nQb, nKb) -> (1, 1, nQb, nKb)


class PerSequenceWindow(masks.Mask):
    """Sequence b looks back ``windows[b]`` keys; refuses a call with another batch size (``check``)."""

    def __init__(self, windows: list[int]):
        self.windows = torch.tensor(windows)

    def check(self, batch, heads, num_queries, num_keys):
        if batch != self.windows.numel():
            raise qkv.AttentionError(f"PerSequenceWindow: has {self.windows.numel()} windows, the batch {batch}")

    def rule(self, b, h, q_idx, kv_idx, num_queries, num_keys):
        d = q_idx + (num_keys - num_queries) - kv_idx  # i' - j
        return (d >= 0) & (d < self.windows.to(d.device)[b])  # (B, 1, Nq, Nk)


def direct(mask_name: str, batch: int, heads: int, nq: int, nk: int) -> torch.Tensor:
    """The user masks written out with Python loops: bool (B, H, Nq, Nk)."""
    out = torch.zeros(batch, heads, nq, nk, dtype=torch.bool)
    for b in range(batch):
        for h in range(heads):
            for i in range(nq):
                p = i + nk - nq
                for j in range(nk):
                    if mask_name == "stripes":
                        out[b, h, i, j] = (j // 5 + h) % 2 == 0
                    elif mask_name == "chunked":
                        out[b, h, i, j] = j <= p and j // 16 == p // 16
                    else:
                        out[b, h, i, j] = 0 <= p - j < [7, 40][b]
    return out


def build(mask_name: str) -> masks.Mask:
    return {"stripes": Stripes(5), "chunked": ChunkedCausal(16), "window": PerSequenceWindow([7, 40])}[mask_name]


def true_kinds(dense: torch.Tensor, block_q: int, block_k: int) -> torch.Tensor:
    """Tile kinds counted from the dense mask: (B, H, nQb, nKb)."""
    b, h, nq, nk = dense.shape
    kinds = torch.empty(b, h, -(-nq // block_q), -(-nk // block_k), dtype=torch.int8)
    for r in range(kinds.shape[2]):
        for c in range(kinds.shape[3]):
            tile = dense[:, :, r * block_q : (r + 1) * block_q, c * block_k : (c + 1) * block_k]
            allowed = tile.flatten(2)
            kinds[:, :, r, c] = torch.where(allowed.all(-1), FULL, torch.where(allowed.any(-1), PARTIAL, EMPTY))
    return kinds


# ---------------------------------------------------------------------------
# the derived answers of a user mask


@pytest.mark.parametrize("name", ["stripes", "chunked", "window"])
@pytest.mark.parametrize("nq, nk", [(40, 40), (9, 40), (40, 23)])
def test_dense_form_and_tile_kinds_of_a_user_mask_follow_its_rule(name, nq, nk):
    mask = build(name)
    dense = direct(name, 2, 3, nq, nk)
    assert dense.any() and not dense.all()
    assert torch.equal(mask.to_dense(2, 3, nq, nk), dense)
    for bq, bk in [(8, 8), (16, 4), (5, 7)]:
        kinds = mask.tile_kinds(2, 3, nq, nk, bq, bk)
        assert torch.equal(kinds.expand(2, 3, -1, -1), true_kinds(dense, bq, bk)), (bq, bk)  # exact, not just sound


def test_a_rule_that_ignores_an_axis_keeps_it_at_size_one():
    assert Stripes(5).tile_kinds(2, 3, 40, 40, 8, 8).shape == (1, 3, 5, 5)  # depends on h, not b
    assert ChunkedCausal(16).tile_kinds(2, 3, 40, 40, 8, 8).shape == (1, 1, 5, 5)
    assert PerSequenceWindow([7, 40]).tile_kinds(2, 3, 40, 40, 8, 8).shape == (2, 1, 5, 5)


def test_analytic_tile_kinds_equal_the_evaluated_ones():
    mask = ChunkedCausal(16)
    for tiling in (Tiling(1, 1, 130, 130, 64, 32), Tiling(1, 1, 20, 150, 64, 32), Tiling(2, 2, 100, 70, 7, 9)):
        assert torch.equal(mask.classify_tiles(tiling), tiling.evaluate(mask.rule))


def test_user_masks_combine_with_the_builtins():
    shape = (2, 3, 40, 40)
    a, b = Stripes(5), PerSequenceWindow([7, 40])
    da, db, dc = direct("stripes", *shape), direct("window", *shape), masks.causal().to_dense(*shape)
    assert torch.equal((a & b).to_dense(*shape), da & db)
    assert torch.equal((a | ~masks.causal()).to_dense(*shape), da | ~dc)
    padded = (torch.arange(40) < torch.tensor([40, 30])[:, None])[:, None, None, :]  # (B, 1, 1, Nk)
    assert torch.equal(
        (ChunkedCausal(16) & masks.padding([40, 30])).to_dense(*shape), direct("chunked", *shape) & padded
    )
    kinds = (a & b).tile_kinds(*shape, 8, 8)
    assert torch.equal(kinds.expand(2, 3, -1, -1), torch.minimum(true_kinds(da, 8, 8), true_kinds(db, 8, 8)))


def test_a_mask_without_a_rule_says_what_to_implement():
    class Nothing(masks.Mask):
        pass

    with pytest.raises(NotImplementedError, match=r"Nothing: a Mask subclass implements rule\(\)"):
        Nothing().to_dense(1, 1, 2, 2)


def test_a_subclass_that_overrides_allowed_still_works():
    class OldStyle(masks.Mask):
        def allowed(self, b, h, q_idx, kv_idx, num_queries, num_keys):
            return (kv_idx <= q_idx).expand(torch.broadcast_shapes(b.shape, h.shape, q_idx.shape, kv_idx.shape))

    assert torch.equal(OldStyle().to_dense(1, 2, 6, 6), masks.causal().to_dense(1, 2, 6, 6))
    kinds = OldStyle().tile_kinds(1, 2, 6, 6, 2, 2)  # (1, 2, 3, 3): its answer is expanded over the heads
    assert torch.equal(kinds, masks.causal().tile_kinds(1, 2, 6, 6, 2, 2).expand(1, 2, 3, 3))


def test_a_rule_that_returns_no_bool_tensor_is_a_clear_error():
    class Wrong(masks.Mask):
        def rule(self, b, h, q_idx, kv_idx, num_queries, num_keys):
            return (kv_idx <= q_idx).int()

    with pytest.raises(qkv.AttentionError, match="mask: the rule must return a bool tensor"):
        Wrong().to_dense(1, 1, 3, 3)


# ---------------------------------------------------------------------------
# through qkv.attention


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", ["stripes", "chunked"])
def test_user_masks_through_blockwise_equal_the_spec(shape, name):
    b, hq, hkv, nq, nk, d = shape
    mask = build(name)
    q, k, v = qkv_inputs(b, hq, hkv, nq, nk, d, dtype=torch.float64, requires_grad=True)
    dense = direct(name, b, hq, nq, nk)
    golden, golden_lse = qkv.reference.attention(q, k, v, mask=dense, return_lse=True)
    assert accuracy.max_error(qkv.reference.attention(q, k, v, mask=mask), golden) == 0.0  # the spec reads the rule
    out, lse = qkv.attention(q, k, v, mask=mask, backend="blockwise", return_lse=True)
    assert accuracy.max_error(out, golden) < 1e-12 and accuracy.max_error(lse, golden_lse) < 1e-12
    grad_out = torch.randn_like(golden)
    for g, gold in zip(torch.autograd.grad(out, (q, k, v), grad_out), torch.autograd.grad(golden, (q, k, v), grad_out)):
        assert accuracy.max_error(g, gold) < 1e-12
    weights = qkv.attention_weights(q, k, mask=mask)
    assert accuracy.max_error(weights, qkv.reference.attention_weights(q, k, mask=dense)) < 1e-12


def test_blockwise_asks_the_mask_for_its_tiles_and_skips_the_empty_ones():
    q, k, v = qkv_inputs(1, 2, 2, 130, 130, 8, dtype=torch.float64)
    mask = ChunkedCausal(16)
    out = qkv.attention(q, k, v, mask=mask, backend="blockwise")
    assert mask.classified >= 1, "the backend reads the mask's own classification"
    assert accuracy.max_error(out, qkv.reference.attention(q, k, v, mask=mask)) < 1e-12

    class Lying(ChunkedCausal):
        def classify_tiles(self, tiling):
            return torch.full((1, 1, *tiling.grid), EMPTY, dtype=torch.int8)  # "nothing may attend"

    skipped = qkv.attention(q, k, v, mask=Lying(16), backend="blockwise")
    assert torch.equal(skipped, torch.zeros_like(skipped)), "EMPTY tiles are skipped, not evaluated"


def test_check_runs_before_any_backend():
    q, k, v = qkv_inputs(3, 2, 2, 10, 10, 8)
    mask = PerSequenceWindow([7, 40])
    for call in (
        lambda: qkv.attention(q, k, v, mask=mask, backend="blockwise"),
        lambda: qkv.attention_weights(q, k, mask=mask),
        lambda: qkv.reference.attention(q, k, v, mask=mask),
        lambda: mask.tile_kinds(3, 2, 10, 10, 4, 4),
    ):
        with pytest.raises(qkv.AttentionError, match="PerSequenceWindow: has 2 windows, the batch 3"):
            call()


# ---------------------------------------------------------------------------
# score mods


class Shifted(mods.ScoreMod):
    """score * (1 + 0.1 h) + 0.05 (j - i'): not additive, so every backend calls it."""

    def __call__(self, score, b, h, q_idx, kv_idx, num_queries, num_keys):
        relative = kv_idx - (q_idx + (num_keys - num_queries))
        return score * (1 + 0.1 * h) + 0.05 * relative


class HeadBias(mods.AdditiveMod):
    """score + table[h, j % 3]: additive, one row per head (``check`` refuses another head count)."""

    def __init__(self, table: torch.Tensor):
        self.table = table  # (H, 3)

    def check(self, batch, heads, num_queries, num_keys):
        if heads != self.table.shape[0]:
            raise qkv.AttentionError(f"HeadBias: has {self.table.shape[0]} rows, the call {heads} heads")

    def bias(self, b, h, q_idx, kv_idx, num_queries, num_keys, dtype):
        return self.table.to(dtype)[h, kv_idx % 3]  # (1, H, 1, Nk)


def dense_scores_mod(name: str, scores: torch.Tensor) -> torch.Tensor:
    """The mods applied with loops-free dense formulas, on (B, H, Nq, Nk) scores."""
    _, heads, nq, nk = scores.shape
    h = torch.arange(heads).view(1, heads, 1, 1)
    relative = torch.arange(nk).view(1, 1, 1, nk) - (torch.arange(nq).view(1, 1, nq, 1) + nk - nq)
    if name == "shifted":
        return scores * (1 + 0.1 * h) + 0.05 * relative
    return scores + TABLE.to(scores.dtype)[h, torch.arange(nk).view(1, 1, 1, nk) % 3]


TABLE = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.5, -0.5], [1.0, 1.0, -2.0], [-1.5, 0.25, 0.75]])


@pytest.mark.parametrize("name", ["shifted", "additive"])
@pytest.mark.parametrize("nq, nk", [(70, 70), (9, 70)])
def test_user_score_mods_equal_their_dense_form(name, nq, nk):
    mod = Shifted() if name == "shifted" else HeadBias(TABLE)
    q, k, v = qkv_inputs(2, 4, 2, nq, nk, 8, dtype=torch.float64, requires_grad=True)
    scale = 8**-0.5
    s = torch.einsum("bhnd,bhmd->bhnm", q, k.repeat_interleave(2, dim=1)) * scale  # (B, Hq, Nq, Nk)
    assert accuracy.max_error(mod.apply(s), dense_scores_mod(name, s)) < 1e-12
    dense_bias = dense_scores_mod(name, torch.zeros(2, 4, nq, nk, dtype=torch.float64))
    if name == "additive":
        assert (
            mod.additive and accuracy.max_error(mod.additive_bias(2, 4, nq, nk, dtype=torch.float64), dense_bias) == 0
        )
    golden = qkv.reference.attention(q, k, v, bias=mod, causal=True)
    if name == "additive":  # the same function given as a dense bias
        assert accuracy.max_error(golden, qkv.reference.attention(q, k, v, bias=dense_bias, causal=True)) < 1e-12
    backends = ("blockwise", "eager", "sdpa") if mod.additive else ("blockwise", "eager")
    grad_out = torch.randn_like(golden)
    golden_grads = torch.autograd.grad(golden, (q, k, v), grad_out)
    for backend in backends:
        out = qkv.attention(q, k, v, bias=mod, causal=True, backend=backend)
        assert accuracy.max_error(out, golden) < 1e-12, backend
        for g, gold in zip(torch.autograd.grad(out, (q, k, v), grad_out), golden_grads):
            assert accuracy.max_error(g, gold) < 1e-12, backend
    rows = torch.tensor([nq - 1, 0])
    weights = qkv.attention_weights(q, k, bias=mod, causal=True, rows=rows)
    assert accuracy.max_error(weights, qkv.reference.attention_weights(q, k, bias=mod, causal=True)[:, :, rows]) < 1e-12


def test_user_mods_compose_with_the_builtins():
    s = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    mod = mods.compose(HeadBias(TABLE), mods.alibi(4))
    assert mod.additive
    assert accuracy.max_error(mod.apply(s), mods.alibi(4).apply(dense_scores_mod("additive", s))) < 1e-12
    assert not mods.compose(Shifted(), HeadBias(TABLE)).additive


def test_a_mod_check_runs_before_any_backend():
    q, k, v = qkv_inputs(1, 2, 2, 6, 6, 8)
    with pytest.raises(qkv.AttentionError, match="^bias: HeadBias: has 4 rows, the call 2 heads"):
        qkv.attention(q, k, v, bias=HeadBias(TABLE), backend="blockwise")
    with pytest.raises(qkv.AttentionError, match="HeadBias: has 4 rows, the call 2 heads"):
        HeadBias(TABLE).additive_bias(1, 2, 6, 6)


def test_a_mod_without_a_call_says_what_to_implement():
    with pytest.raises(NotImplementedError, match=r"Nothing: a ScoreMod subclass implements __call__"):
        type("Nothing", (mods.ScoreMod,), {})().apply(torch.zeros(1, 1, 2, 2))
