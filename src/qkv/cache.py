"""Key/value caches for incremental decoding, used by ``MultiHeadAttention(cache=...)``.

A cache stores the keys and values of the tokens seen so far, so each decoding
step projects only the new tokens. Every kind follows one small protocol,
`KVCache`::

    cache.length                 # tokens stored so far (all batch rows share it)
    k_all, v_all = cache.update(k, v)
        # k, v: (B, Hkv, Nnew, D), the new tokens' keys and values (after RoPE);
        # stores them; returns every stored key and value (B, Hkv, length, D)
    cache.reset()                # forget everything (a paged cache frees its pages)
    cache.crop(n)                # keep only the first n tokens (undo a failed step)

Kinds:

- `ContiguousCache`: one preallocated ``(B, Hkv, max_length, D)`` buffer each for K and V.
- `PagedCache`: fixed-size pages from a `PagePool` shared by several caches, and a
  per-sequence block table (vLLM's PagedAttention layout); pages are freed on
  `PagedCache.reset` / `PagedCache.free` and reused by the next sequence.
- `Int8Cache`: int8 keys and values with one float32 scale per (token, head)
  vector; about half the memory of bfloat16, with a stated error bound.

A model with L attention layers uses a `ModelCache`: one `KVCache` per layer,
indexed by layer (``cache[i]``), made with `ModelCache.create` (or the model's
``new_cache``). Storing more tokens than a cache can hold raises
`qkv.AttentionError`; nothing is overwritten. Caches are for inference: use them
under ``torch.no_grad()``.

Decoding with any kind gives the outputs of running the whole sequence at once
(`Int8Cache`: within its bound), because ``causal=True`` is bottom-right aligned:
the ``Nnew`` queries of a step see all ``length`` keys up to their own position.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from qkv import checks
from qkv.checks import shape_of
from qkv.errors import AttentionError

KINDS = ("contiguous", "paged", "int8")


def _storage(sizes: Mapping[str, object], dtype: object, device: object) -> tuple[torch.dtype, torch.device]:
    """Check the ``sizes`` (positive ints), a floating ``dtype`` and a ``device`` (None: the CPU) of a buffer."""
    for name, value in sizes.items():
        checks.integer(name, value, minimum=1)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise AttentionError(f"dtype: expected a floating torch.dtype (torch.float32, ...), got {dtype!r}")
    try:
        return dtype, torch.device("cpu") if device is None else torch.device(device)  # type: ignore[call-overload]  # any object is checked here
    except (RuntimeError, TypeError) as error:
        raise AttentionError(
            f"device: expected a torch.device or a name like 'cpu', got {device!r} ({error})"
        ) from None


class KVCache:
    """The protocol every cache follows (see the module docstring); a base class with shared checks."""

    batch: int
    heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    length: int

    def __init__(
        self, batch: int, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device | str | None
    ) -> None:
        self.dtype, self.device = _storage({"batch": batch, "heads": heads, "head_dim": head_dim}, dtype, device)
        self.batch, self.heads, self.head_dim = batch, heads, head_dim
        self.length = 0

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k, v (B, Hkv, Nnew, D)``; return all keys and values ``(B, Hkv, length, D)``."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget every stored token."""
        self.length = 0

    def crop(self, length: int) -> None:
        """Forget every token after the first ``length`` (``0 <= length <= self.length``).

        Decoding then continues from ``length``; what the cache held up to there is
        unchanged. Used to undo the steps of a call that fails part way.
        """
        self._check_crop(length)
        self.length = length

    def _check_crop(self, length: object) -> None:
        if not isinstance(length, int) or isinstance(length, bool) or not 0 <= length <= self.length:
            raise AttentionError(
                f"length: expected an integer in [0, {self.length}] (the tokens stored), got {length!r}"
            )

    def _check(self, k: object, v: object) -> int:
        """Check a pair of new keys and values; return Nnew."""
        want = f"(B={self.batch}, Hkv={self.heads}, Nnew, D={self.head_dim})"
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, Tensor):
                raise AttentionError(f"{name}: expected a tensor {want}, got {type(t).__name__}")
            if t.dim() != 4 or t.shape[0] != self.batch or t.shape[1] != self.heads or t.shape[3] != self.head_dim:
                raise AttentionError(
                    f"{name}: expected shape {want} to match this cache, got {shape_of(t)}; "
                    "make the cache with the batch size, number of key/value heads and head dim of the layer"
                )
            if t.dtype != self.dtype:
                raise AttentionError(
                    f"{name}: dtype {t.dtype} differs from the cache's {self.dtype}; "
                    f"make the cache with dtype={t.dtype}"
                )
            if t.device != self.device:
                raise AttentionError(f"{name}: on {t.device} but the cache is on {self.device}")
        assert isinstance(k, Tensor) and isinstance(v, Tensor)
        if k.shape[2] != v.shape[2]:
            raise AttentionError(f"v: {v.shape[2]} new tokens but k has {k.shape[2]}; keys and values come in pairs")
        return k.shape[2]

    def _check_room(self, new: int, capacity: int) -> None:
        if self.length + new > capacity:
            raise AttentionError(
                f"cache: cannot store {new} new token(s): {self.length} of max_length {capacity} are in use "
                f"({self.length + new} needed); make the cache with a larger max_length, or reset() it"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(batch={self.batch}, heads={self.heads}, head_dim={self.head_dim}, "
            f"length={self.length}, dtype={self.dtype})"
        )


class _PreallocatedCache(KVCache):
    """A cache whose buffers hold ``max_length`` tokens, made up front (`ContiguousCache`, `Int8Cache`)."""

    def __init__(
        self,
        batch: int,
        heads: int,
        max_length: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(batch, heads, head_dim, dtype, device)
        self.max_length = checks.integer("max_length", max_length, minimum=1)
        self._allocate()

    def _allocate(self) -> None:
        """Make the buffers for ``max_length`` tokens."""
        raise NotImplementedError

    def _claim(self, k: Tensor, v: Tensor) -> tuple[int, int]:
        """Check new ``k, v`` and that they fit, and count them as stored; return ``(start, Nnew)``.

        The caller writes them to positions ``start .. length-1``.
        """
        new = self._check(k, v)
        self._check_room(new, self.max_length)
        start, self.length = self.length, self.length + new
        return start, new


class ContiguousCache(_PreallocatedCache):
    """Preallocated ``(B, Hkv, max_length, D)`` buffers for keys and values.

    `update` returns views of the first ``length`` positions (no copy).

    >>> import torch
    >>> from qkv.cache import ContiguousCache
    >>> cache = ContiguousCache(batch=1, heads=2, max_length=8, head_dim=4)
    >>> k, v = torch.randn(2, 1, 2, 3, 4).unbind(0)      # 3 tokens (B=1, Hkv=2, Nnew=3, D=4)
    >>> k_all, v_all = cache.update(k, v)
    >>> k_all, v_all = cache.update(k[:, :, :1], v[:, :, :1])   # one more token
    >>> cache.length, k_all.shape
    (4, torch.Size([1, 2, 4, 4]))
    >>> cache.update(*torch.randn(2, 1, 2, 5, 4).unbind(0))
    Traceback (most recent call last):
    ...
    qkv.errors.AttentionError: cache: cannot store 5 new token(s): 4 of max_length 8 are in use ...
    """

    def _allocate(self) -> None:
        shape = (self.batch, self.heads, self.max_length, self.head_dim)  # (B, Hkv, max_length, D)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros_like(self.k)

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        start, new = self._claim(k, v)
        self.k.narrow(2, start, new).copy_(k)  # positions start .. length-1
        self.v.narrow(2, start, new).copy_(v)
        return self.k.narrow(2, 0, self.length), self.v.narrow(2, 0, self.length)


def quantize_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric absmax int8 quantization of each vector along the last axis.

    Returns ``(q, scale)``: ``q`` int8 of x's shape and ``scale`` float32 ``(..., 1)``
    with ``scale = max|x| / 127`` and ``q = round(x / scale)``; `dequantize_int8` gives
    ``q * scale``, within ``scale / 2 = max|x| / 254`` of ``x`` in every element.

    >>> import torch
    >>> from qkv.cache import quantize_int8, dequantize_int8
    >>> x = torch.tensor([[0.5, -1.27, 0.01]])
    >>> q, scale = quantize_int8(x)
    >>> q.tolist(), round(scale.item(), 4)
    ([[50, -127, 1]], 0.01)
    >>> bool(((dequantize_int8(q, scale, torch.float32) - x).abs() <= 1.27 / 254).all())
    True
    """
    x32 = x.float()
    scale = x32.abs().amax(dim=-1, keepdim=True) / 127.0  # (..., D) -> (..., 1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero vectors: q = 0
    q = torch.round(x32 / safe).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """``q * scale`` in float32, then in ``dtype``; the inverse of `quantize_int8` up to its bound."""
    return (q.float() * scale).to(dtype)


class Int8Cache(_PreallocatedCache):
    """Keys and values stored as int8 with one float32 scale per (token, head) vector.

    Each new key (and value) vector ``x`` of ``D`` numbers is stored as
    ``round(x / s)`` with ``s = max|x| / 127`` (symmetric absmax, `quantize_int8`) and
    read back as ``round(x / s) · s`` in the cache's dtype. Memory per token and
    head: ``D + 4`` bytes instead of ``2D`` (bfloat16) or ``4D`` (float32).

    Error bound. Every element read back differs from the one stored by at most
    ``max|x| / 254`` (half a quantization step of its own vector), plus the rounding
    of the cache's dtype. For one attention call this gives: with ``δ = scale ·
    ‖q‖₁ · max_j max|k_j| / 254`` (the most any score moves), the probabilities
    change by at most ``e^{2δ} - 1`` in L1, and each output element by at most
    ``(e^{2δ} - 1) · max|v| + max_j max|v_j| / 254``. Quantization is per token, so
    decoding token by token gives the same result as storing the prompt at once.

    >>> import torch
    >>> from qkv.cache import Int8Cache
    >>> cache = Int8Cache(batch=1, heads=2, max_length=8, head_dim=16)
    >>> k, v = torch.randn(2, 1, 2, 5, 16).unbind(0)     # (B=1, Hkv=2, Nnew=5, D=16)
    >>> k_all, v_all = cache.update(k, v)
    >>> bound = k.abs().amax(-1, keepdim=True) / 254       # per (token, head) vector
    >>> bool(((k_all - k).abs() <= bound + 1e-6).all())
    True
    """

    def _allocate(self) -> None:
        shape = (self.batch, self.heads, self.max_length, self.head_dim)  # (B, Hkv, max_length, D)
        self.k = torch.zeros(shape, dtype=torch.int8, device=self.device)
        self.v = torch.zeros_like(self.k)
        self.k_scale = torch.zeros(shape[:3] + (1,), dtype=torch.float32, device=self.device)  # (B, Hkv, max_length, 1)
        self.v_scale = torch.zeros_like(self.k_scale)

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        start, new = self._claim(k, v)
        for x, values, scales in ((k, self.k, self.k_scale), (v, self.v, self.v_scale)):
            q, scale = quantize_int8(x)
            values.narrow(2, start, new).copy_(q)  # positions start .. length-1
            scales.narrow(2, start, new).copy_(scale)
        n = self.length
        k_all = dequantize_int8(self.k.narrow(2, 0, n), self.k_scale.narrow(2, 0, n), self.dtype)  # (B, Hkv, length, D)
        v_all = dequantize_int8(self.v.narrow(2, 0, n), self.v_scale.narrow(2, 0, n), self.dtype)  # (B, Hkv, length, D)
        return k_all, v_all


class PagePool:
    """Fixed-size pages of key/value storage shared by several `PagedCache` s.

    ``k``, ``v``: ``(num_pages, page_size, Hkv, D)``, token-major within a page, so
    consecutive pages read as one ``(tokens, Hkv, D)`` view. A page belongs to at most
    one sequence at a time; `allocate` hands out free pages and `release` returns them.

    >>> import torch
    >>> from qkv.cache import PagePool, PagedCache
    >>> pool = PagePool(num_pages=4, page_size=2, heads=1, head_dim=4)
    >>> a, b = PagedCache(pool, batch=1), PagedCache(pool, batch=1)
    >>> _ = a.update(*torch.randn(2, 1, 1, 3, 4).unbind(0))   # 3 tokens: 2 pages
    >>> _ = b.update(*torch.randn(2, 1, 1, 1, 4).unbind(0))   # 1 token: 1 page
    >>> pool.num_free, a.block_table.tolist(), b.block_table.tolist()
    (1, [[0, 1]], [[2]])
    >>> a.free(); pool.num_free                               # a's pages go back to the pool
    3
    """

    def __init__(
        self,
        num_pages: int,
        page_size: int,
        heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        sizes = {"num_pages": num_pages, "page_size": page_size, "heads": heads, "head_dim": head_dim}
        self.dtype, self.device = _storage(sizes, dtype, device)
        self.num_pages, self.page_size, self.heads, self.head_dim = num_pages, page_size, heads, head_dim
        self.k = torch.zeros(num_pages, page_size, heads, head_dim, dtype=dtype, device=self.device)
        self.v = torch.zeros_like(self.k)
        self._free = list(range(num_pages))  # allocate pops from the front: lowest page ids first

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, count: int) -> list[int]:
        """``count`` free page ids; raises `qkv.AttentionError` (allocating none) if there are fewer."""
        if count > len(self._free):
            raise AttentionError(
                f"cache: the page pool is full: {count} more page(s) of {self.page_size} tokens needed, "
                f"{len(self._free)} of {self.num_pages} free; free finished sequences (cache.free()) "
                "or make a larger PagePool(num_pages=...)"
            )
        pages, self._free = self._free[:count], self._free[count:]
        return pages

    def release(self, pages: Sequence[int]) -> None:
        """Give allocated pages back; raises `qkv.AttentionError` (releasing none) for a page id that
        is not in the pool, is already free, or appears twice."""
        pages = list(pages)
        free = set(self._free)
        for page in pages:
            if not isinstance(page, int) or isinstance(page, bool) or not 0 <= page < self.num_pages:
                raise AttentionError(
                    f"pages: {page!r} is not a page id of this pool (0 .. {self.num_pages - 1}); nothing released"
                )
            if page in free:
                raise AttentionError(f"pages: page {page} is already free (released twice?); nothing released")
        if len(set(pages)) != len(pages):
            raise AttentionError(f"pages: {pages} names a page twice; nothing released")
        self._free.extend(pages)
        self._free.sort()

    def __repr__(self) -> str:
        return (
            f"PagePool(num_pages={self.num_pages}, page_size={self.page_size}, heads={self.heads}, "
            f"head_dim={self.head_dim}, free={self.num_free}, dtype={self.dtype})"
        )


class PagedCache(KVCache):
    """A cache for ``batch`` sequences whose tokens live in pages of a shared `PagePool`.

    Token ``t`` of sequence ``b`` lives in page ``block_table[b, t // page_size]`` at
    slot ``t % page_size``. `update` takes new pages from the pool as the sequences
    grow, writes the new keys and values into them and returns every stored token
    as ``(B, Hkv, length, D)``: a view of the pool when one sequence holds consecutive
    pages (the usual case), else gathered through the block table. `free` (or
    `reset`) gives the pages back.
    ``max_length`` (optional) caps the tokens per sequence; the pool's size caps
    all sequences together.

    >>> import torch
    >>> from qkv.cache import PagePool, PagedCache
    >>> pool = PagePool(num_pages=8, page_size=4, heads=2, head_dim=8)
    >>> cache = PagedCache(pool, batch=2)
    >>> k, v = torch.randn(2, 2, 2, 6, 8).unbind(0)        # 6 tokens (B=2, Hkv=2, Nnew=6, D=8)
    >>> k_all, v_all = cache.update(k, v)
    >>> torch.equal(k_all, k), cache.block_table.tolist()   # 2 pages per sequence
    (True, [[0, 1], [2, 3]])
    """

    def __init__(self, pool: PagePool, batch: int, max_length: int | None = None) -> None:
        if not isinstance(pool, PagePool):
            raise AttentionError(f"pool: expected a qkv.cache.PagePool, got {type(pool).__name__}")
        super().__init__(batch, pool.heads, pool.head_dim, pool.dtype, pool.device)
        self.pool = pool
        self.max_length = None if max_length is None else checks.integer("max_length", max_length, minimum=1)
        self.pages: list[list[int]] = [[] for _ in range(batch)]
        self._first_page: int | None = None  # one sequence whose pages are consecutive ids: the first

    @property
    def block_table(self) -> Tensor:
        """``(B, pages per sequence)`` page ids, LongTensor."""
        table = torch.tensor(self.pages, dtype=torch.long, device=self.device)  # (B, P); (B, 0) when empty
        return table.view(self.batch, -1)  # (B, P), also for B = 0 or P = 0

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        new = self._check(k, v)
        if self.max_length is not None:
            self._check_room(new, self.max_length)
        size = self.pool.page_size
        have = len(self.pages[0]) if self.batch else 0
        need = math.ceil((self.length + new) / size) - have
        if need > 0:
            fresh = self.pool.allocate(need * self.batch)  # raises before anything changes
            for b in range(self.batch):
                self.pages[b].extend(fresh[b * need : (b + 1) * need])
            pages = self.pages[0] if self.batch == 1 else []
            consecutive = bool(pages) and pages == list(range(pages[0], pages[0] + len(pages)))
            self._first_page = pages[0] if consecutive else None
        if new == 1:  # a decoding step: one slot per sequence, written in place
            page, slot = divmod(self.length, size)
            for b in range(self.batch):
                self.pool.k[self.pages[b][page], slot].copy_(k[b, :, 0])  # (Hkv, D)
                self.pool.v[self.pages[b][page], slot].copy_(v[b, :, 0])
        else:
            t = torch.arange(self.length, self.length + new, device=self.device)  # (Nnew,) token positions
            page_ids = self.block_table[:, t // size]  # (B, Nnew)
            slot_ids = (t % size).expand_as(page_ids)  # (Nnew,) -> (B, Nnew)
            self.pool.k[page_ids, slot_ids] = k.transpose(1, 2)  # (B, Hkv, Nnew, D) -> (B, Nnew, Hkv, D)
            self.pool.v[page_ids, slot_ids] = v.transpose(1, 2)
        self.length += new
        return self._read(self.pool.k), self._read(self.pool.v)

    def _read(self, storage: Tensor) -> Tensor:
        """Every stored token ``(B, Hkv, length, D)``: a view of the pool where one sequence's pages
        are consecutive (no copy), else gathered page by page through the block table."""
        if self._first_page is not None:
            pages = storage.narrow(0, self._first_page, len(self.pages[0]))[None]  # (1, P, S, Hkv, D)
        else:
            pages = storage[self.block_table]  # (num_pages, S, Hkv, D)[(B, P)] -> (B, P, S, Hkv, D)
        tokens = pages.flatten(1, 2)  # (B, P, S, Hkv, D) -> (B, P*S, Hkv, D)
        return tokens[:, : self.length].transpose(1, 2)  # (B, length, Hkv, D) -> (B, Hkv, length, D)

    def free(self) -> None:
        """Give every page back to the pool and forget the stored tokens."""
        self.crop(0)

    def crop(self, length: int) -> None:
        """Forget every token after the first ``length``; pages no longer needed go back to the pool."""
        self._check_crop(length)
        keep = math.ceil(length / self.pool.page_size)
        self.pool.release([page for pages in self.pages for page in pages[keep:]])
        self.pages = [pages[:keep] for pages in self.pages]
        if not self.pages[0]:
            self._first_page = None
        self.length = length

    def reset(self) -> None:
        self.free()


def make_cache(
    kind: str,
    *,
    batch: int,
    heads: int,
    max_length: int,
    head_dim: int,
    page_size: int = 16,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> KVCache:
    """One layer's cache of ``kind`` ``"contiguous"``, ``"paged"`` or ``"int8"``.

    ``"paged"`` gets its own pool with room for ``batch`` sequences of ``max_length``
    tokens (``batch · ceil(max_length / page_size)`` pages); to share a pool between
    requests make `PagePool` and `PagedCache` yourself.

    >>> from qkv.cache import make_cache
    >>> make_cache("int8", batch=1, heads=2, max_length=16, head_dim=8)
    Int8Cache(batch=1, heads=2, head_dim=8, length=0, dtype=torch.float32)
    """
    if kind == "contiguous":
        return ContiguousCache(batch, heads, max_length, head_dim, dtype, device)
    if kind == "int8":
        return Int8Cache(batch, heads, max_length, head_dim, dtype, device)
    if kind == "paged":
        checks.integer("max_length", max_length, minimum=1)
        checks.integer("page_size", page_size, minimum=1)
        pool = PagePool(max(1, batch * math.ceil(max_length / page_size)), page_size, heads, head_dim, dtype, device)
        return PagedCache(pool, batch, max_length=max_length)
    raise AttentionError(f"kind: unknown cache kind {kind!r}; choose one of {', '.join(map(repr, KINDS))}")


class ModelCache(Sequence[KVCache]):
    """One `KVCache` per attention layer of a model; ``cache[i]`` is layer ``i``'s.

    Models pass ``cache[i]`` to their ``i``-th layer. ``length`` is the number of
    tokens stored (the same in every layer after a full forward pass).
    `create` makes one cache per layer from each layer's ``(kv heads, head dim)``;
    a model's ``new_cache(...)`` fills those in for you.

    >>> import torch
    >>> from qkv.cache import ModelCache
    >>> cache = ModelCache.create("paged", layers=[(2, 8)] * 3, batch=1, max_length=32)
    >>> len(cache), cache.length, type(cache[0]).__name__
    (3, 0, 'PagedCache')
    """

    def __init__(self, layers: Sequence[KVCache]) -> None:
        layers = list(layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, KVCache):
                raise AttentionError(f"layers: item {i} is a {type(layer).__name__}, expected a qkv.cache.KVCache")
        self.layers = layers

    @classmethod
    def create(
        cls,
        kind: str,
        *,
        layers: Sequence[tuple[int, int]],
        batch: int,
        max_length: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        page_size: int = 16,
    ) -> ModelCache:
        """Caches of ``kind`` for layers with ``(num_kv_heads, head_dim)`` each, via `make_cache`."""
        return cls(
            [
                make_cache(
                    kind,
                    batch=batch,
                    heads=heads,
                    max_length=max_length,
                    head_dim=head_dim,
                    dtype=dtype,
                    device=device,
                    page_size=page_size,
                )
                for heads, head_dim in layers
            ]
        )

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def crop(self, length: int) -> None:
        """`KVCache.crop` on every layer (each keeps its first ``length`` tokens)."""
        for layer in self.layers:
            layer._check_crop(length)
        for layer in self.layers:
            layer.crop(length)

    def __getitem__(self, index: int) -> KVCache:  # type: ignore[override]
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[KVCache]:
        return iter(self.layers)

    def __repr__(self) -> str:
        kinds = sorted({type(layer).__name__ for layer in self.layers})
        return f"ModelCache({len(self.layers)} layers of {'/'.join(kinds) or 'nothing'}, length={self.length})"


@contextmanager
def rollback_on_error(*caches: KVCache | ModelCache | None) -> Iterator[None]:
    """Run a block that stores into ``caches``; if it raises, crop each back to where it was.

    A decoding step that fails part way (a mask of the wrong shape in the last layer)
    leaves every cache as it was before the step, then re-raises.

    >>> import torch
    >>> from qkv.cache import ContiguousCache, rollback_on_error
    >>> cache = ContiguousCache(batch=1, heads=1, max_length=8, head_dim=2)
    >>> try:
    ...     with rollback_on_error(cache):
    ...         _ = cache.update(torch.ones(1, 1, 3, 2), torch.ones(1, 1, 3, 2))
    ...         raise ValueError("a later layer failed")
    ... except ValueError:
    ...     pass
    >>> cache.length
    0
    """
    layers = [layer for c in caches if c is not None for layer in (c if isinstance(c, ModelCache) else [c])]
    lengths = [layer.length for layer in layers]
    try:
        yield
    except BaseException:
        for layer, length in zip(layers, lengths):
            if layer.length >= length:
                layer.crop(length)
        raise


__all__ = [
    "KINDS",
    "ContiguousCache",
    "Int8Cache",
    "KVCache",
    "ModelCache",
    "PagePool",
    "PagedCache",
    "dequantize_int8",
    "make_cache",
    "quantize_int8",
    "rollback_on_error",
]
