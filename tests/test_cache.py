"""KV caches: what they store and return, their capacity errors, pages and int8 error bounds."""

from __future__ import annotations

import math

import pytest
import torch

import qkv
from qkv.cache import (
    ContiguousCache,
    Int8Cache,
    KVCache,
    ModelCache,
    PagedCache,
    PagePool,
    dequantize_int8,
    make_cache,
    quantize_int8,
)

B, H, D = 2, 3, 8


def _chunks(sizes, b=B, h=H, d=D, dtype=torch.float32):
    return [torch.randn(2, b, h, n, d).to(dtype).unbind(0) for n in sizes]


def _feed(cache, chunks):
    for k, v in chunks:
        k_all, v_all = cache.update(k, v)
    return k_all, v_all


def _cat(chunks):
    return torch.cat([k for k, _ in chunks], dim=2), torch.cat([v for _, v in chunks], dim=2)


def _exact_caches(max_length=16):
    pool = PagePool(num_pages=2 * math.ceil(max_length / 3), page_size=3, heads=H, head_dim=D)
    return {
        "contiguous": ContiguousCache(B, H, max_length, D),
        "paged": PagedCache(pool, B),
    }


@pytest.mark.parametrize("kind", ["contiguous", "paged"])
def test_exact_caches_return_everything_stored_in_order(kind):
    cache = _exact_caches()[kind]
    chunks = _chunks([2, 4, 1, 1, 5])  # crosses page boundaries (page_size 3) in several ways
    seen = []
    for k, v in chunks:
        seen.append((k, v))
        k_all, v_all = cache.update(k, v)
        expected_k, expected_v = _cat(seen)
        assert torch.equal(k_all, expected_k) and torch.equal(v_all, expected_v)
    assert cache.length == 13


@pytest.mark.parametrize("kind", ["contiguous", "paged", "int8"])
def test_overflow_raises_and_leaves_the_cache_intact(kind):
    cache = make_cache(kind, batch=B, heads=H, max_length=6, head_dim=D, page_size=4)
    k_all, _ = _feed(cache, _chunks([4]))
    before = k_all.clone()
    with pytest.raises(qkv.AttentionError, match=r"cache: cannot store 3 new token\(s\): 4 of max_length 6"):
        cache.update(*_chunks([3])[0])
    assert cache.length == 4
    k_again, _ = cache.update(*_chunks([2])[0])  # still usable, old tokens untouched
    assert torch.equal(k_again[:, :, :4], before)


def test_reset_starts_over():
    cache = ContiguousCache(B, H, 8, D)
    _feed(cache, _chunks([5]))
    cache.reset()
    chunk = _chunks([3])
    k_all, _ = _feed(cache, chunk)
    assert cache.length == 3 and torch.equal(k_all, chunk[0][0])


def test_cache_checks_shapes_dtypes_and_pairs():
    cache = ContiguousCache(B, H, 8, D)
    k, v = _chunks([2])[0]
    with pytest.raises(qkv.AttentionError, match=r"k: expected shape \(B=2, Hkv=3, Nnew, D=8\)"):
        cache.update(k[:, :2], v)
    with pytest.raises(qkv.AttentionError, match="v: dtype torch.float64 differs from the cache's torch.float32"):
        cache.update(k, v.double())
    with pytest.raises(qkv.AttentionError, match="v: 1 new tokens but k has 2"):
        cache.update(k, v[:, :, :1])
    with pytest.raises(qkv.AttentionError, match="kind: unknown cache kind 'ring'"):
        make_cache("ring", batch=1, heads=1, max_length=4, head_dim=4)


def test_paged_caches_share_a_pool_and_reuse_freed_pages():
    pool = PagePool(num_pages=6, page_size=2, heads=H, head_dim=D)
    a, b = PagedCache(pool, batch=1), PagedCache(pool, batch=1)
    chunks_a, chunks_b = _chunks([3, 1], b=1), _chunks([1, 2], b=1)
    for ca, cb in zip(chunks_a, chunks_b):  # interleaved growth of two sequences
        ka, _ = a.update(*ca)
        kb, _ = b.update(*cb)
    assert torch.equal(ka, _cat(chunks_a)[0]) and torch.equal(kb, _cat(chunks_b)[0])
    assert a.block_table.tolist() == [[0, 1]] and b.block_table.tolist() == [[2, 3]]
    assert pool.num_free == 2
    a.free()
    assert pool.num_free == 4 and a.length == 0 and a.block_table.shape == (1, 0)
    c = PagedCache(pool, batch=1)
    chunk_c = _chunks([5], b=1)
    kc, vc = c.update(*chunk_c[0])
    assert sorted(c.block_table[0].tolist()) == [0, 1, 4]  # a's pages, reused
    assert torch.equal(kc, chunk_c[0][0]) and torch.equal(vc, chunk_c[0][1])
    kb_again, _ = b.update(*_chunks([1], b=1)[0])  # b is untouched by c's writes into a's old pages
    assert torch.equal(kb_again[:, :, :3], kb)


def test_one_sequence_on_consecutive_pages_reads_the_pool_without_copying():
    pool = PagePool(num_pages=5, page_size=3, heads=H, head_dim=D)
    cache = PagedCache(pool, batch=1)
    seen = []
    for k, v in _chunks([2, 1, 1, 1, 3, 1], b=1):  # prompt, then decoding steps across page boundaries
        seen.append((k, v))
        k_all, v_all = cache.update(k, v)
        assert torch.equal(k_all, _cat(seen)[0]) and torch.equal(v_all, _cat(seen)[1])
        assert k_all.untyped_storage().data_ptr() == pool.k.untyped_storage().data_ptr()  # a view


def test_paged_pool_exhaustion_raises_without_allocating():
    pool = PagePool(num_pages=3, page_size=2, heads=H, head_dim=D)
    cache = PagedCache(pool, batch=B)  # 2 sequences: 2 pages per 2 tokens
    k_all, _ = _feed(cache, _chunks([2]))
    with pytest.raises(qkv.AttentionError, match="cache: the page pool is full: 2 more page"):
        cache.update(*_chunks([1])[0])
    assert pool.num_free == 1 and cache.length == 2
    cache.reset()
    assert pool.num_free == 3


def test_int8_quantization_error_is_within_half_a_step():
    x = torch.randn(4, 3, 50, 16) * torch.logspace(-3, 2, 50)[:, None]  # vectors of very different sizes
    q, scale = quantize_int8(x)
    assert q.dtype == torch.int8 and scale.shape == (4, 3, 50, 1)
    err = (dequantize_int8(q, scale, torch.float32) - x).abs()
    bound = x.abs().amax(-1, keepdim=True) / 254
    assert (err <= bound * (1 + 1e-6)).all()
    assert (err.amax(-1, keepdim=True) > bound / 10).any()  # the bound is not vacuous
    zeros = torch.zeros(1, 1, 2, 4)
    assert torch.equal(dequantize_int8(*quantize_int8(zeros), torch.float32), zeros)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_cache_is_chunking_invariant_and_within_bound(dtype):
    chunks = _chunks([3, 1, 1, 2], dtype=dtype)
    step = Int8Cache(B, H, 8, D, dtype=dtype)
    k_step, v_step = _feed(step, chunks)
    whole = Int8Cache(B, H, 8, D, dtype=dtype)
    k_whole, v_whole = whole.update(*_cat(chunks))
    assert torch.equal(k_step, k_whole) and torch.equal(v_step, v_whole)
    assert k_step.dtype == dtype
    k, _ = _cat(chunks)
    rounding = torch.finfo(dtype).eps * k.abs().float()
    bound = k.float().abs().amax(-1, keepdim=True) / 254 + rounding
    assert ((k_step.float() - k.float()).abs() <= bound).all()


def test_int8_attention_output_obeys_the_stated_bound():
    q = torch.randn(B, H, 4, D, dtype=torch.float64)
    k, v = torch.randn(2, B, H, 10, D, dtype=torch.float64).unbind(0)
    cache = Int8Cache(B, H, 10, D, dtype=torch.float64)
    kq, vq = cache.update(k, v)
    exact = qkv.attention(q, k, v, backend="reference")
    approx = qkv.attention(q, kq, vq, backend="reference")
    scale = D**-0.5
    delta = scale * q.abs().sum(-1, keepdim=True) * k.abs().amax(dim=(-2, -1), keepdim=True) / 254  # (B, H, Nq, 1)
    vmax = v.abs().amax(dim=(-2, -1), keepdim=True)
    bound = (torch.exp(2 * delta) - 1) * vmax + vmax / 254
    err = (approx - exact).abs()
    assert (err <= bound).all()
    assert err.max() > 0


def test_model_cache_holds_one_cache_per_layer():
    cache = ModelCache.create("int8", layers=[(2, 8), (1, 4)], batch=1, max_length=4)
    assert len(cache) == 2 and [c.heads for c in cache] == [2, 1] and cache[1].head_dim == 4
    assert all(isinstance(c, KVCache) for c in cache)
    cache[0].update(*torch.randn(2, 1, 2, 3, 8).unbind(0))
    assert cache.length == 3
    cache.reset()
    assert cache.length == 0 and cache[0].length == 0
    with pytest.raises(qkv.AttentionError, match="layers: item 0 is a str"):
        ModelCache(["nope"])
