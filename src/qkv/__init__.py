"""qkv: exact attention, as fast as the best kernels, that you can look inside.

>>> import torch, qkv
>>> q = torch.randn(2, 8, 16, 64)            # (B, H, N, D)
>>> qkv.attention(q, q, q, causal=True).shape
torch.Size([2, 8, 16, 64])
"""

from qkv import interpret, masks, mods, reference, viz
from qkv.dispatch import Dispatch
from qkv.errors import AttentionError, ModelError
from qkv.functional import attention, attention_weights, explain_dispatch

__version__ = "0.1.0"

__all__ = [
    "AttentionError",
    "Dispatch",
    "ModelError",
    "attention",
    "attention_weights",
    "explain_dispatch",
    "interpret",
    "masks",
    "mods",
    "reference",
    "viz",
    "__version__",
]
