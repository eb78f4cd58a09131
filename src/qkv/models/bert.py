"""A BERT-family encoder built from `qkv.nn` blocks, loaded from a `BertCheckpoint`, and sentence embeddings.

`BertModel` is a `qkv.nn.TransformerEncoder` (post-norm LayerNorm, exact GELU,
learned positions and token types, LayerNorm over the embedding sum) whose
``forward(input_ids, attention_mask)`` takes HF BERT's arguments and returns the
last hidden states ``(B, N, E)``, HF ``BertModel(...).last_hidden_state``;
`BertModel.pool` gives HF's ``pooler_output`` (``tanh(dense(hidden[:, 0]))``)
where the checkpoint has a pooler. The same class runs RoBERTa (positions
count from ``pad_token_id + 1`` over the non-padding tokens, as HF's
``create_position_ids_from_input_ids``) and DistilBERT (no token types).

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
from torch import Tensor, nn

from qkv import masks
from qkv.errors import AttentionError
from qkv.models._build import build_with_weights, renamed
from qkv.models._inputs import key_mask
from qkv.models.packages import ModelError, UnsupportedModelError
from qkv.models.safetensors_file import BertCheckpoint, BertConfig
from qkv.nn import Embeddings, EncoderConfig, TransformerEncoder

__all__ = ["BertModel", "bert_state_dict", "mean_pool"]

_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def _encoder_config(c: BertConfig) -> EncoderConfig:
    if c.hidden_act not in _ACTIVATIONS:
        raise UnsupportedModelError(
            f"config.json: hidden_act {c.hidden_act!r} has no qkv equivalent; supported: {sorted(_ACTIVATIONS)}"
        )
    if c.position_embedding_type != "absolute":
        raise UnsupportedModelError(
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

    The table is in `qkv.nn.transformer`'s docstring; ``pooler.dense`` becomes ``pooler``.

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
        "pooler.dense.weight": "pooler.weight",
        "pooler.dense.bias": "pooler.bias",
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


class _BertEmbeddings(Embeddings):
    """`qkv.nn.Embeddings` at given ``position_ids (B, N)``, or RoBERTa's (``padding_idx`` set) from the ids."""

    def __init__(self, config: EncoderConfig, padding_idx: int | None) -> None:
        c = config.layer
        assert config.embeddings is not None, "a BERT config has embeddings"
        super().__init__(config.embeddings, c.embed_dim, norm=c.norm, norm_eps=c.norm_eps, dropout=c.dropout)
        self.padding_idx = padding_idx

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        start: int = 0,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        ids = self._check_ids("input_ids", input_ids, self.config.vocab_size)
        if position_ids is None and self.padding_idx is not None:  # RoBERTa: pad + 1, pad + 2, ... over real tokens
            real = (ids != self.padding_idx).long()  # (B, N)
            position_ids = (real.cumsum(1) + start) * real + self.padding_idx  # (B, N); padding tokens: padding_idx
        if position_ids is None:
            return super().forward(ids, token_type_ids, start)
        positions = self._check_ids("position_ids", position_ids, self.config.max_positions, tuple(ids.shape))
        assert self.positions is not None, "a BERT has learned positions"
        x = self.tokens(ids) + self.positions(positions)  # (B, N, E) + (B, N, E)
        if self.token_types is not None:
            types = torch.zeros_like(ids) if token_type_ids is None else token_type_ids
            types = self._check_ids("token_type_ids", types, self.config.type_vocab_size, tuple(ids.shape))
            x = x + self.token_types(types)  # (B, N, E)
        elif token_type_ids is not None:
            raise AttentionError("token_type_ids: this model has no token-type embeddings (DistilBERT: none)")
        assert self.norm is not None, "a BERT's embeddings have a LayerNorm"
        out: Tensor = self.dropout(self.norm(x))
        return out


class BertModel(TransformerEncoder):
    """A BERT-family encoder (HF ``BertModel``, ``RobertaModel``, ``DistilBertModel``) made of `qkv.nn` blocks.

    ``forward(input_ids, attention_mask=None, *, token_type_ids=None, position_ids=None)``:
    ``input_ids (B, N)``; ``attention_mask (B, N)``, True / 1 at real tokens (HF's
    meaning); ``token_type_ids`` default to 0 (DistilBERT has none);
    ``position_ids (B, N)`` default to ``0, 1, ...`` (RoBERTa: HF's rule from the
    ids); given without an ``attention_mask``, a jump in them starts a new packed
    sequence that attends only to itself (`qkv.masks.document`), as in HF. Returns
    the last hidden states ``(B, N, E)``; `pool` turns them into HF's ``pooler_output``.
    Build one from a checkpoint with `from_checkpoint`; the parameter names are
    `TransformerEncoder`'s (``layers.0.self_attn.q_proj.weight``) and ``pooler``
    (HF ``pooler.dense``).

    >>> import torch
    >>> from qkv.models.bert import BertModel
    >>> from qkv.models.safetensors_file import BertConfig
    >>> config = BertConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    >>> bert = BertModel(config, pooler=True).eval()
    >>> ids = torch.tensor([[1, 5, 7, 2], [1, 9, 2, 0]])
    >>> mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    >>> hidden = bert(ids, mask)
    >>> hidden.shape, bert.pool(hidden).shape
    (torch.Size([2, 4, 32]), torch.Size([2, 32]))
    >>> torch.allclose(hidden[1, :3], bert(ids[1:, :3])[0], atol=1e-5)   # padding changes nothing
    True
    >>> torch.allclose(bert(ids, position_ids=torch.arange(4).expand(2, 4)), bert(ids))
    True
    """

    embeddings: _BertEmbeddings

    def __init__(self, config: BertConfig, *, pooler: bool = False) -> None:
        encoder = _encoder_config(config)
        super().__init__(encoder)
        self.embeddings = _BertEmbeddings(encoder, config.pad_token_id if config.model_type == "roberta" else None)
        self.bert_config = config
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if pooler else None

    @classmethod
    def from_checkpoint(cls, checkpoint: BertCheckpoint) -> BertModel:
        """The encoder with the checkpoint's weights (its pooler too, if it has one), in their dtype, in eval mode."""
        state = bert_state_dict(checkpoint.tensors, checkpoint.config.num_layers)
        pooler = "pooler.weight" in state
        return build_with_weights(
            lambda: cls(checkpoint.config, pooler=pooler), state, where=str(checkpoint.folder or "checkpoint")
        )

    def forward(  # type: ignore[override]
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else ()
        mask: Tensor | masks.Mask | None = key_mask(attention_mask, shape, f"{shape}, input_ids' shape")  # (B,1,1,N)
        if isinstance(position_ids, Tensor) and position_ids.dim() == 2 and position_ids.shape[0] == 1 and shape:
            position_ids = position_ids.expand(shape)  # (1, N) -> (B, N)
        x = self.embeddings(input_ids, token_type_ids, position_ids=position_ids)  # (B, N) -> (B, N, E)
        if position_ids is not None and mask is None:
            mask = _packed(position_ids)
        for layer in self.layers:
            x = layer(x, mask=mask)
        out: Tensor = x
        return out

    def pool(self, hidden: Tensor) -> Tensor:
        """HF's ``pooler_output (B, E)``: ``tanh(pooler(hidden[:, 0]))``, the dense layer on the first ([CLS]) token."""
        if self.pooler is None:
            raise ModelError("pool: this checkpoint has no pooler (pooler.dense.*); use the hidden states or mean_pool")
        if not isinstance(hidden, Tensor) or hidden.dim() != 3 or hidden.shape[-1] != self.bert_config.hidden_size:
            given = tuple(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__
            raise ModelError(f"hidden: expected the hidden states (B, N, {self.bert_config.hidden_size}), got {given}")
        return torch.tanh(self.pooler(hidden[:, 0]))  # (B, E) -> (B, E)


def _packed(position_ids: Tensor) -> masks.Mask | None:
    """Packed sequences read from ``position_ids (B, N)``, as HF does without an ``attention_mask``.

    A position that does not follow its left neighbour by 1 starts a new sequence;
    tokens attend only within their sequence (`qkv.masks.document`). None: one sequence per row.
    """
    first = position_ids[:, :1] - 1  # (B, 1): the first position always "follows"
    segments = (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)  # (B, N)
    return masks.document(segments) if bool((segments[:, -1] != 0).any()) else None


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
