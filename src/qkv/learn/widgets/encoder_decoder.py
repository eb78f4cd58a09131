"""``encoder-decoder``: one sentence through an encoder (MiniLM) and a decoder (SmolLM2): who may see the future.

MiniLM is a BERT encoder: its only mask is padding, and one text has none, so
every token attends to every token, the ones after it included. SmolLM2 is a
Llama decoder: its causal mask lets token ``i`` see only keys ``j <= i``, so it
can be trained to predict the next token without reading it. The widget takes
both models' exact attention probabilities (``model.attentions(text)``, recorded
by `qkv.interpret.record`) at the same ``layer`` and ``head`` and measures the
*future weight*: for each query row, the total weight on keys after the query,
averaged over the rows. The encoder's is above 0; the decoder's is exactly 0
(the causal mask's probabilities are exact zeros, not small numbers).

Default: layer 2, head 3. Measured on the default sentence when it was
chosen: MiniLM's layer 2 head 3 puts about a third of each row's weight on later
tokens, which the picture shows plainly; head 0 of the same layer puts only about
2% there (it reads mostly backwards and from [CLS]), and layer 0 head 2 puts
none at all: it attends to the previous token. The encoder's mask *permits*
looking ahead; it does not oblige a head to.

Caveats: the two models tokenize differently (MiniLM adds [CLS] / [SEP] and
splits into word pieces; SmolLM2 uses byte-level BPE and adds nothing), so the
matrices have different sizes; "layer 2" is a different depth in a 6-layer and
a 30-layer model. ``layer`` stops at 5 and ``head`` at 8, the limits both share.
The models run in float32; the future weights are summed in ``env.dtype``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from qkv.learn.widget import Control, Env, Result, Widget, register
from qkv.learn.widgets.model_attention import run_attentions

__all__ = ["EncoderDecoder", "future_weight"]


def future_weight(weights: Tensor) -> float:
    """The mean over query rows of the total weight on keys after the query (``weights (N, N)``).

    >>> future_weight(torch.tensor([[0.5, 0.5], [0.25, 0.75]]))    # row 0 puts 0.5 on key 1; row 1 has no future
    0.25
    """
    n = weights.shape[-1]
    after = torch.ones(n, n, dtype=torch.bool, device=weights.device).triu(1)  # (N, N): True where key j > query i
    return float((weights * after).sum(-1).mean())  # (N, N) -> (N,) -> ()


def _matrix(title: str, tokens: list[str], weights: Tensor, caption: str) -> dict[str, Any]:
    return {
        "kind": "matrix",
        "title": title,
        "rows": tokens,
        "cols": tokens,
        "values": [[round(float(w), 5) for w in row] for row in weights.tolist()],
        "caption": caption,
    }


@register
class EncoderDecoder(Widget):
    """The same sentence's attention in an encoder (padding mask only) and a decoder (causal mask)."""

    name = "encoder-decoder"
    title = "Encoder and decoder attention"
    controls = (
        Control("text", "text", "text", "The cat sat on the mat.", high=200),
        Control("layer", "slider", "layer", 2, low=0, high=5, step=1, help="the same index in both models"),
        Control("head", "slider", "head", 3, low=0, high=8, step=1, help="the same index in both models"),
    )
    facts = ("encoder_future_weight", "decoder_future_weight", "tokens_encoder", "tokens_decoder")
    models = ("minilm", "smollm2")

    def compute(self, args: dict[str, Any], env: Env) -> Result:
        layer, head = args["layer"], args["head"]
        enc = run_attentions(env, "minilm", args["text"])
        dec = run_attentions(env, "smollm2", args["text"])
        w_enc = enc.weights[layer, head].to(env.dtype)  # (N, N)
        w_dec = dec.weights[layer, head].to(env.dtype)  # (M, M)
        f_enc, f_dec = future_weight(w_enc), future_weight(w_dec)
        views = [
            _matrix(
                f"Encoder (MiniLM, padding mask only) layer {layer} head {head}",
                list(enc.tokens),
                w_enc,
                f"Every token sees every token: on average {f_enc:.1%} of a row's weight lies on later tokens.",
            ),
            _matrix(
                f"Decoder (SmolLM2, causal mask) layer {layer} head {head}",
                list(dec.tokens),
                w_dec,
                f"Token i sees only tokens 0..i: the weight on later tokens is {f_dec:.0%}, the upper triangle is 0.",
            ),
        ]
        facts = {
            "encoder_future_weight": round(f_enc, 6),
            "decoder_future_weight": round(f_dec, 6),
            "tokens_encoder": list(enc.tokens),
            "tokens_decoder": list(dec.tokens),
        }
        return Result(views=views, facts=facts)
