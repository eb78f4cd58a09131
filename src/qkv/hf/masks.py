"""transformers' mask descriptions as qkv masks: the mask function registered under ``"qkv"``.

transformers builds every mask from a rule, ``mask_function(batch_idx, head_idx, q_idx, kv_idx)``,
composed from a few named pieces (`transformers.masking_utils`: causal, sliding window, chunked,
bidirectional, packed sequences, and the 2-D padding mask passed beside it), and asks the registered
mask interface of the model's ``attn_implementation`` to turn it into what the attention function
takes. `mask_interface` reads those pieces back and answers with a `qkv.masks.Mask` that keeps the
structure::

    causal_mask_function                          masks.causal()
    and(sliding_window_overlay(W), causal)        masks.sliding_window(W)
    and(chunked_overlay(C, left_pad), causal)     masks.document(chunk ids) & masks.causal()
    bidirectional_mask_function                   no mask (None)
    sliding_window_bidirectional_overlay(W)       masks.local(W)
    packed sequences (position ids restart)       masks.document(sequence ids) & the rule above
    attention_mask (B, N): keys [s_b, e_b) real   ~masks.padding(s) & masks.padding(e)
    attention_mask with holes                     masks.from_function(keys[b, kv_idx])

so a sliding-window layer runs on the blockwise backend's sparse plan, not on a dense ``N × N``
bias. Any other rule still works: it becomes `qkv.masks.from_function` of the rule itself (or,
when transformers marks it as not index-based, the dense bool tensor transformers would build).

qkv masks place the queries last among the keys (query ``i`` sits at key position
``i + Nk - Nq``), as a cache does; transformers' offsets say the same for its dynamic and
sliding caches. Where they do not (a static cache, whose keys run past the queries), the rule is
evaluated at transformers' absolute positions instead.

Some models handle the mask they get as a tensor before any attention layer sees it: they slice
it for an indexer (DeepSeek-V3.2's sparse attention), add a bias to it (Doge), concatenate it with
another (T5Gemma 2), or hand it to a sub-model that reads ``.ndim`` (PaliGemma). So the mask comes
wrapped in a `TransformersMask`: a qkv mask that also reads as the ``(B, 1, Nq, Nk)`` bool tensor
transformers' ``sdpa_mask`` builds for the same rule (True = may attend). Model code that indexes
it, reads ``.dtype``/``.shape``, calls a tensor method or passes it to a torch function gets that
tensor; `qkv.hf.attention_forward` given the wrapper itself uses its structure.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from qkv import masks
from qkv.masks import Mask, TileRuns, Tiling

HFMaskFunction = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""transformers' ``mask_function(batch_idx, head_idx, q_idx, kv_idx) -> bool tensor`` (True = may attend)."""

_HF = "transformers.masking_utils"


@dataclass(frozen=True)
class _Problem:
    """The sizes and offsets of one mask request, as transformers gives them."""

    batch: int
    num_queries: int
    num_keys: int
    q_offset: int
    kv_offset: int
    device: torch.device

    @property
    def aligned(self) -> bool:
        """The queries are the last positions among the keys (qkv's bottom-right alignment)."""
        return self.q_offset + self.num_queries == self.kv_offset + self.num_keys


class _Unknown(Exception):
    """A piece of the rule that has no structured qkv form: the caller falls back to the rule itself."""


# The pieces of a rule, read from transformers' closures: (kind, arguments).
_Term = tuple[Any, ...]


def _piece(fn: object) -> str:
    """The factory that made ``fn``: ``"and_masks"``, ``"sliding_window_overlay"``, ... or ``""``."""
    if getattr(fn, "__module__", None) != _HF:
        return ""
    qualname = str(getattr(fn, "__qualname__", ""))
    return qualname.split(".<locals>.")[0]


def _closure(fn: Callable[..., object]) -> dict[str, object]:
    return dict(inspect.getclosurevars(fn).nonlocals)


def parse(fn: Callable[..., object]) -> _Term:
    """The term tree of a transformers mask rule; raises `_Unknown` on a piece it does not know."""
    name = _piece(fn)
    if name == "causal_mask_function":
        return ("causal",)
    if name == "bidirectional_mask_function":
        return ("all",)
    if name in ("and_masks", "or_masks"):
        parts = _closure(fn)["mask_functions"]
        return ("and" if name == "and_masks" else "or", tuple(parse(p) for p in parts))  # type: ignore[attr-defined]
    if name == "sliding_window_overlay":
        return ("window_overlay", int(_closure(fn)["sliding_window"]))  # type: ignore[call-overload]
    if name == "sliding_window_bidirectional_overlay":
        return ("local", int(_closure(fn)["sliding_window"]))  # type: ignore[call-overload]
    if name == "chunked_overlay":
        c = _closure(fn)
        return ("chunk", int(c["chunk_size"]), c["left_padding"])  # type: ignore[call-overload]
    if name == "padding_mask_function":
        return ("keys", _closure(fn)["padding_mask"])
    if name == "packed_sequence_mask_function":
        return ("packed", _closure(fn)["packed_sequence_mask"])
    if name == "remap_positions_for_packed_sequence":
        return ("remap", parse(_closure(fn)["mask_function"]))  # type: ignore[arg-type]
    raise _Unknown(getattr(fn, "__qualname__", repr(fn)))


# ---------------------------------------------------------------------------
# terms -> qkv masks ("all" is None: nothing is ruled out)


def _shift_invariant(term: _Term) -> bool:
    """The piece depends on the positions only through ``q_idx - kv_idx``."""
    if term[0] in ("causal", "all", "window_overlay", "local"):
        return True
    if term[0] in ("and", "or"):
        return all(_shift_invariant(t) for t in term[1])
    return False


def key_mask(keys: Tensor) -> Mask | None:
    """A ``(B, Nk)`` bool tensor of the keys that may be attended, as a structured mask (None: all may).

    One run of real keys per sequence, ``[s_b, e_b)`` (right or left padding), is
    ``~padding(s) & padding(e)``; anything else is a rule that reads the tensor.

    >>> key_mask(torch.tensor([[True, True, False], [False, True, True]]))
    ~padding(lengths=[0, 1]) & padding(lengths=[2, 3])
    >>> key_mask(torch.tensor([[True, True, True]])) is None
    True
    """
    keys = keys.to(torch.bool)
    if bool(keys.all()):
        return None
    nk = keys.shape[-1]
    index = torch.arange(nk, device=keys.device)
    count = keys.sum(-1)  # (B,)
    start = torch.where(keys, index, nk).amin(-1)  # (B,): the first real key
    end = torch.where(keys, index + 1, 0).amax(-1)  # (B,): one past the last real key
    start = torch.where(count > 0, start, 0)
    if bool((end - start == count).all()):  # one contiguous run per sequence
        parts: list[Mask] = []
        if bool((start > 0).any()):
            parts.append(~masks.padding(start))
        if bool((end < nk).any()):
            parts.append(masks.padding(end))
        return parts[0] if len(parts) == 1 else parts[0] & parts[1]
    table = keys

    def real_keys(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return table.to(kv_idx.device)[b, kv_idx]

    return masks.from_function(real_keys)


def _and(parts: list[Mask | None]) -> Mask | None:
    kept = [p for p in parts if p is not None]
    if not kept:
        return None
    out = kept[0]
    for p in kept[1:]:
        out = out & p
    return out


def _lower(term: _Term, problem: _Problem) -> Mask | None:
    """The qkv mask of a term, for an aligned problem; raises `_Unknown` where there is none."""
    kind = term[0]
    if kind == "causal":
        return masks.causal()
    if kind == "all":
        return None
    if kind == "local":
        return masks.local(term[1])
    if kind == "window_overlay":  # kv_idx > q_idx - W on its own: every key up to W - 1 behind, and the future
        if term[1] < 1:
            raise _Unknown("a window of no key")
        return masks.sliding_window(term[1]) | ~masks.causal()
    if kind == "chunk":
        chunk, left = term[1], term[2]
        positions = torch.arange(problem.num_keys, device=problem.device) + problem.kv_offset  # (Nk,)
        left = torch.as_tensor(left, device=problem.device).reshape(-1, 1)  # (B, 1)
        ids = torch.div(positions[None, :] - left, chunk, rounding_mode="floor")  # (B, Nk): chunk of each key
        return masks.document(ids.expand(problem.batch, -1))
    if kind == "keys":
        keys = term[1][:, problem.kv_offset : problem.kv_offset + problem.num_keys]  # (B, Nk)
        if keys.shape[-1] != problem.num_keys:
            raise _Unknown("padding_mask shorter than the keys")
        return key_mask(keys)
    if kind == "packed":
        ids = term[1]
        if problem.q_offset or problem.kv_offset or ids.shape[-1] != problem.num_keys:
            raise _Unknown("packed sequences with a cache")
        return masks.document(ids)
    if kind == "remap":
        raise _Unknown("positions remapped outside packed sequences")
    if kind == "or":
        lowered = [_lower(t, problem) for t in term[1]]
        if any(p is None for p in lowered):
            return None  # one part allows everything
        out = lowered[0]
        for p in lowered[1:]:
            out = out | p  # type: ignore[operator]
        return out
    return _lower_and(term[1], problem)


def _flatten(parts: tuple[_Term, ...]) -> list[_Term]:
    out: list[_Term] = []
    for t in parts:
        out.extend(_flatten(t[1]) if t[0] == "and" else [t])
    return out


def _lower_and(parts: tuple[_Term, ...], problem: _Problem) -> Mask | None:
    terms = _flatten(parts)
    kinds = [t[0] for t in terms]
    if "packed" in kinds:  # within one sequence, positions restart at 0 and step by 1: a shift of the indices
        terms = [t[1] if t[0] == "remap" and _shift_invariant(t[1]) else t for t in terms]
        terms = _flatten(tuple(terms))
        kinds = [t[0] for t in terms]
    windows = [t[1] for t in terms if t[0] == "window_overlay"]
    if windows and min(windows) < 1:  # a window of no key (Qwen2-MoE's unused sliding mask): the rule itself
        raise _Unknown("a window of no key")
    if windows and "causal" in kinds:  # causal and kv_idx > q_idx - W: the sliding window
        terms = [t for t in terms if t[0] not in ("window_overlay", "causal")]
        return _and([masks.sliding_window(min(windows)), *(_lower(t, problem) for t in terms)])
    return _and([_lower(t, problem) for t in terms])


def _rule_mask(fn: HFMaskFunction, problem: _Problem) -> Mask:
    """The rule itself as a qkv mask, evaluated at transformers' absolute positions."""
    q_offset, kv_offset = problem.q_offset, problem.kv_offset

    def transformers_rule(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return fn(b, h, q_idx + q_offset, kv_idx + kv_offset).to(torch.bool)

    return masks.from_function(transformers_rule)


def _padding_keys(attention_mask: Tensor | None, problem: _Problem) -> Tensor | None:
    """The 2-D padding mask cut to the keys of this call ``(B, Nk)``; keys past its end are not real."""
    if attention_mask is None:
        return None
    keys = attention_mask.to(device=problem.device, dtype=torch.bool)
    missing = problem.kv_offset + problem.num_keys - keys.shape[-1]
    if missing > 0:
        keys = torch.nn.functional.pad(keys, (0, missing))  # (B, N) -> (B, kv_offset + Nk), False past the end
    return keys[:, problem.kv_offset : problem.kv_offset + problem.num_keys]


def structured_mask(
    mask_function: HFMaskFunction,
    *,
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    attention_mask: Tensor | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Mask | None, bool]:
    """``(mask, structured)``: the qkv mask of a transformers rule and 2-D padding mask.

    ``structured`` is False when the rule had to be kept as a function of positions.

    >>> from transformers.masking_utils import sliding_window_causal_mask_function
    >>> structured_mask(sliding_window_causal_mask_function(4), batch_size=2, q_length=6, kv_length=6,
    ...                 attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]))
    (sliding_window(4) & ~padding(lengths=[1, 0]), True)
    """
    problem = _Problem(
        batch_size,
        q_length,
        kv_length,
        int(q_offset),
        int(kv_offset),
        torch.device(device),
    )
    keys = _padding_keys(attention_mask, problem)
    padding = None if keys is None else key_mask(keys)
    try:
        if not problem.aligned:
            raise _Unknown("queries not last among the keys")
        return _and([_lower(parse(mask_function), problem), padding]), True
    except _Unknown:
        return _and([_rule_mask(mask_function, problem), padding]), False


# ---------------------------------------------------------------------------
# the mask a model holds: a qkv mask that reads as transformers' tensor


def _dense_args(value: Any) -> Any:
    """``value`` with every `TransformersMask` in it (nested lists, tuples, dicts) replaced by its tensor."""
    if isinstance(value, TransformersMask):
        return value.dense()
    if isinstance(value, (list, tuple)):
        return type(value)(_dense_args(v) for v in value)
    if isinstance(value, dict):
        return {k: _dense_args(v) for k, v in value.items()}
    return value


def _tensor_operator(name: str) -> Callable[..., Any]:
    """The tensor's operator ``name`` on the dense form: ``mask == 0`` is ``mask.dense() == 0``."""

    def operator(self: TransformersMask, *args: object) -> Any:
        return getattr(self.dense(), name)(*args)

    operator.__name__ = name
    return operator


class TransformersMask(Mask):
    """A qkv mask as a transformers model holds it: the structure for qkv, the dense tensor for model code.

    ``mask`` is the qkv mask (None: every key may be attended). As a `qkv.masks.Mask` the object is
    that mask (same rule, tile plan and repr). Read as a tensor (``.dtype``, ``.shape``, ``.ndim``,
    ``.device``, indexing, tensor methods, torch functions) it is the bool ``(B, 1, Nq, Nk)`` tensor
    transformers' ``sdpa_mask`` builds for the same rule (True = may attend), made once when first
    read that way. ``&`` and ``|`` with a mask give a mask, with a tensor a tensor.

    >>> from qkv import masks
    >>> m = TransformersMask(masks.causal(), batch=2, num_queries=3, num_keys=3)
    >>> m, m.dtype, tuple(m.shape), m.ndim
    (causal(), torch.bool, (2, 1, 3, 3), 4)
    >>> m[0, 0].int()                                  # model code slicing it: the dense tensor
    tensor([[1, 0, 0],
            [1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    >>> torch.cat([m, torch.ones(2, 1, 3, 2, dtype=torch.bool)], dim=-1).shape
    torch.Size([2, 1, 3, 5])
    """

    def __init__(
        self,
        mask: Mask | None,
        *,
        batch: int,
        num_queries: int,
        num_keys: int,
        device: torch.device | str = "cpu",
        model_type: str | None = None,
    ) -> None:
        self.mask = mask
        self.shape = torch.Size((batch, 1, num_queries, num_keys))
        self.device = torch.device(device)
        self.model_type = model_type  # the family whose mask this is, for errors
        self._dense: Tensor | None = None

    # -- as a qkv mask: the structure ------------------------------------------

    @property
    def _precedence(self) -> int:  # type: ignore[override]
        return 4 if self.mask is None else self.mask._precedence

    @property
    def offset_invariant(self) -> bool:
        return self.mask is None or self.mask.offset_invariant

    def rule(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, num_queries: int, num_keys: int) -> Tensor:
        if self.mask is None:
            return kv_idx >= 0  # every key
        return self.mask.rule(b, h, q_idx, kv_idx, num_queries, num_keys)

    def check(self, batch: int, heads: int, num_queries: int, num_keys: int) -> None:
        if self.mask is not None:
            self.mask.check(batch, heads, num_queries, num_keys)

    def classify_tiles(self, tiling: Tiling) -> Tensor:
        return super().classify_tiles(tiling) if self.mask is None else self.mask.classify_tiles(tiling)

    def classify_rows(self, tiling: Tiling, start: int, stop: int) -> Tensor:
        return (
            super().classify_rows(tiling, start, stop)
            if self.mask is None
            else self.mask.classify_rows(tiling, start, stop)
        )

    def sparse_tiles(self, *args: Any, **kwargs: Any) -> TileRuns:
        return super().sparse_tiles(*args, **kwargs) if self.mask is None else self.mask.sparse_tiles(*args, **kwargs)

    def __repr__(self) -> str:
        if self.mask is None:
            return f"TransformersMask(None, shape={tuple(self.shape)})"
        return repr(self.mask)

    # -- as a tensor: what model code reads --------------------------------------

    dtype = torch.bool
    ndim = 4

    def dense(self) -> Tensor:
        """The bool ``(B, 1, Nq, Nk)`` tensor (True = may attend), as transformers' ``sdpa_mask`` builds it."""
        if self._dense is None:
            b, _, nq, nk = self.shape
            self._dense = self.to_dense(b, 1, nq, nk, device=self.device).contiguous()  # views made one tensor
        return self._dense

    def dim(self) -> int:
        return 4

    def size(self, dim: int | None = None) -> torch.Size | int:
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return self.shape.numel()

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: object) -> Tensor:
        return self.dense()[index]  # type: ignore[index]

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.dense())

    def to(self, *args: Any, **kwargs: Any) -> TransformersMask | Tensor:
        """Itself where the dtype and device stay (as `torch.Tensor.to`), else the tensor converted."""
        probe = torch.empty(0, dtype=torch.bool, device=self.device)
        if probe.to(*args, **kwargs) is probe:
            return self
        return self.dense().to(*args, **kwargs)

    def __and__(self, other: Any) -> Any:
        if isinstance(other, Mask):
            return self._with(other if self.mask is None else self.mask & other)
        return self.dense() & other

    def __or__(self, other: Any) -> Any:
        if isinstance(other, Mask):
            return self if self.mask is None else self._with(self.mask | other)
        return self.dense() | other

    def __invert__(self) -> Any:
        return ~self.dense() if self.mask is None else self._with(~self.mask)

    __hash__ = Mask.__hash__  # one object, one key: the plan caches hold masks by identity

    @classmethod
    def __torch_function__(
        cls, func: Callable[..., Any], types: object, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        """A torch function given the wrapper (``torch.cat``, ``torch.where``, ``t + mask``, ...) gets the tensor."""
        return func(*_dense_args(args), **_dense_args(kwargs or {}))

    def __getattr__(self, name: str) -> Any:
        """Any other tensor attribute (``masked_fill``, ``float``, ``expand``, ...): the dense tensor's."""
        if name.startswith("_") or not hasattr(Tensor, name) or "shape" not in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}: the "
                f"{self.__dict__.get('model_type') or 'transformers'} model reads its attention mask in a way "
                "qkv's mask does not answer; load it with attn_implementation='eager' (or 'sdpa')"
            )
        return getattr(self.dense(), name)

    def _with(self, mask: Mask) -> TransformersMask:
        b, _, nq, nk = self.shape
        return TransformersMask(
            mask, batch=b, num_queries=nq, num_keys=nk, device=self.device, model_type=self.model_type
        )


# the tensor's other operators, on the dense form: ``mask == 0``, ``1.0 - mask``, ``mask * bias``, ...
TENSOR_OPERATORS = (
    "__rand__ __ror__ __xor__ __rxor__ __eq__ __ne__ __lt__ __le__ __gt__ __ge__ __add__ __radd__ __sub__ __rsub__ "
    "__mul__ __rmul__ __truediv__ __rtruediv__ __neg__"
).split()
for _name in TENSOR_OPERATORS:
    setattr(TransformersMask, _name, _tensor_operator(_name))


def mask_interface(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: HFMaskFunction | None = None,
    attention_mask: Tensor | None = None,
    use_vmap: bool = False,
    device: torch.device | str = "cpu",
    **kwargs: object,
) -> TransformersMask | Tensor | None:
    """The mask function registered with transformers' ``AttentionMaskInterface`` as ``"qkv"``.

    Returns a `TransformersMask`: a `qkv.masks.Mask` (``causal() & padding(...)``,
    ``sliding_window(W)``, ...) that model code may also read as the ``(B, 1, Nq, Nk)`` bool tensor.
    Returns None where every key may be attended and transformers allows no mask
    (``allow_is_bidirectional_skip``, a bidirectional layer without padding), and, for a rule
    that transformers marks as not index-based (``use_vmap``) and qkv cannot read, the dense bool
    ``(B, 1, Nq, Nk)`` tensor transformers' own ``sdpa_mask`` builds. A `TransformersMask` given
    back as ``attention_mask`` (a model passing its mask on to a sub-model) is returned as it is,
    as transformers returns a 4-D mask tensor.
    """
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    if isinstance(attention_mask, TransformersMask):
        return attention_mask
    fn: HFMaskFunction = causal_mask_function if mask_function is None else mask_function  # type: ignore[assignment]
    mask, structured = structured_mask(
        fn,
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        attention_mask=attention_mask,
        device=device,
    )
    if structured or not use_vmap:
        if mask is None and kwargs.get("allow_is_bidirectional_skip", True) is not False:
            return None
        config = kwargs.get("config")
        model_type = getattr(config, "model_type", None) or None
        return TransformersMask(
            mask, batch=batch_size, num_queries=q_length, num_keys=kv_length, device=device, model_type=model_type
        )
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        mask_function=fn,
        attention_mask=attention_mask,
        allow_is_causal_skip=False,
        allow_is_bidirectional_skip=False,
        use_vmap=True,
        device=device,
    )
