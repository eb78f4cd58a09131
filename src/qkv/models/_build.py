"""Build a module straight onto checkpoint tensors (renamed to qkv's names), skipping the random initialization."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

from qkv.models.packages import ModelError
from qkv.positional import RotaryEmbedding

M = TypeVar("M", bound=nn.Module)


def renamed(
    tensors: dict[str, Tensor],
    names: dict[str, str],
    per_layer: dict[str, str],
    num_layers: int,
    *,
    theirs: str,
    ours: str,
    kinds: tuple[str, ...] = ("weight",),
) -> dict[str, Tensor]:
    """``tensors`` under qkv's names; a tensor that has none (a BERT pooler) is left out.

    ``names`` maps whole names; ``per_layer`` maps the modules of layer ``i``:
    ``theirs.format(i) + module + "." + kind`` becomes ``ours.format(i) + module' + "." + kind``.

    >>> sorted(renamed({"h.0.attn.weight": 0, "h.0.attn.bias": 1, "wte.weight": 2, "pooler.weight": 3},
    ...                {"wte.weight": "embeddings.tokens.weight"}, {"attn": "self_attn.q_proj"}, 1,
    ...                theirs="h.{}.", ours="layers.{}.", kinds=("weight", "bias")))
    ['embeddings.tokens.weight', 'layers.0.self_attn.q_proj.bias', 'layers.0.self_attn.q_proj.weight']
    """
    table = dict(names)
    for i in range(num_layers):
        for their_module, our_module in per_layer.items():
            for kind in kinds:
                table[f"{theirs.format(i)}{their_module}.{kind}"] = f"{ours.format(i)}{our_module}.{kind}"
    return {table[name]: t for name, t in tensors.items() if name in table}


def build_with_weights(make: Callable[[], M], state: dict[str, Tensor], *, where: str) -> M:
    """``make()`` on the meta device, then its parameters become the tensors of ``state`` (no copy).

    Randomly initializing 135M parameters only to overwrite them costs seconds;
    this costs nothing. Ties between parameters (an LM head sharing the token
    embedding) are kept; buffers computed in ``__init__`` (RoPE frequencies) are
    computed again on the CPU. The result is in eval mode.

    >>> import torch
    >>> lin = build_with_weights(lambda: torch.nn.Linear(2, 3),
    ...                          {"weight": torch.ones(3, 2), "bias": torch.zeros(3)}, where="example")
    >>> lin(torch.tensor([[1.0, 2.0]])).tolist()
    [[3.0, 3.0, 3.0]]
    """
    with torch.device("meta"):
        model = make()
    shared: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            shared.setdefault(id(p), []).append((module, name))
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelError(f"{where}: tensors do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.load_state_dict(state, assign=True)
    # assign=True gives each name its own Parameter: tie the shared ones again to the first name's.
    for owners in shared.values():
        first_module, first_name = owners[0]
        for module, name in owners[1:]:
            setattr(module, name, getattr(first_module, first_name))
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            fresh = RotaryEmbedding(module.head_dim, base=module.base, interleaved=module.interleaved)
            module.register_buffer("inv_freq", fresh.inv_freq, persistent=False)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ModelError(f"{where}: no values for {left[:3]} after loading the checkpoint")
    return model.eval()
