"""State that a failed call must leave alone, and buffers the CPU kernel must check.

A decoding step that raises leaves every cache (contiguous, paged, int8, and a
decoder stack's) exactly as it was; the page pool refuses double and foreign
releases; cache constructors refuse nonsense sizes; the C++ kernel's op checks
every shape, dtype, device and layout it relies on and raises instead of
reading or writing out of bounds.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qkv
from qkv.backends.blockwise import cpu_kernel
from qkv.cache import ContiguousCache, Int8Cache, ModelCache, PagedCache, PagePool, make_cache
from qkv.nn import DecoderConfig, MultiHeadAttention, TransformerDecoder

E, H, HKV, D = 16, 4, 2, 4


def _cache(kind: str, max_length: int = 12):
    return make_cache(kind, batch=2, heads=HKV, max_length=max_length, head_dim=D, page_size=2)


def _state(cache):
    """What a user can observe of a cache: its length, stored keys and values, pages and free pages."""
    k, v = cache.update(torch.zeros(2, HKV, 0, D), torch.zeros(2, HKV, 0, D)) if cache.length else (None, None)
    pages = getattr(cache, "pages", None)
    free = cache.pool.num_free if isinstance(cache, PagedCache) else None
    return cache.length, None if k is None else (k.clone(), v.clone()), pages and [list(p) for p in pages], free


def _same_state(a, b) -> bool:
    (la, kva, pa, fa), (lb, kvb, pb, fb) = a, b
    same_kv = (kva is None and kvb is None) or (torch.equal(kva[0], kvb[0]) and torch.equal(kva[1], kvb[1]))
    return la == lb and same_kv and pa == pb and fa == fb


@pytest.mark.parametrize("kind", ["contiguous", "paged", "int8"])
@pytest.mark.parametrize(
    "bad",
    [
        dict(mask=torch.ones(2, 1, 1, 5, dtype=torch.bool)),  # keys of the previous step
        dict(bias=torch.zeros(1, H, 1, 9)),
        dict(mask=torch.ones(3, 4, dtype=torch.bool)),
        dict(head_mask=torch.ones(H + 1)),
    ],
    ids=["mask", "bias", "2-D mask", "head_mask"],
)
def test_a_failed_decode_step_leaves_the_cache_as_it_was(kind, bad):
    mha = MultiHeadAttention(E, H, num_kv_heads=HKV).eval()
    x = torch.randn(2, 4, E)
    cache, fresh = _cache(kind), _cache(kind)
    with torch.no_grad():
        mha(x[:, :3], causal=True, cache=cache)
        mha(x[:, :3], causal=True, cache=fresh)
        before = _state(cache)
        with pytest.raises(qkv.AttentionError):
            mha(x[:, 3:], causal=True, cache=cache, **bad)
        assert _same_state(_state(cache), before)
        assert cache.length == 3
        # the next good step is the one a cache that never saw the failure gives
        torch.testing.assert_close(mha(x[:, 3:], causal=True, cache=cache), mha(x[:, 3:], causal=True, cache=fresh))


@pytest.mark.parametrize("kind", ["contiguous", "paged", "int8"])
def test_a_failed_step_of_a_decoder_stack_leaves_every_layer_cache_as_it_was(kind):
    cfg = DecoderConfig.llama(vocab_size=30, embed_dim=E, num_layers=3, num_heads=H, num_kv_heads=HKV, ffn_dim=32)
    lm = TransformerDecoder(cfg).eval()
    ids = torch.randint(0, 30, (2, 4))
    cache, fresh = (lm.new_cache(kind, batch=2, max_length=8, page_size=2) for _ in range(2))
    with torch.no_grad():
        lm(ids[:, :3], cache=cache)
        lm(ids[:, :3], cache=fresh)
        # a hook on the last layer fails after the first layers have stored the new token
        handle = lm.layers[2].register_forward_pre_hook(lambda *_: (_ for _ in ()).throw(qkv.AttentionError("x")))
        with pytest.raises(qkv.AttentionError):
            lm(ids[:, 3:], cache=cache)
        handle.remove()
        assert [layer.length for layer in cache] == [3, 3, 3]
        with pytest.raises(qkv.AttentionError):
            lm(ids[:, 3:], cache=cache, bias=torch.zeros(1, H, 1, 3))  # 4 keys, not 3
        assert [layer.length for layer in cache] == [3, 3, 3]
        torch.testing.assert_close(lm(ids[:, 3:], cache=cache), lm(ids[:, 3:], cache=fresh))


def test_a_cache_can_be_cropped_back_to_an_earlier_length():
    for kind in ("contiguous", "paged", "int8"):
        cache = _cache(kind)
        k, v = torch.randn(2, 2, HKV, 5, D).unbind(0)
        cache.update(k[:, :, :3], v[:, :, :3])
        before = _state(cache)
        cache.update(k[:, :, 3:], v[:, :, 3:])
        cache.crop(3)
        assert _same_state(_state(cache), before), kind
        with pytest.raises(qkv.AttentionError, match="length"):
            cache.crop(4)


def test_the_page_pool_refuses_a_double_release_and_foreign_page_ids():
    pool = PagePool(num_pages=4, page_size=2, heads=1, head_dim=4)
    a = PagedCache(pool, batch=1)
    a.update(*torch.randn(2, 1, 1, 3, 4).unbind(0))  # pages 0 and 1
    pool.release([0])
    for pages in ([0], [1, 1], [4], [-1], [2], ["1"]):
        free = pool.num_free
        with pytest.raises(qkv.AttentionError, match="pages"):
            pool.release(pages)
        assert pool.num_free == free  # nothing released
    handed = pool.allocate(pool.num_free)
    assert len(set(handed)) == len(handed) and 1 not in handed  # page 1 is still a's


@pytest.mark.parametrize(
    "make",
    [
        lambda: ContiguousCache(batch=1, heads=2, max_length=0, head_dim=4),
        lambda: ContiguousCache(batch=1, heads=2, max_length=-3, head_dim=4),
        lambda: ContiguousCache(batch=1, heads=0, max_length=8, head_dim=4),
        lambda: ContiguousCache(batch=1, heads=2, max_length=8, head_dim=0),
        lambda: ContiguousCache(batch=0, heads=2, max_length=8, head_dim=4),
        lambda: ContiguousCache(batch=1, heads=2, max_length=8.0, head_dim=4),
        lambda: ContiguousCache(batch=1, heads=2, max_length=8, head_dim=4, dtype=torch.int64),
        lambda: Int8Cache(batch=1, heads=2, max_length=0, head_dim=4),
        lambda: Int8Cache(batch=1, heads=-1, max_length=8, head_dim=4),
        lambda: PagePool(num_pages=4, page_size=2, heads=0, head_dim=4),
        lambda: PagePool(num_pages=4, page_size=2, heads=1, head_dim=0),
        lambda: PagedCache(PagePool(num_pages=4, page_size=2, heads=1, head_dim=4), batch=1, max_length=0),
        lambda: PagedCache(PagePool(num_pages=4, page_size=2, heads=1, head_dim=4), batch=0),
        lambda: make_cache("paged", batch=1, heads=2, max_length=8, head_dim=4, page_size=0),
        lambda: ModelCache.create("contiguous", layers=[(2, 4), (0, 4)], batch=1, max_length=8),
    ],
)
def test_cache_constructors_refuse_nonsense_sizes(make):
    with pytest.raises(qkv.AttentionError):
        make()


# ---------------------------------------------------------------------------
# the C++ kernel's op checks its buffers

needs_kernel = pytest.mark.skipif(not cpu_kernel.available(), reason=f"kernel not built: {cpu_kernel.status()}")


def _kernel_call(nq=8, nk=8, d=4, dv=4):
    q, k, v = torch.randn(1, 2, nq, d), torch.randn(1, 2, nk, d), torch.randn(1, 2, nk, dv)
    out, lse = torch.zeros(1, 2, nq, dv), torch.full((1, 2, nq), float("-inf"))
    blocks = torch.tensor([[0, nq, 0, nk, -1, 0, 0, 0]], dtype=torch.int64)
    segments = torch.zeros(0, 2, dtype=torch.int64)
    return dict(q=q, k=k, v=v, out=out, lse=lse, blocks=blocks, segments=segments, tiles=[], scale=0.5)


FORWARD_BREAKAGES = {
    "k_head_dim": lambda c: c.update(k=torch.randn(1, 2, 8, 5)),
    "v_keys": lambda c: c.update(v=torch.randn(1, 2, 6, 4)),
    "v_batch": lambda c: c.update(v=torch.randn(2, 2, 8, 4)),
    "k_batch": lambda c: c.update(k=torch.randn(2, 2, 8, 4), v=torch.randn(2, 2, 8, 4)),
    "no_kv_heads": lambda c: c.update(k=torch.randn(1, 0, 8, 4), v=torch.randn(1, 0, 8, 4)),
    "out_rows": lambda c: c.update(out=torch.zeros(1, 2, 2, 4)),
    "out_heads": lambda c: c.update(out=torch.zeros(1, 1, 8, 4)),
    "out_value_dim": lambda c: c.update(out=torch.zeros(1, 2, 8, 2)),
    "lse_rows": lambda c: c.update(lse=torch.zeros(1, 2, 2)),
    "lse 4-D": lambda c: c.update(lse=torch.zeros(1, 2, 8, 1)),
    "out_dtype": lambda c: c.update(out=torch.zeros(1, 2, 8, 4, dtype=torch.float64)),
    "q_dtype": lambda c: c.update(q=c["q"].double()),
    "q_last_dim_strided": lambda c: c.update(q=torch.randn(1, 2, 8, 8)[..., ::2]),
    "k_rows_overlap": lambda c: c.update(k=torch.randn(1, 2, 1, 4).expand(1, 2, 8, 4)),
    "blocks_int32": lambda c: c.update(blocks=c["blocks"].int()),
    "tile_rows": lambda c: c.update(blocks=torch.tensor([[0, 8, 0, 8, 0, 0, 0, 0]]), tiles=[torch.zeros(1, 1, 4, 8)]),
    "tile_dtype": lambda c: c.update(
        blocks=torch.tensor([[0, 8, 0, 8, 0, 0, 0, 0]]), tiles=[torch.zeros(1, 1, 8, 8, dtype=torch.float64)]
    ),
}


@needs_kernel
@pytest.mark.parametrize("breakage", list(FORWARD_BREAKAGES))
def test_the_kernel_op_refuses_buffers_of_the_wrong_shape_dtype_or_layout(breakage):
    call = _kernel_call()
    cpu_kernel.forward(**call)  # the unbroken call runs
    FORWARD_BREAKAGES[breakage](call)
    with pytest.raises(RuntimeError):
        cpu_kernel.forward(**call)


BACKWARD_BREAKAGES = {
    "dq_shape": dict(dq=torch.zeros(1, 2, 4, 4)),
    "dk_shape": dict(dk=torch.zeros(1, 2, 4, 4)),
    "dv_shape": dict(dv=torch.zeros(1, 2, 8, 2)),
    "grad_out_shape": dict(grad_out=torch.zeros(1, 2, 2, 4)),
    "dq_dtype": dict(dq=torch.zeros(1, 2, 8, 4, dtype=torch.float64)),
    "grad_lse_dtype": dict(grad_lse=torch.zeros(1, 2, 8, dtype=torch.float64)),
}


@needs_kernel
@pytest.mark.parametrize("breakage", list(BACKWARD_BREAKAGES))
def test_the_kernel_backward_op_refuses_buffers_of_the_wrong_shape_or_dtype(breakage):
    call = _kernel_call()
    cpu_kernel.forward(**call)
    grads = dict(
        grad_out=torch.randn(1, 2, 8, 4), grad_lse=None, dq=torch.zeros(1, 2, 8, 4), dk=torch.zeros(1, 2, 8, 4),
        dv=torch.zeros(1, 2, 8, 4),
    )  # fmt: skip
    args = lambda g: (  # noqa: E731
        call["q"], call["k"], call["v"], call["out"], call["lse"], g["grad_out"], g["grad_lse"], g["dq"], g["dk"],
        g["dv"], call["blocks"], call["segments"], call["tiles"], call["scale"],
    )  # fmt: skip
    cpu_kernel.backward(*args(grads))
    with pytest.raises(RuntimeError):
        cpu_kernel.backward(*args({**grads, **BACKWARD_BREAKAGES[breakage]}))


# ---------------------------------------------------------------------------
# a property: a cache update either stores the step or raises and changes nothing


@st.composite
def _steps(draw):
    kind = draw(st.sampled_from(["contiguous", "paged", "int8"]))
    steps = []
    for _ in range(draw(st.integers(1, 4))):
        n = draw(st.integers(0, 4))
        shape = [2, HKV, n, D]
        broken = draw(st.sampled_from([None, None, 0, 1, 3, "dtype", "pair"]))
        if isinstance(broken, int):
            shape[broken] += 1
        steps.append((n, tuple(shape), broken))
    return kind, steps


@settings(max_examples=40, deadline=None)
@given(_steps())
def test_every_cache_update_stores_its_step_or_raises_and_changes_nothing(case):
    kind, steps = case
    cache = _cache(kind, max_length=8)
    stored_k = torch.zeros(2, HKV, 0, D)
    gen = torch.Generator().manual_seed(len(steps))
    for n, shape, broken in steps:
        k = torch.randn(*shape, generator=gen)
        v = torch.randn(*shape, generator=gen)
        if broken == "dtype":
            v = v.double()
        if broken == "pair":
            v = v[:, :, :0]
        before = _state(cache)
        try:
            k_all, _ = cache.update(k, v)
        except qkv.AttentionError:
            assert broken is not None or cache.length + n > 8
            assert _same_state(_state(cache), before)
            continue
        assert broken is None or (broken == "pair" and n == 0)
        stored_k = torch.cat([stored_k, k], dim=2)
        assert cache.length == stored_k.shape[2]
        tolerance = stored_k.abs().amax(-1, keepdim=True) / 254 + 1e-6 if kind == "int8" else 0
        assert ((k_all - stored_k).abs() <= tolerance).all()
