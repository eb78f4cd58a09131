"""`BackendTokenizer`: text <-> ids on a ``tokenizers.Tokenizer``, the part every loaded model's tokenizer shares.

qkv's own tokenizers (`qkv.models.Tokenizer`) and a transformers model's
(`qkv.hf.loaded.TransformersTokenizer`) both keep a ``tokenizers`` backend with
padding and truncation off; encoding, decoding and padding a batch are the same
for both, here, below the two layers that cannot import each other. How a token
reads (``tokens``, from `BackendTokenizer._pieces`) and the chat template stay with each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from qkv import checks
from qkv.errors import ModelError


def id_list(ids: Sequence[int] | Tensor) -> list[int]:
    """``ids`` as a list of ints, from a sequence or a 1-D tensor."""
    if isinstance(ids, Tensor):
        if ids.dim() != 1:
            raise ModelError(f"ids: expected a 1-D tensor or a list of ints, got shape {tuple(ids.shape)}")
        return [int(i) for i in ids.tolist()]
    return [int(i) for i in ids]


class BackendTokenizer:
    """``encode``, ``decode``, ``batch`` and ``vocab_size`` over ``backend``, a ``tokenizers.Tokenizer``.

    Attributes:
        backend: the ``tokenizers.Tokenizer``, padding and truncation off.
        kind: ``"wordpiece"`` or ``"bpe"``.
        bos_id, eos_id: the ids that open and close a text (BERT: ``[CLS]`` / ``[SEP]``), or None.
        pad_id: the id `batch` pads with.
        max_length: the most ids one text may have (the model's positions).
        chat_template: the model's chat template (Jinja2), or None.
    """

    def __init__(
        self,
        backend: Any,
        *,
        kind: Literal["wordpiece", "bpe"],
        bos_id: int | None,
        eos_id: int | None,
        pad_id: int,
        max_length: int,
        chat_template: str | None = None,
    ) -> None:
        self.backend = backend
        self.kind = kind
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.max_length = max_length
        self.chat_template = chat_template

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """The ids of ``text``, with the special tokens the tokenizer adds (``[CLS] ... [SEP]`` for BERT).

        Special tokens written in the text (``<|im_start|>``) become their ids.
        Raises ``ModelError`` past ``max_length`` ids — never truncates silently.
        """
        checks.string("text", text, error=ModelError)
        return self._within_length(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def _within_length(self, ids: Sequence[int]) -> list[int]:
        if len(ids) > self.max_length:
            raise ModelError(
                f"text: expected at most {self.max_length} tokens (the model's positions), got {len(ids)}; "
                "shorten the text"
            )
        return list(ids)

    def decode(self, ids: Sequence[int] | Tensor, *, skip_special_tokens: bool = False) -> str:
        """The text of ``ids``; ``skip_special_tokens=True`` drops ``<|im_end|>``, ``[CLS]`` and the like."""
        text: str = self.backend.decode(id_list(ids), skip_special_tokens=skip_special_tokens)
        return text

    def _pieces(self, ids: Sequence[int] | Tensor) -> list[str]:
        """The vocabulary's spelling of each id (``'Ġcat'``); a subclass's ``tokens`` makes them readable."""
        pieces = []
        for i in id_list(ids):
            token = self.backend.id_to_token(i)
            if token is None:
                raise ModelError(f"ids: expected ids in [0, {self.vocab_size}), got {i}")
            pieces.append(str(token))
        return pieces

    def batch(self, texts: Sequence[str], *, padding_side: Literal["right", "left"] = "right") -> tuple[Tensor, Tensor]:
        """``(input_ids (B, N) int64, attention_mask (B, N) bool)`` padded with ``pad_id``.

        ``attention_mask`` is True at real tokens (qkv's one polarity: True = may attend).
        Left padding is what batched generation with a decoder wants.
        """
        if isinstance(texts, str) or not texts:
            raise ModelError(f"texts: expected a non-empty list of str, got {texts!r}")
        for text in texts:
            checks.string("text", text, error=ModelError)
        rows = [self._within_length(e.ids) for e in self.backend.encode_batch(list(texts))]  # one call, all texts
        n = max(len(r) for r in rows)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.bool)
        for b, row in enumerate(rows):
            span = slice(0, len(row)) if padding_side == "right" else slice(n - len(row), n)
            ids[b, span] = torch.tensor(row, dtype=torch.long)
            mask[b, span] = True
        return ids, mask


__all__ = ["BackendTokenizer", "id_list"]
