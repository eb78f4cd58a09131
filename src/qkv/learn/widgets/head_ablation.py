"""``head-ablation``: switch one head of SmolLM2 off and see the next-token distribution move.

The prompt goes through SmolLM2-135M (a Llama decoder, 30 layers × 9 query heads)
twice in one batch: row 0 as it is, row 1 with head ``head`` of layer ``layer``
silenced. Silencing uses the ``head_mask`` argument of
`qkv.nn.MultiHeadAttention` (a ``(B, H)`` tensor that multiplies each head's
output before the output projection; 0 removes the head's contribution): the
context manager `head_mask` sets it on one layer's attention module through a
forward pre-hook and removes the hook afterwards, so the shared model is
unchanged. The facts compare the two distributions of the token after the
prompt: the 5 most likely tokens with all heads, their probabilities with the
head off, and KL(full || ablated) over the whole vocabulary, in nats.

Default: layer 3, head 4 on "The cat sat on the". Chosen by measuring every one
of the 270 heads on that prompt: the first two layers' heads move the
distribution most (layer 1 head 3: KL 2.4 nats), but they break the model
(its top token becomes " L"), which teaches "the model needs its early heads"
and little else. Layer 3 head 4 is among the ten largest (KL about 1.1 nats) and
its effect reads: " cat" falls from about 0.07 to 0.02 and " bed" / " couch"
become the likeliest, as if the head let the model repeat a word from the
prompt. The widget recomputes every number for the arguments given.

Caveats: one prompt and one way of removing a head (zeroing its output, not
replacing it by its mean); a small change does not prove a head useless
elsewhere, and heads can compensate for each other. Grouped-query attention:
the 9 query heads share 3 key/value heads; silencing a query head leaves its
key/value head serving the others. The model runs in float32; the
probabilities and the KL are computed in ``env.dtype`` from its logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from qkv.learn.errors import LearnError
from qkv.learn.widget import Control, Env, Result, Widget, register
from qkv.learn.widgets.model_attention import check_length

__all__ = ["HeadAblation", "head_mask"]


@contextmanager
def head_mask(attention: nn.Module, mask: Tensor) -> Iterator[None]:
    """Within the block, every call of the `qkv.nn.MultiHeadAttention` ``attention`` gets ``head_mask=mask``.

    ``mask``: ``(H,)`` or ``(B, H)``, 1 keeps a head, 0 silences it (see `qkv.nn.MultiHeadAttention`).

    >>> from qkv.nn import MultiHeadAttention
    >>> mha = MultiHeadAttention(8, 2).eval()
    >>> x = torch.randn(1, 3, 8)
    >>> with head_mask(mha, torch.tensor([0.0, 0.0])):
    ...     silent = mha(x)
    >>> torch.allclose(silent, mha.out_proj.bias.expand(1, 3, 8))      # no head left: only the output bias
    True
    """

    def set_mask(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict]:
        return args, {**kwargs, "head_mask": mask}

    handle = attention.register_forward_pre_hook(set_mask, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@register
class HeadAblation(Widget):
    """SmolLM2's next-token probabilities with and without one attention head."""

    name = "head-ablation"
    title = "Switching a head off"
    controls = (
        Control("text", "text", "prompt", "The cat sat on the", high=200),
        Control("layer", "slider", "layer", 3, low=0, high=29, step=1),
        Control("head", "slider", "head", 4, low=0, high=8, step=1),
    )
    facts = ("top_tokens", "top_probs", "ablated_probs", "prob_change", "top1_changed", "kl")
    models = ("smollm2",)

    def compute(self, args: dict[str, Any], env: Env) -> Result:
        model = env.model("smollm2")
        layer, head = args["layer"], args["head"]
        layers = model.model.layers
        if layer >= len(layers):
            raise LearnError(f"layer: smollm2 has layers 0 to {len(layers) - 1}, got {layer}")
        attention = layers[layer].self_attn
        if head >= attention.num_heads:
            raise LearnError(f"head: smollm2 has heads 0 to {attention.num_heads - 1}, got {head}")
        ids = model.encode(args["text"])
        check_length("text", len(ids))
        batch = torch.tensor([ids, ids], dtype=torch.long)  # (2, N): row 0 full, row 1 ablated
        mask = torch.ones(2, attention.num_heads, dtype=model.model.lm_head.weight.dtype)  # (B, H)
        mask[1, head] = 0.0
        with env.lock("smollm2"), torch.no_grad(), head_mask(attention, mask):
            logits = model.model(batch)[:, -1]  # (2, N, V) -> (2, V): the token after the prompt
        logp = torch.log_softmax(logits.to(env.dtype), dim=-1)  # (2, V)
        p = logp.exp()
        kl = float((p[0] * (logp[0] - logp[1])).sum())  # KL(full || ablated), nats
        top = torch.topk(p[0], 5)
        index = top.indices.tolist()
        names = model.tokenizer.tokens(index)
        full = [float(x) for x in p[0, index]]
        ablated = [float(x) for x in p[1, index]]
        top1_changed = int(p[1].argmax()) != index[0]
        off = f"L{layer} H{head} off"
        views = [
            {
                "kind": "bars",
                "title": f"Next token after {args['text']!r}: all heads vs {off}",
                "labels": names,
                "values": [round(x, 5) for x in full],
                "compare": [round(x, 5) for x in ablated],
                "series": ["all heads", off],
                "caption": (
                    f"The 5 likeliest next tokens of the full model. KL(full || ablated) = {kl:.3f} nats over the "
                    "whole vocabulary. One prompt, one way of removing a head: not a verdict on the head in general."
                ),
            }
        ]
        facts = {
            "top_tokens": names,
            "top_probs": [round(x, 6) for x in full],
            "ablated_probs": [round(x, 6) for x in ablated],
            "prob_change": round(ablated[0] - full[0], 6),
            "top1_changed": top1_changed,
            "kl": round(max(kl, 0.0), 6),
        }
        return Result(views=views, facts=facts)
