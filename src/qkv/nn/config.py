"""Small dataclasses that say what a transformer is made of, with BERT and Llama presets.

- `LayerConfig`: one layer (attention heads, feed-forward, norm, where the norm goes).
- `RotaryConfig`: RoPE's base and pairing, when a layer uses rotary positions.
- `EmbeddingConfig`: token, position and token-type embeddings of a stack.
- `EncoderConfig`, `DecoderConfig`: a stack of layers around its embeddings.

``EncoderConfig.bert(...)`` and ``DecoderConfig.llama(...)`` spell out the two
families the models layer loads; read them to see which field is which choice.
"""

from __future__ import annotations

from dataclasses import dataclass

from qkv import checks
from qkv.errors import AttentionError
from qkv.nn.feedforward import FEEDFORWARDS
from qkv.nn.norm import NORMS

POSITIONS = ("learned", "sinusoidal", "none")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise AttentionError(f"{name}: unknown value {value!r}; choose one of {', '.join(map(repr, choices))}")


@dataclass(frozen=True)
class RotaryConfig:
    """RoPE settings: ``base`` (HF ``rope_theta``) and ``interleaved`` pairs (False: half-split, Llama)."""

    base: float = 10000.0
    interleaved: bool = False


@dataclass(frozen=True)
class LayerConfig:
    """One transformer layer.

    Attributes:
        embed_dim: E, the width of the residual stream.
        num_heads: query heads; ``num_kv_heads`` fewer for grouped-query attention.
        ffn_dim: the feed-forward's hidden width (BERT ``intermediate_size``).
        num_kv_heads: key/value heads (default ``num_heads``).
        head_dim: per-head width (default ``embed_dim // num_heads``).
        bias: biases in every attention and feed-forward Linear (BERT yes, Llama no).
        norm: ``"layernorm"`` or ``"rmsnorm"``; ``norm_eps`` its epsilon.
        norm_first: pre-norm ``x + f(norm(x))`` (Llama, GPT-2) when True, post-norm
            ``norm(x + f(x))`` (BERT, the 2017 Transformer) when False (torch's name).
        activation: ``"gelu"`` (exact erf), ``"gelu_tanh"``, ``"relu"`` or ``"swiglu"``.
        dropout: residual and attention-weight dropout in training mode.
        rotary: RoPE on queries and keys, or None (positions come from the embeddings).

    >>> from qkv.nn import LayerConfig
    >>> LayerConfig(embed_dim=64, num_heads=4, ffn_dim=256).resolved_head_dim
    16
    """

    embed_dim: int
    num_heads: int
    ffn_dim: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    bias: bool = True
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_first: bool = False
    activation: str = "gelu"
    dropout: float = 0.0
    rotary: RotaryConfig | None = None

    def __post_init__(self) -> None:
        for name in ("embed_dim", "num_heads", "ffn_dim"):
            checks.integer(name, getattr(self, name), minimum=1)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("activation", self.activation, FEEDFORWARDS)
        if self.rotary is not None and not isinstance(self.rotary, RotaryConfig):
            raise AttentionError(f"rotary: expected None or a RotaryConfig, got {type(self.rotary).__name__}")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.embed_dim // self.num_heads

    @property
    def resolved_num_kv_heads(self) -> int:
        return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads


@dataclass(frozen=True)
class EmbeddingConfig:
    """What a stack adds up at its input: tokens, positions (``"learned"`` table of
    ``max_positions``, ``"sinusoidal"``, or ``"none"`` with RoPE) and, with
    ``type_vocab_size > 0``, token types (BERT segments). ``norm``: normalize the
    sum with the layers' norm (BERT's embedding LayerNorm)."""

    vocab_size: int
    positions: str = "learned"
    max_positions: int = 512
    type_vocab_size: int = 0
    norm: bool = False

    def __post_init__(self) -> None:
        checks.integer("vocab_size", self.vocab_size, minimum=1)
        _check_choice("positions", self.positions, POSITIONS)
        if self.positions == "learned":
            checks.integer("max_positions", self.max_positions, minimum=1)


class _Stack:
    """What `EncoderConfig` and `DecoderConfig` share: a positive ``num_layers`` and the final-norm default."""

    layer: LayerConfig
    num_layers: int
    final_norm: bool | None

    def __post_init__(self) -> None:
        checks.integer("num_layers", self.num_layers, minimum=1)

    @property
    def has_final_norm(self) -> bool:
        return self.layer.norm_first if self.final_norm is None else self.final_norm


@dataclass(frozen=True)
class EncoderConfig(_Stack):
    """A bidirectional stack: optional embeddings, ``num_layers`` layers, optional final norm.

    ``embeddings=None``: the encoder takes embeddings ``(B, N, E)`` instead of token ids.
    ``final_norm`` defaults to ``layer.norm_first`` (pre-norm stacks end with a norm).

    >>> from qkv.nn import EncoderConfig
    >>> cfg = EncoderConfig.bert(vocab_size=100, embed_dim=32, num_layers=2, num_heads=4, ffn_dim=64)
    >>> cfg.layer.norm, cfg.layer.norm_eps, cfg.layer.norm_first, cfg.layer.activation
    ('layernorm', 1e-12, False, 'gelu')
    """

    layer: LayerConfig
    num_layers: int
    embeddings: EmbeddingConfig | None = None
    final_norm: bool | None = None

    @classmethod
    def bert(
        cls,
        *,
        vocab_size: int,
        embed_dim: int,
        num_layers: int,
        num_heads: int,
        ffn_dim: int,
        max_positions: int = 512,
        type_vocab_size: int = 2,
        norm_eps: float = 1e-12,
        dropout: float = 0.0,
    ) -> EncoderConfig:
        """BERT: post-norm LayerNorm (eps 1e-12), exact GELU, biases, learned positions
        and token types, LayerNorm over the embedding sum. (BERT trains with dropout 0.1.)"""
        layer = LayerConfig(
            embed_dim=embed_dim,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            bias=True,
            norm="layernorm",
            norm_eps=norm_eps,
            norm_first=False,
            activation="gelu",
            dropout=dropout,
        )
        embeddings = EmbeddingConfig(
            vocab_size=vocab_size,
            positions="learned",
            max_positions=max_positions,
            type_vocab_size=type_vocab_size,
            norm=True,
        )
        return cls(layer=layer, num_layers=num_layers, embeddings=embeddings, final_norm=False)


@dataclass(frozen=True)
class DecoderConfig(_Stack):
    """A causal language model: embeddings, ``num_layers`` layers, final norm, LM head.

    ``cross_attention``: layers also attend to an encoder's output (``memory``).
    ``tie_embeddings``: the LM head shares the token embedding matrix (SmolLM2, GPT-2).
    ``final_norm`` defaults to ``layer.norm_first``.

    >>> from qkv.nn import DecoderConfig
    >>> cfg = DecoderConfig.llama(vocab_size=100, embed_dim=32, num_layers=2, num_heads=4,
    ...                           num_kv_heads=2, ffn_dim=64, tie_embeddings=True)
    >>> cfg.layer.norm, cfg.layer.activation, cfg.layer.bias, cfg.layer.rotary
    ('rmsnorm', 'swiglu', False, RotaryConfig(base=10000.0, interleaved=False))
    """

    layer: LayerConfig
    num_layers: int
    embeddings: EmbeddingConfig
    cross_attention: bool = False
    tie_embeddings: bool = False
    final_norm: bool | None = None

    @classmethod
    def llama(
        cls,
        *,
        vocab_size: int,
        num_layers: int,
        embed_dim: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        ffn_dim: int,
        rope_base: float = 10000.0,
        rope_interleaved: bool = False,
        norm_eps: float = 1e-5,
        tie_embeddings: bool = False,
    ) -> DecoderConfig:
        """Llama: pre-norm RMSNorm, SwiGLU, no biases, RoPE (half-split unless the q/k
        weights are in GGUF's interleaved order), grouped-query heads, final RMSNorm.

        SmolLM2-135M: ``vocab_size=49152, embed_dim=576, num_layers=30, num_heads=9,
        num_kv_heads=3, ffn_dim=1536, rope_base=100000.0, norm_eps=1e-5, tie_embeddings=True``.
        """
        layer = LayerConfig(
            embed_dim=embed_dim,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            bias=False,
            norm="rmsnorm",
            norm_eps=norm_eps,
            norm_first=True,
            activation="swiglu",
            rotary=RotaryConfig(base=rope_base, interleaved=rope_interleaved),
        )
        embeddings = EmbeddingConfig(vocab_size=vocab_size, positions="none")
        return cls(
            layer=layer, num_layers=num_layers, embeddings=embeddings, tie_embeddings=tie_embeddings, final_norm=True
        )


__all__ = ["POSITIONS", "DecoderConfig", "EmbeddingConfig", "EncoderConfig", "LayerConfig", "RotaryConfig"]
