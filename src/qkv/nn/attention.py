"""`MultiHeadAttention`: projections around `qkv.attention`, batch-first ``(B, N, E)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypedDict, Unpack, overload

import torch
from torch import Tensor, nn

from qkv import checks
from qkv.cache import KVCache, rollback_on_error
from qkv.checks import shape_of
from qkv.errors import AttentionError
from qkv.functional import attention, attention_weights
from qkv.positional import RotaryEmbedding


def _key_padding(mask: Tensor | None, batch: int, num_keys: int) -> Tensor | None:
    """A 2-D bool mask is a key padding mask ``(B, Nk)`` (True = may attend): ``(B, 1, 1, Nk)``."""
    if not isinstance(mask, Tensor) or mask.dim() != 2 or mask.dtype != torch.bool:
        return mask  # anything else is checked by qkv.attention
    if tuple(mask.shape) != (batch, num_keys):
        raise AttentionError(
            f"mask: a 2-D mask is a key padding mask (B={batch}, Nk={num_keys}), got shape {shape_of(mask)}; "
            "for one (Nq, Nk) pattern shared by the batch pass mask[None, None]"
        )
    return mask[:, None, None, :]  # (B, Nk) -> (B, 1, 1, Nk)


class ForwardOptions(TypedDict, total=False):
    """The keyword arguments of `MultiHeadAttention.forward` besides ``need_weights`` (defaults there)."""

    mask: Tensor | None
    bias: Tensor | None
    causal: bool
    cache: KVCache | None
    head_mask: Tensor | None


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections, grouped-query heads and RoPE.

    ``out = out_proj(concat_h attention(q_proj(query)_h, k_proj(key)_g(h), v_proj(value)_g(h)))``
    where query head ``h`` reads key/value head ``g(h) = h // (num_heads // num_kv_heads)``.

    Args:
        embed_dim: E, the size of ``query`` features and of the output.
        num_heads: query heads H.
        num_kv_heads: key/value heads (default H). Fewer gives grouped-query
            attention (Llama 2/3, SmolLM2); 1 gives multi-query attention.
        head_dim: D per head (default ``E // H``; required when H does not divide E).
        kdim, vdim: feature sizes of ``key`` and ``value`` for cross-attention (default E).
        bias: biases in all four projections (BERT: True, Llama: False).
        dropout: probability of dropping an attention weight, in training mode only.
        rotary: a `qkv.positional.RotaryEmbedding` applied to q and k; with a cache
            holding ``L`` tokens the new tokens get positions ``L, L+1, ...``.
        backend: passed to `qkv.attention` (``"auto"`` picks the fastest exact one).

    Parameters: ``q_proj (H·D, E)``, ``k_proj (Hkv·D, kdim)``, ``v_proj (Hkv·D, vdim)``,
    ``out_proj (E, H·D)``, the names HF Llama uses (BERT: ``query``/``key``/``value``
    and ``output.dense``). Rows ``h·D : (h+1)·D`` of ``q_proj.weight`` belong to head ``h``.

    ``forward(query, key=None, value=None, *, mask=None, bias=None, causal=False,
    cache=None, need_weights=False, head_mask=None)``:

    - ``query (B, Nq, E)``; ``key (B, Nk, kdim)`` and ``value (B, Nk, vdim)`` for
      cross-attention (``value`` defaults to ``key``); self-attention when ``key`` is None.
    - ``mask`` / ``bias`` / ``causal``: as in `qkv.attention`, over ``(B, H, Nq, Nk)``
      (True = may attend). A 2-D bool mask is a key padding mask ``(B, Nk)`` (as torch's
      ``key_padding_mask``, with True = may attend): it becomes ``mask[:, None, None, :]``;
      a pattern ``(Nq, Nk)`` shared by the batch goes in as ``mask[None, None]``.
    - ``cache``: a `qkv.cache.KVCache` (self-attention only): the new keys/values
      are stored and attention runs over all of them; use ``causal=True``. A call
      that raises leaves the cache as it was.
    - ``need_weights``: also return the probabilities ``(B, H, Nq, Nk)`` (exact,
      before dropout, float32 for half inputs) from `qkv.attention_weights`.
    - ``head_mask``: ``(H,)`` or ``(B, H)``, multiplies each head's output before
      ``out_proj`` (0 silences a head; its gradient is the head importance of Michel et al.).

    Returns ``out (B, Nq, E)``, or ``(out, weights)`` with ``need_weights=True``.

    >>> import torch
    >>> from qkv.nn import MultiHeadAttention
    >>> mha = MultiHeadAttention(32, 4, num_kv_heads=2)
    >>> x = torch.randn(2, 6, 32)                                  # (B, N, E)
    >>> out, w = mha(x, causal=True, need_weights=True)
    >>> out.shape, w.shape                                        # w: (B, H, Nq, Nk)
    (torch.Size([2, 6, 32]), torch.Size([2, 4, 6, 6]))
    >>> memory = torch.randn(2, 9, 16)                            # cross-attention
    >>> MultiHeadAttention(32, 4, kdim=16, vdim=16)(x, memory).shape
    torch.Size([2, 6, 32])
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        rotary: RotaryEmbedding | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        embed_dim = checks.integer("embed_dim", embed_dim, minimum=1)
        num_heads = checks.integer("num_heads", num_heads, minimum=1)
        if head_dim is None:
            if embed_dim % num_heads:
                raise AttentionError(
                    f"embed_dim: {embed_dim} is not divisible by num_heads = {num_heads}; "
                    "choose num_heads dividing embed_dim or pass head_dim=... explicitly"
                )
            head_dim = embed_dim // num_heads
        head_dim = checks.integer("head_dim", head_dim, minimum=1)
        num_kv_heads = checks.integer("num_kv_heads", num_heads if num_kv_heads is None else num_kv_heads, minimum=1)
        if num_heads % num_kv_heads:
            raise AttentionError(
                f"num_kv_heads: {num_kv_heads} must divide num_heads = {num_heads} "
                "(each key/value head serves an equal group of query heads)"
            )
        if rotary is not None:
            if not isinstance(rotary, RotaryEmbedding):
                raise AttentionError(
                    f"rotary: expected None or a qkv.positional.RotaryEmbedding, got {type(rotary).__name__}"
                )
            if rotary.head_dim != head_dim:
                raise AttentionError(
                    f"rotary: built for head_dim {rotary.head_dim}, but this module's head_dim is {head_dim}; "
                    f"make it with RotaryEmbedding({head_dim})"
                )
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise AttentionError(f"dropout: expected a float in [0, 1), got {dropout!r}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.kdim = embed_dim if kdim is None else checks.integer("kdim", kdim, minimum=1)
        self.vdim = embed_dim if vdim is None else checks.integer("vdim", vdim, minimum=1)
        self.dropout = float(dropout)
        self.rotary = rotary
        self.backend = backend
        # Which original head each current head is (changed by qkv.nn.prune_heads).
        self.head_ids: list[int] = list(range(num_heads))
        self.kv_head_ids: list[int] = list(range(num_kv_heads))
        # None while query head h reads kv head h // (H // Hkv); after pruning
        # uneven groups, the kv head each query head reads.
        self.kv_index: list[int] | None = None
        self.pruned_heads: set[int] = set()  # original indices of removed query heads
        # Observation point for qkv.interpret.record (internal, not public API): each hook
        # is called as hook(module, q, k, mask=, bias=, causal=, scale=) with the exact
        # arguments qkv.attention receives in forward. Empty: nothing is called.
        self._attention_hooks: dict[int, Callable[..., None]] = {}
        self.q_proj = nn.Linear(embed_dim, num_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, num_kv_heads * head_dim, bias=bias)
        self.out_proj = nn.Linear(num_heads * head_dim, embed_dim, bias=bias)

    def _check_input(self, name: str, x: object, features: int, batch: int | None) -> Tensor:
        if not isinstance(x, Tensor):
            raise AttentionError(f"{name}: expected a tensor (B, N, {features}), got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != features:
            hint = " (modules are batch-first: (B, N, E))" if x.dim() == 3 else ""
            raise AttentionError(f"{name}: expected shape (B, N, {features}){hint}, got {shape_of(x)}")
        if batch is not None and x.shape[0] != batch:
            raise AttentionError(f"{name}: batch size {x.shape[0]} differs from query's {batch}")
        weight = self.q_proj.weight
        if x.dtype != weight.dtype:
            raise AttentionError(
                f"{name}: dtype {x.dtype} differs from the module's parameters ({weight.dtype}); "
                f"convert the input with .to({weight.dtype}) or the module with .to({x.dtype})"
            )
        return x

    def _split(self, x: Tensor, heads: int) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, heads, self.head_dim).transpose(1, 2)  # (B, N, h·D) -> (B, N, h, D) -> (B, h, N, D)

    # The keyword options are `ForwardOptions` (mask, bias, causal, cache, head_mask); only ``need_weights`` changes
    # what comes back.
    # fmt: off
    @overload
    def forward(
        self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None, *,
        need_weights: Literal[False] = False, **options: Unpack[ForwardOptions],
    ) -> Tensor: ...

    @overload
    def forward(
        self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None, *,
        need_weights: Literal[True], **options: Unpack[ForwardOptions],
    ) -> tuple[Tensor, Tensor]: ...

    @overload
    def forward(
        self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None, *,
        need_weights: bool = False, **options: Unpack[ForwardOptions],
    ) -> Tensor | tuple[Tensor, Tensor]: ...
    # fmt: on

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        bias: Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        need_weights: bool = False,
        head_mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        query = self._check_input("query", query, self.embed_dim, None)
        b, nq, _ = query.shape
        if key is None:
            if value is not None:
                raise AttentionError("value: given without key; pass key too for cross-attention")
            key = value = query
        else:
            key = self._check_input("key", key, self.kdim, b)
            value = key if value is None else self._check_input("value", value, self.vdim, b)
            if value.shape[1] != key.shape[1]:
                raise AttentionError(
                    f"value: {value.shape[1]} positions but key has {key.shape[1]}; keys and values come in pairs"
                )
            if cache is not None:
                raise AttentionError(
                    "cache: a KV cache appends the keys of self-attention; cross-attention keys come "
                    "from `key` on every call, so pass cache=None"
                )
        if cache is not None and not isinstance(cache, KVCache):
            raise AttentionError(f"cache: expected None or a qkv.cache.KVCache, got {type(cache).__name__}")
        nk = key.shape[1] + (cache.length if cache is not None else 0)
        mask = _key_padding(mask, b, nk)
        if head_mask is not None:
            self._head_scale(head_mask, b, query.dtype)  # checked before the cache stores anything
        with rollback_on_error(cache):  # a call that raises leaves the cache as it was
            return self._attend(query, key, value, mask, bias, causal, cache, need_weights, head_mask)

    def _attend(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        mask: Tensor | None,
        bias: Tensor | None,
        causal: bool,
        cache: KVCache | None,
        need_weights: bool,
        head_mask: Tensor | None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        b, nq, _ = query.shape
        q = self._split(self.q_proj(query), self.num_heads)  # (B, Nq, E) -> (B, H, Nq, D)
        k = self._split(self.k_proj(key), self.num_kv_heads)  # (B, Nk, kdim) -> (B, Hkv, Nk, D)
        v = self._split(self.v_proj(value), self.num_kv_heads)  # (B, Nk, vdim) -> (B, Hkv, Nk, D)
        if self.rotary is not None:
            start = cache.length if cache is not None else 0
            q = self.rotary.apply_from(q, start)  # positions start, start+1, ...
            k = self.rotary.apply_from(k, start)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, Hkv, length, D) each
        if self.kv_index is not None:
            index = torch.tensor(self.kv_index, device=k.device)
            k = k.index_select(1, index)  # (B, Hkv, Nk, D) -> (B, H, Nk, D)
            v = v.index_select(1, index)  # (B, Hkv, Nk, D) -> (B, H, Nk, D)
        for hook in self._attention_hooks.values():  # qkv.interpret.record; see __init__
            hook(self, q, k, mask=mask, bias=bias, causal=causal, scale=None)
        out: Tensor
        if self.num_heads == 0:  # every head pruned: the layer adds only out_proj's bias
            out = q.new_zeros(b, 0, nq, self.head_dim)  # (B, 0, Nq, D)
        else:
            out = attention(
                q,
                k,
                v,
                mask=mask,
                bias=bias,
                causal=causal,
                dropout_p=self.dropout if self.training else 0.0,
                backend=self.backend,
            )  # (B, H, Nq, D)
        if head_mask is not None:
            out = out * self._head_scale(head_mask, b, out.dtype)  # (B, H, Nq, D) * (B|1, H, 1, 1)
        out = out.transpose(1, 2).reshape(b, nq, self.num_heads * self.head_dim)  # (B, H, Nq, D) -> (B, Nq, H·D)
        out = self.out_proj(out)  # (B, Nq, H·D) -> (B, Nq, E)
        if not need_weights:
            return out
        if self.num_heads == 0:
            return out, q.new_zeros(b, 0, nq, k.shape[2])
        weights = attention_weights(q, k, mask=mask, bias=bias, causal=causal)  # (B, H, Nq, Nk)
        return out, weights

    def _head_scale(self, head_mask: object, batch: int, dtype: torch.dtype) -> Tensor:
        h = self.num_heads
        if (
            not isinstance(head_mask, Tensor)
            or head_mask.dim() not in (1, 2)
            or head_mask.shape[-1] != h
            or (head_mask.dim() == 2 and head_mask.shape[0] not in (1, batch))
        ):
            given = shape_of(head_mask) if isinstance(head_mask, Tensor) else type(head_mask).__name__
            raise AttentionError(f"head_mask: expected a tensor (H={h},) or (B={batch}, H={h}), got {given}")
        scale = head_mask.to(dtype)
        if scale.dim() == 1:
            scale = scale[None]  # (H,) -> (1, H)
        return scale[:, :, None, None]  # (B|1, H) -> (B|1, H, 1, 1)

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention, *, backend: str = "auto") -> MultiHeadAttention:
        """A copy of a ``torch.nn.MultiheadAttention``, computing the same function batch-first.

        Both of torch's layouts are read: the packed ``in_proj_weight (3E, E)``
        and, when kdim/vdim differ from E, ``q_proj_weight`` / ``k_proj_weight`` /
        ``v_proj_weight``. Ours is always batch-first: for a torch module made
        with ``batch_first=False`` transpose inputs ``(N, B, E) -> (B, N, E)``.
        torch's masks have the other polarity (True = ignore); convert them:

        - ``key_padding_mask (B, Nk)`` → ``mask=~key_padding_mask[:, None, None, :]``
        - bool ``attn_mask (Nq, Nk)`` → ``mask=~attn_mask``; a float one → ``bias=attn_mask``

        >>> import torch
        >>> from qkv.nn import MultiHeadAttention
        >>> theirs = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
        >>> ours = MultiHeadAttention.from_torch(theirs).eval()
        >>> x = torch.randn(2, 5, 16)                          # (B, N, E)
        >>> key_padding_mask = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])  # True = ignore
        >>> expected, w = theirs(x, x, x, key_padding_mask=key_padding_mask, average_attn_weights=False)
        >>> out, weights = ours(x, mask=~key_padding_mask[:, None, None, :], need_weights=True)
        >>> torch.allclose(out, expected, atol=1e-6), torch.allclose(weights, w, atol=1e-6)
        (True, True)
        """
        if not isinstance(module, nn.MultiheadAttention):
            raise AttentionError(f"module: expected a torch.nn.MultiheadAttention, got {type(module).__name__}")
        if module.bias_k is not None or module.add_zero_attn:
            raise AttentionError(
                "module: add_bias_kv=True and add_zero_attn=True append extra keys; qkv's "
                "MultiHeadAttention does not model them"
            )
        weight = module.out_proj.weight
        ours = cls(
            module.embed_dim,
            module.num_heads,
            kdim=module.kdim,
            vdim=module.vdim,
            bias=module.in_proj_bias is not None,
            dropout=module.dropout,
            backend=backend,
        ).to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            if module.in_proj_weight is not None:
                wq, wk, wv = module.in_proj_weight.chunk(3)  # (3E, E) -> 3 × (E, E)
            else:
                wq, wk, wv = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
            for proj, w in ((ours.q_proj, wq), (ours.k_proj, wk), (ours.v_proj, wv)):
                proj.weight.copy_(w)
            if module.in_proj_bias is not None:
                for proj, bias in zip((ours.q_proj, ours.k_proj, ours.v_proj), module.in_proj_bias.chunk(3)):
                    proj.bias.copy_(bias)
            ours.out_proj.weight.copy_(module.out_proj.weight)
            if module.out_proj.bias is not None and ours.out_proj.bias is not None:
                ours.out_proj.bias.copy_(module.out_proj.bias)
        return ours.train(module.training)

    def extra_repr(self) -> str:
        parts = [f"embed_dim={self.embed_dim}", f"num_heads={self.num_heads}"]
        if self.num_kv_heads != self.num_heads:
            parts.append(f"num_kv_heads={self.num_kv_heads}")
        parts.append(f"head_dim={self.head_dim}")
        if self.kdim != self.embed_dim or self.vdim != self.embed_dim:
            parts += [f"kdim={self.kdim}", f"vdim={self.vdim}"]
        if self.dropout:
            parts.append(f"dropout={self.dropout}")
        if self.backend != "auto":
            parts.append(f"backend={self.backend!r}")
        return ", ".join(parts)


__all__ = ["MultiHeadAttention"]
