"""Head pruning: physically remove attention heads from a `MultiHeadAttention` or a whole model."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from qkv.errors import AttentionError, ModelError
from qkv.nn.attention import MultiHeadAttention


def _keep_rows(linear: nn.Linear, index: torch.Tensor) -> None:
    """Keep only the output features ``index`` of ``linear`` (rows of its weight)."""
    w = linear.weight.detach().index_select(0, index.to(linear.weight.device)).clone()  # (out, in) -> (len, in)
    linear.weight = nn.Parameter(w, requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        bias = linear.bias.detach().index_select(0, index.to(linear.bias.device)).clone()  # (out,) -> (len,)
        linear.bias = nn.Parameter(bias, requires_grad=linear.bias.requires_grad)
    linear.out_features = len(index)


def _keep_columns(linear: nn.Linear, index: torch.Tensor) -> None:
    """Keep only the input features ``index`` of ``linear`` (columns of its weight); the bias stays."""
    w = linear.weight.detach().index_select(1, index.to(linear.weight.device)).clone()  # (out, in) -> (out, len)
    linear.weight = nn.Parameter(w, requires_grad=linear.weight.requires_grad)
    linear.in_features = len(index)


def _features(heads: list[int], head_dim: int) -> torch.Tensor:
    """The feature indices of the given (current) heads: head h owns ``h·D : (h+1)·D``."""
    if not heads:
        return torch.zeros(0, dtype=torch.long)
    index = torch.tensor(heads)[:, None] * head_dim + torch.arange(head_dim)  # (h,) -> (h, D)
    return index.flatten()  # (h, D) -> (h·D,)


def _prune_module(module: MultiHeadAttention, heads: Iterable[int]) -> MultiHeadAttention:
    heads = list(heads)
    original = module.num_heads + len(module.pruned_heads)
    for h in heads:
        if not isinstance(h, int) or isinstance(h, bool) or not 0 <= h < original:
            raise AttentionError(f"heads: head indices must be integers in [0, {original}), got {h!r}")
    drop = set(heads) - module.pruned_heads
    if not drop:
        return module
    # positions (in the current layout) of the query heads that stay
    keep_q = [i for i, h in enumerate(module.head_ids) if h not in drop]
    group = module.num_heads // module.num_kv_heads if module.kv_index is None else None
    kv_of_q = [i // group for i in range(module.num_heads)] if group else list(module.kv_index or [])
    keep_kv = sorted({kv_of_q[i] for i in keep_q})  # kv heads still read by some query head
    new_kv_of_q = [keep_kv.index(kv_of_q[i]) for i in keep_q]

    d = module.head_dim
    _keep_rows(module.q_proj, _features(keep_q, d))
    _keep_columns(module.out_proj, _features(keep_q, d))
    if len(keep_kv) != module.num_kv_heads:
        _keep_rows(module.k_proj, _features(keep_kv, d))
        _keep_rows(module.v_proj, _features(keep_kv, d))

    module.head_ids = [module.head_ids[i] for i in keep_q]
    module.kv_head_ids = [module.kv_head_ids[g] for g in keep_kv]
    module.pruned_heads = module.pruned_heads | drop
    module.num_heads, module.num_kv_heads = len(keep_q), len(keep_kv)
    # even groups in order (query head h reads kv head h // G) need no index
    even = module.num_kv_heads > 0 and module.num_heads % module.num_kv_heads == 0
    g = module.num_heads // module.num_kv_heads if even else 0
    module.kv_index = None if even and new_kv_of_q == [i // g for i in range(module.num_heads)] else new_kv_of_q
    if module.num_heads == 0:
        module.kv_index = None
    return module


def prune_heads(module: nn.Module, heads: Iterable[int] | Mapping[int, Iterable[int]]) -> nn.Module:
    """Remove attention heads for good: smaller projections, fewer ``num_heads``.

    ``prune_heads(mha, [h, ...])`` prunes query heads of one `MultiHeadAttention`;
    ``prune_heads(model, {layer: [h, ...]})`` prunes in the ``layer``-th
    `MultiHeadAttention` of ``model.modules()`` (registration order: for qkv's
    stacks, layer ``i``'s self-attention, then its cross-attention if any). Head
    indices are the **original** ones, so pruning twice is safe (as in HF's
    ``prune_heads``); `MultiHeadAttention.pruned_heads` lists them. Modifies in
    place and returns ``module``.

    What is removed: query head ``h``'s rows of ``q_proj`` (weight and bias) and
    its columns of ``out_proj`` (out_proj's bias stays). The result equals the
    unpruned module with those heads' outputs zeroed before ``out_proj``. With
    grouped-query attention a key/value head (its rows of ``k_proj``/``v_proj``)
    goes only when every query head reading it is gone; uneven groups that remain
    are handled by the module (it keeps which kv head each query head reads).
    Pruning every head leaves a module whose output is ``out_proj``'s bias.

    >>> import torch
    >>> from qkv.nn import MultiHeadAttention, prune_heads
    >>> mha = MultiHeadAttention(16, 4).eval()
    >>> x = torch.randn(2, 5, 16)
    >>> expected = mha(x, head_mask=torch.tensor([1.0, 0.0, 1.0, 0.0]))   # heads 1, 3 silenced
    >>> _ = prune_heads(mha, [1, 3])
    >>> mha.num_heads, tuple(mha.q_proj.weight.shape), tuple(mha.out_proj.weight.shape)
    (2, (8, 16), (16, 8))
    >>> torch.allclose(mha(x), expected, atol=1e-6)
    True
    """
    if isinstance(heads, Mapping):
        attns = [m for m in module.modules() if isinstance(m, MultiHeadAttention)]
        if not attns and hasattr(getattr(module, "config", None), "_attn_implementation"):
            raise ModelError(
                f"module: {type(module).__name__} is a transformers model; prune_heads removes heads of "
                "qkv.nn.MultiHeadAttention modules, which it does not have (qkv's own BERT and Llama "
                "loaders, qkv.models.load, build models it can prune)"
            )
        for layer, layer_heads in heads.items():
            if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < len(attns):
                raise AttentionError(
                    f"heads: layer index {layer!r} is out of range; the model has {len(attns)} attention layers"
                )
            _prune_module(attns[layer], layer_heads)
        return module
    if not isinstance(module, MultiHeadAttention):
        raise AttentionError(
            f"heads: a list of heads prunes one qkv.nn.MultiHeadAttention, but module is a "
            f"{type(module).__name__}; pass {{layer: [heads]}} to prune a model"
        )
    return _prune_module(module, heads)


__all__ = ["prune_heads"]
