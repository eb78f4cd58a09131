"""Normalization layers: torch's `LayerNorm` and Llama's `RMSNorm`, and `make_norm` to pick one by name."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qkv.errors import AttentionError

LayerNorm = nn.LayerNorm  # (x - mean) / sqrt(var + eps) * weight + bias; BERT uses eps=1e-12

NORMS = ("layernorm", "rmsnorm")


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, 2019), as Llama computes it.

    ``x / sqrt(mean(x²) + eps) * weight``, the normalization in float32 and the
    product with ``weight`` after casting back to x's dtype (HF ``LlamaRMSNorm``), so
    half-precision inputs give Llama's numbers. No mean is subtracted, no bias added.

    >>> import torch
    >>> from qkv.nn import RMSNorm
    >>> norm = RMSNorm(4, eps=1e-6)
    >>> x = torch.tensor([[1.0, -2.0, 3.0, -4.0]])
    >>> expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6)
    >>> torch.allclose(norm(x), expected)
    True
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.dim:
            raise AttentionError(f"x: expected last dim {self.dim}, got shape {tuple(x.shape)}")
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:  # same numbers, one fused kernel
            return nn.functional.rms_norm(x, (self.dim,), self.weight, self.eps)
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """``"layernorm"`` → `LayerNorm` (with bias), ``"rmsnorm"`` → `RMSNorm`.

    >>> from qkv.nn.norm import make_norm
    >>> make_norm("rmsnorm", 8, 1e-5)
    RMSNorm(8, eps=1e-05)
    """
    if kind == "layernorm":
        return LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise AttentionError(f"norm: unknown norm {kind!r}; choose one of {', '.join(map(repr, NORMS))}")


__all__ = ["NORMS", "LayerNorm", "RMSNorm", "make_norm"]
