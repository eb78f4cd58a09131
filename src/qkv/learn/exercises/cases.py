"""The generated cases: random inputs per exercise, grouped by what they probe.

Every exercise gets cases with shapes that catch shape bugs (a d_k that is not a power
of two, Nq ≠ Nk, leading batch and head dims, a mask that broadcasts), large logits
where a naive softmax overflows, fully masked rows, and float32 beside float64. Inputs
are NumPy arrays (the child process hands them to the learner as NumPy arrays or torch
tensors); fixed seeds make every run of a check the same.

>>> [c.group for c in cases("causal-mask")][:2]
['square', 'square']
>>> cases("attention")[0].describe()
'attention(q (5, 12) float64, k (7, 12) float64, v (7, 9) float64)'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qkv.learn.exercises.catalogue import per_exercise

__all__ = ["Case", "cases", "describe_value"]

SEED = 20240615


@dataclass
class Case:
    """One call of a learner's function: ``fn(*args, **kwargs)``, in case group ``group``."""

    group: str
    fn: str
    args: list[Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float64"  # the float dtype of the inputs (its tolerance applies)
    index: int = 0

    def describe(self) -> str:
        """The call, with shapes and dtypes instead of numbers."""
        names = _ARG_NAMES.get(self.fn, ())
        parts = [
            f"{names[i]} {describe_value(a)}" if i < len(names) and isinstance(a, np.ndarray) else describe_value(a)
            for i, a in enumerate(self.args)
        ]
        parts += [f"{k}={describe_value(v)}" for k, v in self.kwargs.items()]
        return f"{self.fn}({', '.join(parts)})"

    def size(self) -> int:
        """How big the inputs are (the smallest failing case is the one shown first)."""
        return sum(a.size if isinstance(a, np.ndarray) else 1 for a in [*self.args, *self.kwargs.values()])


_ARG_NAMES = {
    "softmax": ("x",),
    "attention": ("q", "k", "v"),
    "masked_attention": ("q", "k", "v", "lengths"),
    "padding_mask": ("lengths",),
    "split_heads": ("x",),
    "merge_heads": ("x",),
    "multi_head_attention": ("x", "w_q", "w_k", "w_v", "w_o"),
    "apply_rope": ("x", "positions"),
    "decode_step": ("q_t", "k_t", "v_t", "cache_k", "cache_v"),
    "additive_attention": ("query", "keys", "w_q", "w_k", "v"),
}


def describe_value(a: Any) -> str:
    """``(2, 3) float32`` for an array, ``repr`` for anything else (a shape, a count)."""
    if isinstance(a, np.ndarray):
        if a.dtype.kind in "iub" and a.size <= 8:
            return f"{a.tolist()}"
        return f"({', '.join(str(s) for s in a.shape)}) {a.dtype}"
    return repr(a)


class _Make:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def randn(self, *shape: int, dtype: str = "float64", scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale + shift).astype(dtype)

    def mask(self, *shape: int, empty_rows: tuple[int, ...] = ()) -> np.ndarray:
        """A random bool mask with at least one True per row except ``empty_rows`` (all False)."""
        m = self.rng.random(shape) < 0.6
        m[..., np.arange(shape[-2]), self.rng.integers(0, shape[-1], shape[-2])] = True  # one key per row
        for r in empty_rows:
            m[..., r, :] = False
        return m


def _softmax(g: _Make) -> list[Case]:
    masked = g.randn(4, 6)
    masked[0, [1, 4]] = -np.inf
    masked[2, :] = -np.inf  # a row with every key masked
    return [
        Case("basic", "softmax", [g.randn(5, 7)]),
        Case("basic", "softmax", [g.randn(9, scale=3.0)]),
        Case("other axes", "softmax", [g.randn(3, 4, 6)], {"axis": 0}),
        Case("other axes", "softmax", [g.randn(2, 5, 3)], {"axis": 1}),
        Case("other axes", "softmax", [g.randn(4, 5)], {"axis": -2}),
        Case("large logits", "softmax", [g.randn(4, 6, scale=50.0, shift=1000.0)]),
        Case("large logits", "softmax", [g.randn(3, 5, scale=50.0, shift=-1000.0)]),
        Case("fully masked rows", "softmax", [masked]),
        Case("float32", "softmax", [g.randn(3, 8, dtype="float32")], dtype="float32"),
        Case("float32", "softmax", [g.randn(4, 6, dtype="float32", scale=20.0, shift=100.0)], dtype="float32"),
    ]


def _qkv(g: _Make, lead: tuple[int, ...], nq: int, nk: int, d: int, dv: int, dtype: str = "float64", scale=1.0):
    return [
        g.randn(*lead, nq, d, dtype=dtype, scale=scale),
        g.randn(*lead, nk, d, dtype=dtype, scale=scale),
        g.randn(*lead, nk, dv, dtype=dtype),
    ]


def _attention(g: _Make) -> list[Case]:
    return [
        Case("basic: Nq ≠ Nk, d_k = 12", "attention", _qkv(g, (), 5, 7, 12, 9)),
        Case("batch and head dims", "attention", _qkv(g, (2, 3), 4, 5, 6, 10)),
        Case("batch and head dims", "attention", _qkv(g, (3,), 6, 3, 5, 4)),
        Case("square: Nq = Nk = d_k", "attention", _qkv(g, (2,), 8, 8, 8, 8)),
        Case("mask", "attention", _qkv(g, (2, 3), 4, 6, 6, 5), {"mask": g.mask(4, 6)}),
        Case("mask", "attention", _qkv(g, (2, 2), 3, 5, 6, 4), {"mask": g.mask(2, 1, 1, 5)}),
        Case("fully masked rows", "attention", _qkv(g, (2,), 5, 6, 6, 3), {"mask": g.mask(2, 5, 6, empty_rows=(1,))}),
        Case("large logits", "attention", _qkv(g, (2,), 4, 6, 16, 5, scale=30.0)),
        Case("float32", "attention", _qkv(g, (2, 2), 5, 7, 12, 6, "float32"), {"mask": g.mask(5, 7)}, "float32"),
        Case("float32", "attention", _qkv(g, (2,), 4, 6, 16, 5, "float32", scale=30.0), dtype="float32"),
    ]


def _causal_mask(g: _Make) -> list[Case]:
    return [
        Case("square", "causal_mask", [5, 5]),
        Case("square", "causal_mask", [1, 1]),
        Case("fewer queries than keys (a cache)", "causal_mask", [3, 7]),
        Case("fewer queries than keys (a cache)", "causal_mask", [1, 6]),
        Case("more queries than keys", "causal_mask", [6, 4]),
    ]


def _lengths(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _padding_mask(g: _Make) -> list[Case]:
    return [
        Case("padding_mask", "padding_mask", [_lengths(3, 5, 1), 5]),
        Case("padding_mask", "padding_mask", [_lengths(0, 2), 4]),
        Case("masked_attention", "masked_attention", [*_qkv(g, (3, 2), 4, 5, 6, 7), _lengths(5, 2, 3)]),
        Case("masked_attention", "masked_attention", [*_qkv(g, (2, 3), 6, 6, 5, 4), _lengths(4, 1)]),
        Case("fully masked rows", "masked_attention", [*_qkv(g, (3, 2), 3, 5, 6, 4), _lengths(0, 4, 2)]),
        Case("large logits", "masked_attention", [*_qkv(g, (2, 1), 4, 6, 16, 5, scale=30.0), _lengths(6, 3)]),
        Case(
            "float32", "masked_attention", [*_qkv(g, (2, 2), 5, 7, 12, 6, "float32"), _lengths(7, 0)], dtype="float32"
        ),
    ]


def _split_heads(g: _Make) -> list[Case]:
    return [
        Case("split_heads", "split_heads", [g.randn(2, 5, 12), 3]),
        Case("split_heads", "split_heads", [g.randn(1, 4, 10), 2]),
        Case("split_heads", "split_heads", [g.randn(3, 6, 6), 6]),
        Case("merge_heads", "merge_heads", [g.randn(2, 3, 5, 4)]),
        Case("merge_heads", "merge_heads", [g.randn(1, 4, 6, 3)]),
        Case("float32", "split_heads", [g.randn(2, 3, 8, dtype="float32"), 4], dtype="float32"),
        Case("float32", "merge_heads", [g.randn(2, 2, 3, 5, dtype="float32")], dtype="float32"),
    ]


def _weights(g: _Make, e: int, dtype: str = "float64") -> list[np.ndarray]:
    return [g.randn(e, e, dtype=dtype, scale=1.0 / np.sqrt(e)) for _ in range(4)]


def _mha(g: _Make) -> list[Case]:
    return [
        Case("basic", "multi_head_attention", [g.randn(2, 5, 12), *_weights(g, 12), 3]),
        Case("basic", "multi_head_attention", [g.randn(1, 6, 10), *_weights(g, 10), 2]),
        Case("causal", "multi_head_attention", [g.randn(2, 7, 8), *_weights(g, 8), 2], {"causal": True}),
        Case("causal", "multi_head_attention", [g.randn(1, 5, 12), *_weights(g, 12), 4], {"causal": True}),
        Case("one head", "multi_head_attention", [g.randn(2, 4, 6), *_weights(g, 6), 1]),
        Case(
            "float32",
            "multi_head_attention",
            [g.randn(2, 4, 12, dtype="float32"), *_weights(g, 12, "float32"), 4],
            {"causal": True},
            "float32",
        ),
    ]


def _sinusoidal(g: _Make) -> list[Case]:
    return [
        Case("basic", "sinusoidal_encoding", [6, 8]),
        Case("basic", "sinusoidal_encoding", [1, 4]),
        Case("d not a power of two", "sinusoidal_encoding", [10, 12]),
        Case("d not a power of two", "sinusoidal_encoding", [7, 6]),
        Case("long", "sinusoidal_encoding", [64, 16]),
    ]


def _positions(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _rope(g: _Make) -> list[Case]:
    return [
        Case("basic", "apply_rope", [g.randn(5, 8), np.arange(5, dtype=np.int64)]),
        Case("batch and head dims", "apply_rope", [g.randn(2, 3, 6, 12), np.arange(6, dtype=np.int64)]),
        Case("any positions", "apply_rope", [g.randn(2, 4, 10), _positions(3, 0, 17, 2)]),
        Case("another base", "apply_rope", [g.randn(4, 6), _positions(0, 5, 9, 30)], {"base": 500.0}),
        Case(
            "float32", "apply_rope", [g.randn(2, 5, 8, dtype="float32"), np.arange(5, dtype=np.int64)], dtype="float32"
        ),
    ]


def _decode(g: _Make, lead: tuple[int, ...], t: int, d: int, dv: int, dtype: str = "float64") -> list[np.ndarray]:
    return [
        g.randn(*lead, 1, d, dtype=dtype),
        g.randn(*lead, 1, d, dtype=dtype),
        g.randn(*lead, 1, dv, dtype=dtype),
        g.randn(*lead, t, d, dtype=dtype),
        g.randn(*lead, t, dv, dtype=dtype),
    ]


def _kv_decode(g: _Make) -> list[Case]:
    return [
        Case("basic", "decode_step", _decode(g, (2,), 3, 6, 5)),
        Case("empty cache", "decode_step", _decode(g, (2,), 0, 6, 5)),
        Case("batch and head dims", "decode_step", _decode(g, (2, 3), 5, 8, 4)),
        Case("float32", "decode_step", _decode(g, (2, 2), 4, 12, 6, "float32"), dtype="float32"),
    ]


def _additive_inputs(
    g: _Make, lead: tuple[int, ...], nq: int, nk: int, dq: int, dk: int, a: int, dtype: str = "float64"
) -> list[np.ndarray]:
    return [
        g.randn(*lead, nq, dq, dtype=dtype),
        g.randn(*lead, nk, dk, dtype=dtype),
        g.randn(dq, a, dtype=dtype, scale=1.0 / np.sqrt(dq)),
        g.randn(dk, a, dtype=dtype, scale=1.0 / np.sqrt(dk)),
        g.randn(a, dtype=dtype, scale=2.0),
    ]


def _additive(g: _Make) -> list[Case]:
    return [
        Case("basic", "additive_attention", _additive_inputs(g, (), 4, 7, 6, 5, 8)),
        Case("batch dims", "additive_attention", _additive_inputs(g, (2,), 3, 5, 6, 4, 7)),
        Case("one query", "additive_attention", _additive_inputs(g, (2,), 1, 6, 5, 5, 6)),
        Case("float32", "additive_attention", _additive_inputs(g, (2,), 3, 6, 4, 5, 6, "float32"), dtype="float32"),
    ]


def _sliding_window(g: _Make) -> list[Case]:
    return [
        Case("basic", "sliding_window_mask", [6, 3]),
        Case("basic", "sliding_window_mask", [9, 2]),
        Case("window of one", "sliding_window_mask", [5, 1]),
        Case("window as long as the sequence", "sliding_window_mask", [7, 7]),
        Case("window longer than the sequence", "sliding_window_mask", [4, 10]),
    ]


_GENERATORS = per_exercise(globals())  # one function per exercise, named after it


def cases(exercise: str) -> list[Case]:
    """The cases of ``exercise`` (a name of `qkv.learn.exercises.catalogue`), the same on every call."""
    found = _GENERATORS[exercise](_Make(SEED + sorted(_GENERATORS).index(exercise)))
    for i, case in enumerate(found):
        case.index = i
    return found
