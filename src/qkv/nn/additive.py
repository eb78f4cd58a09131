"""The classic attentions of recurrent encoder–decoders: Bahdanau's additive, Luong's dot and general.

Each module scores every query against every key, takes a softmax over the keys a
query may attend, and returns the weighted sum of the values::

    scores  (B, Nq, Nk) = score(query_i, key_j)
    weights (B, Nq, Nk) = softmax over allowed j (0 where not allowed)
    context (B, Nq, Dv) = weights @ values

The scores:

    AdditiveAttention            vᵀ tanh(W₁ s + W₂ h)     Bahdanau et al. 2014 (Luong's "concat")
    GeneralAttention("dot")      sᵀ h                      Luong et al. 2015; = qkv.attention with scale=1.0
    GeneralAttention("general")  sᵀ W h                    Luong et al. 2015

In a decoder loop the keys stay fixed while the query changes every step, so the
work that depends only on the keys (``W₂ h``, ``W h``) is split out:
``prepare_keys(keys)`` once, then ``attend(query, prepared, values)`` per step.
``forward`` is the two in one call.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qkv import checks
from qkv.backends.common import accumulation_dtype, masked_softmax
from qkv.checks import shape_of
from qkv.errors import AttentionError


def _check_3d(name: str, t: object, layout: str, dim: int | None, ref: Tensor | None) -> Tensor:
    """A 3-D float tensor ``layout`` whose last axis is ``dim``, on ref's dtype and device."""
    t = checks.tensor(name, t, layout, dims=3, dtypes=checks.FLOAT_DTYPES)
    if dim is not None and t.shape[-1] != dim:
        raise AttentionError(
            f"{name}: expected last axis of size {dim} (the module's {name} dim), got shape {shape_of(t)}"
        )
    if ref is not None:
        checks.same_dtype_and_device(name, t, ref, "query")
        if t.shape[0] != ref.shape[0]:
            raise AttentionError(
                f"{name}: batch size {t.shape[0]} differs from query's {ref.shape[0]} "
                f"(query {shape_of(ref)}, {name} {shape_of(t)})"
            )
    return t


def _check_mask(mask: object, query: Tensor, num_keys: int) -> Tensor | None:
    """``None`` or a bool mask as ``(B or 1, Nq or 1, Nk)``, True = may attend."""
    if mask is None:
        return None
    b, nq = query.shape[0], query.shape[1]
    want = f"(B={b}, Nk={num_keys}) or (B={b}, Nq={nq}, Nk={num_keys})"
    if not isinstance(mask, Tensor):
        raise AttentionError(f"mask: expected None or a bool tensor {want}, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise AttentionError(
            f"mask: expected dtype torch.bool (True = may attend), got {mask.dtype}; for 0/1 integers use mask.bool()"
        )
    if mask.device != query.device:
        raise AttentionError(
            f"mask: on {mask.device} but query is on {query.device}; move it with mask.to(query.device)"
        )
    if mask.dim() == 2:
        mask = mask[:, None, :]  # (B, Nk) -> (B, 1, Nk)
    elif mask.dim() != 3:
        raise AttentionError(f"mask: expected a 2-D or 3-D bool tensor {want}, got shape {shape_of(mask)}")
    for axis, size, full in zip(("B", "Nq", "Nk"), mask.shape, (b, nq, num_keys)):
        if size != full and not (size == 1 and axis != "Nk"):
            raise AttentionError(
                f"mask: expected shape {want} (B and Nq may be 1), got {shape_of(mask)}: axis {axis} has size {size}"
            )
    return mask


class _ScoredAttention(nn.Module):
    """Shared machinery: checks, masked softmax, weighted sum. Subclasses define the score."""

    query_dim: int
    key_dim: int

    def prepare_keys(self, keys: Tensor) -> Tensor:
        """The part of the score that depends only on the keys ``(B, Nk, Dk)``; computed once per sequence."""
        raise NotImplementedError

    def score(self, query: Tensor, prepared: Tensor) -> Tensor:
        """Scores ``(B, Nq, Nk)`` of queries ``(B, Nq, Dq)`` against prepared keys."""
        raise NotImplementedError

    def _check_dtype(self, query: Tensor) -> None:
        param = next(self.parameters(), None)
        if param is not None and param.dtype != query.dtype:
            raise AttentionError(
                f"query: dtype {query.dtype} differs from the module's {param.dtype} parameters; "
                f"convert the module with .to({query.dtype}) or the query with .to({param.dtype})"
            )

    def attend(
        self, query: Tensor, prepared: Tensor, values: Tensor, *, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """`forward` with keys already passed through `prepare_keys` (the decoder-loop form).

        Returns ``context (B, Nq, Dv)`` and ``weights (B, Nq, Nk)``, both in query's dtype.
        """
        query = _check_3d("query", query, "(B, Nq, Dq)", self.query_dim, None)
        values = _check_3d("values", values, "(B, Nk, Dv)", None, query)
        if prepared.shape[:2] != values.shape[:2]:
            raise AttentionError(
                f"values: shape {shape_of(values)} must match the keys {shape_of(prepared)} in (B, Nk); "
                "keys and values come in pairs"
            )
        mask = _check_mask(mask, query, values.shape[1])
        self._check_dtype(query)
        acc = accumulation_dtype(query.dtype)
        s = self.score(query, prepared).to(acc)  # (B, Nq, Nk)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))  # (B, Nq, Nk); -inf where not allowed
        weights, _ = masked_softmax(s)  # (B, Nq, Nk); rows with no allowed key are 0
        context = weights @ values.to(acc)  # (B, Nq, Nk) @ (B, Nk, Dv) -> (B, Nq, Dv)
        return context.to(query.dtype), weights.to(query.dtype)

    def forward(
        self, query: Tensor, keys: Tensor, values: Tensor | None = None, *, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Attend ``query (B, Nq, Dq)`` over ``keys (B, Nk, Dk)``; ``values (B, Nk, Dv)`` default to the keys.

        ``mask``: bool, True = may attend, ``(B, Nk)`` (padding) or ``(B, Nq, Nk)``.
        Returns ``context (B, Nq, Dv)`` and ``weights (B, Nq, Nk)``. A query with no
        allowed key gets context 0 and weights 0 (and zero gradients), never NaN.
        """
        query = _check_3d("query", query, "(B, Nq, Dq)", self.query_dim, None)
        keys = _check_3d("keys", keys, "(B, Nk, Dk)", self.key_dim, query)
        if keys.shape[1] == 0:
            raise AttentionError(
                f"keys: has no keys (Nk = 0, shape {shape_of(keys)}); attention needs at least one key"
            )
        values = keys if values is None else values  # checked in attend
        self._check_dtype(query)
        return self.attend(query, self.prepare_keys(keys), values, mask=mask)


def _check_dim(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AttentionError(f"{name}: expected a positive int, got {value!r}")
    return value


class AdditiveAttention(_ScoredAttention):
    """Bahdanau attention: ``score(s, h) = vᵀ tanh(W₁ s + W₂ h)`` (Bahdanau, Cho & Bengio 2014).

    Args:
        query_dim: ``Dq``, the size of a query (the decoder state ``s``).
        key_dim: ``Dk``, the size of a key (an encoder annotation ``h``); defaults to ``query_dim``.
        hidden_dim: the size of ``tanh(...)``, the alignment model's hidden layer; defaults to ``query_dim``.
        bias: add a learned vector ``b`` inside the tanh, ``vᵀ tanh(W₁ s + W₂ h + b)``
            (the paper has none).

    Parameters: ``query_proj.weight`` is ``W₁ (H, Dq)``, ``key_proj.weight`` is ``W₂ (H, Dk)``
    (``key_proj.bias`` is ``b``), ``v`` is ``(H,)``.

    Equivalent to:

    >>> import torch
    >>> from qkv.nn.additive import AdditiveAttention
    >>> attn = AdditiveAttention(query_dim=4, key_dim=6, hidden_dim=5)
    >>> s, h = torch.randn(2, 3, 4), torch.randn(2, 7, 6)          # (B, Nq, Dq), (B, Nk, Dk)
    >>> context, weights = attn(s, h)                               # values default to the keys
    >>> e = torch.tanh(attn.query_proj(s)[:, :, None] + attn.key_proj(h)[:, None])  # (B, Nq, Nk, H)
    >>> expected = torch.softmax(e @ attn.v, dim=-1)                # (B, Nq, Nk)
    >>> torch.allclose(weights, expected, atol=1e-6), context.shape
    (True, torch.Size([2, 3, 6]))
    >>> mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])  # (B, Nk): the second sequence has 4 keys
    >>> _, weights = attn(s, h, mask=mask)
    >>> torch.allclose(weights.sum(-1), torch.ones(2, 3))           # each query's weights sum to 1 ...
    True
    >>> weights[1, :, 4:].abs().max().item()                        # ... and are 0 on padding
    0.0
    """

    def __init__(
        self, query_dim: int, key_dim: int | None = None, hidden_dim: int | None = None, *, bias: bool = False
    ):
        super().__init__()
        self.query_dim = _check_dim("query_dim", query_dim)
        self.key_dim = _check_dim("key_dim", query_dim if key_dim is None else key_dim)
        self.hidden_dim = _check_dim("hidden_dim", query_dim if hidden_dim is None else hidden_dim)
        self.query_proj = nn.Linear(self.query_dim, self.hidden_dim, bias=False)  # W₁
        self.key_proj = nn.Linear(self.key_dim, self.hidden_dim, bias=bias)  # W₂ (and b)
        self.v = nn.Parameter(torch.empty(self.hidden_dim))
        nn.init.uniform_(self.v, -1 / math.sqrt(self.hidden_dim), 1 / math.sqrt(self.hidden_dim))

    def prepare_keys(self, keys: Tensor) -> Tensor:
        """``W₂ h (+ b)``: ``(B, Nk, Dk) -> (B, Nk, H)``."""
        projected: Tensor = self.key_proj(keys)  # (B, Nk, Dk) -> (B, Nk, H)
        return projected

    def score(self, query: Tensor, prepared: Tensor) -> Tensor:
        qf = self.query_proj(query)  # (B, Nq, Dq) -> (B, Nq, H)
        # (B, Nq, 1, H) + (B, 1, Nk, H) -> (B, Nq, Nk, H)
        e = torch.tanh(qf[:, :, None, :] + prepared[:, None, :, :])
        return e @ self.v  # (B, Nq, Nk, H) @ (H,) -> (B, Nq, Nk)

    def extra_repr(self) -> str:
        return f"query_dim={self.query_dim}, key_dim={self.key_dim}, hidden_dim={self.hidden_dim}"


class GeneralAttention(_ScoredAttention):
    """Luong attention (Luong, Pham & Manning 2015): ``"dot"`` ``sᵀ h`` or ``"general"`` ``sᵀ W h``.

    Args:
        query_dim: ``Dq``, the size of a query ``s``.
        key_dim: ``Dk``, the size of a key ``h``; defaults to ``query_dim``. ``"dot"`` needs ``Dk = Dq``.
        score: ``"general"`` (a learned ``W (Dq, Dk)``, ``key_proj.weight``) or ``"dot"`` (no parameters).
            Luong's third score, ``"concat"``, is Bahdanau's: use `AdditiveAttention`.

    The scores are not scaled: ``"dot"`` computes what ``qkv.attention(..., scale=1.0)``
    computes on one head, and returns the weights too.

    >>> import torch, qkv
    >>> from qkv.nn.additive import GeneralAttention
    >>> s, h, v = torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 4)
    >>> context, weights = GeneralAttention(8, score="dot")(s, h, v)
    >>> expected = qkv.attention(s[:, None], h[:, None], v[:, None], scale=1.0)[:, 0]  # one head
    >>> torch.allclose(context, expected, atol=1e-6), weights.shape
    (True, torch.Size([2, 3, 5]))
    >>> general = GeneralAttention(8, 6)                            # sᵀ W h with W (8, 6)
    >>> general(s, torch.randn(2, 5, 6), v)[0].shape
    torch.Size([2, 3, 4])
    """

    SCORES = ("dot", "general")

    def __init__(self, query_dim: int, key_dim: int | None = None, *, score: str = "general"):
        super().__init__()
        if score == "concat":
            raise AttentionError(
                "score: 'concat' is Bahdanau's additive score vᵀ tanh(W [s; h]); use qkv.nn.AdditiveAttention"
            )
        if score not in self.SCORES:
            raise AttentionError(f"score: expected one of {self.SCORES}, got {score!r}")
        self.query_dim = _check_dim("query_dim", query_dim)
        self.key_dim = _check_dim("key_dim", query_dim if key_dim is None else key_dim)
        self.score_name = score
        if score == "dot" and self.key_dim != self.query_dim:
            raise AttentionError(
                f"key_dim: the 'dot' score needs key_dim == query_dim = {self.query_dim}, got {self.key_dim}; "
                "use score='general' to learn a W (Dq, Dk) between them"
            )
        self.key_proj = nn.Linear(self.key_dim, self.query_dim, bias=False) if score == "general" else None

    def prepare_keys(self, keys: Tensor) -> Tensor:
        """``W h`` for ``"general"`` (``(B, Nk, Dk) -> (B, Nk, Dq)``); the keys themselves for ``"dot"``."""
        return keys if self.key_proj is None else self.key_proj(keys)

    def score(self, query: Tensor, prepared: Tensor) -> Tensor:
        return query @ prepared.transpose(1, 2)  # (B, Nq, Dq) @ (B, Dq, Nk) -> (B, Nq, Nk)

    def extra_repr(self) -> str:
        return f"query_dim={self.query_dim}, key_dim={self.key_dim}, score={self.score_name!r}"


__all__ = ["AdditiveAttention", "GeneralAttention"]
