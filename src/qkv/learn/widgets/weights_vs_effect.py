"""``weights-vs-effect``: is the head that looks hardest at a word the head that matters? MiniLM's 72 heads.

For every head of every layer of MiniLM (6 × 12 = 72), two numbers about the
``query`` word (default "it") and the ``target`` word (default "cat"):

- ``weight``: the attention probability from the query token to the target
  token in that head (exact, recorded by `qkv.interpret.record`);
- ``effect``: how much switching that head off changes the query token's final
  hidden state, measured as ``1 - cosine(h_full, h_ablated)`` (0: unchanged;
  direction only, the length of the vector is ignored). The head is switched
  off with `qkv.nn.MultiHeadAttention`'s ``head_mask`` (its output multiplied by 0
  before the output projection), through `qkv.learn.widgets.head_ablation.head_mask`.

All 73 passes (72 ablations + the unablated text) run as one batch of 73 copies
of the text: layer ``l`` gets a ``(73, 12)`` head mask whose row ``12·l + h``
has a 0 at head ``h`` and every other row is 1, and row 72 is the full model.
Results are cached per (text, query, target, dtype) in the process (the last
32), so moving back to a text seen before is instant.

``rank_correlation`` is Spearman's: the Pearson correlation of the ranks of the
72 weights and the 72 effects. ``share_on_target``: the fraction of heads whose
largest weight from the query goes to the target (special tokens count as keys).

Caveat, the lesson's point: this is one ablation measure on one sentence. A
head's weight on a word says where it reads; an ablation effect says what
removing it changes at one position, downstream heads may compensate, and
neither is causal proof of what a head "does". The last layers write into the
final hidden state directly, so their effects tend to be the largest; an early
head's effect passes through every later layer, which may undo or amplify it. A low rank correlation here
says attention weights are a weak guide to importance *for this sentence and
this measure*. The model runs in float32; cosines and ranks are in ``env.dtype``.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from contextlib import ExitStack
from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import Tensor, nn

from qkv.interpret import record
from qkv.learn.widget import Control, Env, Result, Widget, register
from qkv.learn.widgets.head_ablation import head_mask
from qkv.learn.widgets.model_attention import check_length, find_word

__all__ = ["WeightsVsEffect", "spearman"]

_CACHE: WeakKeyDictionary[nn.Module, OrderedDict[tuple[Any, ...], Result]] = WeakKeyDictionary()
_CACHE_SIZE = 32
_CACHE_GUARD = threading.Lock()


def _ranks(x: Tensor) -> Tensor:
    """Ranks 0..n-1 of ``x`` (n,), ties broken by position; average ranks for exact ties."""
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(x.numel(), dtype=x.dtype, device=x.device)
    for value in torch.unique(x):  # exact ties (rare for real weights) share their mean rank
        tied = x == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors: the Pearson correlation of their ranks.

    >>> spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 20.0, 40.0, 30.0]))
    0.8
    """
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return round(float((ra * rb).sum()) / denominator, 12) if denominator > 0 else 0.0


def _label(layer: int, head: int) -> str:
    return f"L{layer} H{head}"


@register
class WeightsVsEffect(Widget):
    """Attention weight from query to target beside the effect of ablating each head, for all 72 heads of MiniLM."""

    name = "weights-vs-effect"
    title = "Reading attention honestly"
    controls = (
        Control("text", "text", "text", "The cat sat on the mat because it was tired.", high=200),
        Control("query", "text", "query word", "it", high=40),
        Control("target", "text", "target word", "cat", high=40),
    )
    facts = ("heads", "top_weight_head", "top_effect_head", "rank_correlation", "share_on_target")
    models = ("minilm",)

    def compute(self, args: dict[str, Any], env: Env) -> Result:
        model = env.model("minilm")
        key = (args["text"], args["query"], args["target"], env.dtype)
        with _CACHE_GUARD:
            cache = _CACHE.setdefault(model.model, OrderedDict())
            if key in cache:
                cache.move_to_end(key)
                return copy.deepcopy(cache[key])  # the caller may change its copy
        ids = model.encode(args["text"])
        check_length("text", len(ids))
        tokens = model.tokenizer.tokens(ids)
        q = find_word(tokens, args["query"], "query")
        t = find_word(tokens, args["target"], "target")
        result = self._measure(model, env, ids, tokens, q, t)
        with _CACHE_GUARD:
            cache[key] = result
            while len(cache) > _CACHE_SIZE:
                cache.popitem(last=False)
        return copy.deepcopy(result)

    def _measure(self, model: Any, env: Env, ids: list[int], tokens: list[str], q: int, t: int) -> Result:
        layers = model.model.layers
        n_layers, n_heads = len(layers), layers[0].self_attn.num_heads
        runs = n_layers * n_heads  # one ablated copy per head, then the full model
        dtype = model.model.embeddings.tokens.weight.dtype
        batch = torch.tensor([ids] * (runs + 1), dtype=torch.long)  # (73, N)
        with env.lock("minilm"), torch.no_grad(), ExitStack() as stack:
            for layer, module in enumerate(layers):
                mask = torch.ones(runs + 1, n_heads, dtype=dtype)  # (B, H)
                rows = torch.arange(layer * n_heads, (layer + 1) * n_heads)
                mask[rows, torch.arange(n_heads)] = 0.0  # row 12·l + h silences head h of layer l
                stack.enter_context(head_mask(module.self_attn, mask))
            rec = stack.enter_context(record(model.model, rows=[q]))
            hidden = model.model(batch)  # (73, N, E)
        weights = torch.stack([w[runs, :, 0] for w in rec.weights]).to(env.dtype)  # L × (73, H, 1, N) -> (L, H, N)
        h = hidden[:, q].to(env.dtype)  # (73, N, E) -> (73, E): the query token's final state
        cos = torch.nn.functional.cosine_similarity(h[:runs], h[runs:], dim=-1)  # (72,)
        effect = (1 - cos).clamp(min=0).view(n_layers, n_heads)  # (72,) -> (L, H)
        weight = weights[:, :, t]  # (L, H)
        on_target = weights.argmax(-1) == t  # (L, H)
        heads = [
            {"layer": i, "head": k, "weight": round(float(weight[i, k]), 6), "effect": round(float(effect[i, k]), 6)}
            for i in range(n_layers)
            for k in range(n_heads)
        ]
        flat_w, flat_e = weight.reshape(-1), effect.reshape(-1)  # (L, H) -> (L·H,)
        by_weight = torch.argsort(flat_w, descending=True, stable=True).tolist()
        by_effect = torch.argsort(flat_e, descending=True, stable=True).tolist()
        rho = spearman(flat_w, flat_e)
        share = float(on_target.to(env.dtype).mean())

        def name(i: int) -> str:
            return _label(i // n_heads, i % n_heads)

        query, target = tokens[q], tokens[t]
        views: list[dict[str, Any]] = [
            {
                "kind": "table",
                "title": f"The 8 heads looking most from {query!r} to {target!r}; the 8 whose removal matters most",
                "columns": ["by weight", "weight", "its effect", "by effect", "effect", "its weight"],
                "rows": [
                    [
                        name(a),
                        round(float(flat_w[a]), 5),
                        round(float(flat_e[a]), 5),
                        name(b),
                        round(float(flat_e[b]), 5),
                        round(float(flat_w[b]), 5),
                    ]
                    for a, b in zip(by_weight[:8], by_effect[:8])
                ],
                "caption": (
                    f"effect = 1 - cosine of {query!r}'s final hidden state with and without the head. "
                    f"Spearman rank correlation of weight and effect over all {runs} heads: {rho:.2f}. "
                    "One sentence, one ablation measure: not causal proof."
                ),
            },
            {
                "kind": "bars",
                "title": f"Weight on {target!r} vs effect of removal, the 12 heads with the largest weight",
                "labels": [name(i) for i in by_weight[:12]],
                "values": [round(float(flat_w[i]), 5) for i in by_weight[:12]],
                "compare": [round(float(flat_e[i]), 5) for i in by_weight[:12]],
                "series": [f"weight {query!r} → {target!r}", "effect (1 - cosine)"],
                "caption": "Different units: a weight is a probability, an effect a change of direction.",
            },
        ]
        facts = {
            "heads": heads,
            "top_weight_head": name(by_weight[0]),
            "top_effect_head": name(by_effect[0]),
            "rank_correlation": round(rho, 6),
            "share_on_target": round(share, 6),
        }
        return Result(views=views, facts=facts)
