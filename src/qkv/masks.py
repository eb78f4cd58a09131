"""What may attend: masks as small pure rules. ``True`` means "may attend", always.

A mask is a rule ``allowed(b, h, q_idx, kv_idx)`` on absolute positions, query
``i`` in ``[0, Nq)`` and key ``j`` in ``[0, Nk)``. Rules that speak of a query's
place in the sequence use the bottom-right alignment of ``causal=True``::

    i' = i + (Nk - Nq)      the query's position among the keys

so that with a KV cache (``Nq < Nk``) the new queries are the last positions.
Build masks with the factories (`causal`, `sliding_window`, `local`, `padding`,
`document`, `block_sparse`, `global_tokens`, `dilated`, `from_function`) and
combine them with ``&``, ``|`` and ``~``.

Every mask answers three questions:

- `Mask.allowed`: the rule itself, elementwise on broadcasting index tensors
  (FlexAttention's ``mask_mod`` convention, plus the sizes ``Nq`` and ``Nk``);
- `Mask.to_dense`: the bool ``(B, H, Nq, Nk)`` tensor, the spec of the mask;
- `Mask.tile_kinds`: for each (query block, key block) tile, whether it is
  `TileKind.EMPTY` (skip it), `TileKind.FULL` (no per-element mask needed) or
  `TileKind.PARTIAL`. The built-ins answer from block boundaries alone.

>>> from qkv import masks
>>> m = masks.sliding_window(2)
>>> m
sliding_window(2)
>>> m.to_dense(1, 1, 4, 4)[0, 0].int()
tensor([[1, 0, 0, 0],
        [1, 1, 0, 0],
        [0, 1, 1, 0],
        [0, 0, 1, 1]], dtype=torch.int32)
>>> m.tile_kinds(1, 1, 4, 4, block_q=2, block_k=2)[0, 0]    # 0 EMPTY, 1 PARTIAL, 2 FULL
tensor([[1, 0],
        [1, 1]], dtype=torch.int8)
>>> masks.causal() & masks.padding([3, 5])
causal() & padding(lengths=[3, 5])
"""

from __future__ import annotations

import enum
import operator
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import reduce

import torch
from torch import Tensor

from qkv.errors import AttentionError

MaskFunction = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""``fn(b, h, q_idx, kv_idx) -> bool tensor``: FlexAttention's ``mask_mod``."""

# At most this many (b, h, i, j) elements are evaluated at once when a rule
# has no analytic tile classification (`from_function`, user subclasses).
_CHUNK_ELEMENTS = 1 << 21
_CACHE_SIZE = 32


class TileKind(enum.IntEnum):
    """What a (query block, key block) tile holds. Ordered: ``EMPTY < PARTIAL < FULL``."""

    EMPTY = 0  # no (query, key) pair in the tile may attend
    PARTIAL = 1  # some may, some may not: apply the mask elementwise
    FULL = 2  # every pair may attend


# ---------------------------------------------------------------------------
# argument checks


def _int_arg(where: str, name: str, value: object, minimum: int) -> int:
    """An integer ``>= minimum`` (bools and floats refused), or an AttentionError naming ``name``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise AttentionError(
            f"{where}: {name} must be an integer >= {minimum}, got {type(value).__name__} {value!r}"
        ) from None
    if number < minimum:
        raise AttentionError(f"{where}: {name} must be an integer >= {minimum}, got {number}")
    return number


def _check_callable(where: str, fn: object, signature: str) -> None:
    """Nothing if ``fn`` is callable, else an AttentionError showing the ``signature`` it should have."""
    if not callable(fn):
        raise AttentionError(f"{where}: fn must be callable as {signature}, got {type(fn).__name__}")


def _long_tensor(where: str, name: str, value: object, dims: tuple[int, ...], layout: str) -> Tensor:
    """An integer tensor (or nested list of ints) with ``dim()`` in ``dims``, as int64 on its device."""
    if not isinstance(value, Tensor):
        try:
            value = torch.as_tensor(value)
            value = value.long() if value.numel() == 0 else value  # [] would read as float32
        except (TypeError, ValueError, RuntimeError):
            raise AttentionError(
                f"{where}: {name} must be an integer tensor or list of ints {layout}, "
                f"got {type(value).__name__}"
            ) from None
    if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
        raise AttentionError(f"{where}: {name} must hold integers {layout}, got dtype {value.dtype}")
    if value.dim() not in dims:
        raise AttentionError(
            f"{where}: {name} must be {layout}, got shape {tuple(value.shape)}"
        )
    return value.long()


def _check_grid(batch: object, heads: object, num_queries: object, num_keys: object) -> None:
    _int_arg("mask", "batch", batch, 1)
    _int_arg("mask", "heads", heads, 1)
    _int_arg("mask", "num_queries", num_queries, 0)
    _int_arg("mask", "num_keys", num_keys, 0)


def _brief(t: Tensor, limit: int = 8) -> str:
    """A tensor argument in a repr: its values when short, else its shape."""
    if t.numel() <= limit:
        return str(t.tolist())
    return f"<{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}>"


# ---------------------------------------------------------------------------
# index grids and tile geometry


def _grid(
    batch: int, heads: int, num_queries: int, num_keys: int, device: torch.device | str | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Broadcasting index tensors ``b (B,1,1,1), h (1,H,1,1), q_idx (1,1,Nq,1), kv_idx (1,1,1,Nk)``."""
    b = torch.arange(batch, device=device).view(batch, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)
    h = torch.arange(heads, device=device).view(1, heads, 1, 1)  # (H,) -> (1, H, 1, 1)
    q = torch.arange(num_queries, device=device).view(1, 1, num_queries, 1)  # (Nq,) -> (1, 1, Nq, 1)
    k = torch.arange(num_keys, device=device).view(1, 1, 1, num_keys)  # (Nk,) -> (1, 1, 1, Nk)
    return b, h, q, k


@dataclass(frozen=True)
class _Tiling:
    """A ``(batch, heads, Nq, Nk)`` problem cut into ``block_q x block_k`` tiles (arguments checked)."""

    batch: int
    heads: int
    num_queries: int
    num_keys: int
    block_q: int
    block_k: int
    device: torch.device | str | None

    @property
    def offset(self) -> int:
        """``Nk - Nq``: query ``i`` sits at key position ``i' = i + offset``."""
        return self.num_keys - self.num_queries

    @property
    def grid(self) -> tuple[int, int]:
        """``(nQb, nKb)``: the number of tile rows and columns."""
        return -(-self.num_queries // self.block_q), -(-self.num_keys // self.block_k)

    def rows(self) -> tuple[Tensor, Tensor]:
        """First query and one past the last query of each tile row, ``(nQb,)`` each."""
        return _bounds(self.num_queries, self.block_q, self.device)

    def cols(self) -> tuple[Tensor, Tensor]:
        """First key and one past the last key of each tile column, ``(nKb,)`` each."""
        return _bounds(self.num_keys, self.block_k, self.device)

    def kinds_of(self, mask: Mask) -> Tensor:
        """``mask.tile_kinds`` on this tiling (through the public method, which subclasses may override)."""
        return mask.tile_kinds(
            self.batch, self.heads, self.num_queries, self.num_keys, self.block_q, self.block_k, self.device
        )


def _bounds(n: int, block: int, device: torch.device | str | None) -> tuple[Tensor, Tensor]:
    start = torch.arange(0, n, block, device=device)  # (nb,)
    return start, (start + block).clamp(max=n)


def _blocks(x: Tensor, block: int, fill: int | bool) -> Tensor:
    """``(..., N) -> (..., ceil(N / block), block)``, the last block padded with ``fill``."""
    pad = -x.shape[-1] % block
    if pad:
        x = torch.cat([x, x.new_full((*x.shape[:-1], pad), fill)], dim=-1)  # (..., N) -> (..., N + pad)
    return x.view(*x.shape[:-1], x.shape[-1] // block, block)  # (..., nb * block) -> (..., nb, block)


def _kinds(full: Tensor, empty: Tensor) -> Tensor:
    """int8 TileKind values from the two bool answers (a tile is never both)."""
    kinds = torch.where(full, int(TileKind.FULL), int(TileKind.PARTIAL))
    return torch.where(empty, int(TileKind.EMPTY), kinds).to(torch.int8)


def _as_4d(t: Tensor) -> Tensor:
    """Leading singleton axes up to 4-D (broadcasting aligns shapes on the right)."""
    return t[(None,) * (4 - t.dim())]  # (..., Nq', Nk') -> (1, ..., Nq', Nk'), 4 axes


def _evaluate_tiles(rule: Callable[..., Tensor], t: _Tiling) -> Tensor:
    """Tile kinds of any rule, by evaluating it a few query blocks at a time.

    Memory stays near ``_CHUNK_ELEMENTS`` booleans; the result is ``(B', H', nQb, nKb)``
    with ``B'`` (``H'``) 1 when the rule's output did not grow along that axis.
    """
    b, h, _, k = _grid(t.batch, t.heads, t.num_queries, t.num_keys, t.device)
    n_kb = t.grid[1]
    per_block = t.batch * t.heads * t.block_q * max(1, n_kb * t.block_k)  # elements in one query block's rows
    rows = t.block_q * max(1, _CHUNK_ELEMENTS // per_block)  # whole query blocks per evaluation
    counts = []
    for start in range(0, t.num_queries, rows):
        n_rows = min(rows, t.num_queries - start)
        q = torch.arange(start, start + n_rows, device=t.device).view(1, 1, n_rows, 1)  # (R,) -> (1, 1, R, 1)
        allowed = rule(b, h, q, k, t.num_queries, t.num_keys)
        allowed = _checked_output(allowed, (t.batch, t.heads, n_rows, t.num_keys))  # (B', H', R, Nk)
        b_size, h_size = allowed.shape[:2]
        n_rb = -(-n_rows // t.block_q)
        padded = allowed.new_zeros(b_size, h_size, n_rb * t.block_q, n_kb * t.block_k)
        padded[:, :, :n_rows, : t.num_keys] = allowed
        # (B', H', R', Nk') -> (B', H', R'/bq, bq, nKb, bk), R' and Nk' padded to whole blocks
        tiles = padded.view(b_size, h_size, n_rb, t.block_q, n_kb, t.block_k)
        counts.append(tiles.sum(dim=(3, 5)))  # (B', H', R/bq, nKb): allowed pairs per tile
    if not counts:
        return torch.zeros(1, 1, 0, n_kb, dtype=torch.int8, device=t.device)
    b_size, h_size = max(c.shape[0] for c in counts), max(c.shape[1] for c in counts)
    count = torch.cat([c.expand(b_size, h_size, -1, -1) for c in counts], dim=2)  # (B', H', nQb, nKb)
    (q0, q1), (k0, k1) = t.rows(), t.cols()
    area = (q1 - q0)[:, None] * (k1 - k0)[None, :]  # (nQb, nKb): pairs per tile
    return _kinds(count == area, count == 0)


def _checked_output(allowed: object, full: tuple[int, int, int, int]) -> Tensor:
    """A rule's output as a 4-D bool tensor expanded to ``(B'|1, H'|1, R, Nk)``, or an AttentionError."""
    want = f"(B={full[0]}, H={full[1]}, rows={full[2]}, Nk={full[3]})"
    if not isinstance(allowed, Tensor):
        raise AttentionError(
            f"mask: the rule must return a bool tensor broadcastable to {want}, got {type(allowed).__name__}"
        )
    if allowed.dtype != torch.bool or allowed.dim() > 4:
        raise AttentionError(
            f"mask: the rule must return a bool tensor broadcastable to {want}, "
            f"got dtype {allowed.dtype} and shape {tuple(allowed.shape)}"
        )
    allowed = _as_4d(allowed)
    if any(size not in (1, n) for size, n in zip(allowed.shape, full)):
        raise AttentionError(
            f"mask: the rule returned shape {tuple(allowed.shape)}, which does not broadcast to {want}"
        )
    return allowed.expand(*allowed.shape[:2], *full[2:])


# ---------------------------------------------------------------------------
# the base class


def _broadcast_shape(*shapes: torch.Size) -> tuple[int, ...]:
    """``torch.broadcast_shapes`` for the few small shapes of a block (a tenth of its cost per call);
    shapes that do not broadcast get torch's own error."""
    rank = max(len(shape) for shape in shapes)
    out = [1] * rank
    for shape in shapes:
        for axis, size in enumerate(shape, rank - len(shape)):
            if size != 1:
                if out[axis] not in (1, size):
                    return tuple(torch.broadcast_shapes(*shapes))  # raises, naming the sizes
                out[axis] = size
    return tuple(out)


class Mask:
    """A rule saying which (query, key) pairs may attend: ``True`` = may attend.

    Subclass and implement `allowed` for a rule of your own (or use
    `from_function`); `to_dense` and `tile_kinds` then work by evaluating it.
    The built-ins also classify tiles analytically, from block boundaries.
    """

    _precedence = 4  # for reprs: ``|`` 1, ``&`` 2, ``~`` 3, a factory call 4

    @property
    def offset_invariant(self) -> bool:
        """True when the rule depends only on ``i' - j`` (not on b, h or absolute positions).

        Kernels may then reuse one block's mask for every block at the same offset.
        """
        return False

    def allowed(
        self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        """The rule, elementwise.

        ``b, h, q_idx, kv_idx`` are LongTensors that broadcast against each other,
        e.g. ``(B,1,1,1), (1,H,1,1), (1,1,Nq',1), (1,1,1,Nk')``; ``q_idx`` and ``kv_idx``
        are absolute positions in ``[0, Nq)`` and ``[0, Nk)``. Returns a bool tensor of
        the broadcast shape (possibly an expanded view).

        >>> import torch
        >>> b, h = torch.tensor(0), torch.tensor(0)
        >>> causal().allowed(b, h, torch.tensor([[0], [1]]), torch.arange(3), num_queries=2, num_keys=3).int()
        tensor([[1, 1, 0],
                [1, 1, 1]], dtype=torch.int32)
        """
        out = self._rule(b, h, q_idx, kv_idx, num_queries, num_keys)
        grid = _broadcast_shape(b.shape, h.shape, q_idx.shape, kv_idx.shape)
        if not isinstance(out, Tensor) or out.dtype != torch.bool:
            _checked_output(out, (1, 1, 1, 1))  # raises, naming what the rule returned
        try:
            return out.expand(_broadcast_shape(grid, out.shape))
        except RuntimeError:
            raise AttentionError(
                f"mask: the rule returned shape {tuple(out.shape)}, which does not broadcast to the "
                f"index grid {tuple(grid)}"
            ) from None

    def _rule(
        self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        """The rule in the smallest shape that broadcasts to the full one (no axis it ignores)."""
        if type(self).allowed is Mask.allowed:
            raise NotImplementedError(f"{type(self).__name__}: a Mask subclass implements allowed()")
        return self.allowed(b, h, q_idx, kv_idx, num_queries, num_keys)

    def _check(self, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
        """Raise AttentionError if the mask cannot describe a ``(batch, heads, Nq, Nk)`` problem."""

    def to_dense(
        self,
        batch: int,
        heads: int,
        num_queries: int,
        num_keys: int,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """The bool ``(batch, heads, Nq, Nk)`` tensor: `allowed` on the full grid, the spec of the mask.

        Axes the mask does not depend on are expanded views (no memory).

        >>> causal().to_dense(1, 1, 2, 4)[0, 0].int()       # a KV cache: 2 new queries, 4 keys
        tensor([[1, 1, 1, 0],
                [1, 1, 1, 1]], dtype=torch.int32)
        >>> padding([1, 3]).to_dense(2, 8, 4, 4).shape
        torch.Size([2, 8, 4, 4])
        """
        _check_grid(batch, heads, num_queries, num_keys)
        self._check(batch, heads, num_queries, num_keys)
        b, h, q, k = _grid(batch, heads, num_queries, num_keys, device)
        full = (batch, heads, num_queries, num_keys)
        return _checked_output(self._rule(b, h, q, k, num_queries, num_keys), full).expand(*full)

    def tile_kinds(
        self,
        batch: int,
        heads: int,
        num_queries: int,
        num_keys: int,
        block_q: int,
        block_k: int,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """The `TileKind` of every tile: int8 ``(B', H', ceil(Nq / block_q), ceil(Nk / block_k))``.

        ``B'`` is 1 or ``batch`` and ``H'`` is 1 or ``heads`` (1 where the mask does
        not depend on that axis). Tile ``(r, c)`` covers query rows
        ``[r*block_q, min((r+1)*block_q, Nq))`` and keys ``[c*block_k, min((c+1)*block_k, Nk))``.
        EMPTY tiles hold no allowed pair and FULL tiles no forbidden one; PARTIAL is
        always a safe answer (combinators may give it for a tile that is in fact uniform).

        >>> causal().tile_kinds(1, 1, 6, 6, block_q=2, block_k=2)[0, 0]
        tensor([[1, 0, 0],
                [2, 1, 0],
                [2, 2, 1]], dtype=torch.int8)
        """
        _check_grid(batch, heads, num_queries, num_keys)
        _int_arg("tile_kinds", "block_q", block_q, 1)
        _int_arg("tile_kinds", "block_k", block_k, 1)
        self._check(batch, heads, num_queries, num_keys)
        return self._tile_kinds(_Tiling(batch, heads, num_queries, num_keys, block_q, block_k, device))

    def _tile_kinds(self, t: _Tiling) -> Tensor:
        """Checked arguments in, kinds out. Without a better way: evaluate the rule, chunk by chunk."""
        return _evaluate_tiles(self._rule, t)

    def __and__(self, other: Mask) -> Mask:
        return And([self, _check_operand("&", other)])

    def __or__(self, other: Mask) -> Mask:
        return Or([self, _check_operand("|", other)])

    def __invert__(self) -> Mask:
        return Not(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _check_operand(op: str, other: object) -> Mask:
    if not isinstance(other, Mask):
        raise AttentionError(
            f"mask {op} {type(other).__name__}: both operands must be qkv.masks.Mask; "
            "turn a rule into a mask with masks.from_function(fn)"
        )
    return other


def _paren(mask: Mask, level: int) -> str:
    return f"({mask!r})" if mask._precedence < level else repr(mask)


# ---------------------------------------------------------------------------
# rules on the distance d = i' - j: causal, sliding_window, local, dilated


class _Diagonal(Mask):
    """Allowed iff ``d = i' - j`` lies in ``[lo, hi]`` and ``(d - lo) % step == 0``."""

    lo: int
    hi: int | None  # None: no upper end
    step: int = 1
    offset_invariant = True

    def _rule(
        self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        d = q_idx + (num_keys - num_queries) - kv_idx  # i' - j, broadcast (..., Nq', Nk')
        ok = d >= self.lo
        if self.hi is not None:
            ok = ok & (d <= self.hi)
        if self.step > 1:
            ok = ok & ((d - self.lo) % self.step == 0)
        return ok

    def _tile_kinds(self, t: _Tiling) -> Tensor:
        (q0, q1), (k0, k1) = t.rows(), t.cols()
        # Contiguous rows and keys: a tile holds every integer d in [d_min, d_max].
        d_min = (q0 + t.offset)[:, None] - (k1 - 1)[None, :]  # (nQb, nKb)
        d_max = (q1 - 1 + t.offset)[:, None] - k0[None, :]  # (nQb, nKb)
        hi = d_max if self.hi is None else d_max.clamp(max=self.hi)
        lo = d_min.clamp(min=self.lo)
        first = self.lo + (lo - self.lo + self.step - 1) // self.step * self.step  # first allowed d >= lo
        empty = first > hi
        inside = (d_min >= self.lo) & (d_max == hi)
        full = inside & ~empty
        if self.step > 1:
            full = full & (d_min == d_max)  # a strided rule fills only a single-element tile
        return _kinds(full, empty)[None, None]  # (nQb, nKb) -> (1, 1, nQb, nKb)


class Causal(_Diagonal):
    """``j <= i'``: see `causal`."""

    lo, hi = 0, None

    def __repr__(self) -> str:
        return "causal()"


class SlidingWindow(_Diagonal):
    """``i' - window < j <= i'``: see `sliding_window`."""

    def __init__(self, window: int):
        self.window = window
        self.lo, self.hi = 0, window - 1

    def __repr__(self) -> str:
        return f"sliding_window({self.window})"


class Local(_Diagonal):
    """``|i' - j| <= radius``: see `local`."""

    def __init__(self, radius: int):
        self.radius = radius
        self.lo, self.hi = -radius, radius

    def __repr__(self) -> str:
        return f"local({self.radius})"


class Dilated(_Diagonal):
    """``i' - j = m * dilation`` for ``m`` in ``[0, window)``: see `dilated`."""

    def __init__(self, window: int, dilation: int):
        self.window, self.dilation = window, dilation
        self.lo, self.hi, self.step = 0, (window - 1) * dilation, dilation

    def __repr__(self) -> str:
        return f"dilated({self.window}, dilation={self.dilation})"


def causal() -> Mask:
    """Query ``i`` may attend key ``j`` iff ``j <= i'``, with ``i' = i + (Nk - Nq)`` (bottom-right)::

        Nq = Nk = 4         Nq = 2, Nk = 4 (KV cache)
          k0 k1 k2 k3         k0 k1 k2 k3
      q0  x  .  .  .      q0  x  x  x  .
      q1  x  x  .  .      q1  x  x  x  x
      q2  x  x  x  .
      q3  x  x  x  x

    >>> causal().to_dense(1, 1, 3, 3)[0, 0].int()
    tensor([[1, 0, 0],
            [1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    """
    return Causal()


def sliding_window(window: int) -> Mask:
    """Causal window of ``window`` keys ending at the query itself: ``i' - window < j <= i'``.

    ``sliding_window(1)`` attends only to the query's own position; a window at
    least ``Nk`` long equals `causal`.

    >>> sliding_window(3).to_dense(1, 1, 2, 5)[0, 0].int()     # i' = 3, 4
    tensor([[0, 1, 1, 1, 0],
            [0, 0, 1, 1, 1]], dtype=torch.int32)
    """
    return SlidingWindow(_int_arg("sliding_window", "window", window, 1))


def local(radius: int) -> Mask:
    """Bidirectional band: ``|i' - j| <= radius`` (``local(0)`` is the diagonal ``j == i'``).

    >>> local(1).to_dense(1, 1, 4, 4)[0, 0].int()
    tensor([[1, 1, 0, 0],
            [1, 1, 1, 0],
            [0, 1, 1, 1],
            [0, 0, 1, 1]], dtype=torch.int32)
    """
    return Local(_int_arg("local", "radius", radius, 0))


def dilated(window: int, dilation: int) -> Mask:
    """Causal and strided: ``window`` keys ``dilation`` apart, ``i' - j = m * dilation`` for ``0 <= m < window``.

    ``dilated(w, 1)`` equals ``sliding_window(w)``.

    >>> dilated(2, dilation=2).to_dense(1, 1, 5, 5)[0, 0].int()
    tensor([[1, 0, 0, 0, 0],
            [0, 1, 0, 0, 0],
            [1, 0, 1, 0, 0],
            [0, 1, 0, 1, 0],
            [0, 0, 1, 0, 1]], dtype=torch.int32)
    """
    return Dilated(_int_arg("dilated", "window", window, 1), _int_arg("dilated", "dilation", dilation, 1))


# ---------------------------------------------------------------------------
# padding and packed documents


class Padding(Mask):
    """Key ``j`` may be attended iff ``j < lengths[b]``: see `padding`."""

    def __init__(self, lengths: Tensor):
        self.lengths = lengths  # (B,) int64

    def _check(self, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
        if self.lengths.shape[0] != batch:
            raise AttentionError(
                f"padding: lengths has {self.lengths.shape[0]} entries but the batch has {batch} sequences; "
                "give one length per sequence"
            )

    def _rule(
        self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        return kv_idx < self.lengths.to(kv_idx.device)[b]

    def _tile_kinds(self, t: _Tiling) -> Tensor:
        k0, k1 = t.cols()
        length = self.lengths.to(k0.device)[:, None]  # (B,) -> (B, 1)
        kinds = _kinds(k1[None, :] <= length, k0[None, :] >= length)  # (B, nKb)
        return kinds[:, None, None, :].expand(t.batch, 1, *t.grid).contiguous()  # (B, nKb) -> (B, 1, nQb, nKb)

    def __repr__(self) -> str:
        return f"padding(lengths={_brief(self.lengths, limit=16)})"


def padding(lengths: Tensor | Sequence[int]) -> Mask:
    """Sequence ``b`` holds ``lengths[b]`` real keys: key ``j`` may be attended iff ``j < lengths[b]``.

    ``lengths`` is a 1-D integer tensor or list with one entry per sequence of the
    batch. Queries are not masked: a padded query row still attends to the real keys
    (its output is ignored downstream, and it never becomes an all-masked row).

    >>> padding([2, 3]).to_dense(2, 1, 1, 4)[:, 0, 0].int()
    tensor([[1, 1, 0, 0],
            [1, 1, 1, 0]], dtype=torch.int32)
    """
    lengths = _long_tensor("padding", "lengths", lengths, (1,), "1-D (B,), one length per sequence")
    if lengths.numel() == 0:
        raise AttentionError("padding: lengths must hold one length per sequence, got an empty list")
    if int(lengths.min()) < 0:
        raise AttentionError(f"padding: lengths must be >= 0, got {lengths.tolist()}")
    return Padding(lengths)


class Document(Mask):
    """Query and key in the same segment: see `document`."""

    def __init__(self, doc_ids: Tensor):
        self.doc_ids = doc_ids  # (Nk,) or (B, Nk) int64
        self._ids = doc_ids if doc_ids.dim() == 2 else doc_ids[None]  # (B' , Nk), B' in {1, B}

    def _check(self, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
        if self.doc_ids.shape[-1] != num_keys:
            raise AttentionError(
                f"document: doc_ids gives segments for {self.doc_ids.shape[-1]} keys, but Nk = {num_keys}; "
                f"doc_ids must be (Nk,) or (B, Nk), got shape {tuple(self.doc_ids.shape)}"
            )
        if self.doc_ids.dim() == 2 and self.doc_ids.shape[0] not in (1, batch):
            raise AttentionError(
                f"document: doc_ids has shape {tuple(self.doc_ids.shape)}, expected (B={batch}, Nk={num_keys}) "
                f"or (Nk,)"
            )

    def _rule(
        self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        pos = q_idx + (num_keys - num_queries)  # i', the query's position among the keys
        ids = self._ids.to(kv_idx.device)
        if ids.shape[0] == 1:
            return (pos >= 0) & (ids[0][pos.clamp(min=0)] == ids[0][kv_idx])
        return (pos >= 0) & (ids[b, pos.clamp(min=0)] == ids[b, kv_idx])

    def _tile_kinds(self, t: _Tiling) -> Tensor:
        ids = self._ids.to(t.device)  # (B', Nk)
        big, small = torch.iinfo(torch.long).max, torch.iinfo(torch.long).min
        pos = torch.arange(t.num_queries, device=ids.device) + t.offset  # (Nq,): i'
        valid = pos >= 0  # queries with i' < 0 (Nq > Nk) belong to no segment
        q_ids = ids[:, pos.clamp(min=0)]  # (B', Nq)
        q_min = _blocks(q_ids.masked_fill(~valid, big), t.block_q, big).amin(-1)  # (B', nQb)
        q_max = _blocks(q_ids.masked_fill(~valid, small), t.block_q, small).amax(-1)  # (B', nQb)
        q_any = _blocks(valid, t.block_q, False).any(-1)  # (nQb,)
        q_all = _blocks(valid, t.block_q, True).all(-1)  # (nQb,)
        k_min = _blocks(ids, t.block_k, big).amin(-1)  # (B', nKb)
        k_max = _blocks(ids, t.block_k, small).amax(-1)  # (B', nKb)
        qn, qx = q_min[:, :, None], q_max[:, :, None]  # (B', nQb, 1)
        kn, kx = k_min[:, None, :], k_max[:, None, :]  # (B', 1, nKb)
        empty = ~q_any[None, :, None] | (qx < kn) | (kx < qn)  # disjoint id ranges
        full = q_all[None, :, None] & (qn == qx) & (kn == kx) & (qn == kn)  # one segment on both sides
        return _kinds(full, empty)[:, None]  # (B', nQb, nKb) -> (B', 1, nQb, nKb)

    def __repr__(self) -> str:
        return f"document(doc_ids={_brief(self.doc_ids)})"


def document(doc_ids: Tensor | Sequence[int]) -> Mask:
    """Packed sequences: a query attends only to keys of its own segment.

    ``doc_ids`` gives the segment id of every key, ``(Nk,)`` or ``(B, Nk)``. Query
    ``i`` sits at key position ``i' = i + (Nk - Nq)`` and belongs to segment
    ``doc_ids[..., i']``; queries with ``i' < 0`` (only when ``Nq > Nk``) belong to
    none and attend to nothing. Ids need not be sorted. Combine with `causal` for
    packed decoder training: ``document(ids) & causal()``.

    >>> document([0, 0, 1, 1, 1]).to_dense(1, 1, 5, 5)[0, 0].int()
    tensor([[1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 1, 1, 1],
            [0, 0, 1, 1, 1],
            [0, 0, 1, 1, 1]], dtype=torch.int32)
    """
    doc_ids = _long_tensor("document", "doc_ids", doc_ids, (1, 2), "(Nk,) or (B, Nk), a segment id per key")
    if doc_ids.shape[-1] == 0 or doc_ids.numel() == 0:
        raise AttentionError(f"document: doc_ids must give at least one key, got shape {tuple(doc_ids.shape)}")
    return Document(doc_ids)


# ---------------------------------------------------------------------------
# block-sparse layouts and global tokens


class BlockSparse(Mask):
    """``allowed[i, j] = layout[..., i // block_size, j // block_size]``: see `block_sparse`."""

    def __init__(self, layout: Tensor, block_size: int):
        self.layout = layout  # as given: (nQb, nKb), (H, nQb, nKb) or (B, H, nQb, nKb)
        self.block_size = block_size
        self._layout = _as_4d(layout)  # (B'|1, H'|1, nQb, nKb)

    def _check(self, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
        bs = self.block_size
        want = (-(-num_queries // bs), -(-num_keys // bs))
        b_size, h_size, n_qb, n_kb = self._layout.shape
        if (n_qb, n_kb) != want:
            raise AttentionError(
                f"block_sparse: layout has {n_qb} x {n_kb} blocks, but Nq = {num_queries}, Nk = {num_keys} "
                f"with block_size = {bs} need ceil(Nq / {bs}) x ceil(Nk / {bs}) = {want[0]} x {want[1]}"
            )
        if b_size not in (1, batch) or h_size not in (1, heads):
            raise AttentionError(
                f"block_sparse: layout of shape {tuple(self.layout.shape)} does not broadcast to "
                f"(B={batch}, H={heads}, {n_qb}, {n_kb})"
            )

    def _rule(
        self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        layout = self._layout.to(kv_idx.device)
        bi = b if layout.shape[0] > 1 else b.new_zeros(())
        hi = h if layout.shape[1] > 1 else h.new_zeros(())
        return layout[bi, hi, q_idx // self.block_size, kv_idx // self.block_size]

    def _tile_kinds(self, t: _Tiling) -> Tensor:
        layout = self._layout.to(t.device)  # (B', H', nLq, nLk) layout cells
        bs = self.block_size
        # 2-D prefix sums: the number of True cells in any rectangle of the layout in O(1)
        s = layout.int().cumsum(-2).cumsum(-1)  # (B', H', nLq, nLk)
        s = torch.nn.functional.pad(s, (1, 0, 1, 0))  # (B', H', nLq, nLk) -> (B', H', nLq + 1, nLk + 1)
        (q0, q1), (k0, k1) = t.rows(), t.cols()
        r0, r1 = (q0 // bs)[:, None], ((q1 - 1) // bs + 1)[:, None]  # (nQb, 1): layout rows a tile touches
        c0, c1 = (k0 // bs)[None, :], ((k1 - 1) // bs + 1)[None, :]  # (1, nKb): layout columns
        count = s[..., r1, c1] - s[..., r0, c1] - s[..., r1, c0] + s[..., r0, c0]  # (B', H', nQb, nKb)
        area = (r1 - r0) * (c1 - c0)  # (nQb, nKb): cells a tile touches
        return _kinds(count == area, count == 0)

    def __repr__(self) -> str:
        return f"block_sparse(layout={_brief(self.layout, limit=0)}, block_size={self.block_size})"


def block_sparse(layout: Tensor, block_size: int) -> Mask:
    """A bool layout of square blocks: ``allowed[i, j] = layout[..., i // block_size, j // block_size]``.

    ``layout`` is ``(nQb, nKb)``, ``(H, nQb, nKb)`` or ``(B, H, nQb, nKb)`` with
    ``nQb = ceil(Nq / block_size)`` and ``nKb = ceil(Nk / block_size)``. Indices are
    absolute (no bottom-right alignment): the layout is drawn over the full
    ``(Nq, Nk)`` matrix.

    >>> import torch
    >>> layout = torch.tensor([[True, False], [True, True]])
    >>> block_sparse(layout, block_size=2).to_dense(1, 1, 3, 4)[0, 0].int()
    tensor([[1, 1, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 1]], dtype=torch.int32)
    """
    block_size = _int_arg("block_sparse", "block_size", block_size, 1)
    if not isinstance(layout, Tensor):
        raise AttentionError(
            f"block_sparse: layout must be a bool tensor (True = may attend), got {type(layout).__name__}"
        )
    if layout.dtype != torch.bool:
        raise AttentionError(
            f"block_sparse: layout must have dtype torch.bool (True = may attend), got {layout.dtype}; "
            "for 0/1 integers use layout.bool()"
        )
    if layout.dim() not in (2, 3, 4):
        raise AttentionError(
            "block_sparse: layout must be (nQb, nKb), (H, nQb, nKb) or (B, H, nQb, nKb), "
            f"got shape {tuple(layout.shape)}"
        )
    return BlockSparse(layout, block_size)


class GlobalTokens(Mask):
    """Allowed iff ``i'`` or ``j`` is a global position: see `global_tokens`."""

    def __init__(self, indices: Tensor):
        self.indices = indices  # (G,) int64, sorted, unique

    def _is_global(self, positions: Tensor) -> Tensor:
        return torch.isin(positions, self.indices.to(positions.device))

    def _rule(
        self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        return self._is_global(q_idx + (num_keys - num_queries)) | self._is_global(kv_idx)

    def _tile_kinds(self, t: _Tiling) -> Tensor:
        g_q = self._is_global(torch.arange(t.num_queries, device=t.device) + t.offset)  # (Nq,)
        g_k = self._is_global(torch.arange(t.num_keys, device=t.device))  # (Nk,)
        q_all, q_any = _blocks(g_q, t.block_q, True).all(-1), _blocks(g_q, t.block_q, False).any(-1)  # (nQb,)
        k_all, k_any = _blocks(g_k, t.block_k, True).all(-1), _blocks(g_k, t.block_k, False).any(-1)  # (nKb,)
        full = q_all[:, None] | k_all[None, :]  # (nQb, nKb): all rows or all columns global
        empty = ~q_any[:, None] & ~k_any[None, :]  # (nQb, nKb): no global row or column
        return _kinds(full, empty)[None, None]  # (nQb, nKb) -> (1, 1, nQb, nKb)

    def __repr__(self) -> str:
        return f"global_tokens({_brief(self.indices, limit=16)})"


def global_tokens(indices: Tensor | Sequence[int]) -> Mask:
    """Longformer-style global positions: allowed iff ``i'`` is global or ``j`` is global.

    A global position attends to every key and every query attends to it.
    ``indices`` are key positions (a query's position is ``i' = i + (Nk - Nq)``);
    indices beyond the sequence are ignored. Combine with a local pattern::

        sliding_window(64) | global_tokens([0])

    >>> global_tokens([0]).to_dense(1, 1, 3, 3)[0, 0].int()
    tensor([[1, 1, 1],
            [1, 0, 0],
            [1, 0, 0]], dtype=torch.int32)
    >>> local(0) | global_tokens([0])
    local(0) | global_tokens([0])
    """
    indices = _long_tensor("global_tokens", "indices", indices, (1,), "1-D, the global positions")
    if indices.numel() and int(indices.min()) < 0:
        raise AttentionError(f"global_tokens: indices must be >= 0, got {indices.tolist()}")
    return GlobalTokens(torch.unique(indices))


# ---------------------------------------------------------------------------
# rules given as functions


class FromFunction(Mask):
    """A rule given as ``fn(b, h, q_idx, kv_idx) -> bool tensor``: see `from_function`."""

    def __init__(self, fn: MaskFunction):
        self.fn = fn
        self._cache: OrderedDict[tuple, Tensor] = OrderedDict()

    def _rule(
        self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        out = self.fn(b, h, q_idx, kv_idx)
        if not isinstance(out, Tensor) or out.dtype != torch.bool:
            got = f"a tensor of dtype {out.dtype}" if isinstance(out, Tensor) else type(out).__name__
            raise AttentionError(f"from_function: fn must return a bool tensor (True = may attend), got {got}")
        return out

    def _tile_kinds(self, t: _Tiling) -> Tensor:
        device = torch.empty(0, device=t.device).device  # one key for "cuda" and "cuda:0", and for None
        key = (t.batch, t.heads, t.num_queries, t.num_keys, t.block_q, t.block_k, str(device))
        if key not in self._cache:
            self._cache[key] = _evaluate_tiles(self._rule, t)
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key].clone()

    def __repr__(self) -> str:
        return f"from_function({getattr(self.fn, '__name__', repr(self.fn))})"


def from_function(fn: MaskFunction) -> Mask:
    """A mask from ``fn(b, h, q_idx, kv_idx) -> bool tensor`` (FlexAttention's ``mask_mod``).

    ``fn`` receives broadcasting LongTensors of absolute indices and returns a bool
    tensor (True = may attend); it is not told ``Nq`` and ``Nk`` (close over them if
    the rule needs them). `tile_kinds` evaluates ``fn`` a few query blocks at a
    time and caches the answer per ``(batch, heads, Nq, Nk, block_q, block_k, device)``;
    an output that ignores ``b`` (or ``h``) gives tile kinds with ``B' = 1`` (``H' = 1``).

    >>> def even_keys(b, h, q_idx, kv_idx):
    ...     return kv_idx % 2 == 0
    >>> m = from_function(even_keys) & causal()
    >>> m
    from_function(even_keys) & causal()
    >>> m.to_dense(1, 1, 3, 3)[0, 0].int()
    tensor([[1, 0, 0],
            [1, 0, 0],
            [1, 0, 1]], dtype=torch.int32)
    """
    _check_callable("from_function", fn, "fn(b, h, q_idx, kv_idx) -> bool tensor")
    return FromFunction(fn)


# ---------------------------------------------------------------------------
# combinators


class _Combination(Mask):
    """``m1 op m2 op ...``: the parts joined by one operator; `And` and `Or` set which."""

    _symbol: str  # the operator in the repr
    _combine: Callable[[Tensor, Tensor], Tensor]  # two parts' rules -> their combination, elementwise
    _combine_tiles: Callable[[Tensor, Tensor], Tensor]  # two parts' tile kinds -> the combination's

    def __init__(self, parts: Sequence[Mask]):
        # a nested combination of the same kind is flattened: (a & b) & c -> a & b & c
        self.parts = tuple(q for p in parts for q in (p.parts if isinstance(p, type(self)) else (p,)))

    @property
    def offset_invariant(self) -> bool:
        return all(part.offset_invariant for part in self.parts)

    def _check(self, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
        for part in self.parts:
            part._check(batch, heads, num_queries, num_keys)

    def _rule(
        self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        return reduce(self._combine, (p._rule(b, h, q_idx, kv_idx, num_queries, num_keys) for p in self.parts))

    def _tile_kinds(self, t: _Tiling) -> Tensor:
        return reduce(self._combine_tiles, (t.kinds_of(p) for p in self.parts))  # broadcasts over B', H'

    def __repr__(self) -> str:
        return f" {self._symbol} ".join(_paren(p, self._precedence) for p in self.parts)


class And(_Combination):
    """``m1 & m2 & ...``: allowed where every part allows."""

    _precedence = 2
    _symbol = "&"
    _combine = staticmethod(operator.and_)
    # EMPTY if any part is EMPTY, FULL if all are FULL: the minimum, as EMPTY < PARTIAL < FULL
    _combine_tiles = staticmethod(torch.minimum)


class Or(_Combination):
    """``m1 | m2 | ...``: allowed where any part allows."""

    _precedence = 1
    _symbol = "|"
    _combine = staticmethod(operator.or_)
    # FULL if any part is FULL, EMPTY if all are EMPTY: the maximum
    _combine_tiles = staticmethod(torch.maximum)


class Not(Mask):
    """``~m``: allowed where ``m`` forbids."""

    _precedence = 3

    def __init__(self, mask: Mask):
        self.mask = mask

    @property
    def offset_invariant(self) -> bool:
        return self.mask.offset_invariant

    def _check(self, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
        self.mask._check(batch, heads, num_queries, num_keys)

    def _rule(
        self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int
    ) -> Tensor:
        return ~self.mask._rule(b, h, q_idx, kv_idx, num_queries, num_keys)

    def _tile_kinds(self, t: _Tiling) -> Tensor:
        return int(TileKind.FULL) - t.kinds_of(self.mask)  # EMPTY <-> FULL, PARTIAL stays

    def __invert__(self) -> Mask:
        return self.mask

    def __repr__(self) -> str:
        return "~" + _paren(self.mask, self._precedence)


__all__ = [
    "Mask",
    "TileKind",
    "MaskFunction",
    "causal",
    "sliding_window",
    "local",
    "padding",
    "document",
    "block_sparse",
    "global_tokens",
    "dilated",
    "from_function",
]
