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
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from qkv import masks
from qkv.masks import Mask

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
) -> Mask | Tensor | None:
    """The mask function registered with transformers' ``AttentionMaskInterface`` as ``"qkv"``.

    Returns a `qkv.masks.Mask` (``causal() & padding(...)``, ``sliding_window(W)``, ...), None
    where every key may be attended (a bidirectional layer without padding), or, for a rule that
    transformers marks as not index-based (``use_vmap``) and qkv cannot read, the dense bool
    ``(B, 1, Nq, Nk)`` tensor transformers' own ``sdpa_mask`` builds.
    """
    from transformers.masking_utils import causal_mask_function, sdpa_mask

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
        return mask
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
