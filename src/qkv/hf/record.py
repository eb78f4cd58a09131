"""`record`: the exact attention probabilities of a transformers model running on ``"qkv"``, only what is asked.

``with record(model, layers=..., heads=..., rows=...) as rec: model(...)`` fills ``rec.weights``,
as `qkv.interpret.record` does for qkv's own modules: it is that function, and its `Recording`,
for transformers models (``import qkv.hf`` registers `SOURCE` with `qkv.interpret.sources`, so
``qkv.interpret.record(model)`` reads them too). The probabilities come from the pass itself
(its log-sum-exp), and only the chosen layers, heads and query rows are computed, so a long
document's weights for two heads and one row cost ``2 · Nk`` numbers per layer, not ``H · N²``.
``keep="calls"`` (through `qkv.interpret.record`) keeps each call's weight function instead
(`TransformersCall`), to compute any rows later, a block at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from qkv.hf._transformers import ModelError
from qkv.interpret.calls import AttentionCall
from qkv.interpret.record import Recording
from qkv.interpret.record import record as _record
from qkv.interpret.sources import HeadScales, Observe, Source
from qkv.interpret.tokenizer import id_list

Observer = Callable[[nn.Module, Callable[[Tensor | None, Tensor | None], Tensor]], None]
"""``observer(module, weights)``: ``weights(heads, rows)`` gives that call's probabilities ``(B, H', R, Nk)``."""

# id(attention module) -> {key: observer}: what the attention function reports to.
_OBSERVERS: dict[int, dict[int, Observer]] = {}


def observers(module: nn.Module) -> list[Observer]:
    """The recordings watching ``module`` now (empty almost always: then nothing extra is computed)."""
    return list(_OBSERVERS.get(id(module), {}).values())


# id(attention module) -> the (B, H) factors its head outputs are multiplied by (`qkv.interpret.head_importance`).
_HEAD_SCALES: dict[int, HeadScales] = {}


def head_scales(module: nn.Module) -> HeadScales | None:
    """What multiplies ``module``'s head outputs now, if anything (`qkv.interpret.head_importance` sets it)."""
    return _HEAD_SCALES.get(id(module))


def _scale_heads(module: nn.Module, scales: HeadScales | None) -> None:
    if scales is None:
        _HEAD_SCALES.pop(id(module), None)
    else:
        _HEAD_SCALES[id(module)] = scales


def _recorded_classes(model: nn.Module) -> tuple[type[nn.Module], ...]:
    """The attention classes the model's transformers output capture names (``_can_record_outputs``)."""
    classes: list[type[nn.Module]] = []
    names: list[str] = []
    for sub in model.modules():
        spec = getattr(type(sub), "_can_record_outputs", None) or {}
        for key in ("attentions", "cross_attentions"):
            entries = spec.get(key)
            for entry in entries if isinstance(entries, (list, tuple)) else [entries]:
                if isinstance(entry, type):
                    classes.append(entry)
                elif entry is not None and getattr(entry, "target_class", None) is not None:
                    classes.append(entry.target_class)
                elif entry is not None and getattr(entry, "class_name", None):
                    names.append(entry.class_name)
    named = tuple({type(m) for m in model.modules() if any(type(m).__name__.endswith(n) for n in names)})
    return tuple(dict.fromkeys(classes)) + named


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's attention modules (those that call the attention function), in ``model.modules()`` order."""
    classes = _recorded_classes(model)
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if classes and isinstance(module, classes):
            found.append((name, module))
    return found


def _index_list(name: str, values: Sequence[int] | Tensor) -> list[int]:
    items = values.tolist() if isinstance(values, Tensor) else list(values)
    if not items or not all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        raise ModelError(f"record: {name} must be a non-empty list of integers, got {values!r}")
    return items


@dataclass(frozen=True, repr=False)
class TransformersCall(AttentionCall):
    """One attention call of a transformers model on ``"qkv"``: its weights on demand, as `qkv.interpret.RecordedCall`.

    ``weights(heads=..., rows=...)`` computes the chosen heads' and rows' probabilities from the
    pass's own ``q``, ``k`` and log-sum-exp; ``blocks`` streams them a block of rows at a time.
    """

    layer: int
    name: str
    causal: bool
    num_heads: int
    num_queries: int
    num_keys: int
    weights_of: Any = field(repr=False)  # (heads, rows) -> (B, H', R, Nk), what the attention function reports
    dtype: torch.dtype = torch.float32
    batch_size: int = 1

    def weights(self, *, heads: Sequence[int] | None = None, rows: Sequence[int] | Tensor | None = None) -> Tensor:
        """The exact probabilities ``(B, H', R, Nk)`` of ``heads`` (default all) and query ``rows`` (default all)."""
        head_index = None if heads is None else torch.tensor(id_list(list(heads)), dtype=torch.long)
        row_index = None if rows is None else torch.tensor(id_list(rows), dtype=torch.long)
        with torch.no_grad():
            w: Tensor = self.weights_of(head_index, row_index)
        return w.detach()


def _claims(model: object) -> bool:
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def _modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The attention modules `record` can watch; `ModelError` where the model does not run on ``"qkv"``."""
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if implementation != "qkv":
        raise ModelError(
            f"record: the model runs attn_implementation={implementation!r}; load it with "
            "attn_implementation='qkv' or call model.set_attn_implementation('qkv') after import qkv.hf"
        )
    modules = attention_modules(model)
    if not modules:
        raise ModelError(
            f"record: found no attention modules in {type(model).__name__} (its _can_record_outputs names none)"
        )
    return modules


def _query_length(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The queries an attention module's call has: its ``hidden_states (B, Nq, E)`` (-1 where it has none)."""
    hidden = args[0] if args else kwargs.get("hidden_states")
    return int(hidden.shape[1]) if isinstance(hidden, Tensor) and hidden.dim() == 3 else -1


def _watch(model: nn.Module, module: nn.Module, layer: int, name: str, observe: Observe) -> Callable[[], None]:
    """Make ``module`` report each call as a `TransformersCall` to ``observe``; return what stops it."""
    flag = getattr(module, "is_causal", None)
    causal = bool(getattr(model.config, "is_decoder", False) if flag is None else flag)
    queries = [-1]  # the running call's query count, from the module's input

    def before(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        queries[0] = _query_length(args, kwargs)

    def observer(mod: nn.Module, weights: Callable[[Tensor | None, Tensor | None], Tensor]) -> None:
        probe = weights(None, torch.tensor([0]))  # (B, H, 1, Nk): the call's batch, heads and keys, for one row
        if queries[0] < 0:  # the module's input did not say: one head's rows, (B, 1, Nq, Nk), do
            queries[0] = int(weights(torch.tensor([0]), None).shape[2])
        observe(
            TransformersCall(
                layer=layer,
                name=name,
                causal=causal,
                num_heads=int(probe.shape[1]),
                num_queries=queries[0],
                num_keys=int(probe.shape[-1]),
                weights_of=weights,
                dtype=probe.dtype,
                batch_size=int(probe.shape[0]),
            )
        )

    handle = module.register_forward_pre_hook(before, with_kwargs=True)
    watching = _OBSERVERS.setdefault(id(module), {})
    watching[id(observer)] = observer

    def stop() -> None:
        handle.remove()
        watching.pop(id(observer), None)
        if not watching and _OBSERVERS.get(id(module)) is watching:
            del _OBSERVERS[id(module)]

    return stop


SOURCE = Source(
    name="transformers", claims=_claims, modules=_modules, watch=_watch, error=ModelError, scale_heads=_scale_heads
)
"""Transformers models on ``"qkv"``, for `qkv.interpret.record`: ``import qkv.hf`` registers it."""


def record(
    model: nn.Module,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    rows: Sequence[int] | Tensor | None = None,
) -> Recording:
    """Record the exact attention probabilities of a transformers model running on ``"qkv"``.

    ``with record(model) as rec: model(**inputs)`` fills ``rec.weights`` with one
    ``(B, H, Nq, Nk)`` tensor per attention call, in the order the layers ran, computed from
    the pass itself (its log-sum-exp; no second softmax), without ``output_attentions``.
    `qkv.interpret.record` on the same model does the same (and ``keep="calls"``).

    Args:
        model: a transformers ``PreTrainedModel`` loaded or set with ``attn_implementation="qkv"``.
        layers: record only these attention modules, numbered in ``model.modules()`` order
            (negative counts from the end); `attention_modules` lists them.
        heads: record only these query heads of each recorded layer; only they are computed.
        rows: record only these query rows of each call (negative counts from the end, so
            ``rows=[-1]`` is the newest token, also in each decoding step). Memory is then
            ``O(len(heads) · len(rows) · Nk)`` per layer.

    Raises:
        ModelError: the model does not run on ``"qkv"``, has no attention modules transformers
            can name, or a selection is out of range.

    >>> import torch, qkv.hf
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                   num_attention_heads=4, num_key_value_heads=2)
    >>> model = LlamaForCausalLM._from_config(cfg, attn_implementation="qkv").eval()
    >>> with qkv.hf.record(model, layers=[-1], heads=[0, 3], rows=[-1]) as rec:
    ...     _ = model(torch.tensor([[1, 5, 7, 9, 2]]))
    >>> rec.names, tuple(rec.weights[0].shape)
    (['model.layers.1.self_attn'], (1, 2, 1, 5))
    """
    if not _claims(model):
        _modules(model)  # not a transformers model: the message says what to load
    for name, values in (("layers", layers), ("heads", heads), ("rows", rows)):
        if values is not None:
            _index_list(name, values)
    return _record(model, layers=layers, heads=heads, rows=rows)


__all__ = ["SOURCE", "Recording", "TransformersCall", "attention_modules", "record"]
