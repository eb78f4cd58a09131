"""ALiBi (Press et al., 2022): a linear penalty on the distance to each key, one slope per query head."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from qkv import checks
from qkv.errors import AttentionError
from qkv.mods.base import RelativeBias, ScoreMod


def alibi_slopes(num_heads: int) -> Tensor:
    """The ALiBi head slopes of Press et al. (2022), float64 ``(num_heads,)``.

    For ``n`` a power of two: ``2^(-8/n · (h+1))``. Otherwise the slopes of the
    closest smaller power of two ``c``, then every other slope of ``2c`` heads
    (as the paper's code and HF BLOOM's ``build_alibi_tensor`` do).

    >>> alibi_slopes(4)
    tensor([0.2500, 0.0625, 0.0156, 0.0039], dtype=torch.float64)
    """
    num_heads = checks.integer("num_heads", num_heads, minimum=1, where="alibi")
    closest = 2 ** math.floor(math.log2(num_heads))
    base = 2.0 ** (-8.0 / closest)
    slopes = [base ** (h + 1) for h in range(closest)]
    if closest != num_heads:
        extra = 2.0 ** (-8.0 / (2 * closest))
        slopes += [extra ** (2 * h + 1) for h in range(num_heads - closest)]
    return torch.tensor(slopes, dtype=torch.float64)


class ALiBi(RelativeBias):
    """``score + slopes[h] · (j - i')``: see `alibi`."""

    where, per_head = "alibi", "slopes"

    def __init__(self, slopes: Tensor, num_heads: int | None):
        self.slopes = slopes  # (H,) float
        self._num_heads = num_heads  # for the repr, when built from a head count

    @property
    def num_heads(self) -> int:
        return self.slopes.shape[0]

    def relative_bias(self, h: Tensor, relative: Tensor, dtype: torch.dtype) -> Tensor:
        return self.slopes.to(device=relative.device, dtype=dtype)[h] * relative.to(dtype)  # slope · (j - i')

    def __repr__(self) -> str:
        if self._num_heads is not None:
            return f"alibi({self._num_heads})"
        slopes = self.slopes
        shown = [round(s, 6) for s in slopes.tolist()] if slopes.numel() <= 8 else f"<{tuple(slopes.shape)}>"
        return f"alibi(slopes={shown})"


def alibi(num_heads: int | Tensor | Sequence[float] | None = None, *, slopes: Tensor | None = None) -> ScoreMod:
    """ALiBi (Press et al., 2022): ``score + slope[h] · (j - i')``, with ``i' = i + (Nk - Nq)``.

    ``alibi(num_heads)`` uses the standard slopes (`alibi_slopes`); ``alibi(slopes)``
    (or ``alibi(slopes=...)``) takes a 1-D float tensor, one slope per query head.

    Sign and alignment: the bias is ``slope · (j - i')``, the paper's causal form:
    ``0`` for the query's own position and ``-slope · distance`` for a key
    ``distance`` positions in the past. Use it with a causal mask: future keys
    (``j > i'``) would get a *positive* bias. Softmax ignores a per-row constant,
    so this equals BLOOM's ``slope · j``. For a symmetric bidirectional variant,
    ``-slope · |i' - j|``, write it with `from_function`.

    >>> import torch
    >>> alibi(8).slopes[:3]
    tensor([0.5000, 0.2500, 0.1250], dtype=torch.float64)
    >>> alibi(1).additive_bias(1, 1, 3, 3)[0, 0]      # 1 head, slope 2^-8 · (j - i')
    tensor([[ 0.0000,  0.0039,  0.0078],
            [-0.0039,  0.0000,  0.0039],
            [-0.0078, -0.0039,  0.0000]])
    """
    if (num_heads is None) == (slopes is None):
        raise AttentionError("alibi: give exactly one of num_heads (standard slopes) or slopes (one per query head)")
    if isinstance(num_heads, Tensor) or (isinstance(num_heads, Sequence) and not isinstance(num_heads, str)):
        num_heads, slopes = None, num_heads  # alibi(tensor): the slopes, given positionally
    if slopes is not None:
        slopes = torch.as_tensor(slopes)
        if not slopes.is_floating_point() or slopes.dim() != 1 or slopes.numel() == 0:
            raise AttentionError(
                f"alibi: slopes must be a non-empty 1-D float tensor (one slope per query head), "
                f"got dtype {slopes.dtype} and shape {tuple(slopes.shape)}"
            )
        if not torch.isfinite(slopes).all():
            raise AttentionError(f"alibi: slopes must be finite, got {slopes.tolist()}")
        return ALiBi(slopes.detach().to(torch.float64), None)
    num_heads = checks.integer("num_heads", num_heads, minimum=1, where="alibi")
    return ALiBi(alibi_slopes(num_heads), num_heads)


__all__ = ["ALiBi", "alibi", "alibi_slopes"]
