"""Head importance (Michel et al., 2019) and pruning the least important heads."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from qkv.errors import AttentionError
from qkv.interpret import sources
from qkv.interpret._common import attention_modules
from qkv.nn.attention import MultiHeadAttention
from qkv.nn.pruning import prune_heads


def head_importance(
    model: nn.Module,
    loss_fn: Callable[[object], Tensor],
    batches: Iterable[object],
    *,
    normalize: bool = False,
) -> Tensor:
    """Importance of every attention head: ``I_h = E_x |∂L(x)/∂ξ_h|`` (Michel et al., 2019).

    ``ξ_h`` is a mask multiplying head ``h``'s output (the ``head_mask`` of
    `qkv.nn.MultiHeadAttention`), held at 1: the importance is how fast the loss
    would change if the head were scaled down. For each item of ``batches``,
    ``loss_fn(batch)`` must run ``model`` and return a scalar loss; each example
    gets its own mask (``(B, H)``), so with a loss that is the *mean* over the
    batch's examples the result is the per-example expectation of the paper.
    Only the masks are differentiated: the parameters' ``.grad`` stay untouched.

    Args:
        model: a module containing `qkv.nn.MultiHeadAttention` layers.
        loss_fn: ``batch -> scalar loss`` (do not run it under ``torch.no_grad()``).
        batches: the data to average over (e.g. ``[x]`` for one batch).
        normalize: divide each layer's scores by their L2 norm, as the paper does
            before ranking heads across layers.

    Returns:
        ``(L, H)`` float32: row ``l`` is the ``l``-th attention module in
        ``model.modules()`` order (`qkv.nn.prune_heads` numbering), column ``h``
        the **original** head index; heads already pruned (and columns past a
        layer's head count) are NaN.

    >>> import torch
    >>> from qkv.nn import EncoderConfig, TransformerEncoder
    >>> from qkv.interpret import head_importance
    >>> cfg = EncoderConfig.bert(vocab_size=50, embed_dim=32, num_layers=2, num_heads=4, ffn_dim=64)
    >>> model = TransformerEncoder(cfg).eval()
    >>> ids = torch.randint(0, 50, (3, 6))
    >>> scores = head_importance(model, lambda x: model(x).pow(2).mean(), [ids])
    >>> scores.shape, bool((scores >= 0).all())
    (torch.Size([2, 4]), True)
    """
    masks: dict[tuple[int, int], Tensor] = {}  # (layer, batch size) -> ξ (B, H), held at 1
    source = sources.source_of(model)
    heads = _QkvHeads(model, masks) if source is None else _SourceHeads(source, model, masks)
    if not callable(loss_fn):
        raise AttentionError(f"loss_fn: expected a function batch -> scalar loss, got {type(loss_fn).__name__}")
    totals: dict[int, Tensor] = {}  # layer -> Σ |∂L/∂ξ| per original head
    count = 0
    heads.install()
    try:
        for batch in batches:
            masks.clear()
            loss = loss_fn(batch)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                given = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
                raise AttentionError(f"loss_fn: expected a scalar loss tensor, got {given}; reduce it with .mean()")
            if not masks:
                raise AttentionError("loss_fn: it did not run any attention layer of model; call model inside loss_fn")
            if not loss.requires_grad:
                raise AttentionError(
                    "loss_fn: the loss does not depend on the head masks (it has no gradient); "
                    "do not run the model under torch.no_grad() or torch.inference_mode()"
                )
            keys = list(masks)
            grads = torch.autograd.grad(loss.reshape(()), [masks[k] for k in keys], allow_unused=True)
            for (index, _), grad in zip(keys, grads):
                if grad is not None:
                    ids = torch.tensor(heads.head_ids(index))  # current head -> original head
                    per_head = grad.detach().abs().sum(0).to("cpu", torch.float64)  # (B, H) -> (H,)
                    total = totals.setdefault(index, torch.zeros(heads.width(index), dtype=torch.float64))
                    total.index_add_(0, ids, per_head)
            count += 1
    finally:
        heads.remove()
    if count == 0:
        raise AttentionError("batches: empty; pass at least one batch, e.g. [x]")
    layers = heads.num_layers
    scores = torch.full((layers, max([heads.width(i) for i in range(layers)] + [0])), math.nan, dtype=torch.float64)
    for index in range(layers):
        alive = torch.zeros(scores.shape[1], dtype=torch.bool)
        alive[heads.head_ids(index)] = True
        if index in totals:
            scores[index, alive] = (totals[index] / count)[alive[: heads.width(index)]]
        else:  # the layer ran, but the loss does not depend on it
            scores[index, alive] = 0.0
        if normalize:
            norm = scores[index, alive].norm()
            if norm > 0:
                scores[index] = scores[index] / norm
    return scores.to(torch.float32)


def _held_at_one(masks: dict[tuple[int, int], Tensor], index: int, b: int, h: int, device: torch.device) -> Tensor:
    """Layer ``index``'s head mask ξ ``(B, H)`` for a batch of ``b``: ones to differentiate, made on first use."""
    xi = masks.get((index, b))
    if xi is None:
        xi = torch.ones(b, h, device=device, requires_grad=True)  # (B, H)
        masks[(index, b)] = xi
    return xi


class _QkvHeads:
    """The head masks of qkv's own modules: their ``head_mask`` argument, given by a pre-hook."""

    def __init__(self, model: nn.Module, masks: dict[tuple[int, int], Tensor]) -> None:
        self.modules = [m for _, m in attention_modules(model, what="head_importance")]
        self.num_layers = len(self.modules)
        self._masks = masks
        self._handles: list[Any] = []

    def width(self, index: int) -> int:
        """The layer's original head count (pruned heads included)."""
        module = self.modules[index]
        return module.num_heads + len(module.pruned_heads)

    def head_ids(self, index: int) -> list[int]:
        return list(self.modules[index].head_ids)

    def install(self) -> None:
        for index, module in enumerate(self.modules):
            self._handles.append(module.register_forward_pre_hook(self._hook_for(index, module), with_kwargs=True))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _hook_for(self, index: int, module: MultiHeadAttention):  # noqa: ANN202 - closure over the layer
        def pre_hook(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if module.num_heads == 0:
                return args, kwargs
            query = args[0] if args else kwargs.get("query")
            if not isinstance(query, Tensor) or query.dim() != 3:
                return args, kwargs  # the module reports the bad input itself
            xi = _held_at_one(self._masks, index, query.shape[0], module.num_heads, query.device)
            given = kwargs.get("head_mask")
            kwargs = dict(kwargs, head_mask=xi if given is None else xi * given)  # (B, H) * ((H,) | (B, H))
            return args, kwargs

        return pre_hook


class _SourceHeads:
    """The head masks of a registered kind of model (a transformers model after ``import qkv.hf``): its
    attention layers multiply each head's output by ξ, whose width they tell on their first call."""

    def __init__(self, source: sources.Source, model: nn.Module, masks: dict[tuple[int, int], Tensor]) -> None:
        if source.scale_heads is None:
            raise source.error(f"head_importance: {source.name} models cannot scale their heads' outputs here")
        self._scale = source.scale_heads
        self.modules = [m for _, m in source.modules(model)]
        self.num_layers = len(self.modules)
        self._masks = masks
        self._widths: dict[int, int] = {}

    def width(self, index: int) -> int:
        return self._widths.get(index, 0)

    def head_ids(self, index: int) -> list[int]:
        return list(range(self.width(index)))

    def install(self) -> None:
        for index, module in enumerate(self.modules):
            self._scale(module, self._scales_for(index))

    def remove(self) -> None:
        for module in self.modules:
            self._scale(module, None)

    def _scales_for(self, index: int):  # noqa: ANN202 - closure over the layer
        def scales(b: int, h: int, device: torch.device) -> Tensor:
            self._widths[index] = h
            return _held_at_one(self._masks, index, b, h, device)

        return scales


def rank_heads(importance: Tensor) -> list[tuple[int, int]]:
    """``(layer, head)`` pairs from least to most important, skipping NaN (pruned) entries.

    >>> import torch
    >>> from qkv.interpret import rank_heads
    >>> rank_heads(torch.tensor([[0.5, 0.1], [float("nan"), 0.3]]))
    [(0, 1), (1, 1), (0, 0)]
    """
    if not isinstance(importance, Tensor) or importance.dim() != 2 or not importance.is_floating_point():
        given = tuple(importance.shape) if isinstance(importance, Tensor) else type(importance).__name__
        raise AttentionError(f"importance: expected a float tensor (L, H) from head_importance, got {given}")
    flat = importance.detach().flatten().cpu()  # (L, H) -> (L·H,)
    order = torch.argsort(flat, stable=True).tolist()
    width = importance.shape[1]
    return [(i // width, i % width) for i in order if not math.isnan(flat[i].item())]


def prune_least_important(model: nn.Module, importance: Tensor, count: int) -> dict[int, list[int]]:
    """Prune the ``count`` least important heads (by `rank_heads`) with `qkv.nn.prune_heads`.

    ``importance`` is `head_importance`'s ``(L, H)`` (normalize it to rank across
    layers as Michel et al. do). Modifies ``model`` in place and returns what was
    pruned, ``{layer: [original heads]}``. A layer may lose all its heads; it then
    adds only its output projection's bias.

    >>> import torch
    >>> from qkv.nn import EncoderConfig, TransformerEncoder
    >>> from qkv.interpret import head_importance, prune_least_important
    >>> cfg = EncoderConfig.bert(vocab_size=50, embed_dim=32, num_layers=2, num_heads=4, ffn_dim=64)
    >>> model = TransformerEncoder(cfg).eval()
    >>> ids = torch.randint(0, 50, (3, 6))
    >>> scores = head_importance(model, lambda x: model(x).pow(2).mean(), [ids], normalize=True)
    >>> pruned = prune_least_important(model, scores, 3)
    >>> sum(len(h) for h in pruned.values()), sum(layer.self_attn.num_heads for layer in model.layers)
    (3, 5)
    """
    modules = attention_modules(model, what="prune_least_important")
    ranked = rank_heads(importance)
    if importance.shape[0] != len(modules):
        raise AttentionError(
            f"importance: {importance.shape[0]} layers, but model has {len(modules)} attention layers; "
            "compute it with head_importance(model, ...)"
        )
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= len(ranked):
        raise AttentionError(f"count: expected an integer in [0, {len(ranked)}] (the heads left), got {count!r}")
    plan: dict[int, list[int]] = {}
    for layer, head in ranked[:count]:
        plan.setdefault(layer, []).append(head)
    plan = {layer: sorted(heads) for layer, heads in sorted(plan.items())}
    prune_heads(model, plan)
    return plan


__all__ = ["head_importance", "prune_least_important", "rank_heads"]
