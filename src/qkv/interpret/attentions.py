"""`Attentions`: every layer's and head's attention probabilities for one text, as a loaded model returns them
(qkv's own models through `qkv.models`, transformers models through `qkv.hf.loaded`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass(frozen=True)
class Attentions:
    """The attention probabilities of every layer and head for one text.

    Attributes:
        model: the model's name (``"minilm"``, or the path it was loaded from).
        text: the text.
        ids: its token ids (N).
        tokens: one readable string per token (``' cat'`` for BPE's ``'Ġcat'``;
            WordPiece pieces keep their ``##``).
        special: True at tokens the tokenizer adds or treats as control tokens
            (``[CLS]``, ``[SEP]``, ``<|im_start|>``).
        word_ids: the word each token belongs to (None for special tokens), as the
            tokenizer's pre-tokenizer split the text: pieces of one word share it.
        weights: ``(L, H, N, N)`` float32, ``weights[l, h, i, j]`` = how much token
            ``i`` attends to token ``j`` in layer ``l``, head ``h`` (rows sum to 1;
            a causal model's row ``i`` is 0 beyond ``j > i``).
        causal: whether token ``i`` sees only tokens ``j <= i`` (a decoder).
    """

    model: str
    text: str
    ids: list[int]
    tokens: list[str]
    special: list[bool]
    word_ids: list[int | None]
    weights: Tensor = field(repr=False)
    causal: bool

    @property
    def num_layers(self) -> int:
        return int(self.weights.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.weights.shape[1])


__all__ = ["Attentions"]
