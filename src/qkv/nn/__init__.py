"""Modules built on `qkv.attention`: multi-head attention, norms, feed-forwards, transformer stacks.

Every module takes batch-first activations ``(B, N, E)``; masks are True = may attend.

- `MultiHeadAttention` (GQA/MQA, cross-attention, RoPE, KV cache, ``from_torch``)
- `RMSNorm`, `LayerNorm`; `FeedForward` (GELU/ReLU MLP), `SwiGLU`
- `TransformerEncoderLayer`, `TransformerDecoderLayer`, `TransformerEncoder`,
  `TransformerDecoder` (hidden states, as torch's), `TransformerForCausalLM`
  (a decoder and an LM head: logits), configured by `LayerConfig`, `EncoderConfig`,
  `DecoderConfig`, `EmbeddingConfig`, `RotaryConfig`; `Embeddings`
- `prune_heads` (physically removes heads)
- the classic attentions: `AdditiveAttention` (Bahdanau), `GeneralAttention`
  (Luong's dot and general scores), and `GRUSeq2Seq`, a recurrent
  encoder–decoder with or without attention (the fixed-vector bottleneck)

Positional encodings live in `qkv.positional`, KV caches in `qkv.cache`.

>>> import torch
>>> from qkv.nn import MultiHeadAttention
>>> MultiHeadAttention(64, 8)(torch.randn(2, 10, 64), causal=True).shape
torch.Size([2, 10, 64])
"""

from qkv.nn.additive import AdditiveAttention, GeneralAttention
from qkv.nn.attention import MultiHeadAttention
from qkv.nn.config import DecoderConfig, EmbeddingConfig, EncoderConfig, LayerConfig, RotaryConfig
from qkv.nn.embedding import Embeddings
from qkv.nn.feedforward import FeedForward, SwiGLU
from qkv.nn.norm import LayerNorm, RMSNorm
from qkv.nn.pruning import prune_heads
from qkv.nn.seq2seq import GRUSeq2Seq
from qkv.nn.transformer import (
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
    TransformerForCausalLM,
)

__all__ = [
    "AdditiveAttention",
    "GRUSeq2Seq",
    "GeneralAttention",
    "DecoderConfig",
    "EmbeddingConfig",
    "Embeddings",
    "EncoderConfig",
    "FeedForward",
    "LayerConfig",
    "LayerNorm",
    "MultiHeadAttention",
    "RMSNorm",
    "RotaryConfig",
    "SwiGLU",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "TransformerForCausalLM",
    "prune_heads",
]
