"""Where `qkv.interpret.record` finds a model's attention layers and how it watches them.

qkv's own modules (`qkv.nn.MultiHeadAttention`) are known here. A kind of model that a
higher layer knows registers a `Source` for it: ``import qkv.hf`` registers transformers
models running on ``attn_implementation="qkv"``, so that ``record(model)`` reads them too,
without this layer importing that one.

>>> from qkv.interpret import sources
>>> sources.source_of(object()) is None                 # no registered kind claims it: qkv's own modules
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qkv.errors import AttentionError
from qkv.interpret.calls import AttentionCall

Observe = Callable[[AttentionCall], None]
"""What a watched layer reports each call to: ``observe(call)``."""

HeadScales = Callable[[int, int, torch.device], Tensor]
"""``scales(batch, heads, device)``: the ``(B, H)`` factors a layer's head outputs are multiplied by."""


@dataclass(frozen=True)
class Source:
    """A kind of model whose attention `record` can watch.

    Attributes:
        name: what the kind is called in messages (``"transformers"``).
        claims: ``claims(model)``: whether ``model`` is of this kind.
        modules: ``modules(model)``: its attention modules ``[(name, module), ...]`` in the
            numbering ``record(layers=...)`` uses; raises ``error`` where the model cannot be recorded.
        watch: ``watch(model, module, layer, name, observe)`` makes ``module`` report each of its
            calls as an `AttentionCall` to ``observe``; returns the function that stops it.
        error: the exception class of the messages about this kind of model.
        scale_heads: ``scale_heads(module, scales)`` makes ``module`` multiply each query head's
            output by ``scales(batch, heads, device)`` (a ``(B, H)`` tensor, asked on every call),
            or stops that when ``scales`` is None: the head mask `head_importance` differentiates.
            None where the kind cannot (`head_importance` then refuses it).
    """

    name: str
    claims: Callable[[object], bool]
    modules: Callable[[nn.Module], list[tuple[str, nn.Module]]]
    watch: Callable[[nn.Module, nn.Module, int, str, Observe], Callable[[], None]]
    error: type[AttentionError] = AttentionError
    scale_heads: Callable[[nn.Module, HeadScales | None], None] | None = None


_SOURCES: dict[str, Source] = {}


def register(source: Source) -> None:
    """Make `record` read models ``source`` claims (again under the same name: replaced)."""
    _SOURCES[source.name] = source


def source_of(model: object) -> Source | None:
    """The registered source that claims ``model``, or None (then it is read as qkv modules)."""
    return next((s for s in _SOURCES.values() if s.claims(model)), None)


__all__ = ["HeadScales", "Observe", "Source", "register", "source_of"]
