"""Registering qkv with transformers: the attention function and the mask function, under one name.

Both are needed. transformers asks the mask interface of the model's ``attn_implementation`` to
build every mask; for a name it does not know there, it builds none and passes ``None`` — and a
causal model with padding then silently attends to its padding. Registered together, the mask
function describes the mask to qkv (`qkv.hf.masks`) and the attention function runs it
(`qkv.hf.attention`).
"""

from __future__ import annotations

from qkv.hf.attention import attention_forward
from qkv.hf.masks import mask_interface

NAME = "qkv"
"""The ``attn_implementation`` name: ``from_pretrained(path, attn_implementation="qkv")``."""


def register(name: str = NAME) -> None:
    """Register `attention_forward` and `mask_interface` with transformers under ``name``.

    ``import qkv.hf`` calls ``register()``; call it again only to add another name.

    >>> from transformers import AttentionInterface
    >>> from transformers.masking_utils import AttentionMaskInterface
    >>> register()
    >>> AttentionInterface._global_mapping["qkv"] is attention_forward
    True
    >>> AttentionMaskInterface._global_mapping["qkv"] is mask_interface
    True
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, mask_interface)
