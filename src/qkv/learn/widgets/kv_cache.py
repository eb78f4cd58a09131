"""What a KV cache buys: SmolLM2 decoding greedily with a `qkv.cache` cache and without one, timed.

Two ways to produce the same ``tokens`` greedy tokens after ``prompt``:

- **cached**: the prompt runs once through the model with a fresh
  `qkv.cache.ModelCache` of the chosen kind (``model.new_cache``), then each
  step feeds only the newest token; its query attends every cached key;
- **full recompute**: no cache; every step runs the whole sequence so far through
  the model and keeps the last position's logits.

Both are timed (milliseconds per generated token, prompt included), alternately,
up to three times each (fewer when the first runs took over five seconds), and
the median run counts. Facts: ``same_tokens`` (both chose
the same ids), ``ms_per_token_cached``, ``ms_per_token_full``, ``speedup``
(full / cached), ``cache_bytes`` (what the cache holds at the end, counted from
its tensors: the preallocated key/value buffers, for ``int8`` also its scales, for
``paged`` the pages in use) and ``max_logit_difference`` (the largest absolute
difference, over every step and every vocabulary entry, between the cached run's
logits and one full forward pass over the same tokens: rounding for
``contiguous`` and ``paged``, the 8-bit quantization for ``int8``).

The model runs in its own precision (float32) whatever ``env.dtype`` is: it is
shared, and a float64 copy would cost a gigabyte.

Caveats: timings are of this machine at this moment; a short sequence understates
the gain, because recomputing costs grow with the length (each step redoes all
earlier positions) while a cached step stays about the same.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from qkv.cache import Int8Cache, KVCache, ModelCache, PagedCache
from qkv.learn.errors import LearnError
from qkv.learn.widget import Control, Env, Result, Widget, register

MODEL = "smollm2"
MAX_PROMPT_TOKENS = 32
REPEATS = 3  # timed runs of each way (median), alternating ...
BUDGET_S = 5.0  # ... but no new pair of runs once this much time has passed


def layer_cache_bytes(cache: KVCache) -> int:
    """Bytes one layer's cache holds: its key/value buffers (and int8 scales), or its pages in use.

    >>> from qkv.cache import make_cache
    >>> layer_cache_bytes(make_cache("contiguous", batch=1, heads=3, max_length=10, head_dim=64))  # 2·3·10·64·4
    15360
    >>> layer_cache_bytes(make_cache("int8", batch=1, heads=3, max_length=10, head_dim=64))       # 2·3·10·(64+4)
    4080
    """
    if isinstance(cache, PagedCache):
        pool = cache.pool
        per_page = pool.k[0].numel() * pool.k.element_size()  # (page_size, Hkv, D) of keys
        return 2 * per_page * sum(len(pages) for pages in cache.pages)
    tensors = [cache.k, cache.v]  # type: ignore[attr-defined]
    if isinstance(cache, Int8Cache):
        tensors += [cache.k_scale, cache.v_scale]
    return sum(t.numel() * t.element_size() for t in tensors)


def cache_bytes(cache: ModelCache) -> int:
    """Bytes every layer's cache holds together (`layer_cache_bytes` summed)."""
    return sum(layer_cache_bytes(layer) for layer in cache)


@torch.no_grad()
def decode_cached(
    model: Any, prompt: torch.Tensor, tokens: int, kind: str
) -> tuple[list[int], list[torch.Tensor], int]:
    """Greedy ids, each step's logits ``(V,)`` and the cache's bytes, prefilling ``prompt (1, N)`` once."""
    cache = model.new_cache(kind, batch=1, max_length=prompt.shape[1] + tokens)
    logits = model(prompt, cache=cache)[:, -1]  # (1, N, V) -> (1, V)
    ids, steps = [], []
    for i in range(tokens):
        steps.append(logits[0])
        nxt = logits.argmax(-1)  # (1,)
        ids.append(int(nxt.item()))
        if i + 1 < tokens:
            logits = model(nxt[:, None], cache=cache)[:, -1]  # (1, 1) -> (1, 1, V) -> (1, V)
    return ids, steps, cache_bytes(cache)


@torch.no_grad()
def decode_full(model: Any, prompt: torch.Tensor, tokens: int) -> list[int]:
    """Greedy ids without a cache: every step runs the whole sequence so far."""
    seq = prompt
    ids = []
    for _ in range(tokens):
        nxt = model(seq)[:, -1].argmax(-1)  # (1, t, V) -> (1, V) -> (1,)
        ids.append(int(nxt.item()))
        seq = torch.cat([seq, nxt[:, None]], dim=1)  # (1, t) -> (1, t + 1)
    return ids


@register
class KVCacheCost(Widget):
    """Decoding with a KV cache vs recomputing the whole sequence each step, on SmolLM2."""

    name = "kv-cache"
    title = "What a KV cache buys"
    controls = (
        Control("prompt", "text", "prompt", "The capital of France is", high=200),
        Control("tokens", "slider", "tokens to generate", 12, low=4, high=24, step=1),
        Control("cache", "select", "cache kind", "contiguous", choices=("contiguous", "paged", "int8")),
    )
    facts = (
        "same_tokens",
        "ms_per_token_cached",
        "ms_per_token_full",
        "speedup",
        "cache_bytes",
        "max_logit_difference",
    )
    models = (MODEL,)

    def compute(self, args: dict[str, Any], env: Env) -> Result:
        lm = env.model(MODEL)
        ids = lm.encode(args["prompt"])
        if len(ids) > MAX_PROMPT_TOKENS:
            raise LearnError(
                f"kv-cache: prompt: expected at most {MAX_PROMPT_TOKENS} tokens, got {len(ids)}; shorten the prompt"
            )
        tokens, kind = args["tokens"], args["cache"]
        model = lm.model
        device = next(model.parameters()).device
        prompt = torch.tensor([ids], dtype=torch.long, device=device)  # (1, N)
        times: dict[str, list[float]] = {"cached": [], "full": []}
        with env.lock(MODEL):
            began = time.perf_counter()
            while len(times["full"]) < REPEATS and (not times["full"] or time.perf_counter() - began < BUDGET_S):
                # alternating, so a busy moment hurts both
                start = time.perf_counter()
                cached_ids, steps, held = decode_cached(model, prompt, tokens, kind)
                times["cached"].append((time.perf_counter() - start) * 1e3 / tokens)
                start = time.perf_counter()
                full_ids = decode_full(model, prompt, tokens)
                times["full"].append((time.perf_counter() - start) * 1e3 / tokens)
            with torch.no_grad():  # the same tokens at once: logits at the positions that chose each new token
                seq = torch.tensor([ids + cached_ids[:-1]], dtype=torch.long, device=device)  # (1, N + tokens - 1)
                reference = model(seq)[0, len(ids) - 1 :]  # (1, N + tokens - 1, V) -> (tokens, V)
        difference = (torch.stack(steps) - reference).abs().max().item()  # (tokens, V)
        ms_cached, ms_full = statistics.median(times["cached"]), statistics.median(times["full"])
        facts = {
            "same_tokens": cached_ids == full_ids,
            "ms_per_token_cached": round(ms_cached, 3),
            "ms_per_token_full": round(ms_full, 3),
            "speedup": round(ms_full / ms_cached, 3),
            "cache_bytes": held,
            "max_logit_difference": float(difference),
        }
        pieces = lm.tokenizer.tokens(cached_ids)
        length = len(ids) + tokens - 1
        bars = {
            "kind": "bars",
            "title": f"Milliseconds per generated token ({tokens} tokens after a {len(ids)}-token prompt)",
            "labels": [f"{kind} cache", "no cache (recompute all)"],
            "values": [round(ms_cached, 3), round(ms_full, 3)],
            "caption": f"median of {len(times['full'])} alternating run(s) each",
        }
        full_text = lm.tokenizer.decode(torch.tensor(full_ids), skip_special_tokens=True)
        table = {
            "kind": "table",
            "title": "The two runs",
            "columns": ["", f"{kind} cache", "no cache"],
            "rows": [
                ["generated", lm.tokenizer.decode(torch.tensor(cached_ids), skip_special_tokens=True), full_text],
                ["ms per token", round(ms_cached, 3), round(ms_full, 3)],
                ["positions computed", len(ids) + tokens - 1, sum(len(ids) + i for i in range(tokens))],
                ["cache bytes at the end", held, 0],
            ],
            "caption": (
                f"the cache holds keys and values of {length} positions × {len(model.layers)} layers; tokens: {pieces}"
            ),
        }
        same = "the same tokens" if facts["same_tokens"] else "**different** tokens"
        text = (
            f"With the cache each step computes one new position; without it step t recomputes all N + t. Both "
            f"runs chose {same}; the cached logits differ from a full forward pass over the same tokens by at most "
            f"{difference:.1e} ({'8-bit rounding of keys and values' if kind == 'int8' else 'float rounding'}).\n\n"
            f"Timings are of this machine at this moment, with other programs sharing its cores. A short sequence "
            f"understates the gain: the recompute's cost per token grows with the length, the cached step's barely."
        )
        return Result(views=[bars, table, {"kind": "text", "text": text}], facts=facts)
