"""The explorer's models: each loaded once, on first use, and shared by every request.

`ModelRegistry` knows which names a request may ask for (never an arbitrary
path: only the names the server was started with), loads a model the first time
it is asked for under a per-name lock (so concurrent first requests load it
once), and runs one forward pass per model at a time: `qkv.interpret.record`
hooks the model's attention modules while a pass runs, so two passes on one
model at once would see each other's weights.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qkv.errors import AttentionError
from qkv.interpret import entropy, mean_distance, rollout
from qkv.models import PACKAGES, ModelError, ModelNotInstalledError
from qkv.nn.attention import MultiHeadAttention

__all__ = ["ExplorerError", "Limits", "ModelRegistry"]

DECIMALS = 5  # weights are sent rounded to 5 decimals (error <= 5e-6)


class ExplorerError(Exception):
    """A request the explorer refuses: ``status`` is the HTTP status, the message says what to change."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What one request may ask for.

    Attributes:
        max_body_bytes: the largest request body read (413 beyond).
        max_text_chars: the longest text for ``/api/attention`` (413 beyond).
        max_tokens: the most tokens of a text (413 beyond); a model's own context is also a limit.
        max_weights: the most attention weights (layers × heads × tokens²) in one response:
            a model with many heads gets fewer tokens (smollm2: 74, minilm: 128).
        max_waiting: model requests (and, apart, lab requests) that may wait or run at once; more get a 503.
    """

    max_body_bytes: int = 64 * 1024
    max_text_chars: int = 2000
    max_tokens: int = 128
    max_weights: int = 1_500_000
    max_waiting: int = 64

    def as_json(self) -> dict[str, int]:
        return dict(self.__dict__)


Loader = Callable[[str], Any]


def _default_loader(name: str) -> Any:
    from qkv.models import load

    return load(name)


class ModelRegistry:
    """The models a server offers: lazily loaded, shared, one forward pass per model at a time.

    Args:
        names: what requests may ask for (``"minilm"``, ``"smollm2"``, or a path the
            operator passed to ``qkv explore --model``).
        loader: ``name -> model`` with ``.attentions(text)``, ``.encode(text)``,
            ``.context_length``, ``.kind`` (`qkv.models.load` by default; tests pass a fake).
        limits: the request limits.
    """

    def __init__(self, names: Sequence[str], loader: Loader | None = None, limits: Limits | None = None) -> None:
        if not names:
            raise ValueError("names: expected at least one model name")
        self.names = list(dict.fromkeys(names))
        self.loader = loader or _default_loader
        self.limits = limits or Limits()
        self._models: dict[str, Any] = {}
        self._load_locks = {name: threading.Lock() for name in self.names}
        self._run_locks = {name: threading.Lock() for name in self.names}
        self._loads = dict.fromkeys(self.names, 0)

    # -- which models -----------------------------------------------------------------------

    def check_name(self, name: object) -> str:
        if not isinstance(name, str):
            raise ExplorerError(400, f"model: expected a string, one of {self.names}, got {type(name).__name__}")
        if name not in self._load_locks:
            raise ExplorerError(400, f"model: expected one of {self.names}, got {name!r}")
        return name

    def describe(self) -> list[dict[str, Any]]:
        """One entry per offered model: name, description, installed, loaded, and its shape once loaded."""
        out = []
        for name in self.names:
            package = PACKAGES.get(name)
            entry: dict[str, Any] = {
                "name": name,
                "description": package.description if package else name,
                "installed": package.is_installed() if package else True,
                "loaded": name in self._models,
            }
            model = self._models.get(name)
            if model is not None:
                shape = _layers_heads(model)
                entry.update(
                    kind=model.kind,
                    causal=model.kind == "llama",
                    num_layers=shape[0] if shape else None,
                    num_heads=shape[1] if shape else None,
                    max_tokens=self.max_tokens(model),
                )
            out.append(entry)
        return out

    def loads(self, name: str) -> int:
        """How many times ``name`` was loaded (1 after the first use, whatever the concurrency)."""
        return self._loads[name]

    # -- loading and running ----------------------------------------------------------------

    def get(self, name: str) -> Any:
        """The model ``name``, loaded on first use; concurrent first calls load it once."""
        name = self.check_name(name)
        model = self._models.get(name)
        if model is not None:
            return model
        with self._load_locks[name]:
            model = self._models.get(name)
            if model is None:
                try:
                    model = self.loader(name)
                except ModelNotInstalledError as error:
                    raise ExplorerError(503, str(error)) from None
                except ModelError as error:
                    raise ExplorerError(503, f"model {name!r} could not be loaded: {error}") from None
                self._loads[name] += 1
                self._models[name] = model
        return model

    def max_tokens(self, model: Any) -> int:
        """The most tokens one text may have for ``model``: the limits, its context, the weights budget."""
        limit = min(self.limits.max_tokens, int(getattr(model, "context_length", self.limits.max_tokens)))
        shape = _layers_heads(model)
        if shape:
            limit = min(limit, math.isqrt(self.limits.max_weights // (shape[0] * shape[1])))
        return limit

    def check_text(self, text: object) -> str:
        if not isinstance(text, str):
            raise ExplorerError(400, f"text: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise ExplorerError(400, "text: expected some text, e.g. 'The cat sat on the mat.', got an empty string")
        if len(text) > self.limits.max_text_chars:
            raise ExplorerError(
                413, f"text: expected at most {self.limits.max_text_chars} characters, got {len(text)}; shorten it"
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ExplorerError(400, "text: contains an unpaired UTF-16 surrogate; send valid Unicode") from None
        return text

    def attention(self, name: str, text: str) -> dict[str, Any]:
        """The ``/api/attention`` answer: tokens, weights ``L×H×N×N``, per-head metrics, rollout."""
        text = self.check_text(text)
        model = self.get(name)
        started = time.perf_counter()
        limit = self.max_tokens(model)
        try:
            ids = model.encode(text)
        except AttentionError as error:  # the text is neither empty nor odd (checked above): too long
            raise ExplorerError(
                413, f"text: too many tokens for {name}, the explorer shows at most {limit} ({error})"
            ) from None
        if len(ids) > limit:
            raise ExplorerError(
                413,
                f"text: {len(ids)} tokens for {name}, the explorer shows at most {limit} "
                f"(every layer and head of it in one answer); shorten the text",
            )
        with self._run_locks[name]:  # record() hooks the shared model: one pass at a time
            attn = model.attentions(text)
        w = attn.weights.float()  # (L, H, N, N)
        per_row_entropy = entropy(w)  # (L, H, N, N) -> (L, H, N)
        distance = mean_distance(w)  # (L, H, N, N) -> (L, H, N)
        roll = rollout(w[:, None])[0]  # (L, 1, H, N, N) -> (1, N, N) -> (N, N)
        return {
            "model": name,
            "kind": model.kind,
            "causal": bool(attn.causal),
            "text": text,
            "tokens": list(attn.tokens),
            "ids": list(attn.ids),
            "special": list(attn.special),
            "num_layers": int(w.shape[0]),
            "num_heads": int(w.shape[1]),
            "weights": _rounded(w),
            "entropy": _rounded(per_row_entropy.mean(-1)),  # (L, H): nats, mean over query rows
            "entropy_max": round(math.log(len(ids)), DECIMALS),
            "distance": _rounded(distance.mean(-1)),  # (L, H): tokens, mean over query rows
            "rollout": _rounded(roll),
            "decimals": DECIMALS,
            "max_tokens": limit,
            "seconds": round(time.perf_counter() - started, 4),
        }


def _rounded(t: Any) -> list:
    import numpy as np

    return np.round(t.detach().cpu().double().numpy(), DECIMALS).tolist()


def _layers_heads(model: Any) -> tuple[int, int] | None:
    """(attention layers, heads per layer) of a loaded model's module, or None if it has no qkv attention."""
    module = getattr(model, "model", None)
    if module is None or not hasattr(module, "modules"):
        return None
    heads = [m.num_heads for m in module.modules() if isinstance(m, MultiHeadAttention)]
    if not heads:
        return None
    return len(heads), max(heads)
