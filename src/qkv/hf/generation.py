"""Decoding a transformers causal LM token by token on qkv attention: the steps `TransformersModel.stream` shows.

transformers' ``generate`` runs its whole loop before it returns; a command that prints
the text as it comes needs the tokens one at a time. `token_steps` is that loop, written
with the model's own cache (``DynamicCache``, sliding-window layers included) and
transformers' own logit warpers (temperature, then top-k, then top-p, as ``generate``
applies them)::

    cache = DynamicCache(config=model.config)
    logits = model(prompt, cache=cache).logits[:, -1]    # prefill: (B, N) at once
    repeat: token = pick(logits); yield token                       # (B,)
            logits = model(token[:, None], cache=cache).logits[:, -1]

Greedy (``temperature=0``, the default) gives the ids of ``model.generate(do_sample=False)``.
The model's ``generation_config`` (a checkpoint's own sampling defaults) is not read:
what is asked is what runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from qkv import checks
from qkv.hf._transformers import ModelError

__all__ = ["token_steps"]


def _warpers(temperature: float, top_k: int | None, top_p: float | None) -> list:
    """transformers' logit warpers for the sampling asked; `ModelError` naming a value out of range."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    checks.sampling(temperature, top_k, top_p, error=ModelError)
    if temperature == 0:
        return []
    warpers: list = [TemperatureLogitsWarper(float(temperature))]
    if top_k is not None:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1:
        warpers.append(TopPLogitsWarper(float(top_p)))
    return warpers


def _cache_argument(model: nn.Module) -> str:
    """The name the model's forward takes its cache by: ``cache`` in newer transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def token_steps(
    model: nn.Module,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> Iterator[Tensor]:
    """Each step's new ids ``(B,)`` after the prompt ``input_ids (B, N)``, at most ``max_new_tokens`` of them.

    A sequence that has produced ``eos_id`` gets ``pad_id`` from then on; the steps end
    when every sequence has ended. The arguments are checked when this is called, before
    any step runs.
    """
    warpers = _warpers(temperature, top_k, top_p)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ModelError(f"max_new_tokens: expected a whole number >= 0, got {max_new_tokens!r}")
    return _steps(model, input_ids, max_new_tokens, warpers, seed, eos_id, pad_id)


def _steps(
    model: nn.Module,
    ids: Tensor,
    max_new_tokens: int,
    warpers: list,
    seed: int | None,
    eos_id: int | None,
    pad_id: int,
) -> Iterator[Tensor]:
    from transformers import DynamicCache

    if max_new_tokens == 0:
        return
    device = next(model.parameters()).device
    ids = ids.to(device)
    b = ids.shape[0]
    generator = None if seed is None or not warpers else torch.Generator(device=device).manual_seed(seed)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    seen = ids  # (B, N + steps so far): what the warpers may look at
    mask = torch.ones_like(ids)  # (B, N + steps so far): no padding
    cache = {_cache_argument(model): DynamicCache(config=model.config)}  # type: ignore[arg-type]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=True, **cache).logits[:, -1]
        for step in range(max_new_tokens):
            scores = logits.float()  # (B, V)
            for warp in warpers:
                scores = warp(seen, scores)
            if warpers:
                token = torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]  # (B,)
            else:
                token = scores.argmax(-1)  # (B,)
            if eos_id is not None:
                token = torch.where(finished, torch.full_like(token, pad_id), token)
                finished |= token == eos_id
            yield token
            if step == max_new_tokens - 1 or bool(finished.all()):
                return
            seen = torch.cat([seen, token[:, None]], dim=1)  # (B, L) -> (B, L + 1)
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)  # (B, L) -> (B, L + 1)
            out = model(input_ids=token[:, None], attention_mask=mask, use_cache=True, **cache)
            logits = out.logits[:, -1]
