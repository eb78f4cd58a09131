"""The attention function registered with transformers' ``AttentionInterface`` as ``"qkv"``.

transformers calls it from every attention layer as
``attention_forward(module, query, key, value, attention_mask, dropout=..., scaling=..., **kwargs)``
with ``query (B, Hq, Nq, D)``, ``key``/``value (B, Hkv, Nk, D)`` after RoPE and the cache update,
and expects ``(out (B, Nq, Hq, Dv), weights (B, Hq, Nq, Nk) or None)``. Here it is one
`qkv.attention` call:

- ``attention_mask`` is what `qkv.hf.masks.mask_interface` made (a `qkv.hf.masks.TransformersMask`,
  whose qkv mask runs as it is, or None), or a 4-D tensor: the dense form of that mask after the
  model's own code handled it (sliced, concatenated, biased), or one the caller built; bool
  (True = may attend) or float (added to the scores; its large negative entries mask);
- ``indices`` (DeepSeek-V3.2's sparse attention and its followers: the keys a query's indexer
  chose, ``(B, Nq, topk)``) is one more mask: each query attends only the keys chosen;
- ``softcap`` (Gemma 2) is `qkv.mods.softcap`; ``position_bias`` (a relative position or ALiBi
  bias) is added like a float mask;
- grouped-query heads go to qkv as they are (no repeated K/V);
- attention sinks (``s_aux``, gpt-oss: one logit per head that joins the softmax's denominator
  and attends nothing) scale each row's output by ``sigmoid(lse - sink)``, the mass the keys keep:
  exact, from the same pass's log-sum-exp;
- ``dropout`` during training is applied by qkv (``dropout_p``); weights returned or recorded
  are the probabilities before dropout;
- ``output_attentions=True`` returns the exact probabilities of this pass: every one of them is
  kept anyway, so the scores are computed once, in float32 (float64 for a float64 model), and
  give both the probabilities and the output (`qkv.hf.weights.attention_with_probabilities`);
  during training with dropout, from `qkv.attention`'s log-sum-exp and one more product.
  Otherwise nothing is kept, unless a `qkv.hf.record` is watching the layer (its rows and heads
  come from `qkv.attention`'s log-sum-exp).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import qkv
from qkv import masks, mods
from qkv.hf._transformers import ModelError
from qkv.hf.masks import TransformersMask
from qkv.hf.record import head_scales, observers
from qkv.hf.weights import attention_with_probabilities, pick, probabilities
from qkv.masks import Mask
from qkv.mods import ScoreMod

_SINKS = ("s_aux", "sinks")
"""The names under which a layer passes attention sinks (gpt-oss and its followers pass ``s_aux``)."""


def _wants_weights(module: nn.Module, kwargs: dict[str, object]) -> bool:
    """``output_attentions`` asked for this pass: transformers' output capture is collecting attentions
    (asked by argument or by the config; some models do not pass the argument down), or the argument."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # pragma: no cover - an older transformers passes the argument down
        collecting: object = None
    else:
        collecting = _active_collector.get()  # type: ignore[no-untyped-call]
    if isinstance(collecting, dict) and ("attentions" in collecting or "cross_attentions" in collecting):
        return True
    return bool(kwargs.get("output_attentions") or False)


def _from_tensor_mask(attention_mask: Tensor, nk: int, dtype: torch.dtype) -> tuple[Tensor | None, Tensor | None]:
    """``(mask, bias)`` of a 4-D tensor mask built by the caller, cut to the call's ``Nk`` keys."""
    if attention_mask.dim() != 4:
        raise ModelError(
            f"attention_mask: expected a 4-D tensor (B, 1|H, Nq, Nk) or a qkv mask, got shape "
            f"{tuple(attention_mask.shape)}; pass the 2-D padding mask to the model and transformers builds the rest"
        )
    attention_mask = attention_mask[..., :nk]  # a static cache's mask may run past the keys
    if attention_mask.dtype == torch.bool:
        return attention_mask, None
    blocked = attention_mask <= torch.finfo(attention_mask.dtype).min / 2  # transformers' "minus infinity"
    if bool(blocked.any()):
        return ~blocked, attention_mask.masked_fill(blocked, 0.0).to(dtype)
    return None, attention_mask.to(dtype)


def _family(module: nn.Module, mask: TransformersMask) -> str:
    """The model type a mask was built for, else the one the layer's module names."""
    if mask.model_type:
        return mask.model_type
    parts = type(module).__module__.split(".")
    return parts[2] if parts[:2] == ["transformers", "models"] and len(parts) > 2 else type(module).__name__


def _check_sizes(module: nn.Module, mask: TransformersMask, nq: int, nk: int) -> None:
    """The mask was built for this call's ``Nq`` queries and ``Nk`` keys; a model that adds keys of its own
    (DeepSeek-V4's compressed ones) extends a tensor mask itself and leaves a qkv mask as it is."""
    _, _, mq, mk = mask.shape
    if (mq, mk) != (nq, nk):
        raise ModelError(
            f"{_family(module, mask)}: the layer {type(module).__name__} gives qkv {nq} queries and {nk} keys, but its "
            f"attention mask was built for {mq} and {mk}: the model changes the mask only where it is a tensor "
            "(for keys it adds itself, such as compressed ones), so qkv cannot know what the new keys may attend; "
            "load the model with attn_implementation='eager' (or 'sdpa' where the model supports it)"
        )


def _chosen_keys(indices: object, batch: int, nq: int, nk: int) -> Tensor | None:
    """The keys an indexer chose, ``indices (B, Nq, topk)`` int, as a bool mask ``(B, 1, Nq, Nk)``; negative = none.

    >>> _chosen_keys(torch.tensor([[[0, 2], [1, -1]]]), 1, 2, 3).int()
    tensor([[[[1, 0, 1],
              [0, 1, 0]]]], dtype=torch.int32)
    """
    if indices is None:
        return None
    if (
        not isinstance(indices, Tensor)
        or indices.is_floating_point()
        or indices.dtype == torch.bool
        or indices.dim() != 3
        or tuple(indices.shape[:2]) != (batch, nq)
    ):
        got = f"{indices.dtype} {tuple(indices.shape)}" if isinstance(indices, Tensor) else type(indices).__name__
        raise ModelError(
            f"indices: qkv reads them as the keys each query may attend, integers of shape ({batch}, {nq}, topk), "
            f"got {got}; use 'eager' for this layer"
        )
    index = torch.where(indices < 0, nk, indices.long()).clamp(max=nk)  # (B, Nq, topk); key nk collects "none"
    chosen = torch.zeros(batch, nq, nk + 1, dtype=torch.bool, device=indices.device)
    return chosen.scatter_(-1, index, True)[..., :nk].unsqueeze(1)  # (B, Nq, Nk + 1) -> (B, 1, Nq, Nk)


def _and_chosen(mask: Mask | Tensor | None, causal: bool, chosen: Tensor) -> tuple[Mask | Tensor, bool]:
    """``(mask, causal)`` of the call with the chosen keys ``(B, 1, Nq, Nk)`` joined: a qkv mask stays one."""
    if isinstance(mask, Mask):
        table = chosen

        def indexer_chose(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return table[b, 0, q_idx, kv_idx]

        return mask & masks.from_function(indexer_chose), causal
    if causal:  # no mask was given: the causal triangle joins the chosen keys
        nq, nk = chosen.shape[-2:]
        chosen = chosen & masks.causal().to_dense(1, 1, nq, nk, device=chosen.device)
    return (chosen if mask is None else mask & chosen), False


def _score_mod(softcap: float | None, bias: Tensor | None, shape: tuple[int, ...]) -> ScoreMod | Tensor | None:
    """``softcap`` then the additive ``bias``, as qkv's ``bias`` argument (a mod, a tensor, or None).

    ``shape`` is the call's ``(B, Hq, Nq, Nk)``.
    """
    if softcap is None:
        return bias
    cap = mods.softcap(float(softcap))
    if bias is None:
        return cap
    table = bias.expand(*shape)  # (B|1, H|1, Nq|1, Nk) -> (B, Hq, Nq, Nk), a view

    def add_bias(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return score + table[b, h, q_idx, kv_idx]

    return mods.compose(cap, mods.from_function(add_bias))


def _sinks(kwargs: dict[str, object], heads: int) -> Tensor | None:
    """The layer's attention sinks ``(Hq,)``: one learned logit per query head, or None."""
    for name in _SINKS:
        sinks = kwargs.get(name)
        if sinks is None:
            continue
        if not isinstance(sinks, Tensor) or sinks.shape != (heads,):
            shape = tuple(sinks.shape) if isinstance(sinks, Tensor) else type(sinks).__name__
            raise ModelError(
                f"{name}: qkv reads attention sinks as one logit per query head, shape ({heads},), got {shape}; "
                "use 'eager' for this layer"
            )
        return sinks
    return None


def _selection(values: Tensor | None, size: int, what: str, where: str) -> Tensor | None:
    if values is None:
        return None
    bad = [int(x) for x in values.tolist() if not -size <= int(x) < size]
    if bad:
        raise ModelError(f"record: {what} {bad} out of range for {where} ({size} of them)")
    return values % size


def attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Mask | Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    is_causal: bool | None = None,
    position_bias: Tensor | None = None,
    **kwargs: object,
) -> tuple[Tensor, Tensor | None]:
    """One transformers attention layer on `qkv.attention`; see the module docstring.

    Returns ``(out (B, Nq, Hq, Dv), weights)``: ``weights (B, Hq, Nq, Nk)`` with
    ``output_attentions=True`` (float32, float64 for a float64 model; fully masked rows are
    zeros), else None.

    Raises:
        ModelError: attention sinks of another shape than one logit per query head, or a mask
            of a kind qkv cannot read.
    """
    nq, nk = query.shape[2], key.shape[2]
    sinks = _sinks(kwargs, query.shape[1])
    mask: Mask | Tensor | None = None
    bias: Tensor | None = None
    causal = False
    if isinstance(attention_mask, TransformersMask):
        _check_sizes(module, attention_mask, nq, nk)
        mask = attention_mask.mask  # the structure: never made dense here
    elif isinstance(attention_mask, Mask):
        mask = attention_mask
    elif isinstance(attention_mask, Tensor):
        mask, bias = _from_tensor_mask(attention_mask, nk, query.dtype)
    elif attention_mask is None:  # as sdpa: a causal layer without a mask is causal
        causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal) and nq > 1
    else:
        raise ModelError(
            f"attention_mask: qkv reads a qkv mask, a 4-D tensor or None, got {type(attention_mask).__name__}; "
            "build the model with attn_implementation='qkv' after import qkv.hf so transformers asks qkv for masks"
        )
    chosen = _chosen_keys(kwargs.get("indices"), query.shape[0], nq, nk)
    if chosen is not None:
        mask, causal = _and_chosen(mask, causal, chosen)
    if position_bias is not None:
        extra = position_bias[..., :nk].to(query.dtype)
        bias = extra if bias is None else bias + extra
    score = _score_mod(softcap, bias, (query.shape[0], query.shape[1], nq, nk))
    watching = observers(module)
    wants = _wants_weights(module, kwargs)
    need_lse = wants or bool(watching) or sinks is not None
    weights: Tensor | None = None
    lse: Tensor | None
    if wants and not dropout:  # every probability is kept anyway: the scores once give them and the output
        out, weights, lse = attention_with_probabilities(
            query, key, value, mask=mask, bias=score, causal=causal, scale=scaling
        )
    else:
        result = qkv.attention(
            query,
            key,
            value,
            mask=mask,
            bias=score,
            causal=causal,
            scale=scaling,
            dropout_p=float(dropout),
            return_lse=need_lse,
        )
        out, lse = result if isinstance(result, tuple) else (result, None)
    kept: Tensor | None = None
    if sinks is not None:  # the sink's logit joins the denominator: the keys keep sigmoid(lse - sink) of the mass
        assert lse is not None
        kept = torch.sigmoid(lse - sinks.to(lse.dtype)[None, :, None])  # (B, Hq, Nq); 0 where no key is allowed
        out = out * kept[..., None].to(out.dtype)  # (B, Hq, Nq, Dv)
    if need_lse:
        assert lse is not None

        def weights_of(heads: Tensor | None, rows: Tensor | None) -> Tensor:
            heads = _selection(heads, query.shape[1], "heads", "this layer's query heads")
            rows = _selection(rows, nq, "rows", "this call's query rows")
            with torch.no_grad():
                p = probabilities(
                    query,
                    key,
                    lse,
                    mask=mask,
                    bias=score,
                    causal=causal,
                    scale=scaling,
                    heads=heads,
                    rows=rows,
                )
                return p if kept is None else p * pick(kept, heads, rows).to(p.dtype)[..., None]

        for observe in watching:
            observe(module, weights_of)
        if wants:
            if weights is None:
                weights = probabilities(query, key, lse, mask=mask, bias=score, causal=causal, scale=scaling)
            if kept is not None:
                weights = weights * kept.to(weights.dtype)[..., None]  # (B, Hq, Nq, Nk): the sink's share left out
    scales = head_scales(module)
    if scales is not None:  # a head mask held at 1 (`qkv.interpret.head_importance`): ∂loss/∂scale per head
        factor = scales(out.shape[0], out.shape[1], out.device)  # (B, Hq)
        out = out * factor[:, :, None, None].to(out.dtype)  # (B, Hq, Nq, Dv)
    return out.transpose(1, 2).contiguous(), weights  # (B, Hq, Nq, Dv) -> (B, Nq, Hq, Dv)
