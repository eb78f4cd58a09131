"""``block``: one transformer block of MiniLM traced sublayer by sublayer, with and without its residuals.

MiniLM's layers are post-norm BERT layers (`qkv.nn.TransformerEncoderLayer` with
``norm_first=False``)::

    a   = self_attn(x)                 the attention sublayer's output
    h   = attn_norm(x + a)             residual, then LayerNorm
    f   = ffn(h)                       the feed-forward sublayer's output
    out = ffn_norm(h + f)              residual, then LayerNorm: the layer's output

The widget runs the text through the embeddings and layers ``0 .. layer-1`` to
get ``x`` (the input of layer ``layer``), then calls that layer's own modules
(``self_attn``, ``attn_norm``, ``ffn``, ``ffn_norm``) one by one: with
``residual`` on, the result equals ``layer(x)``; with it off, the two additions
are dropped (``h = attn_norm(a)``, ``out = ffn_norm(f)``) and everything else is
kept. Facts: ``attention_norm_ratio`` = mean over tokens of ``||a|| / ||x||``,
``ffn_norm_ratio`` = mean of ``||f|| / ||h||`` (``h`` is what the feed-forward
reads), ``similarity_in_out`` = mean cosine between each token's ``x`` and
``out``. With the residuals each token leaves the layer pointing almost where it
came in (the sublayers add a correction); without them the output is whatever
the sublayers make of it, and the similarity collapses.

Caveats: one layer of one trained model; the model was trained *with*
residuals, so the ablated layer shows what the residuals carry, not what a
network trained without them would do. LayerNorm rescales every vector, so
lengths after a norm say little; the ratios compare the sublayers' outputs with
their inputs. The layers before ``layer`` run in the model's float32; the traced
layer runs in ``env.dtype`` (a copy of its modules for float64).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from qkv.learn.widget import Control, Env, Result, Widget, register
from qkv.learn.widgets.model_attention import check_length

__all__ = ["Block", "trace_layer"]


def trace_layer(layer: nn.Module, x: Tensor, *, residual: bool = True) -> dict[str, Tensor]:
    """The stages ``x, a, h, f, out`` of a post-norm encoder layer on ``x (B, N, E)`` (each ``(B, N, E)``).

    >>> from qkv.nn import LayerConfig, TransformerEncoderLayer
    >>> layer = TransformerEncoderLayer(LayerConfig(embed_dim=16, num_heads=2, ffn_dim=32)).eval()
    >>> x = torch.randn(1, 4, 16)
    >>> torch.allclose(trace_layer(layer, x)["out"], layer(x), atol=1e-6)
    True
    """
    a = layer.self_attn(x)  # (B, N, E)
    h = layer.attn_norm(x + a if residual else a)
    f = layer.ffn(h)
    out = layer.ffn_norm(h + f if residual else f)
    return {"x": x, "a": a, "h": h, "f": f, "out": out}


def _ratios(stages: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per token (N,): ``||a||/||x||``, ``||f||/||h||`` and ``cos(x, out)``."""
    x, a, h, f, out = (stages[k][0] for k in ("x", "a", "h", "f", "out"))  # each (N, E)
    return {
        "attention": a.norm(dim=-1) / x.norm(dim=-1),
        "ffn": f.norm(dim=-1) / h.norm(dim=-1),
        "cosine": torch.nn.functional.cosine_similarity(x, out, dim=-1),
    }


@register
class Block(Widget):
    """One MiniLM encoder layer: sublayer outputs, their sizes, and how much the residuals keep."""

    name = "block"
    title = "The transformer block"
    controls = (
        Control("text", "text", "text", "The cat sat on the mat.", high=200),
        Control("layer", "slider", "layer", 2, low=0, high=5, step=1),
        Control(
            "residual",
            "toggle",
            "residual connections",
            True,
            help="off: the layer computes norm(attention(x)) and norm(ffn(...)) without adding x back",
        ),
    )
    facts = ("attention_norm_ratio", "ffn_norm_ratio", "similarity_in_out")
    models = ("minilm",)

    def compute(self, args: dict[str, Any], env: Env) -> Result:
        model = env.model("minilm")
        ids = model.encode(args["text"])
        check_length("text", len(ids))
        tokens = model.tokenizer.tokens(ids)
        index = args["layer"]
        bert = model.model
        with env.lock("minilm"), torch.no_grad():
            x = bert.embeddings(torch.tensor([ids], dtype=torch.long))  # (1, N) -> (1, N, E)
            for layer in bert.layers[:index]:
                x = layer(x)
            layer = bert.layers[index]
            if bert.embeddings.tokens.weight.dtype != env.dtype:
                layer = copy.deepcopy(layer).to(env.dtype)  # the traced layer in the precision asked for
            x = x.to(env.dtype)
            modes = {on: trace_layer(layer, x, residual=on) for on in (True, False)}
        chosen, other = modes[args["residual"]], modes[not args["residual"]]
        r, r_other = _ratios(chosen), _ratios(other)
        facts = {
            "attention_norm_ratio": round(float(r["attention"].mean()), 6),
            "ffn_norm_ratio": round(float(r["ffn"].mean()), 6),
            "similarity_in_out": round(float(r["cosine"].mean()), 6),
        }
        mode = "with residuals" if args["residual"] else "without residuals"
        other_mode = "without residuals" if args["residual"] else "with residuals"
        stages = [
            "x (input)",
            "a = attention(x)",
            "h = norm(x + a)" if args["residual"] else "h = norm(a)",
            "f = ffn(h)",
            "out = norm(h + f)" if args["residual"] else "out = norm(f)",
        ]

        def lengths(s: dict[str, Tensor]) -> list[float]:
            return [round(float(s[k][0].norm(dim=-1).mean()), 4) for k in ("x", "a", "h", "f", "out")]

        views = [
            {
                "kind": "bars",
                "title": f"MiniLM layer {index}, {mode}: mean vector length at each stage",
                "labels": stages,
                "values": lengths(chosen),
                "caption": (
                    f"||a|| / ||x|| = {facts['attention_norm_ratio']:.2f} and ||f|| / ||h|| = "
                    f"{facts['ffn_norm_ratio']:.2f} on average: what each sublayer adds, relative to what it reads. "
                    "After a LayerNorm every length is rescaled."
                ),
            },
            {
                "kind": "bars",
                "title": f"cosine(token before the layer, token after it), {mode} vs {other_mode}",
                "labels": tokens,
                "values": [round(float(c), 4) for c in r["cosine"]],
                "compare": [round(float(c), 4) for c in r_other["cosine"]],
                "series": [mode, other_mode],
                "caption": (
                    f"Mean {facts['similarity_in_out']:.2f} {mode}, {float(r_other['cosine'].mean()):.2f} "
                    f"{other_mode}. The model was trained with residuals: removing them shows what they carry."
                ),
            },
            {
                "kind": "table",
                "title": f"Per token, layer {index} {mode}",
                "columns": ["token", "||a|| / ||x||", "||f|| / ||h||", "cos(x, out)", f"cos(x, out) {other_mode}"],
                "rows": [
                    [t, round(float(a), 4), round(float(f), 4), round(float(c), 4), round(float(o), 4)]
                    for t, a, f, c, o in zip(tokens, r["attention"], r["ffn"], r["cosine"], r_other["cosine"])
                ],
            },
        ]
        return Result(views=views, facts=facts)
