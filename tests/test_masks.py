"""qkv.masks: each built-in is the rule it names, and its tile classification never lies."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qkv
from qkv import masks
from qkv.masks import TileKind

EMPTY, PARTIAL, FULL = int(TileKind.EMPTY), int(TileKind.PARTIAL), int(TileKind.FULL)


# ---------------------------------------------------------------------------
# obviously-correct constructions, element by element


def direct(kind: str, params: dict, batch: int, heads: int, nq: int, nk: int) -> torch.Tensor:
    """The mask written out from its definition with Python loops: bool (B, H, Nq, Nk)."""
    out = torch.zeros(batch, heads, nq, nk, dtype=torch.bool)
    off = nk - nq
    for b in range(batch):
        for h in range(heads):
            for i in range(nq):
                ip = i + off
                for j in range(nk):
                    if kind == "causal":
                        ok = j <= ip
                    elif kind == "sliding_window":
                        ok = ip - params["window"] < j <= ip
                    elif kind == "local":
                        ok = abs(ip - j) <= params["radius"]
                    elif kind == "padding":
                        ok = j < int(params["lengths"][b])
                    elif kind == "document":
                        ids = params["doc_ids"]
                        ids = ids[b] if ids.dim() == 2 else ids
                        ok = ip >= 0 and int(ids[ip]) == int(ids[j])
                    elif kind == "block_sparse":
                        layout, bs = params["layout"], params["block_size"]
                        layout = layout[(None,) * (4 - layout.dim())]  # (..., nQb, nKb) -> (B'|1, H'|1, nQb, nKb)
                        cell = layout[min(b, layout.shape[0] - 1), min(h, layout.shape[1] - 1)]
                        ok = bool(cell[i // bs, j // bs])
                    elif kind == "global_tokens":
                        g = set(params["indices"])
                        ok = ip in g or j in g
                    elif kind == "dilated":
                        d = ip - j
                        ok = d >= 0 and d % params["dilation"] == 0 and d // params["dilation"] < params["window"]
                    else:
                        raise AssertionError(kind)
                    out[b, h, i, j] = ok
    return out


def build(kind: str, params: dict) -> masks.Mask:
    return getattr(masks, kind)(**params)


def random_params(kind: str, batch: int, heads: int, nq: int, nk: int, gen: torch.Generator) -> dict:
    """Fresh, non-trivial arguments for a built-in on a (B, H, Nq, Nk) problem."""

    def randint(lo: int, hi: int) -> int:  # inclusive
        return int(torch.randint(lo, hi + 1, (), generator=gen))

    if kind == "causal":
        return {}
    if kind == "sliding_window":
        return {"window": randint(1, nk + 1)}
    if kind == "local":
        return {"radius": randint(0, nk)}
    if kind == "padding":
        return {"lengths": torch.randint(0, nk + 1, (batch,), generator=gen)}
    if kind == "document":
        n_docs = randint(1, 4)
        ids = torch.randint(0, n_docs, (batch, nk) if randint(0, 1) else (nk,), generator=gen)
        return {"doc_ids": ids.sort(dim=-1).values}  # packed sequences: sorted ids
    if kind == "block_sparse":
        bs = randint(1, 5)
        lead = [(), (heads,), (batch, heads), (1, heads), (batch, 1)][randint(0, 4)]
        shape = (*lead, -(-nq // bs), -(-nk // bs))
        return {"layout": torch.rand(shape, generator=gen) < 0.5, "block_size": bs}
    if kind == "global_tokens":
        return {"indices": torch.randperm(nk + 2, generator=gen)[: randint(0, 3)].tolist()}
    if kind == "dilated":
        return {"window": randint(1, 5), "dilation": randint(1, 4)}
    raise AssertionError(kind)


BUILTINS = ("causal", "sliding_window", "local", "padding", "document", "block_sparse", "global_tokens", "dilated")


def true_kinds(dense: torch.Tensor, block_q: int, block_k: int) -> torch.Tensor:
    """TileKind of every tile of a dense (B, H, Nq, Nk) mask, tile by tile."""
    batch, heads, nq, nk = dense.shape
    rows, cols = range(0, nq, block_q), range(0, nk, block_k)
    out = torch.empty(batch, heads, len(rows), len(cols), dtype=torch.int8)
    for r, i in enumerate(rows):
        for c, j in enumerate(cols):
            tile = dense[:, :, i : i + block_q, j : j + block_k].flatten(2)  # (B, H, bq, bk) -> (B, H, bq*bk)
            out[:, :, r, c] = torch.where(tile.all(-1), FULL, torch.where(tile.any(-1), PARTIAL, EMPTY))
    return out


def assert_sound(kinds: torch.Tensor, dense: torch.Tensor, block_q: int, block_k: int) -> torch.Tensor:
    """EMPTY tiles hold no True, FULL tiles no False; returns the true kinds."""
    batch, heads, nq, nk = dense.shape
    assert kinds.dtype == torch.int8
    assert kinds.shape[0] in (1, batch) and kinds.shape[1] in (1, heads)
    assert kinds.shape[2:] == (-(-nq // block_q), -(-nk // block_k))
    truth = true_kinds(dense, block_q, block_k)
    kinds = kinds.expand_as(truth)
    assert not ((kinds == EMPTY) & (truth != EMPTY)).any(), "an EMPTY tile holds an allowed pair"
    assert not ((kinds == FULL) & (truth != FULL)).any(), "a FULL tile holds a forbidden pair"
    return truth


problems = st.tuples(
    st.integers(1, 3),  # B
    st.integers(1, 3),  # H
    st.integers(1, 20),  # Nq
    st.integers(1, 20),  # Nk
    st.integers(1, 7),  # block_q
    st.integers(1, 7),  # block_k
    st.integers(0, 2**31 - 1),  # seed for the mask's tensors
)


# ---------------------------------------------------------------------------
# to_dense is the rule it names


@pytest.mark.parametrize("kind", BUILTINS)
@pytest.mark.parametrize("nq, nk", [(7, 7), (3, 9), (9, 4), (1, 6)])
def test_to_dense_equals_direct_construction(kind, nq, nk):
    gen = torch.Generator().manual_seed(nq * 100 + nk)
    params = random_params(kind, 2, 3, nq, nk, gen)
    dense = build(kind, params).to_dense(2, 3, nq, nk)
    assert dense.dtype == torch.bool and dense.shape == (2, 3, nq, nk)
    assert torch.equal(dense, direct(kind, params, 2, 3, nq, nk))


@pytest.mark.parametrize("nq, nk", [(5, 5), (3, 8), (8, 3)])
def test_causal_family_against_triangles(nq, nk):
    """causal is tril with offset Nk - Nq; windows are differences of two such triangles."""
    ones = torch.ones(nq, nk, dtype=torch.bool)
    off = nk - nq
    assert torch.equal(masks.causal().to_dense(1, 1, nq, nk)[0, 0], ones.tril(off))
    assert torch.equal(masks.sliding_window(2).to_dense(1, 1, nq, nk)[0, 0], ones.tril(off) & ~ones.tril(off - 2))
    assert torch.equal(masks.local(1).to_dense(1, 1, nq, nk)[0, 0], ones.tril(off + 1) & ones.triu(off - 1))
    assert torch.equal(masks.sliding_window(nk).to_dense(1, 1, nq, nk), masks.causal().to_dense(1, 1, nq, nk))
    assert torch.equal(masks.dilated(3, 1).to_dense(1, 1, nq, nk), masks.sliding_window(3).to_dense(1, 1, nq, nk))


def test_block_sparse_is_the_layout_blown_up():
    layout = torch.rand(2, 3, 4, 2) < 0.5  # (B, H, nQb, nKb)
    dense = masks.block_sparse(layout, 3).to_dense(2, 3, 11, 5)
    blown = layout.repeat_interleave(3, dim=-2).repeat_interleave(3, dim=-1)  # (B, H, 12, 6)
    assert torch.equal(dense, blown[..., :11, :5])


def test_allowed_returns_the_broadcast_shape():
    b = torch.arange(2).view(2, 1, 1, 1)  # (B, 1, 1, 1)
    h = torch.arange(3).view(1, 3, 1, 1)  # (1, H, 1, 1)
    q = torch.arange(4, 8).view(1, 1, 4, 1)  # (1, 1, Nq', 1): rows 4..7 of Nq = 8
    k = torch.arange(5).view(1, 1, 1, 5)  # (1, 1, 1, Nk')
    for mask in (masks.causal(), masks.padding([2, 4]), masks.causal() & masks.padding([2, 4])):
        out = mask.allowed(b, h, q, k, num_queries=8, num_keys=8)
        assert out.shape == (2, 3, 4, 5) and out.dtype == torch.bool
        assert torch.equal(out, mask.to_dense(2, 3, 8, 8)[:, :, 4:8, :5])


def test_dense_mask_drives_attention_like_the_causal_flag():
    q, k, v = torch.randn(3, 2, 4, 5, 8).unbind(0)  # (B=2, H=4, N=5, D=8) each
    k, v = torch.randn(2, 4, 9, 8), torch.randn(2, 4, 9, 8)  # Nk = 9: a KV cache
    dense = masks.causal().to_dense(2, 4, 5, 9)
    torch.testing.assert_close(qkv.attention(q, k, v, mask=dense), qkv.attention(q, k, v, causal=True))


# ---------------------------------------------------------------------------
# tile_kinds never lies, and the built-ins are exact


@settings(max_examples=80, deadline=None)
@given(problem=problems, kind=st.sampled_from(BUILTINS))
def test_builtin_tile_kinds_are_exact(problem, kind):
    batch, heads, nq, nk, bq, bk, seed = problem
    params = random_params(kind, batch, heads, nq, nk, torch.Generator().manual_seed(seed))
    mask = build(kind, params)
    kinds = mask.tile_kinds(batch, heads, nq, nk, bq, bk)
    truth = assert_sound(kinds, mask.to_dense(batch, heads, nq, nk), bq, bk)
    # sorted document ids, contiguous blocks: every built-in classifies every tile exactly
    assert torch.equal(kinds.expand_as(truth), truth)


@settings(max_examples=40, deadline=None)
@given(problem=problems)
def test_document_tiles_are_sound_for_unsorted_ids(problem):
    batch, heads, nq, nk, bq, bk, seed = problem
    gen = torch.Generator().manual_seed(seed)
    mask = masks.document(torch.randint(0, 3, (batch, nk), generator=gen))
    kinds = mask.tile_kinds(batch, heads, nq, nk, bq, bk)
    truth = assert_sound(kinds, mask.to_dense(batch, heads, nq, nk), bq, bk)
    assert torch.equal(kinds.expand_as(truth) == FULL, truth == FULL)  # FULL is exact even unsorted


@st.composite
def combined(draw, batch, heads, nq, nk, seed):
    gen = torch.Generator().manual_seed(seed)
    leaves = [
        build(k, random_params(k, batch, heads, nq, nk, gen))
        for k in draw(st.lists(st.sampled_from(BUILTINS), min_size=2, max_size=3))
    ]
    mask = leaves[0]
    for leaf in leaves[1:]:
        op = draw(st.sampled_from(["&", "|", "&~", "~|"]))
        mask = {
            "&": lambda a, b: a & b,
            "|": lambda a, b: a | b,
            "&~": lambda a, b: a & ~b,
            "~|": lambda a, b: ~(a | b),
        }[op](mask, leaf)
    return mask


@settings(max_examples=60, deadline=None)
@given(problem=problems, data=st.data())
def test_combinator_tile_kinds_are_sound(problem, data):
    batch, heads, nq, nk, bq, bk, seed = problem
    mask = data.draw(combined(batch, heads, nq, nk, seed))
    assert_sound(mask.tile_kinds(batch, heads, nq, nk, bq, bk), mask.to_dense(batch, heads, nq, nk), bq, bk)


def test_causal_tiles_are_classified_not_left_partial():
    kinds = masks.causal().tile_kinds(1, 1, 64, 64, 16, 16)[0, 0]
    r, c = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    expected = torch.where(c > r, EMPTY, torch.where(c < r, FULL, PARTIAL)).to(torch.int8)
    assert torch.equal(kinds, expected)


def test_sliding_window_skips_far_tiles_and_padding_skips_padded_keys():
    kinds = masks.sliding_window(16).tile_kinds(1, 1, 64, 64, 16, 16)[0, 0]
    assert torch.equal(kinds.diagonal(), torch.full((4,), PARTIAL, dtype=torch.int8))  # diagonal tiles
    assert torch.equal(kinds.diagonal(-1), torch.full((3,), PARTIAL, dtype=torch.int8))  # the tile below
    assert (kinds.tril(-2) == EMPTY).all() and (kinds.triu(1) == EMPTY).all()
    kinds = masks.padding([16, 40]).tile_kinds(2, 4, 8, 64, 8, 16)  # (B, 1, nQb, nKb)
    assert kinds.shape == (2, 1, 1, 4)
    assert kinds[0, 0, 0].tolist() == [FULL, EMPTY, EMPTY, EMPTY]
    assert kinds[1, 0, 0].tolist() == [FULL, FULL, PARTIAL, EMPTY]


def test_tile_kinds_keep_only_the_axes_a_mask_depends_on():
    args = (2, 3, 10, 12, 4, 4)
    assert masks.causal().tile_kinds(*args).shape == (1, 1, 3, 3)
    assert masks.padding([3, 5]).tile_kinds(*args).shape == (2, 1, 3, 3)
    assert masks.document(torch.zeros(12, dtype=torch.long)).tile_kinds(*args).shape == (1, 1, 3, 3)
    assert masks.block_sparse(torch.rand(3, 4, 4) < 0.5, 3).tile_kinds(*args).shape == (1, 3, 3, 3)
    assert (masks.causal() & masks.padding([3, 5])).tile_kinds(*args).shape == (2, 1, 3, 3)
    assert masks.causal().tile_kinds(2, 3, 0, 12, 4, 4).shape == (1, 1, 0, 3)


def test_block_sparse_tiles_with_blocks_of_other_sizes():
    layout = torch.tensor(
        [[True, False, False, False], [True, True, False, False], [False, True, True, False], [True, True, True, True]]
    )
    mask = masks.block_sparse(layout, 4)  # 16 x 16
    kinds = mask.tile_kinds(1, 1, 16, 16, 8, 8)[0, 0]  # each tile covers 2 x 2 layout cells
    assert kinds.tolist() == [[PARTIAL, EMPTY], [PARTIAL, PARTIAL]]
    kinds = mask.tile_kinds(1, 1, 16, 16, 2, 16)[0, 0]  # a tile is half a layout row
    assert kinds[:, 0].tolist() == [PARTIAL] * 6 + [FULL] * 2


# ---------------------------------------------------------------------------
# from_function


RULES = {
    "causal": (masks.causal(), lambda b, h, q, k: k <= q + 3),  # Nk - Nq = 3 below
    "sliding_window": (masks.sliding_window(4), lambda b, h, q, k: (k <= q + 3) & (k > q + 3 - 4)),
    "padding": (masks.padding([5, 12]), lambda b, h, q, k: k < torch.tensor([5, 12])[b]),
    "head-dependent": (
        masks.block_sparse(torch.tensor([[[True, False], [False, True]], [[False, True], [True, True]]]), 7),
        lambda b, h, q, k: torch.tensor([[[True, False], [False, True]], [[False, True], [True, True]]])[
            h, q // 7, k // 7
        ],
    ),
}


@pytest.mark.parametrize("name", RULES)
def test_from_function_classifies_tiles_like_the_builtin(name):
    builtin, fn = RULES[name]
    custom = masks.from_function(fn)
    args = (2, 2, 10, 13, 3, 4)
    assert torch.equal(custom.to_dense(*args[:4]), builtin.to_dense(*args[:4]))
    assert torch.equal(custom.tile_kinds(*args), builtin.tile_kinds(*args))


def test_from_function_caches_and_evaluates_in_bounded_chunks(monkeypatch):
    calls = []

    def fn(b, h, q_idx, kv_idx):
        calls.append(q_idx.numel())
        return kv_idx <= q_idx

    monkeypatch.setattr(masks.tiling, "CHUNK_ELEMENTS", 64)  # force a few query blocks per call
    mask = masks.from_function(fn)
    kinds = mask.tile_kinds(1, 2, 40, 40, 8, 8)
    assert len(calls) > 1 and max(calls) <= 16  # at most a couple of query blocks at once
    assert torch.equal(kinds, masks.causal().tile_kinds(1, 2, 40, 40, 8, 8))
    n = len(calls)
    kinds[...] = EMPTY  # the caller's copy: the cache is not touched
    assert torch.equal(mask.tile_kinds(1, 2, 40, 40, 8, 8), masks.causal().tile_kinds(1, 2, 40, 40, 8, 8))
    assert len(calls) == n, "the second call should come from the cache"
    mask.tile_kinds(1, 2, 40, 40, 8, 16)
    assert len(calls) > n, "another block size is another tiling"


def test_from_function_must_return_bool():
    with pytest.raises(qkv.AttentionError, match="from_function: fn must return a bool tensor"):
        masks.from_function(lambda b, h, q, k: (k <= q).int()).to_dense(1, 1, 3, 3)


# ---------------------------------------------------------------------------
# combinators and reprs


def test_combinators_are_the_boolean_ops_of_the_dense_masks():
    gen = torch.Generator().manual_seed(7)
    shape = (2, 3, 9, 11)
    a = build("padding", random_params("padding", *shape, gen))
    b = masks.sliding_window(4)
    c = build("block_sparse", random_params("block_sparse", *shape, gen))
    da, db, dc = (m.to_dense(*shape) for m in (a, b, c))
    assert torch.equal((a & b).to_dense(*shape), da & db)
    assert torch.equal((a | b).to_dense(*shape), da | db)
    assert torch.equal((~a).to_dense(*shape), ~da)
    assert torch.equal((a & ~b | c).to_dense(*shape), da & ~db | dc)
    assert torch.equal((~(a | c) & b).to_dense(*shape), ~(da | dc) & db)
    assert (da & db).any() and not torch.equal(da & db, da)  # the inputs are not trivial


def test_invert_swaps_empty_and_full_tiles():
    kinds = masks.causal().tile_kinds(1, 1, 12, 12, 4, 4)
    assert torch.equal((~masks.causal()).tile_kinds(1, 1, 12, 12, 4, 4), FULL - kinds)
    assert repr(~~masks.causal()) == "causal()"


def test_reprs_say_what_the_mask_is():
    assert repr(masks.sliding_window(256)) == "sliding_window(256)"
    assert repr(masks.causal() & masks.padding(lengths=[3, 5])) == "causal() & padding(lengths=[3, 5])"
    assert repr(~masks.local(2)) == "~local(2)"
    assert repr(masks.dilated(4, 2)) == "dilated(4, dilation=2)"
    assert repr(masks.global_tokens([5, 0])) == "global_tokens([0, 5])"
    assert repr(masks.sliding_window(64) | masks.global_tokens([0])) == "sliding_window(64) | global_tokens([0])"
    assert (
        repr((masks.causal() | masks.local(1)) & masks.padding([4])) == "(causal() | local(1)) & padding(lengths=[4])"
    )
    assert repr(~(masks.causal() & masks.local(1))) == "~(causal() & local(1))"
    assert repr(masks.document(torch.zeros(2, 100, dtype=torch.long))) == "document(doc_ids=<int64 (2, 100)>)"
    assert (
        repr(masks.block_sparse(torch.ones(2, 2, dtype=torch.bool), 16))
        == "block_sparse(layout=<bool (2, 2)>, block_size=16)"
    )

    def is_even(b, h, q, k):
        return k % 2 == 0

    assert repr(masks.from_function(is_even)) == "from_function(is_even)"


# ---------------------------------------------------------------------------
# bad arguments


BAD_ARGUMENTS = [
    (lambda: masks.sliding_window(0), "window"),
    (lambda: masks.sliding_window(2.5), "window"),
    (lambda: masks.local(-1), "radius"),
    (lambda: masks.dilated(0, 2), "window"),
    (lambda: masks.dilated(3, 0), "dilation"),
    (lambda: masks.padding([3, -1]), "lengths"),
    (lambda: masks.padding(torch.tensor([2.0, 3.0])), "lengths"),
    (lambda: masks.padding(torch.ones(2, 2, dtype=torch.long)), "lengths"),
    (lambda: masks.padding([]), "lengths"),
    (lambda: masks.document(torch.zeros(2, 2, 2, dtype=torch.long)), "doc_ids"),
    (lambda: masks.block_sparse(torch.ones(2, 2), 4), "layout"),
    (lambda: masks.block_sparse(torch.ones(2, dtype=torch.bool), 4), "layout"),
    (lambda: masks.block_sparse(torch.ones(2, 2, dtype=torch.bool), 0), "block_size"),
    (lambda: masks.global_tokens([-1]), "indices"),
    (lambda: masks.from_function(3), "fn"),
    (lambda: masks.causal() & torch.ones(2, 2, dtype=torch.bool), "Mask"),
    (lambda: masks.padding([3, 5]).to_dense(3, 1, 4, 4), "lengths"),
    (lambda: masks.document([0, 0, 1]).to_dense(1, 1, 4, 4), "doc_ids"),
    (lambda: masks.document(torch.zeros(3, 4, dtype=torch.long)).to_dense(2, 1, 4, 4), "doc_ids"),
    (lambda: masks.block_sparse(torch.ones(2, 2, dtype=torch.bool), 4).to_dense(1, 1, 9, 8), "layout"),
    (lambda: masks.block_sparse(torch.ones(3, 2, 2, dtype=torch.bool), 4).to_dense(1, 2, 8, 8), "layout"),
    (lambda: masks.causal().tile_kinds(1, 1, 8, 8, 0, 4), "block_q"),
    (lambda: masks.causal().to_dense(0, 1, 8, 8), "batch"),
]


@pytest.mark.parametrize("make, argument", BAD_ARGUMENTS)
def test_bad_arguments_raise_an_error_naming_the_argument(make, argument):
    with pytest.raises(qkv.AttentionError, match=argument):
        make()


def test_masks_and_mods_import_no_higher_layer():
    src = Path(masks.__file__).parent.parent
    files = sorted((src / "masks").glob("*.py")) + sorted((src / "mods").glob("*.py"))
    assert len(files) > 2
    for path in files:
        tree = ast.parse(path.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported |= {f"{node.module}.{a.name}" for a in node.names}  # from qkv import checks: qkv.checks
        # below masks: errors, checks and the shared math of the backends (the block lists kernels read)
        lower = ("qkv.errors.", "qkv.checks", "qkv.backends.common.")
        higher = {m for m in imported if m.startswith("qkv.") and not m.startswith(lower)}
        assert {m for m in higher if not m.startswith(("qkv.masks.", "qkv.mods."))} == set(), path.name
