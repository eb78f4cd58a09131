"""A BERT encoder built from `qkv.nn` blocks, loaded from a `BertCheckpoint`, and sentence embeddings.

`BertModel` is a `qkv.nn.TransformerEncoder` (post-norm LayerNorm, exact GELU,
learned positions and token types, LayerNorm over the embedding sum) whose
``forward(input_ids, attention_mask)`` takes HF BERT's arguments and returns the
last hidden states ``(B, N, E)``, HF ``BertModel(...).last_hidden_state``.

HF BERT masks padded *keys* only: a padded query row still attends to the real
keys (its output is computed and ignored). So does `BertModel`; the outputs at real
tokens do not depend on the padding at all.

`mean_pool` is the pooling of sentence-transformers' all-MiniLM-L6-v2: the mean of
the hidden states over the real tokens, then L2 normalization.

>>> import torch
>>> hidden = torch.tensor([[[6.0, 0.0], [0.0, 8.0], [9.0, 9.0]]])      # (B=1, N=3, E=2)
>>> mean_pool(hidden, torch.tensor([[True, True, False]]))              # mean [3, 4], then / 5
tensor([[0.6000, 0.8000]])
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from qkv.models._build import build_with_weights, renamed
from qkv.models._inputs import key_mask
from qkv.models.packages import ModelError
from qkv.models.safetensors_file import BertCheckpoint, BertConfig
from qkv.nn import EncoderConfig, TransformerEncoder

__all__ = ["BertModel", "bert_state_dict", "mean_pool"]

_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def _encoder_config(c: BertConfig) -> EncoderConfig:
    if c.hidden_act not in _ACTIVATIONS:
        raise ModelError(
            f"config.json: hidden_act {c.hidden_act!r} has no qkv equivalent; supported: {sorted(_ACTIVATIONS)}"
        )
    if c.position_embedding_type != "absolute":
        raise ModelError(
            f"config.json: position_embedding_type {c.position_embedding_type!r} is not supported; "
            "qkv builds BERTs with absolute (learned) positions"
        )
    config = EncoderConfig.bert(
        vocab_size=c.vocab_size,
        embed_dim=c.hidden_size,
        num_layers=c.num_layers,
        num_heads=c.num_heads,
        ffn_dim=c.intermediate_size,
        max_positions=c.max_position_embeddings,
        type_vocab_size=c.type_vocab_size,
        norm_eps=c.layer_norm_eps,
    )
    activation = _ACTIVATIONS[c.hidden_act]
    if activation != config.layer.activation:
        config = replace(config, layer=replace(config.layer, activation=activation))
    return config


def bert_state_dict(tensors: dict[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """HF ``BertModel`` tensors renamed to `BertModel`'s (qkv's) parameter names.

    The table is in `qkv.nn.transformer`'s docstring; ``pooler.*`` (unused by the
    encoder's hidden states) is left out.

    >>> names = bert_state_dict({"encoder.layer.0.attention.self.query.weight": 0,
    ...                          "encoder.layer.0.output.LayerNorm.bias": 1}, 1)
    >>> sorted(names)
    ['layers.0.ffn_norm.bias', 'layers.0.self_attn.q_proj.weight']
    """
    top = {
        "embeddings.word_embeddings.weight": "embeddings.tokens.weight",
        "embeddings.position_embeddings.weight": "embeddings.positions.weight",
        "embeddings.token_type_embeddings.weight": "embeddings.token_types.weight",
        "embeddings.LayerNorm.weight": "embeddings.norm.weight",
        "embeddings.LayerNorm.bias": "embeddings.norm.bias",
    }
    per_layer = {
        "attention.self.query": "self_attn.q_proj",
        "attention.self.key": "self_attn.k_proj",
        "attention.self.value": "self_attn.v_proj",
        "attention.output.dense": "self_attn.out_proj",
        "attention.output.LayerNorm": "attn_norm",
        "intermediate.dense": "ffn.up_proj",
        "output.dense": "ffn.down_proj",
        "output.LayerNorm": "ffn_norm",
    }
    return renamed(
        tensors, top, per_layer, num_layers, theirs="encoder.layer.{}.", ours="layers.{}.", kinds=("weight", "bias")
    )


class BertModel(TransformerEncoder):
    """A BERT encoder (HF ``BertModel`` without its pooler) made of `qkv.nn` blocks.

    ``forward(input_ids, attention_mask=None, *, token_type_ids=None)``:
    ``input_ids (B, N)``; ``attention_mask (B, N)``, True / 1 at real tokens (HF's
    meaning); ``token_type_ids`` default to 0. Returns the last hidden states
    ``(B, N, E)``. Build one from a checkpoint with `from_checkpoint`; the
    parameter names are `TransformerEncoder`'s (``layers.0.self_attn.q_proj.weight``).

    >>> import torch
    >>> from qkv.models.bert import BertModel
    >>> from qkv.models.safetensors_file import BertConfig
    >>> config = BertConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    >>> bert = BertModel(config).eval()
    >>> ids = torch.tensor([[1, 5, 7, 2], [1, 9, 2, 0]])
    >>> mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    >>> hidden = bert(ids, mask)
    >>> hidden.shape
    torch.Size([2, 4, 32])
    >>> torch.allclose(hidden[1, :3], bert(ids[1:, :3])[0], atol=1e-5)   # padding changes nothing
    True
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__(_encoder_config(config))
        self.bert_config = config

    @classmethod
    def from_checkpoint(cls, checkpoint: BertCheckpoint) -> BertModel:
        """The encoder with the checkpoint's weights, in their dtype, in eval mode."""
        state = bert_state_dict(checkpoint.tensors, checkpoint.config.num_layers)
        return build_with_weights(lambda: cls(checkpoint.config), state, where=str(checkpoint.folder or "checkpoint"))

    def forward(  # type: ignore[override]
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        shape = tuple(input_ids.shape)
        mask = key_mask(attention_mask, shape, f"{shape}, input_ids' shape")  # (B, N) -> (B, 1, 1, N)
        return super().forward(input_ids, token_type_ids=token_type_ids, mask=mask)


def mean_pool(hidden: Tensor, attention_mask: Tensor | None = None, *, normalize: bool = True) -> Tensor:
    """Sentence embeddings ``(B, E)``: the mean of ``hidden (B, N, E)`` over real tokens, L2-normalized.

    This is all-MiniLM-L6-v2's pooling (sentence-transformers' ``Pooling(mean)`` +
    ``Normalize``); ``attention_mask (B, N)`` is True / 1 at real tokens.
    """
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    weights = attention_mask.to(hidden.dtype)[..., None]  # (B, N) -> (B, N, 1)
    summed = (hidden * weights).sum(1)  # (B, N, E) -> (B, E)
    pooled = summed / weights.sum(1).clamp(min=1e-9)  # (B, E) / (B, 1)
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
    return pooled
