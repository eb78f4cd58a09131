"""The lessons' small markup: what it links to, how it reads as plain text, how facts fill it.

The page renders the markup itself (escaped, then the subset applied); the
server only needs to know which glossary terms and lessons a text links to (so
the loader can check every link), to turn it into terminal text, and to fill a
reveal's ``{fact}`` placeholders with what a widget computed.

>>> links("A [score](term:attention-score) feeds [softmax](term:softmax); see [masks](lesson:masks).")
[('term', 'attention-score'), ('term', 'softmax'), ('lesson', 'masks')]
>>> plain("**Softmax** of `s`: see [the glossary](term:softmax).")
'Softmax of s: see the glossary.'
>>> fill("{top_token} took {top_weight:.0%} of the weight", {"top_token": "cat", "top_weight": 0.61234})
'cat took 61% of the weight'
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

__all__ = ["fields", "fill", "links", "plain"]

_LINK = re.compile(r"\[([^\]]+)\]\((term|lesson):([a-z0-9-]+)\)")
_EMPHASIS = re.compile(r"\*\*(.+?)\*\*|\*(.+?)\*|`([^`]+)`")


def links(text: str) -> list[tuple[str, str]]:
    """The ``(kind, id)`` of every ``[words](term:ID)`` and ``[words](lesson:ID)`` link, in order."""
    return [(kind, ident) for _, kind, ident in _LINK.findall(text)]


def plain(text: str) -> str:
    """The text without markup: links become their words, emphasis and code marks go."""
    text = _LINK.sub(lambda m: m.group(1), text)
    return _EMPHASIS.sub(lambda m: next(g for g in m.groups() if g is not None), text)


def fields(text: str) -> list[str]:
    """The names a text's ``{name}`` / ``{name:format}`` placeholders ask for."""
    return [name for _, name, _, _ in string.Formatter().parse(text) if name]


def fill(text: str, facts: Mapping[str, Any]) -> str:
    """``text`` with its placeholders replaced by ``facts`` (Python's format syntax); ``{{``/``}}`` are braces.

    A placeholder naming a list takes an index (``{tokens[3]}``); a value the
    format does not fit (a string given ``:.0%``) is written as it is.
    """
    out = []
    for literal, name, spec, _conversion in string.Formatter().parse(text):
        out.append(literal)
        if name is None:
            continue
        value = _lookup(facts, name)
        try:
            out.append(format(value, spec or ""))
        except (TypeError, ValueError):
            out.append(str(value))
    return "".join(out)


def _lookup(facts: Mapping[str, Any], name: str) -> Any:
    base, _, rest = name.partition("[")
    value = facts[base]
    while rest:
        index, _, rest = rest.partition("]")
        value = value[int(index)] if index.lstrip("-").isdigit() else value[index]
        rest = rest.lstrip("[")
    return value
