"""`Embeddings`: token ids to the first residual stream ``(B, N, E)``: tokens + positions + token types."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qkv.errors import AttentionError
from qkv.nn.config import EmbeddingConfig
from qkv.nn.norm import make_norm
from qkv.positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding


class Embeddings(nn.Module):
    """``dropout(norm(tokens[ids] + positions[start + i] + token_types[type_ids]))``.

    Submodules (each present only when the config asks for it): ``tokens``
    (``nn.Embedding(V, E)``, HF BERT ``word_embeddings``, Llama ``embed_tokens``),
    ``positions`` (`LearnedPositionalEmbedding`, BERT ``position_embeddings``, or
    `SinusoidalPositionalEncoding`), ``token_types`` (BERT ``token_type_embeddings``;
    ``token_type_ids`` default to 0 as in BERT), ``norm`` (BERT ``embeddings.LayerNorm``).
    ``start`` is the position of the first token (the cache length when decoding).

    >>> import torch
    >>> from qkv.nn import Embeddings, EmbeddingConfig
    >>> emb = Embeddings(EmbeddingConfig(vocab_size=10, max_positions=8, type_vocab_size=2), 16)
    >>> ids = torch.tensor([[1, 2, 3]])                           # (B, N)
    >>> x = emb(ids)                                              # (B, N, E)
    >>> expected = emb.tokens.weight[ids] + emb.positions.weight[:3] + emb.token_types.weight[0]
    >>> torch.allclose(x, expected)
    True
    """

    def __init__(
        self,
        config: EmbeddingConfig,
        embed_dim: int,
        *,
        norm: str = "layernorm",
        norm_eps: float = 1e-5,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.vocab_size, embed_dim)
        nn.init.normal_(self.tokens.weight, std=0.02)
        self.positions: nn.Module | None = None
        if config.positions == "learned":
            self.positions = LearnedPositionalEmbedding(config.max_positions, embed_dim)
        elif config.positions == "sinusoidal":
            self.positions = SinusoidalPositionalEncoding(embed_dim)
        self.token_types: nn.Embedding | None = None
        if config.type_vocab_size > 0:
            self.token_types = nn.Embedding(config.type_vocab_size, embed_dim)
            nn.init.normal_(self.token_types.weight, std=0.02)
        self.norm = make_norm(norm, embed_dim, norm_eps) if config.norm else None
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def _check_ids(name: str, ids: object, limit: int, shape: tuple[int, ...] | None = None) -> Tensor:
        if not isinstance(ids, Tensor) or ids.dtype not in (torch.int32, torch.int64) or ids.dim() != 2:
            given = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, Tensor) else type(ids).__name__
            raise AttentionError(f"{name}: expected an integer tensor (B, N) of ids, got {given}")
        if shape is not None and tuple(ids.shape) != shape:
            raise AttentionError(f"{name}: expected shape {shape} like input_ids, got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= limit):
            raise AttentionError(
                f"{name}: ids must lie in [0, {limit}), got min {int(ids.min())} and max {int(ids.max())}"
            )
        return ids

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None, start: int = 0) -> Tensor:
        input_ids = self._check_ids("input_ids", input_ids, self.config.vocab_size)
        x = self.tokens(input_ids)  # (B, N) -> (B, N, E)
        if self.positions is not None:
            positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)  # (N,)
            x = x + self.positions(positions).to(x.dtype)  # (B, N, E) + (N, E)
        if self.token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            ids = self._check_ids("token_type_ids", token_type_ids, self.config.type_vocab_size, tuple(input_ids.shape))
            x = x + self.token_types(ids)  # (B, N, E)
        elif token_type_ids is not None:
            raise AttentionError("token_type_ids: this model has no token-type embeddings (type_vocab_size=0)")
        if self.norm is not None:
            x = self.norm(x)
        out: Tensor = self.dropout(x)
        return out


__all__ = ["Embeddings"]
