"""Text as it comes: the pieces of a decoded token stream, never half a character.

A tokenizer may spell one character over several tokens (a byte-level BPE splits an
emoji into its UTF-8 bytes); decoding the tokens so far then ends in ``"\\ufffd"``.
`text_pieces` holds such a piece back until the later tokens complete it, so that the
pieces joined are exactly the decoded text of every token.

>>> table = {1: "Hel", 2: "lo", 3: "\\ufffd", 4: "!"}       # 3 alone is half a character
>>> def decode(ids):
...     text = "".join(table[i] for i in ids)
...     return text.replace("\\ufffd!", "\\u00e9")            # 3 then 4 spell one character
>>> list(text_pieces(iter([1, 2, 3, 4]), decode))
['Hel', 'lo', 'é']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

__all__ = ["text_pieces"]


def text_pieces(tokens: Iterable[int], decode: Callable[[list[int]], str]) -> Iterator[str]:
    """The new text after each token of ``tokens``, as ``decode`` (of all the tokens so far) spells it.

    A piece is held back while the text ends inside a character (``"\\ufffd"``); the
    pieces joined equal ``decode(list(tokens))``.
    """
    new: list[int] = []
    shown = ""
    for token in tokens:
        new.append(int(token))
        text = decode(new)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its other bytes
            continue
        if text.startswith(shown):
            piece, shown = text[len(shown) :], text
            if piece:
                yield piece
    text = decode(new)
    if text != shown and text.startswith(shown):
        yield text[len(shown) :]
