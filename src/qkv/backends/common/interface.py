"""What every backend (and every executor inside one) answers about a call, and how ``auto`` picks among them.

A backend is a module (or any object) with these names (the `Backend` protocol):

- ``NAME``: the string users pass as ``backend=``;
- ``TAKES_MASK_OBJECTS`` / ``TAKES_SCORE_MODS``: whether it takes structured masks
  (the protocol of `qkv.masks.Mask`) and score modifiers (the protocol of
  `qkv.mods.ScoreMod`) as they are; if not, `qkv.functional` hands it dense bool
  masks and dense additive biases;
- ``refuse(call)``: why it cannot compute this `Call` exactly, or None if it can. It
  is asked on every call, also when the caller names the backend: keep it cheap;
- ``estimate(call)``: an `Offer` ``(cost, reason)``, its estimated cost for the call and why it suits it.
  Only ``backend="auto"`` asks, and asks every backend, also those that refuse;
- ``attention(q, k, v, *, mask, bias, causal, scale, dropout_p, return_lse)``:
  ``(out, lse or None)``.

Costs are in one unit for every backend: the time torch's fused kernel (the ``sdpa``
backend) takes to compute every score of the call. The measured numbers estimates are
built from (the crossovers) come from `qkv.backends.common.crossovers`.

`cheapest` is the rule ``auto`` follows: the lowest estimated cost among those that do
not refuse; at equal cost the one listed later (registration runs from the most general
to the most specialised); an infinite cost is never chosen (the float64 reference runs only
when asked for). The refusals that would have cost less are the reasons the cheaper ones
were passed over. Executors inside a backend (blockwise has three) answer ``refuse`` and
``estimate`` too; where each is faster than the next wherever it serves (as blockwise's are),
the backend runs the first that does not refuse and builds its estimate on that one's.

>>> import math, torch
>>> class Cheap:
...     NAME = "cheap"
...     def refuse(self, call): return "it only takes causal calls" if not call.causal else None
...     def estimate(self, call): return Offer(0.5, "half the work")
>>> class Slow:
...     NAME = "slow"
...     def refuse(self, call): return None
...     def estimate(self, call): return Offer(3.0, "computes every call")
>>> q = torch.randn(1, 1, 4, 8)
>>> cheapest([Cheap(), Slow()], Call(q, q, q, causal=True)).name
'cheap'
>>> choice = cheapest([Cheap(), Slow()], Call(q, q, q))
>>> choice.name, choice.rejected
('slow', (('cheap', 'it only takes causal calls'),))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, TypedDict, Unpack

from torch import Tensor


class Call(NamedTuple):
    """One checked attention call as backends see it when asked about it.

    ``mask`` is None, a bool tensor broadcasting to ``(B, Hq, Nq, Nk)`` or a structured mask;
    ``bias`` is None, such a float tensor or a score modifier (both as the caller gave them:
    a backend that does not take them as they are gets them dense when it runs).
    """

    q: Tensor
    k: Tensor
    v: Tensor
    mask: object = None
    bias: object = None
    causal: bool = False
    scale: float = 1.0
    dropout_p: float = 0.0
    return_lse: bool = False

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(B, Hq, Nq, Nk)``: the shape of the attention matrix."""
        b, hq, nq, _ = self.q.shape
        return b, hq, nq, self.k.shape[2]

    @property
    def score_mod(self) -> bool:
        """Is ``bias`` a score modifier (a callable on the scores), not a tensor?"""
        return self.bias is not None and not isinstance(self.bias, Tensor)

    @property
    def structured_mask(self) -> bool:
        """Is ``mask`` a structured mask object, not a dense tensor?"""
        return self.mask is not None and not isinstance(self.mask, Tensor)


class Offer(NamedTuple):
    """An estimated cost (in units of torch's fused kernel computing every score) and why.

    A plain ``(cost, reason)`` tuple serves as well (the reference, which imports nothing
    but torch, answers with one).
    """

    cost: float
    reason: str


class Planner(Protocol):
    """What a backend, or an executor inside one, answers about a call."""

    NAME: str

    def refuse(self, call: Call) -> str | None: ...

    def estimate(self, call: Call) -> tuple[float, str]: ...


class Scores(TypedDict):
    """The keyword arguments that define the scores: ``mask``, ``bias``, ``causal``, ``scale``."""

    mask: Any  # None, a dense bool tensor, or (for backends that take them) a structured mask
    bias: Any  # None, a dense float tensor, or (for backends that take them) a score modifier
    causal: bool
    scale: float


class Arguments(Scores):
    """The keyword arguments of every backend's ``attention(q, k, v, **arguments)``."""

    dropout_p: float
    return_lse: bool


class Backend(Planner, Protocol):
    """A backend: it answers about calls and runs them."""

    TAKES_MASK_OBJECTS: bool
    TAKES_SCORE_MODS: bool

    def attention(
        self, q: Tensor, k: Tensor, v: Tensor, **arguments: Unpack[Arguments]
    ) -> tuple[Tensor, Tensor | None]:
        """``(out (B, Hq, Nq, Dv), lse (B, Hq, Nq) or None)``."""
        ...


class Choice(NamedTuple):
    """The planner `cheapest` chose, its offer, and ``(name, reason)`` of the cheaper ones that refused."""

    name: str
    offer: Offer
    rejected: tuple[tuple[str, str], ...]


def cheapest(planners: Sequence[Planner], call: Call) -> Choice | None:
    """The cheapest planner that computes ``call`` (later ones win ties), or None where none does."""
    offers = [p.estimate(call) for p in planners]
    best = 0
    for i in range(1, len(offers)):  # the usual case first: the cheapest serves, nothing was passed over
        if offers[i][0] <= offers[best][0]:
            best = i
    if offers[best][0] == math.inf:
        return None
    if planners[best].refuse(call) is None:
        return Choice(planners[best].NAME, Offer(*offers[best]), ())
    rejected: list[tuple[str, str]] = []
    for i in sorted(range(len(offers)), key=lambda i: (offers[i][0], -i)):
        offer, planner = offers[i], planners[i]
        if offer[0] == math.inf:
            break
        why_not = planner.refuse(call)
        if why_not is None:
            return Choice(planner.NAME, Offer(*offer), tuple(rejected))
        rejected.append((planner.NAME, why_not))
    return None


def register(registry: dict[str, Backend], backend: Backend) -> None:
    """Add ``backend`` under its ``NAME``, after checking it has every name of the `Backend` protocol."""
    missing = [
        name
        for name in ("NAME", "TAKES_MASK_OBJECTS", "TAKES_SCORE_MODS", "refuse", "estimate", "attention")
        if not hasattr(backend, name)
    ]
    if missing:
        raise TypeError(f"backend {backend!r}: missing {', '.join(missing)} (see qkv.backends.common.interface)")
    if backend.NAME in registry or backend.NAME == "auto":
        raise ValueError(f"backend {backend.NAME!r}: that name is taken; give the backend a NAME of its own")
    registry[backend.NAME] = backend
