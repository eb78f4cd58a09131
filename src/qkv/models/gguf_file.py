"""Read a Llama-family GGUF file: its config, and its weights as float tensors named as HF Llama names them.

A GGUF file is llama.cpp's format: metadata key/values (config, tokenizer,
chat template) and tensors, most of them quantized in blocks (Q4_1, Q8_0, ...).
We read it with the ``gguf`` package, dequantize every tensor to float32 and
rename it to the name HF's ``LlamaForCausalLM`` gives it, with the shape HF has:

=====================================  ===============================================  ==========
GGUF name                              HF name                                          HF shape
=====================================  ===============================================  ==========
token_embd.weight                      model.embed_tokens.weight                        (V, E)
blk.{i}.attn_norm.weight               model.layers.{i}.input_layernorm.weight          (E,)
blk.{i}.attn_q.weight                  model.layers.{i}.self_attn.q_proj.weight         (Hq*D, E)
blk.{i}.attn_k.weight                  model.layers.{i}.self_attn.k_proj.weight         (Hkv*D, E)
blk.{i}.attn_v.weight                  model.layers.{i}.self_attn.v_proj.weight         (Hkv*D, E)
blk.{i}.attn_output.weight             model.layers.{i}.self_attn.o_proj.weight         (E, Hq*D)
blk.{i}.ffn_norm.weight                model.layers.{i}.post_attention_layernorm.weight (E,)
blk.{i}.ffn_gate.weight                model.layers.{i}.mlp.gate_proj.weight            (F, E)
blk.{i}.ffn_up.weight                  model.layers.{i}.mlp.up_proj.weight              (F, E)
blk.{i}.ffn_down.weight                model.layers.{i}.mlp.down_proj.weight            (E, F)
output_norm.weight                     model.norm.weight                                (E,)
output.weight (absent when tied)       lm_head.weight                                   (V, E)
=====================================  ===============================================  ==========

**The RoPE row permutation.** HF's Llama rotates dimension ``i`` of a head with
dimension ``i + D/2`` (``rotate_half``, "half-split"). ggml's RoPE rotates the
adjacent pair ``(2i, 2i+1)`` ("interleaved"). llama.cpp's converter therefore
reorders the rows of every head of ``q_proj`` and ``k_proj``: GGUF row ``2i + a``
of a head is HF row ``a * D/2 + i``. :func:`unpermute_rope_rows` undoes it, so the
weights work with half-split rotary embeddings, exactly as transformers' own
GGUF loader does (checked in ``tests/test_model_files.py``).

**Tied embeddings.** When the file has no ``output.weight`` (SmolLM2), the output
projection is the token embedding: ``config.tie_word_embeddings`` is True and the
tensor dict holds no ``lm_head.weight`` — use ``model.embed_tokens.weight``.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from qkv.models._files import corrupt
from qkv.models._weights import check_tensors
from qkv.models.packages import ModelError

__all__ = [
    "LlamaCheckpoint",
    "LlamaConfig",
    "permute_rope_rows",
    "read_gguf_metadata",
    "read_llama",
    "read_llama_config",
    "unpermute_rope_rows",
]


@dataclass(frozen=True)
class LlamaConfig:
    """The shape and constants of a Llama-family decoder, read from GGUF metadata or a folder's ``config.json``."""

    vocab_size: int  # V
    hidden_size: int  # E
    intermediate_size: int  # F, the SwiGLU width
    num_layers: int
    num_heads: int  # Hq
    num_kv_heads: int  # Hkv; Hq % Hkv == 0 (grouped-query attention)
    head_dim: int  # D
    rope_theta: float
    rope_dim: int  # dimensions of each head that are rotated (== D for Llama)
    rms_norm_eps: float
    context_length: int
    tie_word_embeddings: bool  # True: logits = h @ embed_tokens.weight.T
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    rope_scaling: dict[str, Any] | None = None  # None: plain RoPE; else the GGUF's llama.rope.scaling.* keys
    name: str = ""
    architecture: str = "llama"  # a folder's: its model_type ("llama", "qwen2", "mistral")
    qkv_bias: bool = False  # biases on q_proj, k_proj, v_proj (Qwen2; Llama's attention_bias)
    o_bias: bool = False  # a bias on o_proj (Llama's attention_bias)
    mlp_bias: bool = False  # biases on gate_proj, up_proj, down_proj (Llama's mlp_bias)
    sliding_window: int | None = None  # query i sees keys i - window < j <= i (Mistral); None: all j <= i

    @property
    def num_groups(self) -> int:
        """Query heads per kv head (``Hq // Hkv``)."""
        return self.num_heads // self.num_kv_heads


@dataclass
class LlamaCheckpoint:
    """A GGUF file read whole: the config, the tensors under HF names, and the raw metadata."""

    config: LlamaConfig
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(repr=False)
    path: Path | None = None


def permute_rope_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """llama.cpp's converter permutation: HF half-split rows -> GGUF interleaved rows.

    Given only to test and explain :func:`unpermute_rope_rows`, its inverse.
    """
    rows, *rest = weight.shape
    head_dim = _head_dim(rows, num_heads)
    # (H * D, E) -> (H, 2, D/2, E): [head, half a, index i]
    w = weight.reshape(num_heads, 2, head_dim // 2, *rest)
    # (H, 2, D/2, E) -> (H, D/2, 2, E) -> (H * D, E): row 2i + a <- row a * D/2 + i
    return w.transpose(1, 2).reshape(rows, *rest)


def unpermute_rope_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's RoPE row permutation of a q_proj / k_proj weight (or bias).

    ``weight`` is ``(H * D, E)`` as stored in the GGUF; ``num_heads`` is ``Hq``
    for q_proj and ``Hkv`` for k_proj. Row ``2i + a`` of each head (interleaved
    pairs) goes back to row ``a * D/2 + i`` (half-split pairs, HF's ``rotate_half``).

    >>> import torch
    >>> w = torch.arange(8.0).reshape(8, 1)        # 2 heads of D = 4, E = 1
    >>> unpermute_rope_rows(w, num_heads=2).flatten().tolist()
    [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
    >>> bool((unpermute_rope_rows(permute_rope_rows(w, 2), 2) == w).all())
    True
    """
    rows, *rest = weight.shape
    head_dim = _head_dim(rows, num_heads)
    # (H * D, E) -> (H, D/2, 2, E): [head, index i, half a] as llama.cpp stored it
    w = weight.reshape(num_heads, head_dim // 2, 2, *rest)
    # (H, D/2, 2, E) -> (H, 2, D/2, E) -> (H * D, E): row a * D/2 + i <- row 2i + a
    return w.transpose(1, 2).reshape(rows, *rest)


def _head_dim(rows: int, num_heads: int) -> int:
    if num_heads <= 0 or rows % num_heads or (rows // num_heads) % 2:
        raise ModelError(
            f"num_heads: expected a positive divisor of the {rows} rows leaving an even head size, got {num_heads}"
        )
    return rows // num_heads


@functools.lru_cache(maxsize=2)
def _reader(path: str, mtime_ns: int, size: int) -> Any:
    """One memory-mapped GGUFReader per file version (opening one parses ~100k strings: seconds)."""
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as error:  # noqa: BLE001 - the reader fails in many ways (IndexError, ValueError...) on bad bytes
        raise corrupt(path, "GGUF file", error) from None


def _open(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"path: expected a .gguf file, got {str(path)!r}, which does not exist or is a folder")
    try:
        import gguf  # noqa: F401
    except ImportError as error:
        raise ModelError(
            "reading a GGUF file needs the 'gguf' package; install it with: python -m pip install gguf"
        ) from error
    stat = path.stat()
    return _reader(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def read_gguf_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Every metadata key of a GGUF file, decoded: str, int, float, bool, or lists of them.

    Includes the tokenizer arrays (``tokenizer.ggml.tokens``, ``.merges``, ``.token_type``)
    and ``tokenizer.chat_template`` when the file carries them.
    """
    reader = _open(path)
    return {key: reader_field.contents() for key, reader_field in reader.fields.items()}


def _llama_config(metadata: dict[str, Any], tensor_names: set[str], path: str) -> LlamaConfig:
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ModelError(
            f"{path}: expected a Llama-family GGUF (general.architecture = 'llama'), got {arch!r}; "
            f"qkv reads Llama-architecture decoders (Llama, SmolLM, TinyLlama, Mistral-style)"
        )

    def need(key: str, default: Any = None) -> Any:
        value = metadata.get(f"{arch}.{key}", default)
        if value is None:
            raise ModelError(f"{path}: GGUF metadata lacks '{arch}.{key}', which a Llama model needs")
        return value

    def count(key: str, default: Any = None) -> int:
        value = need(key, default)
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ModelError(f"{path}: GGUF metadata '{arch}.{key}': expected a positive integer, got {value!r:.80}")
        return int(value)

    def number(key: str, default: Any = None) -> float:
        value = need(key, default)
        if isinstance(value, bool) or not isinstance(value, Real) or not 0 < cast(float, value) < float("inf"):
            raise ModelError(f"{path}: GGUF metadata '{arch}.{key}': expected a positive number, got {value!r:.80}")
        return float(value)

    hidden = count("embedding_length")
    heads = count("attention.head_count")
    kv_heads = count("attention.head_count_kv", heads)
    head_dim = count("attention.key_length", max(hidden // heads, 1))
    if heads % kv_heads:
        raise ModelError(f"{path}: {heads} query heads are not a multiple of {kv_heads} kv heads")
    vocab = metadata.get(f"{arch}.vocab_size")
    if vocab is None:
        tokens = metadata.get("tokenizer.ggml.tokens")
        vocab = len(tokens) if isinstance(tokens, list) else 0
    if isinstance(vocab, bool) or not isinstance(vocab, Integral) or vocab < 1:
        raise ModelError(f"{path}: expected a vocabulary size ('{arch}.vocab_size' or the tokens), got {vocab!r:.80}")
    scaling = {
        key.removeprefix(f"{arch}.rope.scaling."): value
        for key, value in metadata.items()
        if key.startswith(f"{arch}.rope.scaling.")
    }
    if scaling.get("type", "none") == "none":
        scaling = {}
    return LlamaConfig(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=count("feed_forward_length"),
        num_layers=count("block_count"),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rope_theta=number("rope.freq_base", 10000.0),
        rope_dim=count("rope.dimension_count", head_dim),
        rms_norm_eps=number("attention.layer_norm_rms_epsilon"),
        context_length=count("context_length"),
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=metadata.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=metadata.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=metadata.get("tokenizer.ggml.padding_token_id"),
        rope_scaling=scaling or None,
        name=str(metadata.get("general.name", "")),
        architecture=arch,
    )


def read_llama_config(path: str | os.PathLike[str]) -> LlamaConfig:
    """The config of a Llama-family GGUF file, from its metadata only (no tensor is read)."""
    reader = _open(path)
    return _llama_config(read_gguf_metadata(path), {t.name for t in reader.tensors}, str(path))


_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _hf_name(gguf_name: str, path: str) -> str:
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    match = _BLOCK.fullmatch(gguf_name)
    if match is None or match.group(2) not in _BLOCK_NAMES:
        raise ModelError(
            f"{path}: tensor {gguf_name!r} is not part of a plain Llama decoder "
            f"(biases, rope_freqs, MoE experts and the like are not supported)"
        )
    return f"model.layers.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}.weight"


def llama_shapes(c: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """HF name -> shape of every tensor a decoder of config ``c`` needs (the biases it has included)."""
    e, f, d = c.hidden_size, c.intermediate_size, c.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (c.vocab_size, e),
        "model.norm.weight": (e,),
    }
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, e)
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (e,),
            p + "self_attn.q_proj.weight": (c.num_heads * d, e),
            p + "self_attn.k_proj.weight": (c.num_kv_heads * d, e),
            p + "self_attn.v_proj.weight": (c.num_kv_heads * d, e),
            p + "self_attn.o_proj.weight": (e, c.num_heads * d),
            p + "post_attention_layernorm.weight": (e,),
            p + "mlp.gate_proj.weight": (f, e),
            p + "mlp.up_proj.weight": (f, e),
            p + "mlp.down_proj.weight": (e, f),
        }
        biases = {
            "self_attn.q_proj": (c.qkv_bias, c.num_heads * d),
            "self_attn.k_proj": (c.qkv_bias, c.num_kv_heads * d),
            "self_attn.v_proj": (c.qkv_bias, c.num_kv_heads * d),
            "self_attn.o_proj": (c.o_bias, e),
            "mlp.gate_proj": (c.mlp_bias, f),
            "mlp.up_proj": (c.mlp_bias, f),
            "mlp.down_proj": (c.mlp_bias, e),
        }
        shapes |= {f"{p}{module}.bias": (size,) for module, (present, size) in biases.items() if present}
    return shapes


def read_llama(path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> LlamaCheckpoint:
    """Read a Llama-family GGUF file: config, and every tensor dequantized, renamed, un-permuted.

    ``tensors`` maps HF Llama names (``model.layers.0.self_attn.q_proj.weight``,
    see the module docstring) to ``dtype`` tensors of HF's shapes, q/k rows in
    HF's half-split RoPE order. Takes about 5 s and 0.6 GB for SmolLM2-135M.
    """
    from gguf.quants import dequantize

    reader = _open(path)
    metadata = read_gguf_metadata(path)
    config = _llama_config(metadata, {t.name for t in reader.tensors}, str(path))
    expected = llama_shapes(config)

    tensors: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name, str(path))
        try:
            values = dequantize(tensor.data, tensor.tensor_type)  # numpy, shape = reversed GGUF dims = HF shape
        except (NotImplementedError, ValueError, TypeError) as error:
            raise ModelError(
                f"{path}: tensor {tensor.name!r} of type {getattr(tensor.tensor_type, 'name', tensor.tensor_type)} "
                f"cannot be dequantized ({error}); qkv reads the types the gguf package dequantizes"
            ) from None
        if not values.flags.writeable:  # unquantized tensors are read-only views of the memory map
            values = values.copy()
        weight = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        if name.endswith("q_proj.weight"):
            weight = unpermute_rope_rows(weight, config.num_heads)
        elif name.endswith("k_proj.weight"):
            weight = unpermute_rope_rows(weight, config.num_kv_heads)
        tensors[name] = weight.to(dtype)

    check_tensors(tensors, expected, where=str(path), model="a Llama model", source="the metadata")
    return LlamaCheckpoint(config=config, tensors=tensors, metadata=metadata, path=Path(path))
