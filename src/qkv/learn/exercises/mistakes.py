"""The catalogue of classic mistakes, each a small, precise change to the specification.

Every exercise has one parametrized implementation here (`variant`), written in torch
like `qkv.learn.exercises.spec`: with no flags it *is* the spec; each flag is one thing a
learner gets wrong (no 1/√d_k, softmax over the queries, the mask's polarity inverted,
...). A `Mistake` names a set of flags per exercise (a few forms where learners write
the same mistake in different ways). The grader runs these variants — never the
learner's code — on the cases the learner failed and names the mistake whose output
matches theirs. Variants compute in float64, except a softmax without the max
subtraction, which overflows only in the input's own dtype and so runs in it.

>>> import torch
>>> from qkv.learn.exercises import spec
>>> q, k, v = torch.randn(3, 4, 8, dtype=torch.float64).unbind(0)
>>> torch.allclose(variant("attention", {})["attention"](q, k, v), spec.attention(q, k, v))
True
>>> torch.allclose(variant("attention", {"scale": "none"})["attention"](q, k, v), spec.attention(q, k, v, scale=1.0))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from qkv.learn.exercises import spec

__all__ = ["MISTAKES", "Mistake", "for_exercise", "variant"]

Flags = dict[str, Any]
NEG_INF = float("-inf")


@dataclass(frozen=True)
class Mistake:
    """A classic mistake: what it is, why it matters, the lesson that explains it, and its forms per exercise."""

    id: str
    title: str
    explanation: str
    lesson: str
    concept: str
    forms: dict[str, tuple[Flags, ...]] = field(default_factory=dict)

    def to_json(self) -> dict[str, str]:
        return {
            "mistake": self.id,
            "title": self.title,
            "explanation": self.explanation,
            "lesson": self.lesson,
            "concept": self.concept,
        }


# -- the parametrized implementations -----------------------------------------------------------


def _softmax(s: Tensor, axis: int, f: Flags) -> Tensor:
    """Softmax as a learner might write it: flags ``stable`` (max subtraction), ``empty`` (zero | nan | uniform)."""
    if not f.get("stable", True):
        e = torch.exp(s)  # in the input's dtype: overflows where the spec does not
        return e / e.sum(dim=axis, keepdim=True)
    if f.get("normalize") == "all":
        e = torch.exp(s - s.max())
        return e / e.sum()
    if f.get("empty", "zero") == "zero":
        return spec.softmax(s, axis)
    return torch.softmax(s.double(), dim=axis)  # an all -inf slice gives NaN; a -1e9 fill gives a uniform row


def _attend(
    q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, f: Flags, *, scale_dim: int | None = None
) -> Tensor:
    """Attention with the attention flags: scale, kt, axis, polarity, mask_at, empty, stable."""
    if f.get("stable", True):
        q, k, v = q.double(), k.double(), v.double()
    d = q.shape[-1] if scale_dim is None else scale_dim
    scale = {"sqrt": 1.0 / math.sqrt(d), "none": 1.0, "dk": 1.0 / d}[f.get("scale", "sqrt")]
    kt = f.get("kt", "ok")
    if kt == "ok":
        s = q @ k.transpose(-2, -1)  # (…, Nq, D) @ (…, D, Nk) -> (…, Nq, Nk)
    elif kt == "none":
        s = q @ k  # (…, Nq, D) @ (…, Nk, D): only computes when Nk == D
    else:  # "swapped": k @ qᵀ, the scores transposed
        s = k @ q.transpose(-2, -1)  # (…, Nk, D) @ (…, D, Nq) -> (…, Nk, Nq)
    s = s * scale
    a = None
    if allowed is not None:
        a = allowed if f.get("polarity", True) else ~allowed
        a = torch.broadcast_to(a, s.shape)  # numpy-style broadcasting, as a learner's np.where would
        if f.get("mask_at", "before") == "before":
            s = s.masked_fill(~a, -1e9 if f.get("empty") == "uniform" else NEG_INF)
    w = _softmax(s, f.get("axis", -1), f)
    if a is not None and f.get("mask_at") == "after":
        w = w * a  # weights zeroed after the softmax: rows no longer sum to 1
    return w @ v.to(w.dtype)  # (…, Nq, Nk) @ (…, Nk, Dv) -> (…, Nq, Dv)


def _causal(n_q: int, n_k: int, f: Flags) -> Tensor:
    i = torch.arange(n_q)[:, None]  # (n_q, 1)
    j = torch.arange(n_k)[None, :]  # (1, n_k)
    offset = 0 if f.get("causal") == "top-left" else n_k - n_q
    allowed = j < i + offset if f.get("causal") == "strict" else j <= i + offset  # (n_q, n_k)
    return allowed if f.get("mask_polarity", True) else ~allowed


def _padding(lengths: Tensor, n_k: int, f: Flags) -> Tensor:
    j = torch.arange(n_k)[None, :]  # (1, n_k)
    lengths = torch.as_tensor(lengths).long()[:, None]  # (B, 1)
    allowed = j <= lengths if f.get("pad") == "inclusive" else j < lengths  # (B, n_k)
    if not f.get("mask_polarity", True):
        allowed = ~allowed
    if f.get("pad") == "flat":
        return allowed  # (B, n_k): broadcasts against (…, Nq, Nk) as (Nq=B?, Nk)
    if f.get("pad") == "queries":
        return allowed[:, None, :, None]  # (B, n_k) -> (B, 1, n_k, 1)
    return allowed[:, None, None, :]  # (B, n_k) -> (B, 1, 1, n_k)


def _split(x: Tensor, h: int, how: str) -> Tensor:
    b, n, e = x.shape
    x = x.double()
    if how == "no-transpose":
        return x.reshape(b, h, n, e // h)  # (B, N, E) -> (B, H, N, Dh) directly: tokens mixed into heads
    if how == "interleaved":
        return x.reshape(b, n, e // h, h).permute(0, 3, 1, 2)  # (B, N, Dh, H) -> (B, H, N, Dh)
    return x.reshape(b, n, h, e // h).transpose(1, 2)  # (B, N, H, Dh) -> (B, H, N, Dh)


def _merge(x: Tensor, how: str) -> Tensor:
    b, h, n, d = x.shape
    x = x.double()
    if how == "no-transpose":
        return x.reshape(b, n, h * d)  # (B, H, N, Dh) -> (B, N, E) directly: heads and tokens scrambled
    if how == "interleaved":
        return x.permute(0, 2, 3, 1).reshape(b, n, h * d)  # (B, H, N, Dh) -> (B, N, Dh, H) -> (B, N, E)
    return x.transpose(1, 2).reshape(b, n, h * d)  # (B, H, N, Dh) -> (B, N, H, Dh) -> (B, N, E)


def _angles(positions: Tensor, d: int, base: float, exponent: str) -> Tensor:
    i = torch.arange(d // 2, dtype=torch.float64)  # (d/2,) pair index
    power = {"ok": 2 * i / d, "pair": i / d}[exponent]
    return torch.as_tensor(positions).double()[..., None] * base ** (-power)  # (…, N, d/2)


def _sinusoidal(n: int, d: int, f: Flags) -> Tensor:
    p = torch.arange(n, dtype=torch.float64)[:, None]  # (n, 1)
    if f.get("exponent") == "column":
        col = torch.arange(d, dtype=torch.float64)  # (d,): the column index used as 2i, also on odd columns
        angles = p / 10000.0 ** (col / d)  # (n, d)
        even, odd = angles[:, 0::2], angles[:, 1::2]
    else:
        even = odd = _angles(torch.arange(n), d, 10000.0, f.get("exponent", "ok"))  # (n, d/2)
    pe = torch.empty(n, d, dtype=torch.float64)
    layout = f.get("layout", "ok")
    if layout == "halves":
        pe[:, : d // 2], pe[:, d // 2 :] = torch.sin(even), torch.cos(odd)
    elif layout == "swapped":
        pe[:, 0::2], pe[:, 1::2] = torch.cos(even), torch.sin(odd)
    else:
        pe[:, 0::2], pe[:, 1::2] = torch.sin(even), torch.cos(odd)
    return pe


def _rope(x: Tensor, positions: Tensor, base: float, f: Flags) -> Tensor:
    x = x.double()
    d = x.shape[-1]
    theta = _angles(positions, d, float(base), f.get("exponent", "ok")) * f.get("direction", 1)  # (N, D/2)
    cos, sin = torch.cos(theta), torch.sin(theta)
    if f.get("pairs") == "half":
        a, b = x[..., : d // 2], x[..., d // 2 :]  # pairs (i, i + D/2), as in rotate_half
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
    a, b = x[..., 0::2], x[..., 1::2]  # pairs (2i, 2i + 1)
    out = torch.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
    return out


def variant(exercise: str, f: Flags) -> dict[str, Callable[..., Any]]:
    """The exercise's functions with the mistakes ``f`` made (``{}``: the spec itself), by function name."""
    if exercise == "softmax":

        def softmax(x, axis=-1):
            axis = -1 if f.get("axis_ignored") else axis
            return _softmax(x if not f.get("stable", True) else x.double(), axis, {"empty": "zero", **f})

        return {"softmax": softmax}
    if exercise == "attention":
        return {"attention": lambda q, k, v, mask=None: _attend(q, k, v, None if mask is None else mask.bool(), f)}
    if exercise == "causal-mask":
        return {"causal_mask": lambda n_q, n_k: _causal(n_q, n_k, f)}
    if exercise == "padding-mask":

        def masked_attention(q, k, v, lengths):
            return _attend(q, k, v, _padding(lengths, k.shape[-2], f), f)

        return {"padding_mask": lambda lengths, n_k: _padding(lengths, n_k, f), "masked_attention": masked_attention}
    if exercise == "split-heads":
        return {
            "split_heads": lambda x, num_heads: _split(x, num_heads, f.get("split", "ok")),
            "merge_heads": lambda x: _merge(x, f.get("merge", "ok")),
        }
    if exercise == "mha":

        def multi_head_attention(x, w_q, w_k, w_v, w_o, num_heads, causal=False):
            x = x.double()
            ws = [w.double().T if f.get("weights") == "transposed" else w.double() for w in (w_q, w_k, w_v, w_o)]
            q, k, v = (_split(x @ w, num_heads, f.get("split", "ok")) for w in ws[:3])  # (B, H, N, Dh) each
            n = x.shape[1]
            allowed = _causal(n, n, f) if causal and f.get("causal") != "ignored" else None
            scale_dim = x.shape[-1] if f.get("scale") == "embed" else None
            g = {**f, "scale": "sqrt" if f.get("scale") == "embed" else f.get("scale", "sqrt")}
            out = _attend(q, k, v, allowed, g, scale_dim=scale_dim)  # (B, H, N, Dh)
            return _merge(out, f.get("merge", "ok")) @ ws[3]  # (B, N, E) @ (E, E) -> (B, N, E)

        return {"multi_head_attention": multi_head_attention}
    if exercise == "sinusoidal":
        return {"sinusoidal_encoding": lambda n, d: _sinusoidal(n, d, f)}
    if exercise == "rope":
        return {"apply_rope": lambda x, positions, base=10000.0: _rope(x, positions, base, f)}
    if exercise == "kv-decode":

        def decode_step(q_t, k_t, v_t, cache_k, cache_v):
            ck = torch.cat([cache_k.double(), k_t.double()], dim=-2)  # (…, T, D) -> (…, T+1, D)
            cv = torch.cat([cache_v.double(), v_t.double()], dim=-2)  # (…, T, Dv) -> (…, T+1, Dv)
            how = f.get("cache", "ok")
            if how == "twice":  # appended again before attending: the new token counts twice
                ck = torch.cat([ck, k_t.double()], dim=-2)  # (…, T+1, D) -> (…, T+2, D)
                cv = torch.cat([cv, v_t.double()], dim=-2)  # (…, T+1, Dv) -> (…, T+2, Dv)
            seen_k, seen_v = (cache_k.double(), cache_v.double()) if how == "no-new" else (ck, cv)
            out = _attend(q_t, seen_k, seen_v, None, f)  # (…, 1, Dv)
            if how == "twice-returned":  # attended right, then appended once more on the way out
                ck = torch.cat([ck, k_t.double()], dim=-2)  # (…, T+1, D) -> (…, T+2, D)
                cv = torch.cat([cv, v_t.double()], dim=-2)  # (…, T+1, Dv) -> (…, T+2, Dv)
            return out, ck, cv

        return {"decode_step": decode_step}
    if exercise == "additive":

        def additive_attention(query, keys, w_q, w_k, v):
            query, keys = query.double(), keys.double()
            e = (query @ w_q.double())[..., :, None, :] + (keys @ w_k.double())[..., None, :, :]  # (…, Nq, Nk, A)
            s = (torch.tanh(e) if f.get("tanh", True) else e) @ v.double()  # (…, Nq, Nk, A) @ (A,) -> (…, Nq, Nk)
            normalize = f.get("normalize", "keys")
            w = s if normalize == "none" else spec.softmax(s, -1 if normalize == "keys" else -2)
            return w @ keys, w  # (…, Nq, Nk) @ (…, Nk, Dk) -> (…, Nq, Dk)

        return {"additive_attention": additive_attention}
    if exercise == "sliding-window":

        def sliding_window_mask(n, window):
            i = torch.arange(n)[:, None]  # (n, 1)
            j = torch.arange(n)[None, :]  # (1, n)
            w = window + {"ok": 0, "plus-one": 1, "minus-one": -1}[f.get("window", "ok")]
            allowed = (j > i - w) & (j <= i) if f.get("causal", True) else (i - j).abs() < w  # (n, n)
            return allowed if f.get("mask_polarity", True) else ~allowed

        return {"sliding_window_mask": sliding_window_mask}
    raise KeyError(exercise)


# -- the catalogue ------------------------------------------------------------------------------

_ATTENTION_LIKE = ("attention", "padding-mask", "mha", "kv-decode")


def _each(names: tuple[str, ...], *forms: Flags) -> dict[str, tuple[Flags, ...]]:
    return {name: tuple(forms) for name in names}


MISTAKES: tuple[Mistake, ...] = (
    Mistake(
        "no-scaling",
        "No 1/√d_k scaling",
        "The scores q·k were not divided by √d_k. Their spread grows with d_k (variance d_k for unit-variance "
        "q and k), so the softmax saturates: one key takes almost all the weight and the gradient of the others "
        "vanishes. Divide the scores by √d_k (d_k = q.shape[-1], the head size in multi-head attention).",
        "scaling",
        "scaling",
        _each(_ATTENTION_LIKE, {"scale": "none"}),
    ),
    Mistake(
        "scale-by-dk",
        "Scores divided by d_k instead of √d_k",
        "The scores were divided by d_k, not √d_k. That overcorrects: their variance falls to 1/d_k, the softmax "
        "comes out nearly uniform and attention stops selecting. The right factor keeps the variance near 1.",
        "scaling",
        "scaling",
        _each(_ATTENTION_LIKE, {"scale": "dk"}),
    ),
    Mistake(
        "scale-by-embed",
        "Scaled by √E instead of the head size √(E/H)",
        "Each head's dot products run over its own E/H features, so the variance to undo is E/H, not E: "
        "dividing by √E flattens every head's softmax. Scale by 1/√(E/H).",
        "multi-head",
        "scaling",
        {"mha": ({"scale": "embed"},)},
    ),
    Mistake(
        "softmax-query-axis",
        "Softmax over the queries instead of the keys",
        "The softmax normalized each key's column over the queries. Each query must spread one unit of weight "
        "over the keys it reads: normalize over the last axis of the (…, Nq, Nk) scores.",
        "soft-lookup",
        "softmax",
        {**_each(("attention", "padding-mask", "mha"), {"axis": -2}), "additive": ({"normalize": "queries"},)},
    ),
    Mistake(
        "softmax-axis-ignored",
        "The axis argument ignored",
        "The softmax always ran over the last axis whatever `axis` asked for. Reduce over `axis` (and keep it, "
        "keepdims=True, so the sum broadcasts back).",
        "masks",
        "softmax",
        {"softmax": ({"axis_ignored": True},)},
    ),
    Mistake(
        "normalized-over-all",
        "Normalized over the whole array, not along the axis",
        "exp(x) was divided by the sum of every element, so no slice sums to 1. Sum along `axis` only, "
        "with keepdims=True.",
        "masks",
        "softmax",
        {"softmax": ({"normalize": "all"},)},
    ),
    Mistake(
        "no-max-subtraction",
        "No max subtraction: the softmax overflows",
        "exp of a large score overflows to inf (above about 88 in float32, 709 in float64) and inf/inf is NaN. "
        "softmax(x) equals softmax(x - max(x)), and after the shift every exponent is at most 1.",
        "masks",
        "softmax",
        _each(("softmax", "attention", "padding-mask"), {"stable": False}),
    ),
    Mistake(
        "mask-inverted",
        "The mask's polarity inverted",
        "The mask was applied as if True meant 'ignore'. In qkv (and PyTorch's SDPA bool masks) True means "
        "'may attend': keep the scores where the mask is True, set the others to -inf.",
        "masks",
        "masking",
        {
            "attention": ({"polarity": False}, {"polarity": False, "empty": "nan"}),
            **_each(("causal-mask", "sliding-window"), {"mask_polarity": False}),
            "padding-mask": (
                {"mask_polarity": False},
                {"mask_polarity": False, "empty": "nan"},
                {"polarity": False},
                {"polarity": False, "empty": "nan"},
            ),
        },
    ),
    Mistake(
        "mask-after-softmax",
        "The mask applied after the softmax",
        "The weights were zeroed after the softmax, so the allowed ones no longer sum to 1: the output shrinks "
        "toward zero and still 'knows' the masked scores through the normalization. Mask the scores (to -inf) "
        "before the softmax.",
        "masks",
        "masking",
        _each(("attention", "padding-mask"), {"mask_at": "after"}),
    ),
    Mistake(
        "masked-row-nan",
        "A fully masked row gives NaN",
        "A row whose keys are all masked is all -inf; its max is -inf and -inf - (-inf) is NaN, or exp gives 0/0. "
        "That NaN spreads through every later layer. Give such rows zero weights (shift by 0 where the max is "
        "-inf, divide by 1 where the sum is 0).",
        "masks",
        "masking",
        {**_each(("softmax",), {"empty": "nan"}), **_each(("attention", "padding-mask"), {"empty": "nan"})},
    ),
    Mistake(
        "masked-row-uniform",
        "A fully masked row gives the mean of the values (a -1e9 fill)",
        "Masked scores were set to a large negative number instead of -inf. Where a row has an allowed key that "
        "is harmless, but a fully masked row then gives uniform weights over the masked keys: the output is the "
        "mean of values it must not see. Such rows must give zeros.",
        "masks",
        "masking",
        _each(("attention", "padding-mask"), {"empty": "uniform"}),
    ),
    Mistake(
        "k-not-transposed",
        "K not transposed",
        "The scores were q @ k instead of q @ kᵀ. That only runs when Nk equals D, and then it multiplies each "
        "query by the wrong numbers. Swap the last two axes of k (k.swapaxes(-1, -2)); `.T` reverses every axis "
        "of an N-d array.",
        "qkv",
        "dot-product-score",
        {"attention": ({"kt": "none"},)},
    ),
    Mistake(
        "k-transposed-wrongly",
        "The scores transposed: k @ qᵀ instead of q @ kᵀ",
        "The score matrix came out (Nk, Nq): row i holds key i against every query, so the softmax normalizes "
        "over the queries. It only runs when Nq equals Nk. The scores are q @ kᵀ, one row per query.",
        "qkv",
        "dot-product-score",
        {"attention": ({"kt": "swapped"},)},
    ),
    Mistake(
        "merge-no-transpose",
        "Heads merged in the wrong order",
        "(B, H, N, Dh) was reshaped straight to (B, N, E), which interleaves tokens and heads: token n's output "
        "mixes pieces of other tokens. Move the head axis back first: transpose to (B, N, H, Dh), then reshape.",
        "multi-head",
        "multi-head",
        {"split-heads": ({"merge": "no-transpose"},), "mha": ({"merge": "no-transpose"},)},
    ),
    Mistake(
        "split-no-transpose",
        "Heads split without the transpose",
        "(B, N, E) was reshaped straight to (B, H, N, E/H), so a 'head' holds slices of several tokens. "
        "Reshape to (B, N, H, E/H) first, then swap the token and head axes.",
        "multi-head",
        "multi-head",
        {"split-heads": ({"split": "no-transpose"},), "mha": ({"split": "no-transpose"},)},
    ),
    Mistake(
        "heads-interleaved",
        "Features dealt to heads round-robin",
        "E was split as (E/H, H), so head h got features h, h+H, h+2H, ... instead of a contiguous block. The "
        "projections' weights are laid out head by head: reshape to (B, N, H, E/H).",
        "multi-head",
        "multi-head",
        {"split-heads": ({"split": "interleaved", "merge": "interleaved"},), "mha": ({"merge": "interleaved"},)},
    ),
    Mistake(
        "weights-transposed",
        "The weights applied transposed (x @ wᵀ)",
        "The weights were used as x @ w.T, the convention of torch.nn.Linear's stored weight. Here they are "
        "given as y = x @ w, (in features, out features).",
        "qkv",
        "query-key-value",
        {"mha": ({"weights": "transposed"},)},
    ),
    Mistake(
        "causal-off-by-one",
        "Causal mask off by one: the diagonal excluded",
        "The mask allowed only keys strictly before the query (j < i), so a token cannot see itself and the "
        "first token sees nothing. A causal token sees the past and itself: j <= i.",
        "masks",
        "masking",
        {
            "causal-mask": ({"causal": "strict"},),
            "mha": ({"causal": "strict"}, {"causal": "strict", "empty": "nan"}),
        },
    ),
    Mistake(
        "causal-top-left",
        "Causal mask aligned top-left",
        "With fewer queries than keys (decoding with a cache) the queries are the newest tokens: they see the "
        "whole past. The mask must be aligned bottom-right, j <= i + (n_k - n_q); a plain lower triangle "
        "hides the past from them.",
        "masks",
        "masking",
        {"causal-mask": ({"causal": "top-left"},)},
    ),
    Mistake(
        "causal-ignored",
        "causal=True ignored",
        "With causal=True each token must see only the past and itself; the output here depends on later tokens.",
        "masks",
        "masking",
        {"mha": ({"causal": "ignored"},)},
    ),
    Mistake(
        "padding-off-by-one",
        "Padding mask off by one (j <= length)",
        "A sequence of length L has keys 0 … L-1: the mask must be j < lengths[b]; j <= lengths[b] lets each "
        "query read the first padding position.",
        "masks",
        "masking",
        {"padding-mask": ({"pad": "inclusive"},)},
    ),
    Mistake(
        "padding-on-queries",
        "Padding mask shaped over the queries",
        "The mask was shaped (B, 1, n_k, 1), which masks query rows, not key columns. The padding is in the keys: "
        "shape it (B, 1, 1, n_k) so it broadcasts over heads and queries.",
        "masks",
        "masking",
        {"padding-mask": ({"pad": "queries"},)},
    ),
    Mistake(
        "padding-no-singleton-axes",
        "Padding mask without the head and query axes",
        "The mask stayed (B, n_k): against (B, H, Nq, Nk) scores it broadcasts as if B were the query axis. "
        "Add the axes: mask[:, None, None, :].",
        "masks",
        "masking",
        {"padding-mask": ({"pad": "flat"},)},
    ),
    Mistake(
        "sin-cos-swapped",
        "sin and cos swapped",
        "The even columns hold cos and the odd ones sin. The convention (Vaswani et al.) is sin on even columns, "
        "cos on odd: position 0 is [0, 1, 0, 1, …].",
        "position",
        "positional-encoding",
        {"sinusoidal": ({"layout": "swapped"},)},
    ),
    Mistake(
        "sinusoidal-halves",
        "sin in the first half, cos in the second",
        "All the sines were put in the first d/2 columns and the cosines after them. Here sin and cos of one "
        "frequency are neighbours: columns 2i and 2i+1.",
        "position",
        "positional-encoding",
        {"sinusoidal": ({"layout": "halves"},)},
    ),
    Mistake(
        "sinusoidal-column-exponent",
        "The frequency uses the column index instead of the pair index",
        "The odd column 2i+1 got frequency 10000^(-(2i+1)/d) instead of sharing 10000^(-2i/d) with column 2i; "
        "sin and cos of different frequencies no longer form a rotation, so PE[p+k] is not a fixed linear map of "
        "PE[p].",
        "position",
        "positional-encoding",
        {"sinusoidal": ({"exponent": "column"},)},
    ),
    Mistake(
        "frequency-without-2",
        "Frequencies base^(-i/d) instead of base^(-2i/d)",
        "The pair index i was used without the factor 2, so the frequencies fall only to base^(-1/2) instead of "
        "about 1/base: the slowest pair turns far too fast and long distances alias.",
        "position",
        "positional-encoding",
        {"sinusoidal": ({"exponent": "pair"},), "rope": ({"exponent": "pair"},)},
    ),
    Mistake(
        "rope-half-split",
        "Rotary pairs split the wrong way",
        "The pairs were (x[i], x[i + D/2]) — the half-split (rotate_half) layout of HF Llama — but this exercise "
        "rotates adjacent pairs (x[2i], x[2i+1]) as RoFormer and GGUF do. Weights trained for one layout break "
        "with the other.",
        "position",
        "positional-encoding",
        {"rope": ({"pairs": "half"},)},
    ),
    Mistake(
        "rope-direction",
        "Rotated the wrong way",
        "Each pair was rotated by -θ: (a, b) -> (a cos θ + b sin θ, -a sin θ + b cos θ). Relative positions still "
        "work, but mirrored: a model trained with +θ reads the past as the future.",
        "position",
        "positional-encoding",
        {"rope": ({"direction": -1},)},
    ),
    Mistake(
        "cache-appended-twice",
        "The cache appended twice",
        "The new key and value were appended to the cache twice, so the cache grows by two per step and the "
        "newest token is counted double. Append once, attend over the grown cache, return it.",
        "production",
        "kv-cache",
        {"kv-decode": ({"cache": "twice"}, {"cache": "twice-returned"})},
    ),
    Mistake(
        "cache-new-key-missing",
        "The new token does not attend to itself",
        "The query attended the old cache before the new key and value were appended: the newest token never sees "
        "itself (and the first step has no key at all). Append first, then attend.",
        "production",
        "kv-cache",
        {"kv-decode": ({"cache": "no-new"}, {"cache": "no-new", "empty": "nan"})},
    ),
    Mistake(
        "additive-no-tanh",
        "No tanh in the additive score",
        "Without the tanh, vᵀ(W_q s + W_k h) = vᵀW_q s + vᵀW_k h: the query's part is the same for every key and "
        "cancels in the softmax, so every query gets the same weights. The nonlinearity is what makes the score "
        "depend on the pair.",
        "bottleneck",
        "additive-attention",
        {"additive": ({"tanh": False},)},
    ),
    Mistake(
        "additive-no-softmax",
        "Scores used as weights (no softmax)",
        "The raw scores were used as weights: they can be negative and do not sum to 1, so the context is not an "
        "average of the keys. Normalize them with a softmax over the keys.",
        "bottleneck",
        "additive-attention",
        {"additive": ({"normalize": "none"},)},
    ),
    Mistake(
        "window-off-by-one",
        "Window off by one",
        "Each query must see exactly `window` keys, itself included: i - window < j <= i. The mask here lets in "
        "one key too many or too few.",
        "production",
        "sparse-attention",
        {"sliding-window": ({"window": "plus-one"}, {"window": "minus-one"})},
    ),
    Mistake(
        "window-not-causal",
        "Window not causal",
        "The window reached both ways (|i - j| < window), so queries see future tokens. A sliding window for a "
        "decoder is causal: j <= i as well.",
        "production",
        "sparse-attention",
        {"sliding-window": ({"causal": False},)},
    ),
)


def for_exercise(name: str) -> list[tuple[Mistake, Flags]]:
    """Every (mistake, form) that applies to exercise ``name``, in catalogue order."""
    return [(m, form) for m in MISTAKES for form in m.forms.get(name, ())]
