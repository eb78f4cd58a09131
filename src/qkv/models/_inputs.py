"""What the models take besides token ids: HF's ``attention_mask``, read as a qkv key mask."""

from __future__ import annotations

from torch import Tensor

from qkv import checks
from qkv.models.packages import ModelError


def key_mask(attention_mask: object, shape: tuple[int, ...], layout: str) -> Tensor | None:
    """HF's ``attention_mask (B, Nk)``, True / 1 at real tokens, as a key mask ``(B, 1, 1, Nk)``; None stays None.

    HF masks padded keys only, and so does this mask: a padded query row is
    computed (and ignored). ``layout`` says in the error which shape is expected.

    >>> import torch
    >>> key_mask(torch.tensor([[1, 1, 0]]), (1, 3), "(B, N)").shape
    torch.Size([1, 1, 1, 3])
    >>> key_mask(torch.tensor([[1, 1]]), (1, 3), "(B, N) = (1, 3)")
    Traceback (most recent call last):
    ...
    qkv.errors.ModelError: attention_mask: expected shape (B, N) = (1, 3) (1 / True at real tokens), got (1, 2)
    """
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor) or tuple(attention_mask.shape) != shape:
        given = checks.shape_of(attention_mask) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
        raise ModelError(f"attention_mask: expected shape {layout} (1 / True at real tokens), got {given}")
    return attention_mask.bool()[:, None, None, :]  # (B, Nk) -> (B, 1, 1, Nk)
