"""Read a BERT-family folder (``config.json`` + ``model.safetensors``): its config and its tensors.

Tensor names are HF ``BertModel``'s (``encoder.layer.0.attention.self.query.weight``,
shape ``(out, in)`` as ``nn.Linear`` holds it); a ``bert.`` prefix (from
``BertForMaskedLM`` and friends) is stripped, task heads (``cls.*``) and
buffers (``embeddings.position_ids``) are left out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from qkv.models._files import corrupt, read_json_object
from qkv.models.packages import ModelError

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
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"  # HF "gelu" is the exact erf GELU
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    model_type: str = "bert"

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


_SUPPORTED_TYPES = ("bert",)
_AT_LEAST = {  # config.json key -> the smallest value that makes a model
    "vocab_size": 1,
    "hidden_size": 1,
    "num_hidden_layers": 1,
    "num_attention_heads": 1,
    "intermediate_size": 1,
    "max_position_embeddings": 1,
    "type_vocab_size": 1,
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
    model_type = raw.get("model_type", "bert")
    if not isinstance(model_type, str) or model_type not in _SUPPORTED_TYPES:
        raise ModelError(f"{path}: expected a BERT-family config (model_type 'bert'), got model_type {model_type!r}")
    return BertConfig.from_dict(raw, where=str(path))


def _expected_shapes(c: BertConfig) -> dict[str, tuple[int, ...]]:
    e, f = c.hidden_size, c.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (c.vocab_size, e),
        "embeddings.position_embeddings.weight": (c.max_position_embeddings, e),
        "embeddings.token_type_embeddings.weight": (c.type_vocab_size, e),
        "embeddings.LayerNorm.weight": (e,),
        "embeddings.LayerNorm.bias": (e,),
    }
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


def read_bert(folder: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> BertCheckpoint:
    """Read ``config.json`` and ``model.safetensors`` of a BERT folder; tensors in ``dtype``.

    The ``pooler.*`` tensors are kept when present (all-MiniLM-L6-v2 has them).
    """
    from safetensors import SafetensorError, safe_open

    config = read_bert_config(folder)
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise ModelError(f"folder: expected {path} beside config.json; only single-file safetensors are read")
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as file:
            for key in file.keys():  # noqa: SIM118 (safe_open is not a mapping)
                name = key.removeprefix("bert.")
                if not name.startswith(("embeddings.", "encoder.", "pooler.")) or name.endswith("position_ids"):
                    continue
                tensors[name] = file.get_tensor(key).to(dtype)
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as error:
        # SafetensorError: a cut or garbage header; the others: a header that parses but describes nonsense
        raise corrupt(path, "safetensors file", str(error).removeprefix("Error while deserializing header: ")) from None
    expected = _expected_shapes(config)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ModelError(f"{path}: lacks {len(missing)} tensors a BERT encoder needs, e.g. {missing[:3]}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ModelError(
                f"{path}: tensor {name!r}: expected shape {shape} from config.json, got {tuple(tensors[name].shape)}"
            )
    return BertCheckpoint(config=config, tensors=tensors, folder=Path(folder))
