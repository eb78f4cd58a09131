"""Turning what users pass (tensors, arrays, token lists) into checked NumPy arrays for drawing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from qkv.errors import AttentionError

WeightsLike = Tensor | np.ndarray


def _array(name: str, x: object) -> np.ndarray:
    if isinstance(x, Tensor):
        if not x.is_floating_point():
            raise AttentionError(f"{name}: expected float attention probabilities, got dtype {x.dtype}")
        return x.detach().to("cpu", torch.float64).numpy()
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise AttentionError(f"{name}: expected float attention probabilities, got dtype {x.dtype}")
        return x.astype(np.float64, copy=False)
    raise AttentionError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}")


def _check_probabilities(name: str, a: np.ndarray) -> np.ndarray:
    if a.size and (not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0 + 1e-3):
        raise AttentionError(
            f"{name}: expected probabilities in [0, 1] (softmax weights, e.g. from qkv.interpret.record), "
            f"got values in [{np.nanmin(a):.3g}, {np.nanmax(a):.3g}]"
        )
    return np.clip(a, 0.0, 1.0)


def matrix(name: str, weights: object) -> np.ndarray:
    """One attention matrix ``(Nq, Nk)``."""
    a = _array(name, weights)
    if a.ndim != 2:
        raise AttentionError(
            f"{name}: expected one attention matrix (Nq, Nk), got shape {a.shape}; "
            "pick a batch item and head, e.g. rec.weights[layer][0, head], or average heads with .mean(1)[0]"
        )
    return _check_probabilities(name, a)


def layers(name: str, weights: object, batch: int) -> list[np.ndarray]:
    """Per-layer arrays ``(H, Nq, Nk)`` from a list of ``(B, H, Nq, Nk)`` / ``(H, Nq, Nk)``,
    one ``(L, B, H, Nq, Nk)`` tensor, or one ``(B, H, Nq, Nk)`` tensor (a single layer)."""
    if isinstance(batch, bool) or not isinstance(batch, int):
        raise AttentionError(f"batch: expected an int (which batch item to show), got {batch!r}")
    if isinstance(weights, (Tensor, np.ndarray)):
        if weights.ndim == 5:
            items: Sequence[object] = list(weights)  # (L, B, H, Nq, Nk) -> L × (B, H, Nq, Nk)
        elif weights.ndim == 4:
            items = [weights]
        else:
            raise AttentionError(
                f"{name}: expected a list of (B, H, Nq, Nk) tensors (e.g. rec.weights), or one tensor "
                f"(L, B, H, Nq, Nk) or (B, H, Nq, Nk); got shape {tuple(weights.shape)}"
            )
    elif isinstance(weights, Sequence) and not isinstance(weights, str) and len(weights) > 0:
        items = weights
    else:
        raise AttentionError(
            f"{name}: expected a non-empty list of (B, H, Nq, Nk) tensors (e.g. rec.weights), got {weights!r:.60}"
        )
    out = []
    for index, item in enumerate(items):
        a = _array(f"{name}[{index}]", item)
        if a.ndim == 4:
            if not -a.shape[0] <= batch < a.shape[0]:
                raise AttentionError(f"batch: {batch} is out of range for a batch of {a.shape[0]}")
            a = a[batch]  # (B, H, Nq, Nk) -> (H, Nq, Nk)
        if a.ndim != 3:
            raise AttentionError(f"{name}[{index}]: expected (B, H, Nq, Nk) or (H, Nq, Nk), got shape {a.shape}")
        if out and a.shape[1:] != out[0].shape[1:]:
            raise AttentionError(
                f"{name}[{index}]: {a.shape[1]} queries × {a.shape[2]} keys, but layer 0 has "
                f"{out[0].shape[1]} × {out[0].shape[2]}; show layers of one shape together "
                "(e.g. only the self-attention layers)"
            )
        out.append(_check_probabilities(f"{name}[{index}]", a))
    return out


def labels(name: str, tokens: object, count: int) -> list[str]:
    """``count`` token strings, or ``0 .. count-1`` when ``tokens`` is None."""
    if tokens is None:
        return [str(i) for i in range(count)]
    if isinstance(tokens, str) or not isinstance(tokens, Sequence) or not all(isinstance(t, str) for t in tokens):
        raise AttentionError(f"{name}: expected a list of strings, one per position, got {tokens!r:.60}")
    if len(tokens) != count:
        raise AttentionError(f"{name}: {len(tokens)} tokens given, but the weights have {count} positions on that axis")
    return list(tokens)


def axis_labels(tokens: object, key_tokens: object, nq: int, nk: int) -> tuple[list[str], list[str]]:
    """Query and key labels: ``key_tokens`` default to ``tokens`` when there are as many keys as queries."""
    rows = labels("tokens", tokens, nq)
    if key_tokens is None and tokens is not None:
        if nq != nk:
            raise AttentionError(
                f"key_tokens: the weights have {nq} queries but {nk} keys, so the tokens cannot label both; "
                f"pass key_tokens=[...] with {nk} strings"
            )
        key_tokens = tokens
    return rows, labels("key_tokens", key_tokens, nk)
