"""Read a BERT-family folder (BERT, RoBERTa, DistilBERT: ``config.json`` + safetensors): its config and tensors.

Tensor names are HF ``BertModel``'s (``encoder.layer.0.attention.self.query.weight``,
shape ``(out, in)`` as ``nn.Linear`` holds it); a ``bert.`` / ``roberta.`` /
``distilbert.`` prefix (from ``BertForMaskedLM`` and friends) is stripped, task
heads (``cls.*``, ``lm_head.*``) and buffers (``embeddings.position_ids``) are
left out. DistilBERT's names are renamed to BERT's (the math is the same, less
the token types):

===========================================  ==========================================
DistilBERT (``transformer.layer.{i}.``)      BERT (``encoder.layer.{i}.``)
===========================================  ==========================================
attention.q_lin / k_lin / v_lin              attention.self.query / key / value
attention.out_lin                            attention.output.dense
sa_layer_norm                                attention.output.LayerNorm
ffn.lin1 / ffn.lin2                          intermediate.dense / output.dense
output_layer_norm                            output.LayerNorm
===========================================  ==========================================

The weights are ``model.safetensors`` or the shards of ``model.safetensors.index.json``.
A config asking for what qkv's encoder does not do (``is_decoder``,
``add_cross_attention``) is a `ModelError` naming the key.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from qkv.models._files import read_json_object
from qkv.models._weights import check_tensors, read_safetensors, weights_name
from qkv.models.families import check_family
from qkv.models.packages import ModelError, UnsupportedModelError

__all__ = ["BertCheckpoint", "BertConfig", "read_bert", "read_bert_config"]


@dataclass(frozen=True)
class BertConfig:
    """The shape and constants of a BERT encoder, from ``config.json``.

    >>> c = BertConfig.from_dict({"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
    ...                           "num_attention_heads": 12, "intermediate_size": 1536})
    >>> c.num_layers, c.head_dim, c.hidden_act, c.layer_norm_eps
    (6, 32, 'gelu', 1e-12)
    """

    vocab_size: int
    hidden_size: int  # E
    num_layers: int
    num_heads: int  # H; head_dim D = E / H
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # 0: no token types (DistilBERT)
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"  # HF "gelu" is the exact erf GELU
    pad_token_id: int = 0  # RoBERTa: positions start at pad_token_id + 1
    position_embedding_type: str = "absolute"
    model_type: str = "bert"  # "bert", "roberta" or "distilbert"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, where: str = "config.json") -> BertConfig:
        """From the keys of an HF ``config.json`` (``num_hidden_layers``, ``num_attention_heads``, ...).

        A key of the wrong type or range is a `ModelError` naming it; ``where`` (the file) opens the message.
        """
        if not isinstance(raw, dict):
            raise ModelError(f"{where}: expected a JSON object of BERT settings, got {type(raw).__name__}")
        for key in _REFUSED:
            if raw.get(key):
                raise UnsupportedModelError(f"{where}: {key}: {raw[key]!r:.40} asks for {_REFUSED[key]}")
        if raw.get("model_type") == "distilbert":
            raw = {**{_DISTILBERT_KEYS.get(k, k): v for k, v in raw.items()}, "type_vocab_size": 0}
        renames = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads"}
        known = {f.name for f in fields(cls)}
        values = {  # a null value (HF writes "pad_token_id": null) takes the default
            name: raw[renames.get(name, name)] for name in known if raw.get(renames.get(name, name)) is not None
        }
        missing = [
            renames.get(n, n)
            for n in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size")
            if n not in values
        ]
        if missing:
            raise ModelError(f"{where}: expected the keys {missing} of a BERT config, got keys {sorted(raw)}")
        for name, value in values.items():
            _check_field(renames.get(name, name), value, where)
        config = cls(**values)
        if config.hidden_size % config.num_heads:
            raise ModelError(
                f"{where}: hidden_size {config.hidden_size} is not a multiple of num_attention_heads {config.num_heads}"
            )
        return config


@dataclass
class BertCheckpoint:
    """A BERT folder read whole: the config and the tensors under ``BertModel`` names."""

    config: BertConfig
    tensors: dict[str, torch.Tensor] = field(repr=False)
    folder: Path | None = None


_REFUSED = {  # config.json key -> what a true value asks for, which qkv's BertModel does not do
    "is_decoder": "a causal decoder; qkv's BertModel is a bidirectional encoder, so it refuses rather than run "
    "it without the causal mask",
    "add_cross_attention": "cross-attention layers, which qkv's BertModel does not have",
}
_DISTILBERT_KEYS = {  # DistilBERT's config.json keys -> BERT's
    "dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "hidden_dim": "intermediate_size",
    "activation": "hidden_act",
}
_DISTILBERT_MODULES = {
    "attention.q_lin": "attention.self.query",
    "attention.k_lin": "attention.self.key",
    "attention.v_lin": "attention.self.value",
    "attention.out_lin": "attention.output.dense",
    "sa_layer_norm": "attention.output.LayerNorm",
    "ffn.lin1": "intermediate.dense",
    "ffn.lin2": "output.dense",
    "output_layer_norm": "output.LayerNorm",
}
_DISTILBERT_LAYER = re.compile(r"transformer\.layer\.(\d+)\.(.+)\.(weight|bias)")
_AT_LEAST = {  # config.json key -> the smallest value that makes a model
    "vocab_size": 1,
    "hidden_size": 1,
    "num_hidden_layers": 1,
    "num_attention_heads": 1,
    "intermediate_size": 1,
    "max_position_embeddings": 1,
    "type_vocab_size": 0,
    "pad_token_id": 0,
}
_STRINGS = ("hidden_act", "position_embedding_type", "model_type")


def _check_field(key: str, value: object, where: str) -> None:
    """A `ModelError` naming ``key`` of ``where`` (a config.json) if ``value`` has the wrong type or range."""
    if key in _AT_LEAST:
        if isinstance(value, bool) or not isinstance(value, int) or value < _AT_LEAST[key]:
            raise ModelError(f"{where}: {key}: expected an integer of at least {_AT_LEAST[key]}, got {value!r:.80}")
    elif key in _STRINGS:
        if not isinstance(value, str):
            raise ModelError(f"{where}: {key}: expected a string, got {value!r:.80}")
    elif key == "layer_norm_eps":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ModelError(f"{where}: {key}: expected a small positive number such as 1e-12, got {value!r:.80}")


def read_bert_config(folder: str | os.PathLike[str]) -> BertConfig:
    """The ``BertConfig`` of a folder holding an HF ``config.json``."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ModelError(f"folder: expected a BERT model folder with config.json, got {str(folder)!r} (no {path})")
    raw = read_json_object(path)
    check_family(raw, "bert", where=str(path))
    return BertConfig.from_dict(raw, where=str(path))


def _expected_shapes(c: BertConfig) -> dict[str, tuple[int, ...]]:
    e, f = c.hidden_size, c.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (c.vocab_size, e),
        "embeddings.position_embeddings.weight": (c.max_position_embeddings, e),
        "embeddings.LayerNorm.weight": (e,),
        "embeddings.LayerNorm.bias": (e,),
    }
    if c.type_vocab_size:
        shapes["embeddings.token_type_embeddings.weight"] = (c.type_vocab_size, e)
    for i in range(c.num_layers):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes |= {p + name + ".weight": (e, e), p + name + ".bias": (e,)}
        shapes |= {
            p + "attention.output.LayerNorm.weight": (e,),
            p + "attention.output.LayerNorm.bias": (e,),
            p + "intermediate.dense.weight": (f, e),
            p + "intermediate.dense.bias": (f,),
            p + "output.dense.weight": (e, f),
            p + "output.dense.bias": (e,),
            p + "output.LayerNorm.weight": (e,),
            p + "output.LayerNorm.bias": (e,),
        }
    return shapes


def _bert_name(key: str, model_type: str) -> str | None:
    """The HF ``BertModel`` name of a checkpoint tensor, or None for one the encoder does not use."""
    name = key.removeprefix(f"{model_type}.")
    if model_type == "distilbert":
        match = _DISTILBERT_LAYER.fullmatch(name)
        if match is not None:
            module = _DISTILBERT_MODULES.get(match.group(2))
            return None if module is None else f"encoder.layer.{match.group(1)}.{module}.{match.group(3)}"
    if not name.startswith(("embeddings.", "encoder.", "pooler.")) or name.endswith(("position_ids", "token_type_ids")):
        return None
    return name


def read_bert(folder: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> BertCheckpoint:
    """Read ``config.json`` and the safetensors weights of a BERT-family folder; tensors in ``dtype``.

    The ``pooler.*`` tensors are kept when present (all-MiniLM-L6-v2 and RoBERTa have them).
    """
    config = read_bert_config(folder)
    folder = Path(folder)
    tensors = read_safetensors(folder, lambda key: _bert_name(key, config.model_type), dtype=dtype)
    expected = _expected_shapes(config)
    if "pooler.dense.weight" in tensors or "pooler.dense.bias" in tensors:
        e = config.hidden_size
        expected |= {"pooler.dense.weight": (e, e), "pooler.dense.bias": (e,)}
    check_tensors(tensors, expected, where=weights_name(folder), model="a BERT encoder", source="config.json")
    return BertCheckpoint(config=config, tensors=tensors, folder=folder)
