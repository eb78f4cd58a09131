"""Read a Llama-family safetensors folder (Llama, Qwen2, Mistral): ``config.json`` and the weights.

The tensors keep HF's names and shapes (``model.layers.0.self_attn.q_proj.weight``,
``lm_head.weight``), the ones `qkv.models.read_llama` gives for a GGUF file, so
`LlamaForCausalLM.from_checkpoint` builds either. The weights are
``model.safetensors`` or the shards ``model.safetensors.index.json`` lists.

What the config says, and what qkv does with it:

- ``rope_theta`` (or ``rope_parameters.rope_theta``), ``rms_norm_eps``,
  ``num_key_value_heads`` (grouped-query attention), ``head_dim``,
  ``tie_word_embeddings``: honoured.
- Llama's ``attention_bias`` (q, k, v and o biases) and ``mlp_bias``; Qwen2's
  q/k/v biases (always there): built.
- Mistral's ``sliding_window``, Qwen2's with ``use_sliding_window``: the
  `qkv.masks.sliding_window` mask in every layer (``layer_types`` must not mix
  full and sliding layers).
- Refused with a `ModelError` naming the key, never run wrongly: RoPE scaling
  (``rope_scaling`` / ``rope_parameters`` with a ``rope_type`` other than
  ``"default"``), ``partial_rotary_factor`` below 1, a ``hidden_act`` other than
  ``"silu"``, mixed ``layer_types``.

>>> config = llama_config_from_dict({"model_type": "mistral", "vocab_size": 100, "hidden_size": 32,
...     "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
...     "sliding_window": 3, "rope_theta": 1e6}, where="config.json")
>>> config.num_groups, config.head_dim, config.sliding_window, config.rope_theta
(2, 8, 3, 1000000.0)
>>> llama_config_from_dict({"model_type": "llama", "vocab_size": 100, "hidden_size": 32,
...     "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
...     "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, where="config.json")
Traceback (most recent call last):
...
qkv.models.packages.UnsupportedModelError: config.json: rope_scaling: rope_type 'llama3' is not implemented; ...
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from qkv.models._files import config_integer, config_number, read_json_object
from qkv.models._weights import check_tensors, read_safetensors, weights_name
from qkv.models.families import check_family
from qkv.models.gguf_file import LlamaCheckpoint, LlamaConfig, llama_shapes
from qkv.models.packages import ModelError, UnsupportedModelError

__all__ = ["llama_config_from_dict", "read_llama_folder", "read_llama_folder_config"]

_FULL, _SLIDING = "full_attention", "sliding_attention"


def _rope_theta(raw: dict[str, Any], where: str) -> float:
    """The RoPE base of plain RoPE; a `ModelError` naming the key for any scaling or partial rotation."""
    theta = raw.get("rope_theta")
    for key in ("rope_scaling", "rope_parameters"):
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ModelError(f"{where}: {key}: expected null or an object, got {value!r:.80}")
        kind = value.get("rope_type", value.get("type", "default"))
        if kind != "default":
            raise UnsupportedModelError(
                f"{where}: {key}: rope_type {kind!r:.40} is not implemented; qkv's Llama uses plain RoPE "
                "(rope_type 'default'), so it refuses this model rather than run it wrongly"
            )
        theta = value.get("rope_theta", theta)
        _full_rotation(value, f"{where}: {key}")
    _full_rotation(raw, where)
    return config_number({"rope_theta": theta}, "rope_theta", where=where, default=10000.0)


def _full_rotation(settings: dict[str, Any], where: str) -> None:
    """An `UnsupportedModelError` if ``settings`` rotate only part of each head (``partial_rotary_factor`` < 1)."""
    factor = settings.get("partial_rotary_factor", 1.0)
    if factor != 1.0:
        raise UnsupportedModelError(
            f"{where}: partial_rotary_factor {factor!r:.40} (RoPE on part of each head) is not implemented; "
            "qkv's Llama rotates every dimension of each head"
        )


def _sliding_window(raw: dict[str, Any], model_type: str, num_layers: int, where: str) -> int | None:
    """The window of every layer (None: plain causal), as HF's Mistral and Qwen2 read their configs."""
    if model_type == "llama":
        return None  # HF's Llama has no sliding window, whatever the config holds
    window = None
    if model_type == "mistral" or raw.get("use_sliding_window"):  # Qwen2 uses its sliding_window only if asked
        window = raw.get("sliding_window")
    if window is not None:
        window = config_integer(raw, "sliding_window", where=where)
    layer_types, source = raw.get("layer_types"), "layer_types"
    if layer_types is None and model_type == "qwen2" and window is not None:  # HF: sliding from max_window_layers on
        first = config_integer(raw, "max_window_layers", where=where, default=28, minimum=0)
        layer_types = [_SLIDING if i >= first else _FULL for i in range(num_layers)]
        source = f"max_window_layers {first} (sliding layers from layer {first} on)"
    if layer_types is None:
        return window
    kinds = set(layer_types) if isinstance(layer_types, list) and len(layer_types) == num_layers else None
    if kinds is None or not kinds <= {_FULL, _SLIDING}:
        raise ModelError(
            f"{where}: layer_types: expected {num_layers} of {_FULL!r} / {_SLIDING!r}, got {layer_types!r:.120}"
        )
    if len(kinds) > 1:
        raise UnsupportedModelError(
            f"{where}: {source} mixes {_FULL!r} and {_SLIDING!r} layers, which qkv's Llama does not implement "
            "(every layer gets one mask); it refuses this model rather than run it wrongly"
        )
    if kinds == {_FULL}:
        return None
    if window is None:
        raise ModelError(f"{where}: layer_types asks for {_SLIDING!r} layers, but sliding_window is not set")
    return window


def _token_id(value: object) -> int | None:
    """An id of ``config.json`` (``eos_token_id`` may be a list: its first)."""
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def llama_config_from_dict(raw: dict[str, Any], *, where: str = "config.json") -> LlamaConfig:
    """A `LlamaConfig` from the keys of an HF ``config.json`` of model_type ``llama``, ``qwen2`` or ``mistral``."""
    model_type = check_family(raw, "llama", where=where)
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(
            f"{where}: hidden_act {act!r:.40} is not implemented; qkv's Llama uses SwiGLU with silu"
        )

    def count(key: str, default: int | None = None) -> int:
        return config_integer(raw, key, where=where, default=default)

    hidden, heads = count("hidden_size"), count("num_attention_heads")
    kv_heads = count("num_key_value_heads", heads)
    if heads % kv_heads:
        raise ModelError(
            f"{where}: num_key_value_heads {kv_heads} does not divide num_attention_heads {heads} "
            "(each key/value head serves an equal group of query heads)"
        )
    head_dim = count("head_dim", hidden // heads if hidden % heads == 0 else None)
    num_layers = count("num_hidden_layers")
    attention_bias = model_type == "llama" and bool(raw.get("attention_bias", False))
    return LlamaConfig(
        vocab_size=count("vocab_size"),
        hidden_size=hidden,
        intermediate_size=count("intermediate_size"),
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rope_theta=_rope_theta(raw, where),
        rope_dim=head_dim,
        rms_norm_eps=config_number(raw, "rms_norm_eps", where=where, default=1e-6),
        context_length=count("max_position_embeddings", 2048),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        bos_token_id=_token_id(raw.get("bos_token_id")),
        eos_token_id=_token_id(raw.get("eos_token_id")),
        pad_token_id=_token_id(raw.get("pad_token_id")),
        name=str(raw.get("_name_or_path", "")),
        architecture=model_type,
        qkv_bias=model_type == "qwen2" or attention_bias,
        o_bias=attention_bias,
        mlp_bias=model_type == "llama" and bool(raw.get("mlp_bias", False)),
        sliding_window=_sliding_window(raw, model_type, num_layers, where),
    )


def read_llama_folder_config(folder: str | os.PathLike[str]) -> LlamaConfig:
    """The `LlamaConfig` of a folder holding an HF ``config.json`` (no tensor is read)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ModelError(f"folder: expected a model folder with config.json, got {str(folder)!r} (no {path})")
    return llama_config_from_dict(read_json_object(path), where=str(path))


def read_llama_folder(folder: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> LlamaCheckpoint:
    """Read ``config.json`` and the safetensors weights of a Llama-family folder; tensors in ``dtype``.

    ``metadata`` is the ``config.json`` object; no tokenizer is needed. A tied LM head
    (``tie_word_embeddings``) reads ``model.embed_tokens.weight``; tensors the decoder
    does not use (``rotary_emb.inv_freq`` buffers, a tied ``lm_head.weight``) are left out.
    """
    folder = Path(folder)
    config = read_llama_folder_config(folder)
    raw = read_json_object(folder / "config.json")
    expected = llama_shapes(config)
    tensors = read_safetensors(folder, lambda key: key if key in expected else None, dtype=dtype)
    check_tensors(tensors, expected, where=weights_name(folder), model="a Llama-family decoder", source="config.json")
    return LlamaCheckpoint(config=config, tensors=tensors, metadata=raw, path=folder)
