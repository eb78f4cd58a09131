"""What the interpret modules share: finding a model's attention layers, checking arguments."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from qkv.errors import AttentionError, ModelError
from qkv.nn.attention import MultiHeadAttention


def attention_modules(model: object, *, what: str = "record") -> list[tuple[str, MultiHeadAttention]]:
    """``(name, module)`` of every `MultiHeadAttention` in ``model.modules()`` order.

    This is the layer numbering `qkv.nn.prune_heads` uses: for qkv's stacks,
    layer ``i``'s self-attention, then its cross-attention if it has one. ``what`` names the
    function asking, for the message a transformers model gets.
    """
    if not isinstance(model, nn.Module):
        raise AttentionError(f"model: expected a torch.nn.Module built from qkv modules, got {type(model).__name__}")
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, MultiHeadAttention)]
    if not found:
        if hasattr(getattr(model, "config", None), "_attn_implementation"):  # a transformers model
            raise ModelError(_transformers_model(type(model).__name__, what))
        raise AttentionError(
            f"model: this {type(model).__name__} contains no qkv.nn.MultiHeadAttention; "
            f"{what} sees only qkv's attention modules"
        )
    return found


def _transformers_model(name: str, what: str) -> str:
    """What a transformers model that qkv.interpret cannot read (as it is) is told."""
    if what in ("record", "head_importance"):
        return (
            f"model: {name} is a transformers model; {what} reads one after import qkv.hf (pip install "
            "transformers), loaded with attn_implementation='qkv' (or model.set_attn_implementation('qkv'))"
        )
    return (
        f"model: {name} is a transformers model; {what} needs qkv.nn.MultiHeadAttention modules (their "
        "head_mask and head pruning), which transformers models do not have; record(model) reads its "
        "attention weights after import qkv.hf"
    )


def int_list(name: str, value: object) -> list[int]:
    """A list of ints from a list, tuple, range or 1-D integer tensor."""
    if isinstance(value, Tensor):
        if value.dim() != 1 or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise AttentionError(
                f"{name}: expected a 1-D integer tensor, got dtype {value.dtype} and {value.dim()} dims"
            )
        return [int(x) for x in value.tolist()]
    if isinstance(value, (Sequence, range)) and not isinstance(value, (str, bytes)):
        items = list(value)
        if all(isinstance(x, int) and not isinstance(x, bool) for x in items):
            return items
    raise AttentionError(f"{name}: expected a list of ints (or a 1-D integer tensor), got {value!r}")
