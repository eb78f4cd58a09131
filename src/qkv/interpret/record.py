"""`record`: the exact attention probabilities of every attention layer of a model, whatever backend ran it.

qkv's own modules are watched here; a transformers model on ``attn_implementation="qkv"`` through
the `qkv.interpret.sources.Source` that ``import qkv.hf`` registers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Literal

import torch
from torch import Tensor, nn

from qkv.errors import AttentionError
from qkv.interpret._common import attention_modules, int_list
from qkv.interpret.calls import AttentionCall, RecordedCall
from qkv.interpret.sources import Observe, Source, source_of
from qkv.nn.attention import MultiHeadAttention


def _watch_qkv(model: nn.Module, module: nn.Module, layer: int, name: str, observe: Observe) -> Callable[[], None]:
    """Make a `MultiHeadAttention` report each call's exact inputs as a `RecordedCall`."""
    del model

    def hook(module: MultiHeadAttention, q: Tensor, k: Tensor, **call: Any) -> None:
        """``call``: the attention call's ``mask``, ``bias``, ``causal`` and ``scale`` (`qkv.attention_weights`'s)."""
        observe(RecordedCall(layer=layer, name=name, q=q.detach(), k=k.detach(), **call))

    hooks = module._attention_hooks
    hooks[id(hook)] = hook
    return lambda: hooks.pop(id(hook), None)


QKV = Source(name="qkv", claims=lambda model: True, modules=attention_modules, watch=_watch_qkv)
"""qkv's own modules: every `qkv.nn.MultiHeadAttention` in ``model.modules()`` order."""


class Recording:
    """What `record` captured; use it as a context manager (``with record(model) as rec:``).

    The same for qkv's own modules and for a transformers model (``import qkv.hf``).

    Attributes:
        weights: one float tensor per attention call, in the order the calls ran
            (one per layer for one forward pass): ``(B, H', R, Nk)`` with
            ``H' = len(heads)`` (all the layer's heads when ``heads`` is None) and
            ``R = len(rows)`` (all ``Nq`` query rows when ``rows`` is None). Detached,
            on the model's device, float32 (float64 for a float64 model).
        layers: for each entry of ``weights``, which attention module made it: its
            index among the model's `MultiHeadAttention` modules in ``model.modules()``
            order, the numbering `qkv.nn.prune_heads` uses (a transformers model: among
            `qkv.hf.attention_modules`).
        names: for each entry, that module's qualified name (``"layers.0.self_attn"``).
        heads: the recorded heads (indices of each layer's current heads), or None for all.
        rows: the recorded query rows as given (negative ones count from the end), or None.
        keep: ``"weights"`` (the default: ``weights`` fills) or ``"calls"`` (``calls`` fills instead).
        calls: with ``keep="calls"``, one `AttentionCall` per attention call, in the order
            the calls ran (a `RecordedCall`, holding the exact inputs, for qkv's modules; a
            `qkv.hf.record.TransformersCall` for a transformers model): whose weights are
            computed only when asked (``call.weights(heads=..., rows=...)``, ``call.blocks(...)``);
            empty otherwise.
    """

    def __init__(
        self,
        model: nn.Module,
        modules: list[tuple[str, nn.Module]],
        selected: list[int],
        heads: list[int] | None,
        rows: list[int] | None,
        keep: str = "weights",
        source: Source = QKV,
    ) -> None:
        self.model = model
        self.keep = keep
        self.weights: list[Tensor] = []
        self.calls: list[AttentionCall] = []
        self.layers: list[int] = []
        self.names: list[str] = []
        self.heads = heads
        self.rows = rows
        self._modules = modules
        self._selected = selected
        self._source = source
        self._stops: list[Callable[[], None]] = []

    def __enter__(self) -> Recording:
        if self._stops:
            raise self._source.error("record: this recording is already active; leave its `with` block first")
        for index in self._selected:
            name, module = self._modules[index]
            self._stops.append(self._source.watch(self.model, module, index, name, self._observe))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for stop in self._stops:
            stop()
        self._stops = []

    def _observe(self, call: AttentionCall) -> None:
        if self.keep == "calls":
            self.calls.append(call)
        else:
            self.weights.append(call.weights(heads=self.heads, rows=self.rows))
        self.layers.append(call.layer)
        self.names.append(call.name)

    def stack(self) -> Tensor:
        """The recorded weights as one tensor ``(L, B, H', R, Nk)`` (all entries must share a shape)."""
        if not self.weights:
            raise self._source.error(
                "record: nothing was recorded; run the model inside the `with record(model)` block"
            )
        shapes = {tuple(w.shape) for w in self.weights}
        if len(shapes) > 1:
            raise self._source.error(
                f"record: the recorded weights have different shapes {sorted(shapes)}; index rec.weights instead"
            )
        return torch.stack(self.weights)  # L × (B, H', R, Nk) -> (L, B, H', R, Nk)

    def clear(self) -> None:
        """Forget what was recorded (the hooks stay while the `with` block lasts)."""
        self.weights, self.layers, self.names, self.calls = [], [], [], []

    def __len__(self) -> int:
        return len(self.calls) if self.keep == "calls" else len(self.weights)

    def __repr__(self) -> str:
        if self.keep == "calls":
            return f"Recording({len(self.calls)} calls: {self.calls[:4]}{' ...' if len(self.calls) > 4 else ''})"
        shapes = ", ".join(str(tuple(w.shape)) for w in self.weights[:4])
        more = ", ..." if len(self.weights) > 4 else ""
        return f"Recording({len(self.weights)} entries: [{shapes}{more}])"


def record(
    model: nn.Module,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    rows: Sequence[int] | Tensor | None = None,
    keep: Literal["weights", "calls"] = "weights",
) -> Recording:
    """Record the exact attention probabilities of a model built from qkv modules, or of a transformers model.

    ``with record(model) as rec: model(...)`` fills ``rec.weights`` with one
    ``(B, H, Nq, Nk)`` tensor per attention layer, in the order the layers ran.
    The forward pass itself runs unchanged, on whatever backend each module
    chose (fused, blockwise, ...): the probabilities are recomputed beside it by
    `qkv.attention_weights` from the exact ``q``, ``k``, mask, bias and causal flag
    that the layer's `qkv.attention` call received (after RoPE and the KV-cache
    update), so they equal what an eager pass would have materialized. In
    training mode they are the probabilities before dropout.

    A transformers model loaded (or set) with ``attn_implementation="qkv"`` is read the
    same way once ``import qkv.hf`` has run (it registers them; `qkv.hf.record` is this
    function for them): its probabilities come from the pass's own log-sum-exp, layers are
    numbered as `qkv.hf.attention_modules` lists them, ``heads`` are query heads, and
    ``keep="calls"`` gives `qkv.hf.record.TransformersCall` objects.

    Args:
        model: any ``nn.Module`` containing `qkv.nn.MultiHeadAttention` modules
            (a `MultiHeadAttention` itself works too), or a transformers model on ``"qkv"``
            after ``import qkv.hf``.
        layers: record only these attention modules, numbered in ``model.modules()``
            order as `qkv.nn.prune_heads` numbers them (negative counts from the end).
        heads: record only these heads of each recorded layer (current indices);
            with tensor or no masks/biases only these heads are computed.
        rows: record only these query rows (negative counts from the end, so
            ``rows=[-1]`` is the newest token). Memory is then ``O(len(rows) · Nk)``
            per layer instead of ``O(Nq · Nk)``: this keeps long inputs affordable.
        keep: ``"weights"`` computes the probabilities during the pass (``rec.weights``);
            ``"calls"`` computes nothing and keeps each call's ``q``, ``k``, mask and bias
            (``rec.calls``, `RecordedCall`), ``O(H · N · D)`` per layer, so that any heads'
            and rows' weights can be computed afterwards, a block of rows at a time
            (``heads`` and ``rows`` are then passed to ``call.weights``, not here).

    Returns:
        A `Recording`; its entries have shape ``(B, len(heads), len(rows), Nk)``
        where restricted. Each call of a recorded module adds one entry (decoding
        with a KV cache adds one per step).

    Raises:
        AttentionError: a selection out of range, or a model with no qkv attention modules.
        ModelError: a transformers model before ``import qkv.hf`` (the message says so), or
            one not running on ``"qkv"``; selections out of range for a transformers model.

    >>> import torch
    >>> from qkv.interpret import record
    >>> from qkv.nn import EncoderConfig, TransformerEncoder
    >>> cfg = EncoderConfig.bert(vocab_size=50, embed_dim=32, num_layers=2, num_heads=4, ffn_dim=64)
    >>> model = TransformerEncoder(cfg).eval()
    >>> ids = torch.tensor([[1, 5, 7, 9, 2]])
    >>> with record(model) as rec:
    ...     hidden = model(ids)
    >>> [tuple(w.shape) for w in rec.weights], rec.names
    ([(1, 4, 5, 5), (1, 4, 5, 5)], ['layers.0.self_attn', 'layers.1.self_attn'])
    >>> with record(model, layers=[-1], heads=[0, 2], rows=[0]) as small:
    ...     _ = model(ids)
    >>> tuple(small.weights[0].shape), small.layers
    ((1, 2, 1, 5), [1])
    >>> torch.allclose(small.weights[0], rec.weights[1][:, [0, 2]][:, :, [0]])
    True
    >>> with record(model, layers=[-1], keep="calls") as lazy:
    ...     _ = model(ids)
    >>> lazy.weights, torch.allclose(lazy.calls[0].weights(heads=[0, 2], rows=[0]), small.weights[0])
    ([], True)

    A transformers model, after ``import qkv.hf``:

    >>> import qkv.hf
    >>> from transformers import BertConfig, BertModel
    >>> bert = BertModel._from_config(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
    ...     num_attention_heads=4, intermediate_size=64), attn_implementation="qkv").eval()
    >>> with record(bert, layers=[-1], heads=[0, 2], rows=[0]) as rec:
    ...     _ = bert(ids)
    >>> rec.names, tuple(rec.weights[0].shape)
    (['encoder.layer.1.attention.self'], (1, 2, 1, 5))
    """
    if keep not in ("weights", "calls"):
        raise AttentionError(f"keep: expected 'weights' or 'calls', got {keep!r}")
    if keep == "calls" and (heads is not None or rows is not None):
        raise AttentionError(
            "heads / rows: with keep='calls' nothing is computed during the pass; "
            "pass them to call.weights(heads=..., rows=...) or call.blocks(...) instead"
        )
    source = source_of(model) or QKV
    modules = source.modules(model)
    selected = list(range(len(modules)))
    if layers is not None:
        chosen = int_list("layers", layers)
        bad = [x for x in chosen if not -len(modules) <= x < len(modules)]
        if bad:
            raise source.error(
                f"layers: {bad} out of range; the model has {len(modules)} attention layers (0 .. {len(modules) - 1})"
            )
        selected = sorted({x % len(modules) for x in chosen})
    head_list = None if heads is None else int_list("heads", heads)
    row_list = None if rows is None else int_list("rows", rows)
    return Recording(model, modules, selected, head_list, row_list, keep, source)


__all__ = ["QKV", "Recording", "record"]
