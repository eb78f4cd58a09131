"""The exercises: name, statement, the functions to write, a hint ladder and the lesson that teaches it.

Names and signatures are public API (the course's contract). Each exercise's starter
file lives in ``starters/`` (package data) and opens with the line
``# qkv exercise: NAME``, which is how ``qkv learn check`` tells which exercise a file is.

>>> [e.name for e in EXERCISES.values()][:3]
['softmax', 'attention', 'causal-mask']
>>> exercise("rope").functions
('apply_rope',)
>>> exercise("rope").starter().splitlines()[0]
'# qkv exercise: rope'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from qkv.learn.errors import LearnError

__all__ = ["EXERCISES", "Exercise", "exercise", "names", "per_exercise"]


@dataclass(frozen=True)
class Exercise:
    """One exercise: what to write (``functions``, ``signature``), why, hints, and where it is taught."""

    name: str
    title: str
    functions: tuple[str, ...]
    signature: str
    statement: str
    hints: tuple[str, ...]
    lesson: str  # the course lesson that teaches it (an id of `qkv learn --list`)
    concept: str  # the concept a mistake here sends back to review

    @property
    def file_name(self) -> str:
        """The starter's file name, e.g. ``causal_mask.py``."""
        return self.name.replace("-", "_") + ".py"

    def starter(self) -> str:
        """The starter file's text: the signature, the docstring, ``raise NotImplementedError``."""
        return resources.files(__package__).joinpath("starters", self.file_name).read_text(encoding="utf-8")

    def to_json(self) -> dict[str, object]:
        """The exercise as JSON (for the page and ``--json``)."""
        return {
            "name": self.name,
            "title": self.title,
            "functions": list(self.functions),
            "signature": self.signature,
            "statement": self.statement,
            "hints": list(self.hints),
            "lesson": self.lesson,
            "concept": self.concept,
            "file": self.file_name,
        }


_ALL = (
    Exercise(
        "softmax",
        "A numerically stable softmax",
        ("softmax",),
        "softmax(x, axis=-1)",
        "Turn scores into probabilities along `axis`: exp(x) / sum(exp(x)). Large scores (1000) must not "
        "overflow into inf/inf = NaN, and a slice that is all -inf (every key masked) must give zeros.",
        (
            "softmax(x) = softmax(x - c) for any constant c: subtract the maximum along `axis` before exp.",
            "Keep the reduced axis (keepdims=True / keepdim=True) so the maximum and the sum broadcast back.",
            "An all -inf slice has maximum -inf, and -inf - (-inf) is NaN: shift such slices by 0 instead, "
            "and divide by 1 where the sum is 0.",
        ),
        "masks",
        "softmax",
    ),
    Exercise(
        "attention",
        "Scaled dot-product attention",
        ("attention",),
        "attention(q, k, v, mask=None) -> (..., Nq, Dv)",
        "q (..., Nq, D), k (..., Nk, D), v (..., Nk, Dv) with any leading batch/head dims: "
        "softmax(q kᵀ / √d_k) v, over the keys. `mask` is bool, broadcasts to (..., Nq, Nk), True = may attend; "
        "a query with no allowed key gives zeros, not NaN.",
        (
            "The scores are q @ kᵀ where kᵀ swaps only the last two axes (swapaxes(-1, -2)); `.T` reverses all.",
            "Divide the scores by √d_k, d_k = q.shape[-1]: it keeps their variance near 1 as d_k grows.",
            "Mask before the softmax: set disallowed scores to -inf, so the allowed weights still sum to 1.",
            "The softmax runs over the keys, the last axis of the (..., Nq, Nk) scores.",
        ),
        "scaling",
        "dot-product-score",
    ),
    Exercise(
        "causal-mask",
        "A causal mask",
        ("causal_mask",),
        "causal_mask(n_q, n_k) -> bool (n_q, n_k)",
        "Query i may attend key j iff j <= i + (n_k - n_q): bottom-right aligned, so with a cache "
        "(n_q < n_k) the new queries see the whole past. True = may attend.",
        (
            "With n_q == n_k it is the lower triangle, diagonal included: a token sees itself.",
            "The last query is the newest token: it sees every key. Shift the triangle by n_k - n_q.",
        ),
        "masks",
        "masking",
    ),
    Exercise(
        "padding-mask",
        "A padding mask whose fully masked rows give zeros",
        ("padding_mask", "masked_attention"),
        "padding_mask(lengths, n_k) -> bool (B, 1, 1, n_k); masked_attention(q, k, v, lengths)",
        "Sequence b of a batch has lengths[b] real keys, the rest is padding. padding_mask marks the real keys "
        "(True = may attend) in a shape that broadcasts over heads and queries; masked_attention(q, k, v, lengths) "
        "with q, k, v (B, H, N, D) attends only real keys, and a sequence of length 0 gives zeros, not NaN.",
        (
            "Key j is real iff j < lengths[b]: compare a range of n_k with lengths[:, None].",
            "Add the head and query axes: (B, n_k) -> (B, 1, 1, n_k).",
            "softmax of a row that is all -inf is NaN if computed naively; filling with -1e9 instead gives a uniform "
            "row (the mean of the padding values). Give such rows zeros.",
        ),
        "masks",
        "masking",
    ),
    Exercise(
        "split-heads",
        "Splitting and merging heads",
        ("split_heads", "merge_heads"),
        "split_heads(x, num_heads): (B, N, E) -> (B, H, N, E/H); merge_heads(x): back",
        "Head h takes features h·E/H … (h+1)·E/H - 1 of each token. split_heads reshapes and moves the head axis "
        "before the tokens; merge_heads is its exact inverse.",
        (
            "Reshape (B, N, E) -> (B, N, H, E/H) first, then swap axes 1 and 2.",
            "Reshaping (B, N, E) straight to (B, H, N, E/H) mixes tokens into heads.",
            "merge_heads: swap axes 1 and 2 back, then reshape to (B, N, E).",
        ),
        "multi-head",
        "multi-head",
    ),
    Exercise(
        "mha",
        "A multi-head attention forward pass",
        ("multi_head_attention",),
        "multi_head_attention(x, w_q, w_k, w_v, w_o, num_heads, causal=False) -> (B, N, E)",
        "Self-attention of x (B, N, E) with num_heads heads: q = x @ w_q (likewise k, v), split into heads, "
        "scaled dot-product attention per head (scale 1/√(E/H), causal mask bottom-right aligned when causal), "
        "heads merged back, then @ w_o. The weights are (E, E) and used as y = x @ w.",
        (
            "Project first, then split: q = split_heads(x @ w_q).",
            "The scale uses the head size E/H, not E.",
            "Merge heads by undoing the split: (B, H, N, Dh) -> (B, N, H, Dh) -> (B, N, E), then @ w_o.",
        ),
        "multi-head",
        "multi-head",
    ),
    Exercise(
        "sinusoidal",
        "Sinusoidal positional encoding",
        ("sinusoidal_encoding",),
        "sinusoidal_encoding(n, d) -> (n, d)",
        "PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)) for positions p = 0 … n-1: "
        "sin on even columns, cos on odd columns, one frequency per pair.",
        (
            "Columns 2i and 2i+1 share one frequency: 10000^(-2i/d), with i the pair index.",
            "Fill even columns with sin and odd ones with cos (pe[:, 0::2], pe[:, 1::2]).",
        ),
        "position",
        "positional-encoding",
    ),
    Exercise(
        "rope",
        "Rotary position embedding",
        ("apply_rope",),
        "apply_rope(x, positions, base=10000.0) -> (..., N, D)",
        "Rotate each pair (x[..., 2i], x[..., 2i+1]) of token n by the angle positions[n] · base^(-2i/D): "
        "(a, b) -> (a cos θ - b sin θ, a sin θ + b cos θ). x is (..., N, D), positions (N,).",
        (
            "Pairs are adjacent columns (0, 1), (2, 3), ...: x[..., 0::2] and x[..., 1::2].",
            "Pair i turns at frequency base^(-2i/D); the angle is position × frequency, shape (N, D/2).",
            "A rotation by +θ: the first of the pair becomes a cos θ - b sin θ.",
        ),
        "position",
        "positional-encoding",
    ),
    Exercise(
        "kv-decode",
        "One KV-cache decode step",
        ("decode_step",),
        "decode_step(q_t, k_t, v_t, cache_k, cache_v) -> (out_t, cache_k, cache_v)",
        "The newest token's q_t, k_t, v_t (..., 1, D) and the cache (..., T, D) of the keys and values before it "
        "(T may be 0): append k_t, v_t to the cache once, attend q_t over all T + 1 keys (scale 1/√D, itself "
        "included), return the output (..., 1, Dv) and the grown cache. Decoding step by step equals the full "
        "causal pass.",
        (
            "Concatenate along the token axis (-2): cache_k grows from T to T + 1.",
            "The new token attends to itself too: append before attending.",
            "No mask is needed: the cache holds only the past and the present.",
        ),
        "production",
        "kv-cache",
    ),
    Exercise(
        "additive",
        "Additive (Bahdanau) attention",
        ("additive_attention",),
        "additive_attention(query, keys, w_q, w_k, v) -> (context, weights)",
        "query (..., Nq, Dq), keys (..., Nk, Dk), w_q (Dq, A), w_k (Dk, A), v (A,): "
        "score[i, j] = v · tanh(query_i @ w_q + keys_j @ w_k), weights = softmax over the keys j, "
        "context = weights @ keys. Returns context (..., Nq, Dk) and weights (..., Nq, Nk).",
        (
            "Project once: query @ w_q is (..., Nq, A), keys @ w_k is (..., Nk, A).",
            "Broadcast to (..., Nq, Nk, A) with [..., :, None, :] and [..., None, :, :], tanh, then @ v.",
            "Normalize over the keys (the last axis), then the context is the weighted average of the keys.",
        ),
        "bottleneck",
        "additive-attention",
    ),
    Exercise(
        "sliding-window",
        "A sliding-window mask",
        ("sliding_window_mask",),
        "sliding_window_mask(n, window) -> bool (n, n)",
        "Causal and local: query i may attend key j iff i - window < j <= i, so each query sees `window` keys, "
        "itself included (fewer at the start). True = may attend.",
        (
            "Two conditions together: j <= i (causal) and j > i - window (local).",
            "Count the True cells of a row far from the start: there must be exactly `window`.",
        ),
        "production",
        "sparse-attention",
    ),
)

EXERCISES: dict[str, Exercise] = {e.name: e for e in _ALL}


def names() -> list[str]:
    """The exercise names, in course order."""
    return list(EXERCISES)


def per_exercise(namespace: dict[str, Any], prefix: str = "_") -> dict[str, Callable[..., Any]]:
    """``{name: namespace[prefix + name with "-" as "_"]}`` for every exercise (a module's one function per exercise).

    >>> sorted(per_exercise({"_" + n.replace("-", "_"): print for n in EXERCISES}))[:2]
    ['additive', 'attention']
    """
    found = {name: namespace.get(prefix + name.replace("-", "_")) for name in EXERCISES}
    missing = [name for name, fn in found.items() if not callable(fn)]
    if missing:
        raise LookupError(f"no function {prefix}{missing[0].replace('-', '_')} for exercise {missing[0]!r}")
    return {name: fn for name, fn in found.items() if fn is not None}


def exercise(name: object) -> Exercise:
    """The exercise called ``name``; an unknown name is a `LearnError` listing the known ones."""
    if not isinstance(name, str) or name not in EXERCISES:
        raise LearnError(f"exercise: unknown name {name!r}; expected one of {names()}", status=404)
    return EXERCISES[name]
