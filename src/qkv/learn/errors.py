"""The one exception the course raises for a bad lesson file, a bad request or a bad answer."""

from __future__ import annotations


class LearnError(ValueError):
    """Something the course refuses: the message names what is wrong and how to fix it.

    ``status`` is the HTTP status the explorer answers with (400 bad input, 404 unknown id).

    >>> raise LearnError("lesson: unknown id 'x'; expected one of ['soft-lookup']", status=404)
    Traceback (most recent call last):
    ...
    qkv.learn.errors.LearnError: lesson: unknown id 'x'; expected one of ['soft-lookup']
    """

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
