"""Metrics of attention probabilities: entropy, mean attention distance, attention rollout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from qkv.errors import AttentionError
from qkv.interpret._common import int_list


def _probabilities(name: str, weights: object, min_dim: int, layout: str) -> Tensor:
    if not isinstance(weights, Tensor):
        raise AttentionError(f"{name}: expected a float tensor {layout}, got {type(weights).__name__}")
    if not weights.is_floating_point():
        raise AttentionError(f"{name}: expected a float tensor of probabilities, got dtype {weights.dtype}")
    if weights.dim() < min_dim:
        shape = "(" + ", ".join(map(str, weights.shape)) + ")"
        raise AttentionError(f"{name}: expected a tensor {layout}, got shape {shape}")
    return weights.to(torch.float64 if weights.dtype == torch.float64 else torch.float32)


def entropy(weights: Tensor) -> Tensor:
    """Entropy in nats of each query row's distribution: ``-Σ_j w_ij log w_ij``.

    ``weights (..., Nq, Nk)`` (any leading axes, e.g. ``(B, H, Nq, Nk)``) gives
    ``(..., Nq)``, float32 (float64 for float64). ``0 · log 0 = 0``, so a fully
    masked row (all zeros) has entropy 0; a uniform row over ``n`` keys has ``log n``
    (the most a row can have); a row on one key has 0.

    >>> import math, torch
    >>> from qkv.interpret import entropy
    >>> w = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]])
    >>> entropy(w)
    tensor([1.3863, 0.0000])
    >>> math.isclose(entropy(w)[0].item(), math.log(4), rel_tol=1e-6)
    True
    """
    w = _probabilities("weights", weights, 1, "(..., Nq, Nk)")
    return 0.0 - torch.special.xlogy(w, w).sum(-1)  # (..., Nq, Nk) -> (..., Nq); 0 - x avoids -0.0


def mean_distance(weights: Tensor, *, positions: Sequence[int] | Tensor | None = None) -> Tensor:
    """Mean attention distance of each query row, in tokens: ``Σ_j w_ij |p_i - j|``.

    ``weights (..., Nq, Nk)`` gives ``(..., Nq)``; average over the last axis for
    one number per head, as ViT's "mean attention distance" does. ``p_i`` is the
    position of query ``i`` on the key axis: by default ``i + (Nk - Nq)`` (bottom-right
    aligned, as ``causal=True`` is: with a KV cache the new queries are the last
    tokens). For weights recorded with ``rows=...`` pass ``positions=rec.rows``
    (or their ``+ Nk - Nq`` shift). A fully masked row (all zeros) gives 0.

    >>> import torch
    >>> from qkv.interpret import mean_distance
    >>> previous_token = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> mean_distance(previous_token)
    tensor([0., 1., 1.])
    >>> mean_distance(torch.eye(3)).mean()                  # attending to itself: distance 0
    tensor(0.)
    """
    w = _probabilities("weights", weights, 2, "(..., Nq, Nk)")
    nq, nk = w.shape[-2:]
    if positions is None:
        p = torch.arange(nq, device=w.device) + (nk - nq)  # (Nq,)
    else:
        p = torch.tensor(int_list("positions", positions), device=w.device)  # (Nq,)
        if p.numel() != nq:
            raise AttentionError(f"positions: expected {nq} query positions (one per row of weights), got {p.numel()}")
        p = torch.where(p < 0, p + nk, p)  # negative rows count from the end, as record's rows do
    j = torch.arange(nk, device=w.device)  # (Nk,)
    distance = (p[:, None] - j[None, :]).abs().to(w.dtype)  # (Nq, 1) - (1, Nk) -> (Nq, Nk)
    return (w * distance).sum(-1)  # (..., Nq, Nk) -> (..., Nq)


def rollout(weights: Sequence[Tensor] | Tensor, *, residual: bool = True) -> Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much each input token feeds each output position.

    ``weights``: the self-attention probabilities of each layer, first layer first,
    each ``(B, H, N, N)`` (``rec.weights`` of `record`), or one tensor ``(L, B, H, N, N)``.
    Each layer's heads are averaged, ``A = mean_h W``; with ``residual=True`` the
    skip connection is added as in the paper, ``Â = (0.5 A + 0.5 I)`` with rows
    renormalized to sum 1; then the layers are multiplied,
    ``R = Â_L · … · Â_2 · Â_1``. Result ``(B, N, N)``: ``R[b, i, j]`` is the share
    of input token ``j`` in output position ``i`` (rows sum to 1).

    >>> import torch
    >>> from qkv.interpret import rollout
    >>> identity = torch.eye(4).expand(1, 2, 4, 4)          # (B, H, N, N): each token sees itself
    >>> torch.equal(rollout([identity, identity]), torch.eye(4)[None])
    True
    >>> first = torch.zeros(1, 1, 3, 3); first[..., 0] = 1.0  # every token reads token 0
    >>> rollout([first], residual=False)[0]
    tensor([[1., 0., 0.],
            [1., 0., 0.],
            [1., 0., 0.]])
    >>> rollout([first])[0]                                   # with the residual stream
    tensor([[1.0000, 0.0000, 0.0000],
            [0.5000, 0.5000, 0.0000],
            [0.5000, 0.0000, 0.5000]])
    """
    if isinstance(weights, Tensor):
        if weights.dim() != 5:
            raise AttentionError(
                f"weights: expected a list of (B, H, N, N) tensors or one tensor (L, B, H, N, N), "
                f"got a tensor of shape {tuple(weights.shape)}"
            )
        layers = list(weights.unbind(0))  # (L, B, H, N, N) -> L × (B, H, N, N)
    elif isinstance(weights, Sequence) and len(weights) > 0:
        layers = list(weights)
    else:
        raise AttentionError("weights: expected a non-empty list of (B, H, N, N) tensors, one per layer")
    result: Tensor | None = None
    for index, layer in enumerate(layers):
        w = _probabilities(f"weights[{index}]", layer, 4, "(B, H, N, N)")
        if w.dim() != 4 or w.shape[-1] != w.shape[-2]:
            raise AttentionError(
                f"weights[{index}]: rollout needs square self-attention (B, H, N, N), got shape {tuple(w.shape)}; "
                "record without rows=... and leave out cross-attention layers"
            )
        if result is not None and w.shape[-1] != result.shape[-1]:
            raise AttentionError(f"weights[{index}]: {w.shape[-1]} tokens, but earlier layers have {result.shape[-1]}")
        a = w.mean(dim=1)  # (B, H, N, N) -> (B, N, N)
        if residual:
            eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)  # (N, N)
            a = 0.5 * a + 0.5 * eye
            a = a / a.sum(-1, keepdim=True)  # rows sum to 1 (each is >= 0.5: never 0)
        result = a if result is None else a @ result  # (B, N, N) @ (B, N, N) -> (B, N, N)
    assert result is not None
    return result


__all__ = ["entropy", "mean_distance", "rollout"]
