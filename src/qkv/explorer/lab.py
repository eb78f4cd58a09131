"""The mechanism lab: scaled dot-product attention step by step, on small numbers you can read.

A few words get fixed random embeddings ``x (N, d_model)`` (the same word always
gets the same vector, so a repeated word shows what attention does without
positions); per head, random projections give ``Q, K, V (N, d_k)``. Then::

    scores  = Q Kᵀ                         (N, N)
    scaled  = scores · scale / T           scale = 1/√d_k, or 1 with scaling off
    masked  = scaled, −∞ where the mask forbids
    weights = softmax(masked)              qkv.attention_weights
    out     = weights V                    qkv.attention

``weights`` and ``out`` are qkv's own results (`qkv.attention_weights`,
`qkv.attention` with the mask object and `qkv.mods.temperature`); the steps
before them are the same formula written out, and `compute` checks both agree.
The projections' entries have variance ``1/d_model``, so each entry of ``q``
and ``k`` has variance about 1 and ``q·k`` has variance about ``d_k``: unscaled,
the scores spread like ``√d_k`` and softmax saturates; ``saturation`` measures
that on the current set-up for every ``d_k`` from 2 to 1024.

>>> lab = compute(LabConfig(text="the cat sat", d_k=4, heads=1))
>>> lab["tokens"], len(lab["heads"][0]["weights"])
(['the', 'cat', 'sat'], 3)
>>> lab["check"]["weights"] < 1e-12 and lab["check"]["out"] < 1e-12
True
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

import qkv
from qkv import masks, mods
from qkv.interpret import entropy
from qkv.positional import RotaryEmbedding, SinusoidalPositionalEncoding

__all__ = ["LabConfig", "LabError", "compute", "saturation"]

D_MODEL = 8  # embedding width: small enough to print every number
MAX_WORDS = 12
MAX_TEXT_CHARS = 200
MAX_D_K = 1024
MAX_HEADS = 8
SHOWN_DIMS = 32  # columns of Q, K, V and out sent to the page (all d_k are computed)
SWEEP = tuple(2**p for p in range(1, 11))  # d_k = 2 .. 1024 for the saturation curves
SWEEP_HEADS = 16  # random heads the curves average over
MASKS = ("none", "causal", "sliding_window", "block_sparse")
POSITIONAL = ("none", "sinusoidal", "rotary")
DEFAULT_TEXT = "the cat sat on the mat because it was tired"
DECIMALS = 4


class LabError(ValueError):
    """A knob out of range or of the wrong type; the message names it and says what is allowed."""


@dataclass(frozen=True)
class LabConfig:
    """The lab's knobs. `from_json` checks a request body; the defaults are the lab's start."""

    text: str = DEFAULT_TEXT
    d_k: int = 8
    heads: int = 2
    temperature: float = 1.0
    scaled: bool = True
    mask: str = "none"
    window: int = 3
    block_size: int = 2
    positional: str = "none"
    seed: int = 0

    @property
    def words(self) -> list[str]:
        return self.text.split()

    @property
    def scale(self) -> float:
        """What multiplies ``q kᵀ``: ``1/√d_k`` with scaling on, 1 without."""
        return 1.0 / math.sqrt(self.d_k) if self.scaled else 1.0

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> LabConfig:
        """The knobs of a JSON object; missing ones take their default, bad ones raise `LabError`.

        >>> LabConfig.from_json({"d_k": 64, "scaled": False}).scale
        1.0
        >>> LabConfig.from_json({"d_k": 0})
        Traceback (most recent call last):
        ...
        qkv.explorer.lab.LabError: d_k: expected an integer from 1 to 1024, got 0
        """
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(body) - known)
        if unknown:
            raise LabError(f"unknown field {unknown[0]!r}; the lab takes {sorted(known)}")
        default = cls()
        text = body.get("text", default.text)
        if not isinstance(text, str):
            raise LabError(f"text: expected a string of up to {MAX_WORDS} words, got {type(text).__name__}")
        if len(text) > MAX_TEXT_CHARS:
            raise LabError(f"text: expected at most {MAX_TEXT_CHARS} characters, got {len(text)}")
        words = text.split()
        if not words:
            raise LabError("text: expected a few words, e.g. 'the cat sat on the mat', got nothing")
        if len(words) > MAX_WORDS:
            raise LabError(f"text: the lab takes at most {MAX_WORDS} words (small, visible numbers), got {len(words)}")
        config = cls(
            text=" ".join(words),
            d_k=_int(body, "d_k", default.d_k, 1, MAX_D_K),
            heads=_int(body, "heads", default.heads, 1, MAX_HEADS),
            temperature=_float(body, "temperature", default.temperature, 0.01, 100.0),
            scaled=_bool(body, "scaled", default.scaled),
            mask=_choice(body, "mask", default.mask, MASKS),
            window=_int(body, "window", default.window, 1, MAX_WORDS),
            block_size=_int(body, "block_size", default.block_size, 1, MAX_WORDS),
            positional=_choice(body, "positional", default.positional, POSITIONAL),
            seed=_int(body, "seed", default.seed, 0, 2**31 - 1),
        )
        if config.positional == "rotary" and config.d_k % 2:
            raise LabError(f"d_k: rotary turns pairs of dimensions, so it needs an even d_k, got {config.d_k}")
        return config


def _int(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise LabError(f"{name}: expected an integer from {low} to {high}, got {value!r}")
    return value


def _float(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise LabError(f"{name}: expected a number from {low} to {high}, got {value!r}")
    return float(value)


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise LabError(f"{name}: expected true or false, got {value!r}")
    return value


def _choice(body: dict[str, Any], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = body.get(name, default)
    if value not in choices:
        raise LabError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# the computation


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(parts).encode()))


def embeddings(config: LabConfig) -> tuple[Tensor, Tensor | None]:
    """``x (N, d_model)`` with the positional encoding added (sinusoidal), and that encoding (or None).

    A word's vector depends only on the word and the seed: repeated words get equal rows.
    """
    rows = [
        torch.randn(D_MODEL, generator=_generator(config.seed, zlib.crc32(word.lower().encode())), dtype=torch.float64)
        for word in config.words
    ]
    x = torch.stack(rows)  # N × (d_model,) -> (N, d_model)
    if config.positional != "sinusoidal":
        return x, None
    pe = SinusoidalPositionalEncoding(D_MODEL)(torch.arange(len(rows)), dtype=torch.float64)  # (N, d_model)
    return x + pe, pe


def projections(config: LabConfig, heads: int, d_k: int) -> Tensor:
    """``W (3, heads, d_model, d_k)`` for q, k, v; entries N(0, 1/d_model).

    Head ``h``'s matrices and their first columns stay the same when ``heads`` or
    ``d_k`` grow, so turning a knob changes only what it names.
    """
    out = torch.empty(3, heads, D_MODEL, d_k, dtype=torch.float64)
    for which in range(3):
        for h in range(heads):
            g = _generator(config.seed, which, h)
            out[which, h] = torch.randn(d_k, D_MODEL, generator=g, dtype=torch.float64).T / math.sqrt(D_MODEL)
    return out


def mask_of(config: LabConfig) -> masks.Mask | None:
    """The qkv mask the knobs name (block-sparse: diagonal blocks plus the first block, BigBird-style)."""
    n = len(config.words)
    if config.mask == "causal":
        return masks.causal()
    if config.mask == "sliding_window":
        return masks.sliding_window(config.window)
    if config.mask == "block_sparse":
        blocks = -(-n // config.block_size)
        layout = torch.eye(blocks, dtype=torch.bool)  # (nQb, nKb): each block sees itself ...
        layout[:, 0] = True  # ... and the first block (a global block)
        return masks.block_sparse(layout, config.block_size)
    return None


def _qkv(config: LabConfig, x: Tensor, heads: int, d_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """``q, k, v (1, heads, N, d_k)``: x projected per head, q and k turned by RoPE if the knob says so."""
    w = projections(config, heads, d_k)  # (3, H, d_model, d_k)
    q, k, v = torch.einsum("nm,chmd->chnd", x, w)[:, None].unbind(0)  # (N, m) x (3, H, m, D) -> 3 × (1, H, N, D)
    if config.positional == "rotary":
        q, k = _rotary(q, d_k), _rotary(k, d_k)
    return q, k, v


def _rotary(x: Tensor, d_k: int) -> Tensor:
    return RotaryEmbedding(d_k).apply(x, torch.arange(x.shape[2]))  # (B, H, N, D) -> (B, H, N, D)


def _stats(weights: Tensor, allowed: Tensor) -> dict[str, Tensor]:
    """Per head and query row: the largest weight, the entropy, the size of softmax's gradient.

    ``weights (B, H, N, N)`` gives ``(B, H, N)`` each; the gradient is the Frobenius norm of softmax's
    Jacobian ``diag(p) − p pᵀ``: it goes to 0 as a row saturates on one key.
    """
    p = weights  # (B, H, N, N)
    jacobian = torch.diag_embed(p) - p[..., :, None] * p[..., None, :]  # (B, H, N, N) -> (B, H, N, N, N)
    return {
        "peak": p.amax(-1),  # (B, H, N)
        "entropy": entropy(p),  # (B, H, N)
        "entropy_max": allowed.sum(-1).clamp(min=1).double().log().expand_as(p[..., 0]),  # (N,) -> (B, H, N)
        "gradient": jacobian.flatten(-2).norm(dim=-1),  # (B, H, N, N·N) -> (B, H, N)
    }


def saturation(config: LabConfig, x: Tensor, allowed: Tensor) -> dict[str, Any]:
    """Mean peak weight, entropy and softmax gradient over heads and rows, for d_k = 2 .. 1024, scaled or not.

    Everything but ``d_k`` and scaling stays as the knobs set it; the means run over
    `SWEEP_HEADS` random heads (the first ones are the lab's), so the curves are smooth.
    All 20 set-ups go through one `qkv.attention_weights` call: each set-up's q and k
    keep their first ``d_k`` dims and zeros after them (zeros add nothing to ``q·k``),
    and q is multiplied by the set-up's scale beforehand (``(s q)·k = s (q·k)``).
    """
    heads = max(config.heads, SWEEP_HEADS)
    top = SWEEP[-1]
    if config.positional == "rotary":  # RoPE pairs dims by d_k: turn each d_k's slice on its own
        w = projections(config, heads, top)  # (3, H, d_model, 1024)
        q = torch.zeros(len(SWEEP), heads, x.shape[0], top, dtype=torch.float64)  # (10, H, N, 1024)
        k = torch.zeros_like(q)
        for index, d_k in enumerate(SWEEP):
            qd, kd = torch.einsum("nm,chmd->chnd", x, w[:2, ..., :d_k])[:, None].unbind(0)  # 2 × (1, H, N, d_k)
            q[index, ..., :d_k], k[index, ..., :d_k] = _rotary(qd, d_k)[0], _rotary(kd, d_k)[0]
    else:
        q, k, _ = _qkv(config, x, heads, top)  # (1, H, N, 1024) each
        dims = torch.arange(top) < torch.tensor(SWEEP)[:, None]  # (10, 1024): the first d_k dims of each set-up
        q, k = q * dims[:, None, None, :], k * dims[:, None, None, :]  # (1, H, N, 1024) -> (10, H, N, 1024)
    scales = torch.tensor([[1 / math.sqrt(d) for d in SWEEP], [1.0] * len(SWEEP)], dtype=torch.float64)  # (2, 10)
    q = q[None] * scales[:, :, None, None, None]  # (10, H, N, 1024) -> (2, 10, H, N, 1024)
    k = k[None].expand_as(q)  # (2, 10, H, N, 1024)
    bias = mods.temperature(config.temperature) if config.temperature != 1.0 else None
    weights = qkv.attention_weights(q.flatten(0, 1), k.flatten(0, 1), mask=mask_of(config), bias=bias, scale=1.0)
    stats = _stats(weights, allowed)  # each (20, H, N)
    curves: dict[str, Any] = {"d_k": list(SWEEP), "heads": heads}
    for index, name in enumerate(("scaled", "unscaled")):
        curves[name] = {
            key: [round(float(m), DECIMALS) for m in value.unflatten(0, (2, -1))[index].mean((-2, -1))]
            for key, value in stats.items()
            if key != "entropy_max"
        }  # (20, H, N) -> (2, 10, H, N) -> (10,)
    return curves


def _matrix(t: Tensor) -> list[list[float | None]]:
    """A 2-D tensor as rounded nested lists; −∞ (a masked score) becomes None (JSON null)."""
    return [[None if math.isinf(v) else round(v, DECIMALS) for v in row] for row in t.tolist()]


def compute(config: LabConfig) -> dict[str, Any]:
    """Every step for every head, qkv's weights and output, and the saturation curves (a JSON-ready dict)."""
    x, pe = embeddings(config)  # (N, d_model)
    n = x.shape[0]
    mask = mask_of(config)
    bias = mods.temperature(config.temperature) if config.temperature != 1.0 else None
    q, k, v = _qkv(config, x, config.heads, config.d_k)  # (1, H, N, d_k) each
    weights = qkv.attention_weights(q, k, mask=mask, bias=bias, scale=config.scale)  # (1, H, N, N)
    out = qkv.attention(q, k, v, mask=mask, bias=bias, scale=config.scale)  # (1, H, N, d_k)

    allowed = torch.ones(n, n, dtype=torch.bool) if mask is None else mask.to_dense(1, 1, n, n)[0, 0]  # (N, N)
    scores = q @ k.transpose(-2, -1)  # (1, H, N, D) @ (1, H, D, N) -> (1, H, N, N)
    scaled = scores * config.scale / config.temperature
    masked = scaled.masked_fill(~allowed, -math.inf)
    by_hand = torch.softmax(masked, dim=-1)
    check = {
        "weights": float((by_hand - weights).abs().max()),
        "out": float((weights @ v - out).abs().max()),  # (1, H, N, N) @ (1, H, N, D)
    }
    stats = {key: value[0] for key, value in _stats(weights, allowed).items()}  # (1, H, N) -> (H, N)
    shown = min(config.d_k, SHOWN_DIMS)
    heads = []
    for h in range(config.heads):
        logits = scaled[0, h][allowed]  # the numbers softmax sees
        heads.append(
            {
                "q": _matrix(q[0, h, :, :shown]),
                "k": _matrix(k[0, h, :, :shown]),
                "v": _matrix(v[0, h, :, :shown]),
                "scores": _matrix(scores[0, h]),
                "scaled": _matrix(scaled[0, h]),
                "masked": _matrix(masked[0, h]),
                "weights": _matrix(weights[0, h]),
                "out": _matrix(out[0, h, :, :shown]),
                "score_std": round(float(scores[0, h][allowed].std(correction=0)), DECIMALS),
                "logit_std": round(float(logits.std(correction=0)), DECIMALS),
                "peak": [round(float(p), DECIMALS) for p in stats["peak"][h]],
                "entropy": [round(float(e), DECIMALS) for e in stats["entropy"][h]],
                "gradient": [round(float(g), DECIMALS) for g in stats["gradient"][h]],
            }
        )
    return {
        "config": asdict(config),
        "tokens": config.words,
        "d_model": D_MODEL,
        "scale": config.scale,
        "shown_dims": shown,
        "x": _matrix(x),
        "positional": None if pe is None else _matrix(pe),
        "allowed": allowed.tolist(),
        "mask": repr(mask) if mask is not None else None,
        "heads": heads,
        "entropy_max": [round(float(e), DECIMALS) for e in stats["entropy_max"][0]],
        "saturation": saturation(config, x, allowed),
        "check": check,
    }
