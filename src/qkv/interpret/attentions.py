"""`Attentions`: every layer's and head's attention probabilities for one text, as a loaded model returns them
(qkv's own models through `qkv.models`, transformers models through `qkv.hf.loaded`).

`TokenizedText` is what it says of the text's tokens, read from the tokenizer in one place
(`TokenizedText.read`): which are special, which word each belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self

from torch import Tensor

# Tokens an added-tokens table marks special that are text, not control: the unknown-word token.
_NOT_CONTROL = ("[UNK]", "<unk>")


@dataclass(frozen=True)
class TokenizedText:
    """A text as a loaded model's tokenizer reads it.

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
    """

    model: str
    text: str
    ids: list[int]
    tokens: list[str]
    special: list[bool]
    word_ids: list[int | None]

    @classmethod
    def read(cls, tokenizer: Any, text: str, ids: list[int], *, model: str, encoding: Any = None, **more: Any) -> Self:
        """``cls`` for ``text`` and its ``ids`` (``tokenizer.encode(text)``); ``more`` are the subclass's fields.

        ``tokenizer`` has ``.tokens(ids)`` and ``.backend`` (a ``tokenizers.Tokenizer``);
        ``encoding`` is ``tokenizer.backend.encode(text)`` where the caller has it already.
        """
        encoding = tokenizer.backend.encode(text) if encoding is None else encoding
        added = tokenizer.backend.get_added_tokens_decoder()
        special_ids = {i for i, t in added.items() if t.special and t.content not in _NOT_CONTROL}
        special = [bool(m) or i in special_ids for i, m in zip(ids, encoding.special_tokens_mask)]
        return cls(
            model=model,
            text=text,
            ids=ids,
            tokens=tokenizer.tokens(ids),
            special=special,
            word_ids=[None if s else w for w, s in zip(encoding.word_ids, special)],
            **more,
        )


@dataclass(frozen=True)
class Attentions(TokenizedText):
    """The attention probabilities of every layer and head for one text.

    Attributes:
        model, text, ids, tokens, special, word_ids: the text's tokens (`TokenizedText`).
        weights: ``(L, H, N, N)`` float32, ``weights[l, h, i, j]`` = how much token
            ``i`` attends to token ``j`` in layer ``l``, head ``h`` (rows sum to 1;
            a causal model's row ``i`` is 0 beyond ``j > i``).
        causal: whether token ``i`` sees only tokens ``j <= i`` (a decoder).
    """

    weights: Tensor = field(repr=False)
    causal: bool

    @property
    def num_layers(self) -> int:
        return int(self.weights.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.weights.shape[1])


__all__ = ["Attentions", "TokenizedText"]
