"""`record`: the exact attention probabilities of a transformers model running on ``"qkv"``, only what is asked.

Like `qkv.interpret.record` for qkv's own modules: ``with record(model, layers=..., heads=...,
rows=...) as rec: model(...)`` fills ``rec.weights``. The probabilities come from the pass
itself (its log-sum-exp), and only the chosen layers, heads and query rows are computed, so a
long document's weights for two heads and one row cost ``2 · Nk`` numbers per layer, not
``H · N²``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

import torch
from torch import Tensor, nn

from qkv.hf._transformers import ModelError

Observer = Callable[[nn.Module, Callable[[Tensor | None, Tensor | None], Tensor]], None]
"""``observer(module, weights)``: ``weights(heads, rows)`` gives that call's probabilities ``(B, H', R, Nk)``."""

# id(attention module) -> {id(recording): observer}: what the attention function reports to.
_OBSERVERS: dict[int, dict[int, Observer]] = {}


def observers(module: nn.Module) -> list[Observer]:
    """The recordings watching ``module`` now (empty almost always: then nothing extra is computed)."""
    return list(_OBSERVERS.get(id(module), {}).values())


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


class Recording:
    """What `record` captured; a context manager (``with record(model) as rec:``).

    Attributes:
        weights: one float tensor per attention call, in the order the calls ran (one per
            layer for one forward pass, one more per layer for each decoding step):
            ``(B, H', R, Nk)``, ``H' = len(heads)`` and ``R = len(rows)`` where restricted.
            Detached, on the model's device, float32 (float64 for a float64 model).
        layers: for each entry, its attention module's index among `attention_modules`.
        names: for each entry, that module's qualified name (``"model.layers.0.self_attn"``).
        heads: the recorded query heads, or None for all.
        rows: the recorded query rows as given (negative ones count from the end), or None.
    """

    def __init__(
        self,
        modules: list[tuple[str, nn.Module]],
        selected: list[int],
        heads: list[int] | None,
        rows: list[int] | None,
    ) -> None:
        self.weights: list[Tensor] = []
        self.layers: list[int] = []
        self.names: list[str] = []
        self.heads = heads
        self.rows = rows
        self._modules = modules
        self._selected = selected
        self._attached: list[int] = []

    def __enter__(self) -> Self:
        if self._attached:
            raise ModelError("record: this recording is already active; leave its `with` block first")
        for index in self._selected:
            name, module = self._modules[index]
            _OBSERVERS.setdefault(id(module), {})[id(self)] = self._observer(index, name)
            self._attached.append(id(module))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for key in self._attached:
            watching = _OBSERVERS.get(key, {})
            watching.pop(id(self), None)
            if not watching:
                _OBSERVERS.pop(key, None)
        self._attached = []

    def _observer(self, index: int, name: str) -> Observer:
        def observe(module: nn.Module, weights: Callable[[Tensor | None, Tensor | None], Tensor]) -> None:
            del module
            self.weights.append(weights(*self._selection()).detach())
            self.layers.append(index)
            self.names.append(name)

        return observe

    def _selection(self) -> tuple[Tensor | None, Tensor | None]:
        heads = None if self.heads is None else torch.tensor(self.heads, dtype=torch.long)
        rows = None if self.rows is None else torch.tensor(self.rows, dtype=torch.long)
        return heads, rows

    def stack(self) -> Tensor:
        """The recorded weights as one tensor ``(L, B, H', R, Nk)`` (all entries must share a shape)."""
        if not self.weights:
            raise ModelError("record: nothing was recorded; run the model inside the `with record(model)` block")
        shapes = {tuple(w.shape) for w in self.weights}
        if len(shapes) > 1:
            raise ModelError(f"record: the recorded weights have different shapes {sorted(shapes)}; index rec.weights")
        return torch.stack(self.weights)  # L × (B, H', R, Nk) -> (L, B, H', R, Nk)

    def clear(self) -> None:
        """Forget what was recorded (the recording stays active while the `with` block lasts)."""
        self.weights, self.layers, self.names = [], [], []

    def __len__(self) -> int:
        return len(self.weights)

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(w.shape)) for w in self.weights[:4])
        more = ", ..." if len(self.weights) > 4 else ""
        return f"Recording({len(self.weights)} entries: [{shapes}{more}])"


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
    selected = list(range(len(modules)))
    if layers is not None:
        chosen = _index_list("layers", layers)
        bad = [x for x in chosen if not -len(modules) <= x < len(modules)]
        if bad:
            raise ModelError(
                f"record: layers {bad} out of range; the model has {len(modules)} attention modules "
                f"(0 .. {len(modules) - 1})"
            )
        selected = sorted({x % len(modules) for x in chosen})
    head_list = None if heads is None else _index_list("heads", heads)
    row_list = None if rows is None else _index_list("rows", rows)
    return Recording(modules, selected, head_list, row_list)


__all__ = ["Recording", "attention_modules", "record"]
