"""Position-wise feed-forward blocks: a two-layer MLP (`FeedForward`) and Llama's gated `SwiGLU`."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from qkv.errors import AttentionError


def _gelu_tanh(x: Tensor) -> Tensor:
    return nn.functional.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": nn.functional.gelu,  # exact: x · Φ(x) with the erf (BERT, torch's "gelu")
    "gelu_tanh": _gelu_tanh,  # the tanh approximation (GPT-2's "gelu_new")
    "relu": nn.functional.relu,
}
FEEDFORWARDS = (*ACTIVATIONS, "swiglu")


class FeedForward(nn.Module):
    """``down_proj(dropout(act(up_proj(x))))``, applied at every position ``(B, N, E) -> (B, N, E)``.

    ``activation``: ``"gelu"`` (exact, with erf, as BERT and torch), ``"gelu_tanh"``
    or ``"relu"``. BERT's ``intermediate.dense`` is ``up_proj``, its ``output.dense``
    is ``down_proj``.

    >>> import torch
    >>> from qkv.nn import FeedForward
    >>> ffn = FeedForward(8, 32)
    >>> x = torch.randn(2, 5, 8)                    # (B, N, E)
    >>> h = ffn.up_proj(x)
    >>> exact_gelu = h * 0.5 * (1 + torch.erf(h / 2 ** 0.5))
    >>> torch.allclose(ffn(x), ffn.down_proj(exact_gelu), atol=1e-6)
    True
    """

    def __init__(
        self, embed_dim: int, ffn_dim: int, activation: str = "gelu", *, bias: bool = True, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise AttentionError(
                f"activation: unknown activation {activation!r}; choose one of "
                f"{', '.join(map(repr, ACTIVATIONS))} (or use SwiGLU for 'swiglu')"
            )
        self.activation = activation
        self.up_proj = nn.Linear(embed_dim, ffn_dim, bias=bias)
        self.down_proj = nn.Linear(ffn_dim, embed_dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.down_proj(_drop(self.dropout, ACTIVATIONS[self.activation](self.up_proj(x))))
        return out

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


def _drop(dropout: nn.Dropout, x: Tensor) -> Tensor:
    """``dropout(x)``, skipped where it is the identity (eval mode, p = 0): one call less per layer."""
    return dropout(x) if dropout.training and dropout.p > 0 else x


class SwiGLU(nn.Module):
    """Llama's gated feed-forward: ``down_proj(silu(gate_proj(x)) * up_proj(x))`` (Shazeer, 2020).

    Names as in HF Llama's ``mlp``: ``gate_proj``, ``up_proj``, ``down_proj``.

    >>> import torch
    >>> from qkv.nn import SwiGLU
    >>> ffn = SwiGLU(8, 24)
    >>> x = torch.randn(2, 5, 8)                    # (B, N, E)
    >>> g = ffn.gate_proj(x)
    >>> expected = ffn.down_proj(g * torch.sigmoid(g) * ffn.up_proj(x))
    >>> torch.allclose(ffn(x), expected, atol=1e-6)
    True
    """

    def __init__(self, embed_dim: int, ffn_dim: int, *, bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(embed_dim, ffn_dim, bias=bias)
        self.up_proj = nn.Linear(embed_dim, ffn_dim, bias=bias)
        self.down_proj = nn.Linear(ffn_dim, embed_dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.down_proj(_drop(self.dropout, nn.functional.silu(self.gate_proj(x)) * self.up_proj(x)))
        return out


def make_feedforward(activation: str, embed_dim: int, ffn_dim: int, *, bias: bool, dropout: float = 0.0) -> nn.Module:
    """`SwiGLU` for ``"swiglu"``, else a `FeedForward` with that activation.

    >>> from qkv.nn.feedforward import make_feedforward
    >>> type(make_feedforward("swiglu", 8, 16, bias=False)).__name__
    'SwiGLU'
    """
    if activation == "swiglu":
        return SwiGLU(embed_dim, ffn_dim, bias=bias, dropout=dropout)
    return FeedForward(embed_dim, ffn_dim, activation, bias=bias, dropout=dropout)


__all__ = ["ACTIVATIONS", "FEEDFORWARDS", "FeedForward", "SwiGLU", "make_feedforward"]
