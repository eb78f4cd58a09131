"""The exceptions qkv raises for bad input: `AttentionError`, and `ModelError` for models and their files."""


class AttentionError(ValueError):
    """Bad input to an attention function.

    The message names the argument, what was expected, what was given and,
    where there is one, the fix.

    >>> import torch, qkv
    >>> q = torch.randn(2, 4, 8)                      # missing the head axis
    >>> qkv.attention(q, q, q)
    Traceback (most recent call last):
    ...
    qkv.errors.AttentionError: q: expected a 4-D tensor (B, Hq, Nq, D), got shape (2, 4, 8); ...
    """


class ModelError(AttentionError):
    """A model name, path, configuration or weight file that qkv cannot use.

    Like every qkv input error it is an ``AttentionError`` (a ``ValueError``),
    and its message says what was expected, what was found and the fix.
    """
