"""Which architectures qkv builds from a model folder: ``config.json``'s ``model_type`` -> a family.

=============  ============================  ============================================
family         ``model_type``                built as
=============  ============================  ============================================
``"bert"``     bert, roberta, distilbert     `qkv.models.BertModel` (a `TextEncoder`)
``"llama"``    llama, qwen2, mistral         `qkv.models.LlamaForCausalLM` (a `LanguageModel`)
=============  ============================  ============================================

Any other ``model_type`` is an `UnsupportedModelError` naming it.

>>> family_of({"model_type": "qwen2"}, where="config.json")
'llama'
>>> try:
...     family_of({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, where="config.json")
... except UnsupportedModelError as error:
...     print(error)
config.json: model_type 'gpt2' (architectures ['GPT2LMHeadModel']) has no qkv implementation; qkv builds \
model_type 'bert', 'roberta', 'distilbert' (BERT family) and 'llama', 'qwen2', 'mistral' (Llama family)
"""

from __future__ import annotations

from typing import Any

from qkv.models.packages import UnsupportedModelError

__all__ = ["BERT_FAMILY", "LLAMA_FAMILY", "check_family", "family_of"]

BERT_FAMILY = ("bert", "roberta", "distilbert")
LLAMA_FAMILY = ("llama", "qwen2", "mistral")

_LABELS = {"bert": "BERT", "llama": "Llama"}
_KNOWN = (
    f"model_type {', '.join(map(repr, BERT_FAMILY))} (BERT family) and "
    f"{', '.join(map(repr, LLAMA_FAMILY))} (Llama family)"
)


def family_of(raw: dict[str, Any], *, where: str) -> str:
    """``"bert"`` or ``"llama"`` for a ``config.json`` object; a config without ``model_type`` is a BERT's."""
    model_type = raw.get("model_type", "bert")
    if model_type in BERT_FAMILY:
        return "bert"
    if model_type in LLAMA_FAMILY:
        return "llama"
    architectures = raw.get("architectures")
    named = f" (architectures {architectures!r:.120})" if architectures else ""
    raise UnsupportedModelError(
        f"{where}: model_type {model_type!r:.80}{named} has no qkv implementation; qkv builds {_KNOWN}"
    )


def check_family(raw: dict[str, Any], family: str, *, where: str) -> str:
    """``raw``'s ``model_type`` if it is of ``family``; else the `UnsupportedModelError` naming it."""
    if family_of(raw, where=where) != family:
        model_type = raw.get("model_type", "bert")
        raise UnsupportedModelError(
            f"{where}: expected a {_LABELS[family]}-family config ({_KNOWN}), got model_type {model_type!r}"
        )
    return str(raw.get("model_type", "bert"))
