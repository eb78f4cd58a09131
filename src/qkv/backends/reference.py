"""The specification of attention, in float64, written as plainly as possible.

Every other backend is tested against this file. It depends on nothing but
torch, takes inputs that `qkv.functional` has already checked (masks are 4-D bool
tensors broadcasting to ``(B, Hq, Nq, Nk)``; ``bias`` is such a float tensor or
a score modifier ``mod(score, b, h, q_idx, kv_idx, Nq, Nk)``), and returns
float64 results.

    scores = q @ kᵀ · scale + bias                    (B, Hq, Nq, Nk)
             (or mod(q @ kᵀ · scale, b, h, i, j) for a score modifier)
    scores[i, j] = -inf   where the key may not be attended
    lse[i]       = log Σ_j exp(scores[i, j])          -inf for a row with no key
    probs[i, j]  = exp(scores[i, j] - lse[i])         0 for a row with no key
    out[i]       = Σ_j dropout(probs)[i, j] v[j]      over the allowed keys j only   (B, Hq, Nq, Dv)

NaN: a NaN score of an allowed pair (a NaN in the query, the key or the bias)
makes its whole row NaN (probabilities, lse and output); a NaN in ``v[j]`` reaches
exactly the rows that may attend key ``j``; a row with no allowed key is 0 whatever
its inputs hold.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

NAME = "reference"
TAKES_MASK_OBJECTS = False
TAKES_SCORE_MODS = True


def refuse(call: object) -> str | None:
    """The reference computes every call (slowly, in float64)."""
    return None


def estimate(call: object) -> tuple[float, str]:
    """An infinite cost: ``backend="auto"`` never runs the spec; it runs when asked for."""
    return float("inf"), "the float64 specification"


def causal_allowed(num_queries: int, num_keys: int, device: torch.device | None = None) -> Tensor:
    """Bottom-right aligned causal mask: query i may attend key j iff j <= i + (Nk - Nq).

    >>> causal_allowed(2, 4).int()
    tensor([[1, 1, 1, 0],
            [1, 1, 1, 1]], dtype=torch.int32)
    """
    i = torch.arange(num_queries, device=device)[:, None]  # (Nq, 1)
    j = torch.arange(num_keys, device=device)[None, :]  # (1, Nk)
    return j <= i + (num_keys - num_queries)  # (Nq, Nk)


def scores(
    q: Tensor,
    k: Tensor,
    *,
    mask: Tensor | None,
    bias: Tensor | Callable[..., Tensor] | None,
    causal: bool,
    scale: float,
) -> Tensor:
    """Scaled, biased, masked float64 scores ``(B, Hq, Nq, Nk)``; -inf where not allowed."""
    num_q_heads, num_kv_heads = q.shape[1], k.shape[1]
    # grouped-query attention: query head h reads key head h // (Hq // Hkv)
    k = k.double().repeat_interleave(num_q_heads // num_kv_heads, dim=1)  # (B, Hkv, Nk, D) -> (B, Hq, Nk, D)
    s = q.double() @ k.transpose(-2, -1) * scale  # (B, Hq, Nq, D) @ (B, Hq, D, Nk) -> (B, Hq, Nq, Nk)
    if isinstance(bias, Tensor):
        s = s + bias.double()
    elif bias is not None:  # a score modifier, called on index grids
        batch, heads, num_queries, num_keys = s.shape
        b = torch.arange(batch, device=s.device)[:, None, None, None]  # (B, 1, 1, 1)
        h = torch.arange(heads, device=s.device)[None, :, None, None]  # (1, Hq, 1, 1)
        i = torch.arange(num_queries, device=s.device)[None, None, :, None]  # (1, 1, Nq, 1)
        j = torch.arange(num_keys, device=s.device)[None, None, None, :]  # (1, 1, 1, Nk)
        s = bias(s, b, h, i, j, num_queries, num_keys).double()
    if causal:
        s = s.masked_fill(~causal_allowed(s.shape[-2], s.shape[-1], s.device), float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s


def softmax_with_lse(s: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax over the last axis and its log-sum-exp; a row of -inf gives zeros and -inf.

    The row maximum only keeps exp() in range (the result does not depend on it),
    so it is detached, and empty rows divide by 1 instead of 0: no NaN forward
    or backward.
    """
    m = s.amax(dim=-1, keepdim=True).detach()  # (..., N, 1)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)  # 0 where s = -inf
    total = e.sum(dim=-1, keepdim=True)  # (..., N, 1)
    nonempty = total != 0  # NaN counts as nonempty: a NaN row stays NaN
    total = torch.where(nonempty, total, torch.ones_like(total))
    probs = e / total
    lse = torch.where(nonempty, m + torch.log(total), torch.full_like(total, float("-inf")))
    return probs, lse.squeeze(-1)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    bias: Tensor | Callable[..., Tensor] | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    return_lse: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``(out, lse)`` in float64; ``lse`` is None unless asked for."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = scores(q, k, mask=mask, bias=bias, causal=causal, scale=scale)
    probs, lse = softmax_with_lse(s)
    if dropout_p > 0.0:
        probs = torch.nn.functional.dropout(probs, p=dropout_p)
    num_q_heads, num_kv_heads = q.shape[1], v.shape[1]
    v = v.double().repeat_interleave(num_q_heads // num_kv_heads, dim=1)  # (B, Hkv, Nk, Dv) -> (B, Hq, Nk, Dv)
    return weighted_values(probs, v, allowed=~torch.isneginf(s)), (lse if return_lse else None)


def weighted_values(probs: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """``out[i] = Σ_j probs[i, j] v[j]`` over the allowed keys only: ``(B, H, Nq, Dv)``.

    ``probs @ v`` would add ``0 · v[j]`` for keys a row may not attend, which is NaN
    where ``v[j]`` holds a NaN or an infinity; so the few keys with a non-finite value
    are summed separately, over the rows that may attend them.
    """
    finite = torch.isfinite(v)  # (B, H, Nk, Dv)
    if bool(finite.all()):
        return probs @ v  # (B, H, Nq, Nk) @ (B, H, Nk, Dv) -> (B, H, Nq, Dv)
    out = probs @ v.masked_fill(~finite, 0.0)  # the finite values: (B, H, Nq, Dv)
    keys = (~finite).flatten(0, 1).any(dim=0).any(dim=-1).nonzero().flatten()  # (n,) keys with a non-finite value
    p = probs.index_select(-1, keys).masked_fill(~allowed.index_select(-1, keys), 0.0)  # (B, H, Nq, n)
    bad = v.masked_fill(finite, 0.0).index_select(-2, keys)  # (B, H, n, Dv): only the non-finite values
    # (B, H, Nq, n, 1) * (B, H, 1, n, Dv) -> (B, H, Nq, n, Dv), kept only where the row may attend the key
    terms = torch.where(allowed.index_select(-1, keys)[..., None], p[..., None] * bad[:, :, None], 0.0)
    return out + terms.sum(dim=-2)  # (B, H, Nq, n, Dv) -> (B, H, Nq, Dv)


def weights(
    q: Tensor,
    k: Tensor,
    *,
    mask: Tensor | None = None,
    bias: Tensor | Callable[..., Tensor] | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """The attention probabilities ``(B, Hq, Nq, Nk)`` in float64."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    probs, _ = softmax_with_lse(scores(q, k, mask=mask, bias=bias, causal=causal, scale=scale))
    return probs
