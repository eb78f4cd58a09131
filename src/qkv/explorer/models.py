"""The explorer's models: each loaded once, on first use, and shared by every request.

`ModelRegistry` knows which names a request may ask for (never an arbitrary
path: only the names the server was started with), loads a model the first time
it is asked for under a per-name lock (so concurrent first requests load it
once), and runs one forward pass per model at a time: `qkv.interpret.record`
hooks the model's attention modules while a pass runs, so two passes on one
model at once would see each other's weights.

An answer holds every layer's weights when they fit `Limits.max_weights`, else
one layer's (the page then asks for the others one at a time); the per-head
metrics, the rollout and the start head are always computed over all layers. The
last few texts' weights are kept (`CACHE_TEXTS`), so asking for another layer of
the same text costs no second forward pass.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qkv.errors import AttentionError
from qkv.interpret import entropy, mean_distance, rollout
from qkv.loader import implementation
from qkv.models import PACKAGES, ModelError, ModelNotInstalledError
from qkv.nn.attention import MultiHeadAttention

__all__ = ["ExplorerError", "Limits", "ModelRegistry", "start_head"]

DECIMALS = 5  # weights are sent rounded to 5 decimals (error <= 5e-6)
CACHE_TEXTS = 4  # texts whose weights are kept (SmolLM2 at 128 tokens: 18 MB each)
NEIGHBOUR_SHARE = 0.3  # a start head must give its neighbour more than this share of its weight


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
        max_weights: the most attention weights (layers × heads × tokens²) sent at once: an answer
            that would hold more carries one layer's weights (``layers_sent``), never a refusal.
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
    from qkv.loader import load  # qkv's own implementation, else transformers' on qkv attention

    return load(name)


class ModelRegistry:
    """The models a server offers: lazily loaded, shared, one forward pass per model at a time.

    Args:
        names: what requests may ask for (``"minilm"``, ``"smollm2"``, or a path the
            operator passed to ``qkv explore --model``).
        loader: ``name -> model`` with ``.attentions(text)``, ``.encode(text)``,
            ``.context_length``, ``.kind`` (`qkv.loader.load` by default: qkv's own models, and any
            transformers model folder through `qkv.hf.loaded`; tests pass a fake).
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
        self._cache: OrderedDict[tuple[str, str], _Computed] = OrderedDict()
        self._cache_lock = threading.Lock()

    # -- which models -----------------------------------------------------------------------

    def check_name(self, name: object) -> str:
        if not isinstance(name, str):
            raise ExplorerError(400, f"model: expected a string, one of {self.names}, got {type(name).__name__}")
        if name not in self._load_locks:
            raise ExplorerError(400, f"model: expected one of {self.names}, got {name!r}")
        return name

    def run_lock(self, name: object) -> threading.Lock:
        """The lock a forward pass of model ``name`` holds (recording hooks the shared model: one pass at a time)."""
        return self._run_locks[self.check_name(name)]

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
                    implementation=implementation(model),
                    causal=bool(getattr(model, "causal", model.kind == "llama")),
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
        """The most tokens one text may have for ``model``: the limits and its context (the weights
        budget decides how many layers one answer carries, not how long the text may be)."""
        return min(self.limits.max_tokens, int(getattr(model, "context_length", self.limits.max_tokens)))

    @staticmethod
    def check_layer(layer: object, num_layers: int | None = None, name: str = "") -> int:
        """``layer`` as an int in ``[0, num_layers)`` (any int when ``num_layers`` is not known yet), else a 400."""
        if isinstance(layer, bool) or not isinstance(layer, int):
            what = "true or false" if isinstance(layer, bool) else type(layer).__name__
            expected = f"from 0 to {num_layers - 1}" if num_layers else "(a layer index)"
            raise ExplorerError(400, f"layer: expected an integer {expected}, got {what}")
        if layer < 0 or (num_layers is not None and layer >= num_layers):
            span = f"from 0 to {num_layers - 1} ({name} has {num_layers} layers)" if num_layers else "from 0"
            raise ExplorerError(400, f"layer: expected an integer {span}, got {layer}")
        return layer

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

    def attention(self, name: str, text: str, layer: int | None = None) -> dict[str, Any]:
        """The ``/api/attention`` answer: tokens, weights, per-head metrics, rollout, a head to start at.

        ``weights`` is ``L×H×N×N`` when all of it fits `Limits.max_weights`; otherwise, and whenever
        ``layer`` is given, it is ``1×H×N×N``: the weights of ``layer`` (default the first layer).
        ``layers_sent`` names the layers it holds. ``entropy`` and ``distance`` (``L×H``), ``rollout``
        (``N×N``) and ``start`` are computed over all layers either way.
        """
        text = self.check_text(text)
        model = self.get(name)
        started = time.perf_counter()
        shape = _layers_heads(model)
        if layer is not None:
            layer = self.check_layer(layer, shape[0] if shape else None, name)
        computed = self._computed(name, model, text)
        num_layers, num_heads, n = computed.weights.shape[:3]
        if layer is not None:
            layer = self.check_layer(layer, num_layers, name)  # the shape is known for sure only now
            sent = [layer]
        elif num_layers * num_heads * n * n <= self.limits.max_weights:
            sent = list(range(num_layers))
        else:
            sent = [0]
        w = computed.weights if len(sent) == num_layers else computed.weights[sent[0]][None]  # (len(sent), H, N, N)
        return {
            **computed.answer,
            "weights": _rounded(w),
            "layers_sent": sent,
            "seconds": round(time.perf_counter() - started, 4),
        }

    def _computed(self, name: str, model: Any, text: str) -> _Computed:
        """``text``'s weights and all-layer numbers for ``name``: from the cache, else one forward pass."""
        key = (name, text)
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        limit = self.max_tokens(model)
        try:
            ids = model.encode(text)
        except AttentionError as error:  # the text is neither empty nor odd (checked above): too long
            raise ExplorerError(
                413, f"text: too many tokens for {name}, the explorer shows at most {limit} ({error})"
            ) from None
        if len(ids) > limit:
            raise ExplorerError(
                413, f"text: {len(ids)} tokens for {name}, the explorer shows at most {limit}; shorten the text"
            )
        with self._run_locks[name]:  # record() hooks the shared model: one pass at a time
            with self._cache_lock:  # a request for the same text may have computed it while this one waited
                hit = self._cache.get(key)
            if hit is not None:
                return hit
            attn = model.attentions(text)
        w = attn.weights.float()  # (L, H, N, N)
        per_row_entropy = entropy(w)  # (L, H, N, N) -> (L, H, N)
        distance = mean_distance(w)  # (L, H, N, N) -> (L, H, N)
        roll = rollout(w[:, None])[0]  # (L, 1, H, N, N) -> (1, N, N) -> (N, N)
        answer = {
            "model": name,
            "kind": model.kind,
            "causal": bool(attn.causal),
            "text": text,
            "tokens": list(attn.tokens),
            "ids": list(attn.ids),
            "special": list(attn.special),
            "num_layers": int(w.shape[0]),
            "num_heads": int(w.shape[1]),
            "entropy": _rounded(per_row_entropy.mean(-1)),  # (L, H): nats, mean over query rows
            "entropy_max": round(math.log(len(attn.tokens)), DECIMALS),
            "distance": _rounded(distance.mean(-1)),  # (L, H): tokens, mean over query rows
            "rollout": _rounded(roll),
            "start": start_head(w, list(attn.special)),
            "decimals": DECIMALS,
            "max_tokens": limit,
        }
        computed = _Computed(w, answer)
        with self._cache_lock:
            self._cache[key] = computed
            while len(self._cache) > CACHE_TEXTS:
                self._cache.popitem(last=False)
        return computed


@dataclass(frozen=True)
class _Computed:
    """One text's weights ``(L, H, N, N)`` and the answer's fields that do not depend on the layer asked for."""

    weights: Any
    answer: dict[str, Any]


def start_head(weights: Any, special: Sequence[bool]) -> dict[str, Any]:
    """A readable head to start at: the one that most clearly reads a neighbour (the previous or next token).

    Over all layers and heads of ``weights`` ``(L, H, N, N)``, the mean weight query ``i`` gives key
    ``i - 1`` (or ``i + 1``), over the positions where neither token is special. The best head is
    chosen if that share exceeds `NEIGHBOUR_SHARE`; otherwise the first head of the first layer, and
    the reason says why. Returns ``{"layer", "head", "neighbour": "previous"|"next"|None, "share", "reason"}``.

    >>> import torch
    >>> w = torch.full((2, 3, 5, 5), 0.2)  # (L, H, N, N): every head spreads evenly
    >>> w[1, 2] = torch.eye(5).roll(-1, dims=0) * 0.9 + 0.02  # layer 1, head 2 reads the next token
    >>> pick = start_head(w, [False] * 5)
    >>> pick["layer"], pick["head"], pick["neighbour"], pick["share"]
    (1, 2, 'next', 0.92)
    """
    import torch

    w = torch.as_tensor(weights, dtype=torch.float64)
    plain = ~torch.as_tensor(list(special), dtype=torch.bool)  # (N,)
    fallback = {"layer": 0, "head": 0, "neighbour": None, "share": None}
    if int(plain.sum()) < 3:
        return {
            **fallback,
            "reason": "The text has fewer than three ordinary tokens, so the view starts at layer 0, head 0.",
        }
    pairs = (plain[1:] & plain[:-1]).double()  # (N-1,): token i and i+1 both ordinary
    count = pairs.sum().clamp(min=1)
    previous = torch.diagonal(w, offset=-1, dim1=-2, dim2=-1)  # (L, H, N-1): w[l, h, i+1, i]
    following = torch.diagonal(w, offset=1, dim1=-2, dim2=-1)  # (L, H, N-1): w[l, h, i, i+1]
    shares = torch.stack([previous, following], -1)  # (L, H, N-1, 2)
    shares = (shares * pairs[:, None]).sum(-2) / count  # (L, H, N-1, 2) -> (L, H, 2)
    best = int(torch.argmax(shares.flatten()))  # the first of equal maxima, in layer, head, side order
    layer, head, side = best // (shares.shape[1] * 2), best // 2 % shares.shape[1], best % 2
    share = float(shares[layer, head, side])
    if share <= NEIGHBOUR_SHARE:
        return {
            **fallback,
            "reason": f"No head gives the previous or next token more than "
            f"{round(100 * NEIGHBOUR_SHARE)}% of its weight in this text, so the view starts at layer 0, head 0.",
        }
    name = ("previous", "next")[side]
    return {
        "layer": layer,
        "head": head,
        "neighbour": name,
        "share": round(share, DECIMALS),
        "reason": f"Started at layer {layer}, head {head}: of all {w.shape[0] * w.shape[1]} heads, it gives the "
        f"{name} token the largest share of its weight, {round(100 * share)}% on average.",
    }


def _rounded(t: Any) -> list:
    import numpy as np

    return np.round(t.detach().cpu().double().numpy(), DECIMALS).tolist()


def _layers_heads(model: Any) -> tuple[int, int] | None:
    """(attention layers, heads per layer) of a loaded model's module, or None if it has no qkv attention."""
    shape = getattr(model, "attention_shape", None)  # a transformers model (`qkv.hf.loaded`) tells it
    if shape is not None:
        return int(shape[0]), int(shape[1])
    module = getattr(model, "model", None)
    if module is None or not hasattr(module, "modules"):
        return None
    heads = [m.num_heads for m in module.modules() if isinstance(m, MultiHeadAttention)]
    if not heads:
        return None
    return len(heads), max(heads)
