"""How many heads can go: SmolLM2's perplexity on a held-out paragraph as attention heads are removed.

The heads are ranked once per process by `qkv.interpret.head_importance`
(Michel et al. 2019: ``|∂loss/∂head_mask|``; not normalized per layer, which
ranked worse on this model) on a short text (`IMPORTANCE_TEXT`), and the ranking
is cached, and so are the logits with every head. A call then silences the
``removed`` least important heads (``order="importance"``) or ``removed`` heads
drawn at random with a fixed seed (``order="random"``) by giving each
`qkv.nn.MultiHeadAttention` a ``head_mask`` of zeros there (the same outputs as
`qkv.nn.prune_heads` would give, without rebuilding the projections), and runs
the model once over `HELD_OUT_TEXT`, a different paragraph.

Facts: ``perplexity`` (``exp`` of the mean next-token cross-entropy over the
held-out paragraph, heads removed), ``perplexity_full`` (no head removed),
``parameters_removed`` (what physical pruning would free: the removed heads' rows
of ``q_proj`` and columns of ``out_proj``, and the ``k_proj``/``v_proj`` rows of
any key/value head whose every query head is gone; counted from the module
shapes) and ``agreement`` (share of the paragraph's positions whose most likely
next token is unchanged).

The model runs in its own precision (float32) whatever ``env.dtype`` is; the
cross-entropy is summed in float64.

Caveats: one short paragraph, one importance text: the numbers are noisy and
specific to them. Michel et al. ("Are Sixteen Heads Really Better than One?",
2019) report the same shape of curve on large tasks: the first heads go at little
cost (ranked by importance far better than at random), then the loss climbs
steeply.
"""

from __future__ import annotations

import math
import random
import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.interpret import head_importance, rank_heads
from qkv.learn.errors import LearnError
from qkv.learn.widget import Control, Env, Result, Widget, register
from qkv.nn import MultiHeadAttention

MODEL = "smollm2"
SEED = 0  # the random order
STEP = 9  # heads per slider step: as many as one SmolLM2 layer has

#: the paragraph perplexity is measured on
HELD_OUT_TEXT = (
    "Every morning the baker opens the shop before the sun comes up. She lights the oven, weighs the flour and "
    "mixes the dough by hand, because the machine in the corner has been broken since the winter. By six o'clock "
    "the first loaves are cooling on the rack, and the smell reaches the end of the street. The same people come "
    "in every day: a nurse on her way home from the night shift, two students who share one croissant, and an old "
    "man who always asks for yesterday's bread because it is cheaper. When the last customer has gone, she sweeps "
    "the floor, counts the money and writes down what she will need to buy for the next week."
)
#: the text the heads are ranked on (different from the held-out one)
IMPORTANCE_TEXT = (
    "The river runs through the middle of the town, and three bridges cross it. In summer children swim near the "
    "old mill, while their parents sit in the shade and read. In autumn the water rises after the rains, and the "
    "council closes the lowest bridge until the level falls again. Most people in the town have never lived "
    "anywhere else, and they can tell you which families have owned which houses for a hundred years."
)

_LOCK = threading.Lock()
_RANKING: dict[int, tuple[nn.Module, list[tuple[int, int]]]] = {}  # id(model) -> (model, heads least important first)
_FULL: dict[int, tuple[nn.Module, Tensor]] = {}  # id(model) -> (model, logits of HELD_OUT_TEXT with every head)


def attention_layers(model: nn.Module) -> list[MultiHeadAttention]:
    """The model's `MultiHeadAttention` modules in ``model.modules()`` order (`qkv.nn.prune_heads` numbering)."""
    return [m for m in model.modules() if isinstance(m, MultiHeadAttention)]


def owned_parameters(module: MultiHeadAttention, heads: set[int]) -> int:
    """Parameters `qkv.nn.prune_heads` frees when it removes query ``heads`` of an unpruned ``module``.

    Each head owns ``D`` rows of ``q_proj`` (and their bias) and ``D`` columns of
    ``out_proj``; a key/value head goes with its ``k_proj``/``v_proj`` rows once every
    query head of its group is removed.

    >>> from qkv.nn import MultiHeadAttention
    >>> mha = MultiHeadAttention(16, 4, num_kv_heads=2, bias=False)          # D = 4, groups {0, 1}, {2, 3}
    >>> owned_parameters(mha, {0}), owned_parameters(mha, {0, 1})   # per head 4·16 + 16·4; kv head 0: + 2·(4·16)
    (128, 384)
    """
    d = module.head_dim
    q_rows = d * (module.q_proj.in_features + (module.q_proj.bias is not None))
    o_cols = module.out_proj.out_features * d
    group = module.num_heads // module.num_kv_heads
    gone_kv = sum(all(h in heads for h in range(g * group, (g + 1) * group)) for g in range(module.num_kv_heads))
    k_rows = d * (module.k_proj.in_features + (module.k_proj.bias is not None))
    v_rows = d * (module.v_proj.in_features + (module.v_proj.bias is not None))
    return len(heads) * (q_rows + o_cols) + gone_kv * (k_rows + v_rows)


def _next_token_loss(model: nn.Module, ids: Tensor) -> Tensor:
    logits = model(ids)  # (1, N, V)
    return F.cross_entropy(logits[0, :-1], ids[0, 1:])  # (N-1, V) vs (N-1,)


def ranking(lm: Any) -> list[tuple[int, int]]:
    """``(layer, head)`` from least to most important on `IMPORTANCE_TEXT`; computed once per model."""
    model = lm.model
    with _LOCK:
        if id(model) not in _RANKING:
            ids = torch.tensor([lm.encode(IMPORTANCE_TEXT)], dtype=torch.long, device=next(model.parameters()).device)
            scores = head_importance(model, lambda x: _next_token_loss(model, x), [ids])  # (L, H)
            _RANKING[id(model)] = (model, rank_heads(scores))
        return _RANKING[id(model)][1]


def chosen_heads(lm: Any, removed: int, order: str) -> dict[int, set[int]]:
    """``{layer: heads}`` to silence: the ``removed`` least important, or ``removed`` at random (seed `SEED`)."""
    ranked = ranking(lm)
    if order == "random":
        ranked = sorted(ranked)
        random.Random(SEED).shuffle(ranked)
    plan: dict[int, set[int]] = {}
    for layer, head in ranked[:removed]:
        plan.setdefault(layer, set()).add(head)
    return plan


@torch.no_grad()
def masked_logits(model: nn.Module, ids: Tensor, plan: dict[int, set[int]]) -> Tensor:
    """Logits ``(N, V)`` of ``ids (1, N)`` with the heads in ``plan`` silenced through ``head_mask``."""
    layers = attention_layers(model)
    handles = []
    for index, heads in plan.items():
        module = layers[index]
        mask = torch.ones(module.num_heads, device=ids.device)  # (H,)
        mask[sorted(heads)] = 0.0

        def pre_hook(mod: nn.Module, args: tuple, kwargs: dict, mask: Tensor = mask) -> tuple[tuple, dict]:
            return args, dict(kwargs, head_mask=mask)

        handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
    try:
        return model(ids)[0]  # (1, N, V) -> (N, V)
    finally:
        for handle in handles:
            handle.remove()


def perplexity(logits: Tensor, ids: Tensor) -> float:
    """``exp`` of the mean next-token cross-entropy, in float64: ``logits (N, V)``, ``ids (N,)``."""
    return math.exp(F.cross_entropy(logits[:-1].double(), ids[1:]).item())  # (N-1, V) vs (N-1,)


@register
class Pruning(Widget):
    """Perplexity of SmolLM2 on a held-out paragraph as its least important (or random) heads are silenced."""

    name = "pruning"
    title = "How many heads can go?"
    controls = (
        Control("removed", "slider", "heads removed (of 270)", 27, low=0, high=270, step=STEP),
        Control("order", "select", "which heads go first", "importance", choices=("importance", "random")),
    )
    facts = ("perplexity", "perplexity_full", "parameters_removed", "agreement")
    models = (MODEL,)

    def compute(self, args: dict[str, Any], env: Env) -> Result:
        lm = env.model(MODEL)
        model = lm.model
        layers = attention_layers(model)
        total = sum(m.num_heads for m in layers)
        removed, order = args["removed"], args["order"]
        if removed > total:
            raise LearnError(f"pruning: removed: expected at most {total} (the model's heads), got {removed}")
        ids = torch.tensor([lm.encode(HELD_OUT_TEXT)], dtype=torch.long, device=next(model.parameters()).device)
        with env.lock(MODEL):
            plan = chosen_heads(lm, removed, order)
            with _LOCK:
                if id(model) not in _FULL:
                    _FULL[id(model)] = (model, masked_logits(model, ids, {}))
                full = _FULL[id(model)][1]
            cut = masked_logits(model, ids, plan) if plan else full
        target = ids[0]
        facts = {
            "perplexity": perplexity(cut, target),
            "perplexity_full": perplexity(full, target),
            "parameters_removed": sum(owned_parameters(layers[i], heads) for i, heads in plan.items()),
            "agreement": (cut[:-1].argmax(-1) == full[:-1].argmax(-1)).double().mean().item(),
        }
        per_layer = [len(plan.get(i, ())) for i in range(len(layers))]
        params = sum(p.numel() for p in model.parameters())
        bars = {
            "kind": "bars",
            "title": f"Heads removed per layer ({removed} of {total}, order: {order})",
            "labels": [str(i) for i in range(len(layers))],
            "values": per_layer,
            "caption": "layer 0 is nearest the input",
        }
        table = {
            "kind": "table",
            "title": "The held-out paragraph",
            "columns": ["", "all heads", f"{removed} heads removed"],
            "rows": [
                ["perplexity", round(facts["perplexity_full"], 3), round(facts["perplexity"], 3)],
                ["next token unchanged", 1.0, round(facts["agreement"], 4)],
                ["parameters pruning would free", 0, facts["parameters_removed"]],
            ],
            "caption": f"{len(target)} tokens; the model has {params:,} parameters (embeddings included)",
        }
        text = (
            f"Silencing {removed} of {total} heads ({order} order) moves the perplexity from "
            f"{facts['perplexity_full']:.2f} to **{facts['perplexity']:.2f}**, and {facts['agreement']:.0%} of the "
            f"positions keep their most likely next token. Physical pruning (`qkv.nn.prune_heads`) would free "
            f"{facts['parameters_removed']:,} parameters ({facts['parameters_removed'] / params:.1%} of the model).\n\n"
            "One short paragraph and one short importance text: the exact numbers are noisy and belong to them; "
            'compare the random order to see what the ranking is worth here. Michel et al. ("Are Sixteen Heads '
            'Really Better than One?", 2019) report the same shape of curve on large tasks: the first heads go '
            "at little cost, far more so ranked by importance than at random, then the loss climbs steeply."
        )
        return Result(views=[table, bars, {"kind": "text", "text": text}], facts=facts)
