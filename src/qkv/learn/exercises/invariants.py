"""Properties beyond values: what a right answer must also satisfy, checked on the learner's own outputs.

Fixed-value tests have accepted 1/d_k for 1/√d_k, scrambled heads and a missing
positional encoding. These checks ask for the properties the lessons teach instead:
weights that sum to 1, outputs that permute with their inputs, earlier causal outputs
that ignore later tokens, scaled scores of variance near 1, positions that act through
their difference, an incremental decode that equals the full pass. Each `Invariant`
is a few calls of the learner's functions (run in the child like the cases) and a test
of what came back, computed here in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from qkv.learn.exercises import spec
from qkv.learn.exercises.catalogue import per_exercise
from qkv.learn.exercises.runner import Call, Out, Step

__all__ = ["Invariant", "invariants"]

Verdict = tuple[bool, str]


@dataclass
class Invariant:
    """``claim`` holds if ``test`` accepts the outcomes of ``calls``."""

    name: str
    claim: str
    calls: list[Call]
    test: Callable[[list[np.ndarray]], Verdict]
    # what `test` receives: "first": each call's first output; "all": every output of the one call;
    # "steps": the first output of every step of the one call
    view: str = "first"


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))  # fixed per exercise


def _one(fn: str, *args, **kwargs) -> Call:
    return Call([Step(fn, list(args), kwargs)])


def _close(a: np.ndarray, b: np.ndarray, tol: float = 1e-6) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=tol, rtol=tol))


def _verdict(ok: bool, good: str, bad: str) -> Verdict:
    return (ok, good if ok else bad)


def _softmax() -> list[Invariant]:
    x = _rng("softmax").standard_normal((6, 9)) * 3

    def sums(out: list[np.ndarray]) -> Verdict:
        w = out[0].astype(np.float64)
        total = w.sum(-1)
        ok = bool(np.all(w >= 0) and np.allclose(total, 1.0, atol=1e-6))
        return _verdict(
            ok,
            "every row is non-negative and sums to 1",
            f"row sums range {np.nanmin(total):.4g} … {np.nanmax(total):.4g} (must all be 1)",
        )

    def shift(out: list[np.ndarray]) -> Verdict:
        ok = _close(out[0], out[1])
        return _verdict(ok, "softmax(x + 10) equals softmax(x)", "softmax(x + 10) differs from softmax(x)")

    return [
        Invariant(
            "weights sum to 1", "every slice along the axis is non-negative and sums to 1", [_one("softmax", x)], sums
        ),
        Invariant(
            "shift invariance",
            "adding a constant to every score changes nothing",
            [_one("softmax", x), _one("softmax", x + 10.0)],
            shift,
        ),
    ]


def _score_variance(w: np.ndarray) -> float:
    """Mean over query rows of the variance over keys of log w: the variance of the scores themselves."""
    logw = np.log(np.clip(w.astype(np.float64), 1e-300, None))
    return float(logw.var(axis=-1).mean())


def _attention() -> list[Invariant]:
    g = _rng("attention")
    q, k, v = g.standard_normal((5, 8)), g.standard_normal((7, 8)), g.standard_normal((7, 6))
    eye = np.eye(7)
    perm_q, perm_k = g.permutation(5), g.permutation(7)
    qu, ku = g.standard_normal((16, 64)), g.standard_normal((48, 64))
    causal = spec.causal_mask(7, 7).numpy()
    qc, kc, vc = g.standard_normal((7, 8)), g.standard_normal((7, 8)), g.standard_normal((7, 6))
    kc2, vc2 = kc.copy(), vc.copy()
    kc2[-1], vc2[-1] = g.standard_normal(8) * 3, g.standard_normal(6) * 3

    def rows(out: list[np.ndarray]) -> Verdict:
        total = out[0].sum(-1)
        ok = bool(np.all(out[0] >= -1e-9) and np.allclose(total, 1.0, atol=1e-6))
        return _verdict(
            ok,
            "with v = identity the output is the weights: rows sum to 1",
            f"with v = identity, rows of the output (the weights) sum to {np.nanmin(total):.4g} … "
            f"{np.nanmax(total):.4g}, not 1",
        )

    def permute(out: list[np.ndarray]) -> Verdict:
        base, shuffled_q, shuffled_k = out
        ok = _close(shuffled_q, base[perm_q]) and _close(shuffled_k, base)
        return _verdict(
            ok,
            "shuffling queries shuffles the outputs; shuffling key-value pairs changes nothing",
            "the output does not permute with the queries, or depends on the order of the key-value pairs",
        )

    def variance(out: list[np.ndarray]) -> Verdict:
        var = _score_variance(out[0])
        ok = 0.5 < var < 2.0
        return _verdict(
            ok,
            f"scaled scores of unit-variance q, k (d_k = 64) have variance {var:.3g} (near 1)",
            f"scores of unit-variance q, k (d_k = 64) have variance {var:.3g}; scaled by 1/√d_k it is "
            "near 1 (64 without scaling, 1/64 when divided by d_k)",
        )

    def future(out: list[np.ndarray]) -> Verdict:
        ok = _close(out[0][:-1], out[1][:-1])
        return _verdict(
            ok,
            "with a causal mask, changing the last token leaves earlier outputs unchanged",
            "with a causal mask, changing the last key and value changed earlier outputs",
        )

    return [
        Invariant("weights sum to 1", "each query's weights sum to 1", [_one("attention", q, k, eye)], rows),
        Invariant(
            "permutation",
            "attention without positions permutes with its inputs",
            [
                _one("attention", q, k, v),
                _one("attention", q[perm_q], k, v),
                _one("attention", q, k[perm_k], v[perm_k]),
            ],
            permute,
        ),
        Invariant(
            "score variance",
            "scaled scores of unit-variance inputs have variance near 1",
            [_one("attention", qu, ku, np.eye(48))],
            variance,
        ),
        Invariant(
            "causal",
            "a masked future cannot leak",
            [_one("attention", qc, kc, vc, mask=causal), _one("attention", qc, kc2, vc2, mask=causal)],
            future,
        ),
    ]


def _causal_mask() -> list[Invariant]:
    g = _rng("causal")
    q, k, v = (torch.from_numpy(g.standard_normal((6, 5))) for _ in range(3))
    k2, v2 = k.clone(), v.clone()
    k2[-1], v2[-1] = k2[-1] * 3 + 1, v2[-1] * 3 + 1

    def future(out: list[np.ndarray]) -> Verdict:
        m = torch.from_numpy(np.asarray(out[0]).astype(bool)) if out[0].shape == (6, 6) else None
        if m is None:
            return False, f"causal_mask(6, 6) has shape {out[0].shape}, not (6, 6)"
        a, b = spec.attention(q, k, v, m), spec.attention(q, k2, v2, m)
        ok = torch.allclose(a[:-1], b[:-1])
        return _verdict(
            ok,
            "attending with it, changing the last token leaves earlier outputs unchanged",
            "attending with it, changing the last token changed earlier outputs: the future leaks",
        )

    return [Invariant("causal", "a future token cannot change earlier outputs", [_one("causal_mask", 6, 6)], future)]


def _padding_mask() -> list[Invariant]:
    g = _rng("padding")
    q, k, v = g.standard_normal((2, 2, 4, 6)), g.standard_normal((2, 2, 6, 6)), g.standard_normal((2, 2, 6, 5))
    lengths = np.array([4, 2], dtype=np.int64)
    k2, v2 = k.copy(), v.copy()
    k2[0, :, 4:], v2[0, :, 4:], k2[1, :, 2:], v2[1, :, 2:] = 9.0, -9.0, 9.0, -9.0

    def ignored(out: list[np.ndarray]) -> Verdict:
        ok = _close(out[0], out[1])
        return _verdict(
            ok,
            "changing the padded keys and values changes nothing",
            "changing the padded keys and values changed the output: padding is read",
        )

    return [
        Invariant(
            "padding ignored",
            "padded positions do not matter",
            [_one("masked_attention", q, k, v, lengths), _one("masked_attention", q, k2, v2, lengths)],
            ignored,
        )
    ]


def _split_heads() -> list[Invariant]:
    x = _rng("split").standard_normal((2, 5, 12))

    def round_trip(out: list[np.ndarray]) -> Verdict:
        ok = _close(out[0], x)
        return _verdict(ok, "merge_heads(split_heads(x, 3)) gives x back", "merge_heads(split_heads(x, 3)) is not x")

    def blocks(out: list[np.ndarray]) -> Verdict:
        ok = out[0].shape == (2, 3, 5, 4) and _close(out[0][:, 1], x[:, :, 4:8])
        return _verdict(
            ok,
            "head 1 of 3 holds features 4 … 7 of every token",
            "head 1 of 3 does not hold features 4 … 7 of every token",
        )

    return [
        Invariant(
            "round trip",
            "merging undoes splitting",
            [Call([Step("split_heads", [x, 3]), Step("merge_heads", [Out(0, 0)])])],
            round_trip,
        ),
        Invariant("contiguous heads", "a head is a contiguous block of features", [_one("split_heads", x, 3)], blocks),
    ]


def _mha() -> list[Invariant]:
    g = _rng("mha")
    x = g.standard_normal((1, 6, 8))
    ws = [g.standard_normal((8, 8)) / np.sqrt(8) for _ in range(4)]
    perm = g.permutation(6)
    x2 = x.copy()
    x2[:, -1] = g.standard_normal(8) * 3

    def equivariant(out: list[np.ndarray]) -> Verdict:
        ok = _close(out[1], out[0][:, perm])
        return _verdict(
            ok,
            "without positions, shuffling the tokens shuffles the outputs the same way",
            "shuffling the tokens did not shuffle the outputs the same way (without positions it must)",
        )

    def future(out: list[np.ndarray]) -> Verdict:
        ok = _close(out[0][:, :-1], out[1][:, :-1])
        return _verdict(
            ok,
            "causal: changing the last token leaves earlier outputs unchanged",
            "causal=True, yet changing the last token changed earlier outputs",
        )

    return [
        Invariant(
            "permutation",
            "self-attention without positions is permutation-equivariant",
            [_one("multi_head_attention", x, *ws, 2), _one("multi_head_attention", x[:, perm], *ws, 2)],
            equivariant,
        ),
        Invariant(
            "causal",
            "a future token cannot change earlier outputs",
            [
                _one("multi_head_attention", x, *ws, 2, causal=True),
                _one("multi_head_attention", x2, *ws, 2, causal=True),
            ],
            future,
        ),
    ]


def _sinusoidal() -> list[Invariant]:
    def relative(out: list[np.ndarray]) -> Verdict:
        pe = out[0].astype(np.float64)
        if pe.shape != (20, 8):
            return False, f"sinusoidal_encoding(20, 8) has shape {pe.shape}"
        omega = 10000.0 ** (-np.arange(0, 8, 2) / 8)  # (4,)
        shift = 3
        c, s = np.cos(shift * omega), np.sin(shift * omega)
        sin_p, cos_p = pe[:-shift, 0::2], pe[:-shift, 1::2]
        ok = np.allclose(pe[shift:, 0::2], sin_p * c + cos_p * s, atol=1e-6) and np.allclose(
            pe[shift:, 1::2], cos_p * c - sin_p * s, atol=1e-6
        )
        return _verdict(
            bool(ok),
            "PE[p + 3] is a fixed rotation of PE[p], pair by pair (relative positions)",
            "PE[p + 3] is not a fixed rotation of PE[p]: sin and cos of one pair must share a frequency",
        )

    call = _one("sinusoidal_encoding", 20, 8)
    return [Invariant("relative positions", "a shift of position is a rotation", [call], relative)]


def _rope() -> list[Invariant]:
    g = _rng("rope")
    q, k = g.standard_normal(8), g.standard_normal(8)
    pq, pk = np.array([0, 3, 5, 11], dtype=np.int64), np.array([2, 5, 7, 13], dtype=np.int64)

    def relative(out: list[np.ndarray]) -> Verdict:
        dots = (out[0] * out[1]).sum(-1)
        ok = bool(np.allclose(dots, dots[0], atol=1e-6))
        return _verdict(
            ok,
            "q·k after rotation depends only on the distance between their positions",
            f"q·k at four position pairs 2 apart gave {np.round(dots, 4).tolist()}: it must depend only "
            "on the distance",
        )

    def norm(out: list[np.ndarray]) -> Verdict:
        ok = bool(np.allclose(np.linalg.norm(out[0], axis=-1), np.linalg.norm(q), atol=1e-6))
        return _verdict(ok, "rotation keeps every vector's length", "the rotated vectors changed length")

    calls = [_one("apply_rope", np.tile(q, (4, 1)), pq), _one("apply_rope", np.tile(k, (4, 1)), pk)]
    return [
        Invariant("relative positions", "scores depend on relative position only", calls, relative),
        Invariant("norm", "a rotation keeps lengths", calls[:1], norm),
    ]


def _kv_decode() -> list[Invariant]:
    g = _rng("decode")
    t = 5
    q, k, v = g.standard_normal((2, t, 6)), g.standard_normal((2, t, 6)), g.standard_normal((2, t, 4))
    full = spec.attention(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), spec.causal_mask(t, t)).numpy()
    steps = []
    for i in range(t):
        cache = [np.zeros((2, 0, 6)), np.zeros((2, 0, 4))] if i == 0 else [Out(i - 1, 1), Out(i - 1, 2)]
        steps.append(Step("decode_step", [q[:, i : i + 1], k[:, i : i + 1], v[:, i : i + 1], *cache]))

    def incremental(out: list[np.ndarray]) -> Verdict:
        ok = len(out) == t and all(o is not None and _close(o, full[:, i : i + 1]) for i, o in enumerate(out))
        return _verdict(
            ok,
            "five decode steps from an empty cache equal the full causal pass",
            "five decode steps from an empty cache differ from the full causal pass",
        )

    return [
        Invariant(
            "incremental = full",
            "decoding step by step equals the full causal pass",
            [Call(steps)],
            incremental,
            view="steps",
        )
    ]


def _additive() -> list[Invariant]:
    g = _rng("additive")
    args = [
        g.standard_normal((3, 5)),
        g.standard_normal((6, 4)),
        g.standard_normal((5, 7)) / 2,
        g.standard_normal((4, 7)) / 2,
        g.standard_normal(7),
    ]

    def weights(out: list[np.ndarray]) -> Verdict:
        w = out[1] if len(out) > 1 else None
        if w is None:
            return False, "additive_attention must return (context, weights)"
        ok = bool(np.all(w >= -1e-9) and np.allclose(w.sum(-1), 1.0, atol=1e-6)) and _close(out[0], w @ args[1])
        return _verdict(
            ok,
            "weights are non-negative, sum to 1 per query, and context = weights @ keys",
            "weights must be non-negative and sum to 1 per query, with context = weights @ keys",
        )

    return [
        Invariant(
            "weighted average",
            "the context is an average of the keys",
            [_one("additive_attention", *args)],
            weights,
            view="all",
        )
    ]


def _sliding_window() -> list[Invariant]:
    def shape(out: list[np.ndarray]) -> Verdict:
        m = np.asarray(out[0]).astype(bool)
        if m.shape != (10, 10):
            return False, f"sliding_window_mask(10, 4) has shape {m.shape}"
        causal = not np.triu(m, 1).any()
        counts = m.sum(-1)
        ok = causal and counts.tolist() == [min(i + 1, 4) for i in range(10)]
        return _verdict(
            ok,
            "no query sees a later key, and each sees min(i + 1, 4) keys",
            f"{'a query sees a later key; ' if not causal else ''}keys per query: {counts.tolist()} "
            "(expected [1, 2, 3, 4, 4, …])",
        )

    call = _one("sliding_window_mask", 10, 4)
    return [Invariant("causal and local", "each query sees the window before it", [call], shape)]


_ALL = per_exercise(globals())  # one function per exercise, named after it


def invariants(exercise: str) -> list[Invariant]:
    """The property checks of ``exercise``."""
    return _ALL[exercise]()
