"""Transformer layers and stacks: encoder (BERT-like), decoder and causal language model (Llama-like).

Layers (``x (B, N, E) -> (B, N, E)``), with ``f`` a sublayer (attention or feed-forward)::

    post-norm (norm_first=False, BERT):  x = norm(x + dropout(f(x)))
    pre-norm  (norm_first=True, Llama):  x = x + dropout(f(norm(x)))

- `TransformerEncoderLayer`: ``self_attn`` (``attn_norm``), ``ffn`` (``ffn_norm``).
- `TransformerDecoderLayer`: ``self_attn`` (causal, ``attn_norm``), optional
  ``cross_attn`` over an encoder's ``memory`` (``cross_attn_norm``), ``ffn`` (``ffn_norm``).
- `TransformerEncoder`: ``embeddings`` (optional), ``layers``, ``norm`` (optional).
- `TransformerDecoder`: ``embeddings``, ``layers``, ``norm`` (hidden states, as torch's).
- `TransformerForCausalLM`: ``model`` (a `TransformerDecoder`) and ``lm_head`` (logits).

Parameter names, and where HF checkpoints keep the same tensors (layer ``i``); in a
`TransformerForCausalLM` the stack's names start with ``model.``, as HF Llama's do:

=======================================  =======================================  ===================================
qkv                                      HF BERT (``bert.``)                      HF Llama (``model.``)
=======================================  =======================================  ===================================
embeddings.tokens.weight                 embeddings.word_embeddings.weight        embed_tokens.weight
embeddings.positions.weight              embeddings.position_embeddings.weight    (RoPE: none)
embeddings.token_types.weight            embeddings.token_type_embeddings.weight  --
embeddings.norm.{weight,bias}            embeddings.LayerNorm.{weight,bias}       --
layers.i.self_attn.q_proj.{weight,bias}  encoder.layer.i.attention.self.query.*   layers.i.self_attn.q_proj.weight
layers.i.self_attn.k_proj / v_proj       ...attention.self.key.* / value.*        layers.i.self_attn.k_proj / v_proj
layers.i.self_attn.out_proj              ...attention.output.dense.*              layers.i.self_attn.o_proj
layers.i.attn_norm                       ...attention.output.LayerNorm.*          layers.i.input_layernorm
layers.i.ffn.gate_proj                   --                                       layers.i.mlp.gate_proj
layers.i.ffn.up_proj                     ...intermediate.dense.*                  layers.i.mlp.up_proj
layers.i.ffn.down_proj                   ...output.dense.*                        layers.i.mlp.down_proj
layers.i.ffn_norm                        ...output.LayerNorm.*                    layers.i.post_attention_layernorm
norm.weight                              --                                       norm.weight
lm_head.weight (TransformerForCausalLM)  --                                       lm_head.weight (tied: embed_tokens)
=======================================  =======================================  ===================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn

from qkv.cache import KVCache, ModelCache, rollback_on_error
from qkv.errors import AttentionError
from qkv.nn.attention import MultiHeadAttention
from qkv.nn.config import DecoderConfig, EncoderConfig, LayerConfig
from qkv.nn.embedding import Embeddings
from qkv.nn.feedforward import FeedForward, make_feedforward
from qkv.nn.norm import make_norm
from qkv.positional import RotaryEmbedding


def _self_attention(config: LayerConfig) -> MultiHeadAttention:
    head_dim = config.resolved_head_dim
    rotary = None
    if config.rotary is not None:
        rotary = RotaryEmbedding(head_dim, base=config.rotary.base, interleaved=config.rotary.interleaved)
    return MultiHeadAttention(
        config.embed_dim,
        config.num_heads,
        num_kv_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        bias=config.bias,
        dropout=config.dropout,
        rotary=rotary,
    )


def _share_rotary(layers: nn.ModuleList) -> None:
    """One `RotaryEmbedding` for every layer of a stack: same config, no parameters, one table of angles."""
    attns = [cast(_Layer, layer).self_attn for layer in layers]
    rotaries = [attn.rotary for attn in attns if attn.rotary is not None]
    for attn in attns:
        if attn.rotary is not None:
            attn.rotary = rotaries[0]


class _Layer(nn.Module):
    """What encoder and decoder layers share: the config, the feed-forward and the residual rule."""

    def __init__(self, config: LayerConfig) -> None:
        super().__init__()
        if not isinstance(config, LayerConfig):
            raise AttentionError(f"config: expected a qkv.nn.LayerConfig, got {type(config).__name__}")
        self.config = config
        self.self_attn = _self_attention(config)
        self.attn_norm = make_norm(config.norm, config.embed_dim, config.norm_eps)

    def _build_ffn(self) -> None:
        c = self.config
        self.ffn = make_feedforward(c.activation, c.embed_dim, c.ffn_dim, bias=c.bias)
        self.ffn_norm = make_norm(c.norm, c.embed_dim, c.norm_eps)
        self.dropout = nn.Dropout(c.dropout)

    def _residual(self, x: Tensor, norm: nn.Module, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.config.norm_first:
            return x + self._drop(sublayer(norm(x)))
        out: Tensor = norm(x + self._drop(sublayer(x)))
        return out

    def _drop(self, x: Tensor) -> Tensor:
        out: Tensor = self.dropout(x) if self.training and self.dropout.p > 0 else x
        return out


class TransformerEncoderLayer(_Layer):
    """Bidirectional self-attention and a feed-forward, each with a residual and a norm.

    ``forward(x, *, mask=None, bias=None)``: ``x (B, N, E)``; ``mask``/``bias`` as in
    `qkv.attention` (a key padding mask ``(B, N)`` becomes ``mask[:, None, None, :]``).

    >>> import torch
    >>> from qkv.nn import LayerConfig, TransformerEncoderLayer
    >>> layer = TransformerEncoderLayer(LayerConfig(embed_dim=32, num_heads=4, ffn_dim=64)).eval()
    >>> layer(torch.randn(2, 7, 32)).shape
    torch.Size([2, 7, 32])
    """

    def __init__(self, config: LayerConfig) -> None:
        super().__init__(config)
        self._build_ffn()

    def forward(self, x: Tensor, *, mask: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        x = self._residual(x, self.attn_norm, lambda h: self.self_attn(h, mask=mask, bias=bias))
        return self._residual(x, self.ffn_norm, self.ffn)

    @classmethod
    def from_torch(cls, layer: nn.TransformerEncoderLayer) -> TransformerEncoderLayer:
        """A copy of a ``torch.nn.TransformerEncoderLayer`` (any ``batch_first``; ours is batch-first).

        ``src_key_padding_mask`` (True = ignore) becomes ``mask=~src_key_padding_mask[:, None, None, :]``.

        >>> import torch
        >>> from qkv.nn import TransformerEncoderLayer
        >>> theirs = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
        >>> ours = TransformerEncoderLayer.from_torch(theirs).eval()
        >>> x = torch.randn(2, 5, 16)
        >>> torch.allclose(ours(x), theirs(x), atol=1e-5)
        True
        """
        if not isinstance(layer, nn.TransformerEncoderLayer):
            raise AttentionError(f"layer: expected a torch.nn.TransformerEncoderLayer, got {type(layer).__name__}")
        weight = layer.linear1.weight
        ours = cls(_config_from_torch(layer)).to(weight.device, weight.dtype)  # then copy: no detour through float32
        _copy_from_torch(ours, layer, [(ours.attn_norm, layer.norm1), (ours.ffn_norm, layer.norm2)])
        return ours.train(layer.training)


class TransformerDecoderLayer(_Layer):
    """Causal self-attention, optional cross-attention to ``memory``, and a feed-forward.

    ``forward(x, memory=None, *, mask=None, bias=None, causal=True, memory_mask=None,
    cache=None)``: ``mask``/``bias``/``causal`` go to self-attention, ``memory_mask``
    (``(B, 1, 1, M)`` or any shape broadcastable to ``(B, H, N, M)``) to
    cross-attention, ``cache`` (a `qkv.cache.KVCache`) to self-attention.

    >>> import torch
    >>> from qkv.nn import LayerConfig, TransformerDecoderLayer
    >>> cfg = LayerConfig(embed_dim=32, num_heads=4, ffn_dim=64, norm_first=True)
    >>> layer = TransformerDecoderLayer(cfg, cross_attention=True).eval()
    >>> layer(torch.randn(2, 7, 32), torch.randn(2, 9, 32)).shape
    torch.Size([2, 7, 32])
    """

    def __init__(self, config: LayerConfig, *, cross_attention: bool = False, memory_dim: int | None = None) -> None:
        super().__init__(config)
        self.cross_attn: MultiHeadAttention | None = None
        self.cross_attn_norm: nn.Module | None = None
        if cross_attention:
            self.cross_attn = MultiHeadAttention(
                config.embed_dim,
                config.num_heads,
                num_kv_heads=config.num_kv_heads,
                head_dim=config.head_dim,
                kdim=memory_dim,
                vdim=memory_dim,
                bias=config.bias,
                dropout=config.dropout,
            )
            self.cross_attn_norm = make_norm(config.norm, config.embed_dim, config.norm_eps)
        self._build_ffn()

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        bias: Tensor | None = None,
        causal: bool = True,
        memory_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        with rollback_on_error(cache):  # cross-attention or the feed-forward may still fail
            return self._forward(x, memory, mask, bias, causal, memory_mask, cache)

    def _forward(
        self,
        x: Tensor,
        memory: Tensor | None,
        mask: Tensor | None,
        bias: Tensor | None,
        causal: bool,
        memory_mask: Tensor | None,
        cache: KVCache | None,
    ) -> Tensor:
        x = self._residual(
            x, self.attn_norm, lambda h: self.self_attn(h, mask=mask, bias=bias, causal=causal, cache=cache)
        )
        if self.cross_attn is not None:
            if memory is None:
                raise AttentionError("memory: this decoder layer has cross-attention; pass the encoder output memory")
            cross_attn, cross_attn_norm = self.cross_attn, self.cross_attn_norm
            assert cross_attn_norm is not None, "a layer with cross-attention has its norm"
            x = self._residual(x, cross_attn_norm, lambda h: cross_attn(h, memory, mask=memory_mask))
        elif memory is not None:
            raise AttentionError("memory: this decoder layer has no cross-attention (cross_attention=False)")
        return self._residual(x, self.ffn_norm, self.ffn)

    @classmethod
    def from_torch(cls, layer: nn.TransformerDecoderLayer) -> TransformerDecoderLayer:
        """A copy of a ``torch.nn.TransformerDecoderLayer`` (self-, cross-attention, feed-forward).

        torch's ``tgt_is_causal=True`` / a causal ``tgt_mask`` is ``causal=True`` here;
        ``memory_key_padding_mask`` (True = ignore) becomes ``memory_mask=~m[:, None, None, :]``.
        """
        if not isinstance(layer, nn.TransformerDecoderLayer):
            raise AttentionError(f"layer: expected a torch.nn.TransformerDecoderLayer, got {type(layer).__name__}")
        weight = layer.linear1.weight
        ours = cls(_config_from_torch(layer), cross_attention=True).to(weight.device, weight.dtype)
        assert ours.cross_attn is not None
        _copy_from_torch(
            ours,
            layer,
            [(ours.attn_norm, layer.norm1), (ours.cross_attn_norm, layer.norm2), (ours.ffn_norm, layer.norm3)],
        )
        ours.cross_attn.load_state_dict(MultiHeadAttention.from_torch(layer.multihead_attn).state_dict())
        return ours.train(layer.training)


def _torch_activation(layer: nn.Module) -> str:
    act = layer.activation
    if act is nn.functional.relu or isinstance(act, nn.ReLU):
        return "relu"
    if act is nn.functional.gelu or (isinstance(act, nn.GELU) and act.approximate == "none"):
        return "gelu"
    if isinstance(act, nn.GELU) and act.approximate == "tanh":
        return "gelu_tanh"
    raise AttentionError(f"layer: activation {act!r} has no qkv equivalent; use relu or gelu")


def _config_from_torch(layer: nn.TransformerEncoderLayer | nn.TransformerDecoderLayer) -> LayerConfig:
    attn = layer.self_attn
    return LayerConfig(
        embed_dim=attn.embed_dim,
        num_heads=attn.num_heads,
        ffn_dim=layer.linear1.out_features,
        bias=layer.linear1.bias is not None,
        norm="layernorm",
        norm_eps=layer.norm1.eps,
        norm_first=layer.norm_first,
        activation=_torch_activation(layer),
        dropout=layer.dropout.p,
    )


def _copy_from_torch(
    ours: _Layer,
    layer: nn.TransformerEncoderLayer | nn.TransformerDecoderLayer,
    norms: list[tuple[nn.Module | None, nn.Module]],
) -> None:
    ffn = ours.ffn
    assert isinstance(ffn, FeedForward)
    ours.self_attn.load_state_dict(MultiHeadAttention.from_torch(layer.self_attn).state_dict())
    with torch.no_grad():
        for mine, theirs in [(ffn.up_proj, layer.linear1), (ffn.down_proj, layer.linear2), *norms]:
            assert mine is not None, "a layer copied from torch has its LayerNorms"
            cast(Tensor, mine.weight).copy_(cast(Tensor, theirs.weight))
            if theirs.bias is not None:
                cast(Tensor, mine.bias).copy_(cast(Tensor, theirs.bias))


class _Stack(nn.Module):
    """What encoder and decoder stacks share: the config check, embeddings, layers (one rotary) and final norm."""

    def __init__(
        self,
        config: EncoderConfig | DecoderConfig,
        expected: type[EncoderConfig] | type[DecoderConfig],
        make_layer: Callable[[LayerConfig], _Layer],
    ) -> None:
        super().__init__()
        if not isinstance(config, expected):
            raise AttentionError(f"config: expected a qkv.nn.{expected.__name__}, got {type(config).__name__}")
        self.config = config
        c = config.layer
        self.embeddings: Embeddings | None = None
        if config.embeddings is not None:
            self.embeddings = Embeddings(
                config.embeddings, c.embed_dim, norm=c.norm, norm_eps=c.norm_eps, dropout=c.dropout
            )
        self.layers = nn.ModuleList(make_layer(c) for _ in range(config.num_layers))
        _share_rotary(self.layers)
        self.norm = make_norm(c.norm, c.embed_dim, c.norm_eps) if config.has_final_norm else None


class TransformerEncoder(_Stack):
    """A stack of `TransformerEncoderLayer` s, with embeddings and a final norm if configured.

    ``forward(x, *, token_type_ids=None, mask=None, bias=None)``: ``x`` is token ids
    ``(B, N)`` (with ``config.embeddings``) or embeddings ``(B, N, E)``; returns the
    last hidden states ``(B, N, E)``. A BERT ``attention_mask (B, N)`` of 1/0 becomes
    ``mask=attention_mask.bool()[:, None, None, :]``.

    >>> import torch
    >>> from qkv.nn import EncoderConfig, TransformerEncoder
    >>> cfg = EncoderConfig.bert(vocab_size=100, embed_dim=32, num_layers=2, num_heads=4, ffn_dim=64)
    >>> bert = TransformerEncoder(cfg).eval()
    >>> ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    >>> attention_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    >>> bert(ids, mask=attention_mask.bool()[:, None, None, :]).shape
    torch.Size([2, 4, 32])
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config, EncoderConfig, TransformerEncoderLayer)

    def forward(
        self, x: Tensor, *, token_type_ids: Tensor | None = None, mask: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        if self.embeddings is not None:
            x = self.embeddings(x, token_type_ids)  # (B, N) -> (B, N, E)
        elif token_type_ids is not None:
            raise AttentionError("token_type_ids: this encoder has no embeddings; it takes (B, N, E) inputs")
        for layer in self.layers:
            x = layer(x, mask=mask, bias=bias)
        out: Tensor = x if self.norm is None else self.norm(x)
        return out


class TransformerDecoder(_Stack):
    """A causal stack: ``norm(layers(embeddings(ids)))`` → the last hidden states ``(B, N, E)``.

    Like ``torch.nn.TransformerDecoder`` (and HF's ``LlamaModel``) it stops before
    any LM head; `TransformerForCausalLM` puts one on top and returns logits.
    ``forward(input_ids, *, memory=None, mask=None, bias=None, memory_mask=None,
    cache=None)``, also named `hidden_states`. With ``cache`` (a
    `qkv.cache.ModelCache` from `new_cache`) only the new tokens are passed; their
    positions continue from ``cache.length``. ``mask`` and ``bias`` are over
    ``(B, H, Nnew, cache.length + Nnew)`` and combine with the causal mask.

    >>> import torch
    >>> from qkv.nn import DecoderConfig, TransformerDecoder
    >>> cfg = DecoderConfig.llama(vocab_size=50, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=64)
    >>> decoder = TransformerDecoder(cfg).eval()
    >>> decoder(torch.tensor([[3, 1, 4, 1, 5]])).shape                   # (B, N, E)
    torch.Size([1, 5, 32])
    """

    embeddings: Embeddings  # a DecoderConfig always has embeddings

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__(
            config, DecoderConfig, lambda c: TransformerDecoderLayer(c, cross_attention=config.cross_attention)
        )

    def forward(
        self,
        input_ids: Tensor,
        *,
        memory: Tensor | None = None,
        mask: Tensor | None = None,
        bias: Tensor | None = None,
        memory_mask: Tensor | None = None,
        cache: ModelCache | None = None,
    ) -> Tensor:
        """The final (normed) hidden states ``(B, N, E)``: what an LM head reads."""
        if cache is not None and (not isinstance(cache, ModelCache) or len(cache) != len(self.layers)):
            given = f"{len(cache)} layer caches" if isinstance(cache, ModelCache) else type(cache).__name__
            raise AttentionError(
                f"cache: expected a qkv.cache.ModelCache with {len(self.layers)} layer caches, got {given}; "
                "make one with model.new_cache(...)"
            )
        with rollback_on_error(cache):  # a layer that fails leaves every layer's cache as it was
            return self._hidden_states(input_ids, memory, mask, bias, memory_mask, cache)

    hidden_states = forward  # this signature, also where a subclass's forward takes other arguments (LlamaModel)

    def _hidden_states(
        self,
        input_ids: Tensor,
        memory: Tensor | None,
        mask: Tensor | None,
        bias: Tensor | None,
        memory_mask: Tensor | None,
        cache: ModelCache | None,
    ) -> Tensor:
        start = cache.length if cache is not None else 0
        x = self.embeddings(input_ids, start=start)  # (B, N) -> (B, N, E)
        for i, layer in enumerate(self.layers):
            x = layer(
                x,
                memory,
                mask=mask,
                bias=bias,
                memory_mask=memory_mask,
                cache=None if cache is None else cache[i],
            )
        out: Tensor = x if self.norm is None else self.norm(x)
        return out

    def new_cache(
        self,
        kind: str = "contiguous",
        *,
        batch: int = 1,
        max_length: int,
        page_size: int = 16,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> ModelCache:
        """A `qkv.cache.ModelCache` of ``kind`` (``"contiguous"``, ``"paged"``, ``"int8"``)
        sized for each layer's (possibly pruned) key/value heads, in the model's dtype and device."""
        weight = self.embeddings.tokens.weight
        attns = [cast(_Layer, layer).self_attn for layer in self.layers]
        shapes = [(attn.num_kv_heads, attn.head_dim) for attn in attns]
        return ModelCache.create(
            kind,
            layers=shapes,
            batch=batch,
            max_length=max_length,
            dtype=weight.dtype if dtype is None else dtype,
            device=weight.device if device is None else device,
            page_size=page_size,
        )


class TransformerForCausalLM(nn.Module):
    """A causal language model: a `TransformerDecoder` (``.model``) and an LM head → logits ``(B, N, V)``.

    The layout of HF's ``LlamaForCausalLM``: ``lm_head(model(ids))``. Build it from a
    `qkv.nn.DecoderConfig` (a fresh decoder) or around a decoder. ``forward``
    takes the decoder's arguments; `hidden_states` is the same without the LM head;
    ``layers`` is ``model.layers``. ``config.tie_embeddings``: the LM head shares
    the token embedding matrix.

    >>> import torch
    >>> from qkv.nn import DecoderConfig, TransformerForCausalLM
    >>> cfg = DecoderConfig.llama(vocab_size=50, embed_dim=32, num_layers=2, num_heads=4,
    ...                           num_kv_heads=2, ffn_dim=64, tie_embeddings=True)
    >>> lm = TransformerForCausalLM(cfg).eval()
    >>> ids = torch.tensor([[3, 1, 4, 1, 5]])
    >>> full = lm(ids)                                       # (B, N, V)
    >>> cache = lm.new_cache("contiguous", batch=1, max_length=8)
    >>> with torch.no_grad():
    ...     prefill = lm(ids[:, :3], cache=cache)               # prompt at once
    ...     steps = [lm(ids[:, i : i + 1], cache=cache) for i in (3, 4)]   # then token by token
    >>> torch.allclose(steps[-1][:, -1], full[:, -1], atol=1e-5)
    True
    """

    def __init__(self, decoder: DecoderConfig | TransformerDecoder) -> None:
        super().__init__()
        if isinstance(decoder, DecoderConfig):
            decoder = TransformerDecoder(decoder)
        if not isinstance(decoder, TransformerDecoder):
            raise AttentionError(
                f"decoder: expected a qkv.nn.DecoderConfig or TransformerDecoder, got {type(decoder).__name__}"
            )
        config = decoder.config
        assert isinstance(config, DecoderConfig)
        self.model = decoder
        self.lm_head = nn.Linear(config.layer.embed_dim, config.embeddings.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = decoder.embeddings.tokens.weight

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder's layers, ``model.layers``."""
        return self.model.layers

    def hidden_states(self, input_ids: Tensor, **options: Any) -> Tensor:
        """The decoder's final hidden states ``(B, N, E)``, that the LM head reads.

        ``options``: `TransformerDecoder`'s (``memory``, ``mask``, ``bias``, ``memory_mask``, ``cache``).
        """
        return self.model.hidden_states(input_ids, **options)

    def forward(self, input_ids: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """Logits ``(B, N, V)``: the LM head on ``model(input_ids, ...)``, which takes the other arguments."""
        logits: Tensor = self.lm_head(self.model(input_ids, *args, **kwargs))  # (B, N, E) -> (B, N, V)
        return logits

    def new_cache(self, kind: str = "contiguous", **sizes: Any) -> ModelCache:
        """The decoder's `TransformerDecoder.new_cache` (``batch=``, ``max_length=``, ``page_size=``, ...)."""
        return self.model.new_cache(kind, **sizes)


__all__ = [
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "TransformerForCausalLM",
]
