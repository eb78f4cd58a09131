"""``head-ablation``: switch one head of SmolLM2 (or your own causal LM) off and see the next-token distribution move.

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

A model of the learner's own (``qkv learn --model FOLDER``) is offered too when
it is a causal LM: the ``model`` control lists it and the sliders reach its
layers and heads (`qkv.learn.widgets.model_attention.offer_models`, as
``model-attention`` does). A Llama-family folder runs on qkv's own Llama, as
above; any other (GPT-2, ...) runs through transformers on
``attn_implementation="qkv"``, and there the head is silenced by the
`qkv.interpret.sources.Source` that ``import qkv.hf`` registers: its
``scale_heads`` makes the layer's attention function multiply each query head's
output by the mask (what `qkv.interpret.head_importance` differentiates), set
for the one pass and taken off in a ``finally`` (`silenced`). An encoder (no
next-token logits) or a folder that does not load is not offered; the model's
help names it and why (`causal_lm_shape`).

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

from qkv.interpret import sources
from qkv.learn.errors import LearnError
from qkv.learn.widget import Control, Env, Result, Widget, register
from qkv.learn.widgets.model_attention import check_length, offer_models, shape_of

__all__ = ["HeadAblation", "causal_lm_shape", "head_mask", "silenced"]


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


@contextmanager
def silenced(model: nn.Module, layer: int, mask: Tensor) -> Iterator[None]:
    """Within the block, attention layer ``layer`` of the causal LM ``model`` multiplies its query heads' outputs
    by ``mask`` ``(B, H)`` (1 keeps a head, 0 silences it), before its output projection.

    qkv's own decoder gets the mask as its layer's ``head_mask`` (`head_mask`); a kind of model that a
    `qkv.interpret.sources.Source` claims (a transformers model on ``attn_implementation="qkv"``, after
    ``import qkv.hf``) through the source's ``scale_heads``, which its attention function reads on every
    call. Either way nothing is left on the model after the block, also when it raises.
    """
    source = sources.source_of(model)
    if source is None:
        with head_mask(model.model.layers[layer].self_attn, mask):
            yield
        return
    if source.scale_heads is None:
        raise LearnError(f"model: {source.name} models cannot scale their heads' outputs, so no head can be silenced")
    _, module = source.modules(model)[layer]
    source.scale_heads(module, lambda batch, heads, device: mask.to(device))  # (B, H), read on every call
    try:
        yield
    finally:
        source.scale_heads(module, None)


def causal_lm_shape(env: Env, name: str) -> tuple[int, int]:
    """(layers, heads) of ``env.model(name)`` if it is a causal language model (next-token logits), else a
    `LearnError` naming it: an encoder (BERT's kind, or a transformers folder without a language-model head)."""
    loaded = env.model(name)
    causal_lm = getattr(loaded, "can_generate", getattr(loaded, "causal", False))  # transformers' | qkv's own
    if not causal_lm:
        raise LearnError(
            f"model: {name} is not a causal language model (it loads as {type(loaded.model).__name__}); "
            "switching a head off is measured on the next token's probabilities, which an encoder does not give"
        )
    return shape_of(env, name)


@register
class HeadAblation(Widget):
    """The next-token probabilities of SmolLM2 (or the learner's own causal LM) with and without one head."""

    name = "head-ablation"
    title = "Switching a head off"
    controls = (
        Control(
            "model",
            "select",
            "model",
            "smollm2",
            choices=("smollm2",),
            help="SmolLM2: a Llama decoder (30 × 9 heads); qkv learn --model FOLDER adds a causal LM of your own",
        ),
        Control("text", "text", "prompt", "The cat sat on the", high=200),
        Control("layer", "slider", "layer", 3, low=0, high=29, step=1),
        Control("head", "slider", "head", 4, low=0, high=8, step=1),
    )
    facts = ("top_tokens", "top_probs", "ablated_probs", "prob_change", "top1_changed", "kl")
    models = ("smollm2",)

    def controls_in(self, env: Env) -> tuple[Control, ...]:
        """With a model of the learner's own in ``env.models``: that one offered too if it is a causal LM, the
        sliders reaching its layers and heads; one that does not load, or an encoder, named in the help instead."""
        return offer_models(self.controls, self.models, env, causal_lm_shape)

    def compute(self, args: dict[str, Any], env: Env) -> Result:
        model_name, layer, head = args["model"], args["layer"], args["head"]
        layers, heads = causal_lm_shape(env, model_name)
        if layer >= layers:
            raise LearnError(f"layer: {model_name} has layers 0 to {layers - 1}, got {layer}")
        if head >= heads:
            raise LearnError(f"head: {model_name} has heads 0 to {heads - 1}, got {head}")
        model = env.model(model_name)
        ids = model.encode(args["text"])
        check_length("text", len(ids))
        weight = next(model.model.parameters())
        batch = torch.tensor([ids, ids], dtype=torch.long, device=weight.device)  # (2, N): row 0 full, row 1 ablated
        mask = torch.ones(2, heads, dtype=weight.dtype, device=weight.device)  # (B, H)
        mask[1, head] = 0.0
        with env.lock(model_name), torch.no_grad(), silenced(model.model, layer, mask):
            out = model.model(batch)  # qkv's own: logits (2, N, V); transformers': an output with .logits
            logits = getattr(out, "logits", out)[:, -1].cpu()  # (2, N, V) -> (2, V): the token after the prompt
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
