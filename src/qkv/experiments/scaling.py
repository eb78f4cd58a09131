"""scaling: without ``1/√d_k`` the scores grow with ``d_k``, softmax saturates and gradients vanish.

Two measurements:

1. Statistics. Queries, keys (``d_k`` components, mean 0, variance 1, as the
   2017 paper assumes) and values (fixed width) are drawn at random; for each
   ``d_k`` we run `qkv.attention` with the default ``scale = 1/√d_k`` and with
   ``scale=1.0`` and record the spread of the scores, the softmax's largest
   probability per query, and the gradient of a random linear loss of the
   output through the softmax, ``‖∂L/∂s‖`` per query (median: the typical
   query; mean: dominated by the rare near-ties a saturated softmax keeps).
   ``q·k`` is a sum of ``d_k`` unit-variance terms, so its spread grows like
   ``√d_k`` unscaled and stays 1 scaled.
2. Training. A one-layer attention model learns associative recall (find the
   value stored under the queried key) with head width ``d_k``, scaled and
   unscaled, from the same initialization, data and Adam steps.

>>> import torch
>>> from qkv.experiments.scaling import softmax_statistics
>>> row = softmax_statistics(64, scaled=False, trials=2, num_queries=8, num_keys=16, value_dim=8,
...                          generator=torch.Generator().manual_seed(0))
>>> sorted(row)
['grad_q_mean', 'grad_q_median', 'grad_scores_mean', 'grad_scores_median', 'max_prob', 'saturated_share', 'score_std']
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import qkv
from qkv.experiments import common
from qkv.experiments.common import COLORS, Experiment, Outcome, Progress, check, figure, fit_power_law, smooth

SATURATED = 0.99  # a softmax row whose largest probability exceeds this is saturated
SPREAD_EXPONENT = (0.4, 0.6)  # unscaled score spread ~ d_k^k with k in this range (theory: 0.5)
SATURATES = 0.9  # unscaled mean largest probability at the largest d_k at least this
VANISHES = 0.01  # unscaled / scaled median gradient through the softmax at the largest d_k at most this
TRAINS_BETTER = 0.9  # scaled final loss at most this times the unscaled one, at the largest trained d_k


def softmax_statistics(
    d_k: int,
    *,
    scaled: bool,
    trials: int,
    num_queries: int,
    num_keys: int,
    value_dim: int,
    generator: torch.Generator,
) -> dict[str, float]:
    """Score spread, largest softmax probability, saturated share and gradient norms for random unit-variance q, k.

    The gradient through the softmax, ``‖∂L/∂s‖`` per query row, is read as the gradient of a
    zero ``bias`` added to the scaled scores (``∂L/∂bias = ∂L/∂s``); ``‖∂L/∂q‖`` is what reaches
    the queries. Both are given as the median over rows (the typical query) and the mean (which
    the few nearly tied rows of a saturated softmax dominate).
    """
    q = torch.randn(trials, 1, num_queries, d_k, generator=generator)  # (B, H=1, Nq, D)
    k = torch.randn(trials, 1, num_keys, d_k, generator=generator)  # (B, 1, Nk, D)
    v = torch.randn(trials, 1, num_keys, value_dim, generator=generator)  # (B, 1, Nk, Dv)
    r = torch.randn(trials, 1, num_queries, value_dim, generator=generator)  # the loss's direction
    scale = 1 / math.sqrt(d_k) if scaled else 1.0
    q.requires_grad_(True)
    bias = torch.zeros(trials, 1, num_queries, num_keys, requires_grad=True)  # (B, 1, Nq, Nk)
    out = qkv.attention(q, k, v, bias=bias, scale=scale)  # (B, 1, Nq, Dv)
    (out * r).sum().backward()
    with torch.no_grad():
        scores = (q @ k.transpose(-2, -1)) * scale  # (B, 1, Nq, D) @ (B, 1, D, Nk) -> (B, 1, Nq, Nk)
        top = qkv.attention_weights(q, k, scale=scale).max(dim=-1).values  # (B, 1, Nq, Nk) -> (B, 1, Nq)
        grad_s = bias.grad.norm(dim=-1).flatten()  # (B, 1, Nq, Nk) -> (B·Nq,)
        grad_q = q.grad.norm(dim=-1).flatten()  # (B, 1, Nq, D) -> (B·Nq,)
    return {
        "score_std": scores.std().item(),
        "max_prob": top.mean().item(),
        "saturated_share": (top > SATURATED).float().mean().item(),
        "grad_scores_median": grad_s.median().item(),
        "grad_scores_mean": grad_s.mean().item(),
        "grad_q_median": grad_q.median().item(),
        "grad_q_mean": grad_q.mean().item(),
    }


class RecallModel(nn.Module):
    """Embeddings, one attention head of width ``d_k`` read at the last (query) position, a linear readout.

    Query/key/value projections start with unit-variance outputs (``std = 1/√E``), the
    regime the ``1/√d_k`` argument assumes; ``scaled=False`` runs `qkv.attention` with ``scale=1.0``.
    """

    def __init__(self, num_tokens: int, num_values: int, *, embed_dim: int, d_k: int, scaled: bool) -> None:
        super().__init__()
        self.scaled = scaled
        self.embed = nn.Embedding(num_tokens, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)
        self.q_proj = nn.Linear(embed_dim, d_k, bias=False)
        self.k_proj = nn.Linear(embed_dim, d_k, bias=False)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.normal_(proj.weight, std=1 / math.sqrt(embed_dim))
        self.readout = nn.Linear(embed_dim, num_values)

    def forward(self, ids: Tensor) -> Tensor:
        """``ids (B, N)`` (pairs, then the query key last) -> value logits ``(B, V)``."""
        x = self.norm(self.embed(ids))  # (B, N) -> (B, N, E)
        q = self.q_proj(x[:, -1:])[:, None]  # (B, 1, E) -> (B, 1, d_k) -> (B, H=1, Nq=1, d_k)
        k = self.k_proj(x)[:, None]  # (B, N, E) -> (B, 1, N, d_k)
        v = self.v_proj(x)[:, None]  # (B, N, E) -> (B, 1, N, E)
        out = qkv.attention(q, k, v, scale=None if self.scaled else 1.0)[:, 0, 0]  # (B, 1, 1, E) -> (B, E)
        return self.readout(out + x[:, -1])  # (B, E) -> (B, V)


def recall_batch(batch: int, p: Mapping[str, Any], generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``ids (B, pairs + 1)``: distinct keys each with a value (token ``key·V + value``), then a query key.
    ``answer (B,)``: the value stored under the queried key."""
    keys_n, values_n, pairs = p["keys"], p["values"], p["pairs"]
    keys = torch.argsort(torch.rand(batch, keys_n, generator=generator), dim=1)[:, :pairs]  # (B, P), distinct
    values = torch.randint(0, values_n, (batch, pairs), generator=generator)  # (B, P)
    which = torch.randint(0, pairs, (batch,), generator=generator)  # (B,)
    rows = torch.arange(batch)
    query = keys_n * values_n + keys[rows, which]  # (B,): query tokens follow the pair tokens
    ids = torch.cat([keys * values_n + values, query[:, None]], dim=1)  # (B, P) + (B, 1) -> (B, P + 1)
    return ids, values[rows, which]


def train_recall(d_k: int, scaled: bool, p: Mapping[str, Any], progress: Progress) -> tuple[list[float], float]:
    """Loss per step and final accuracy on fresh data; same init and data for scaled and unscaled."""
    t = p["train"]
    torch.manual_seed(p["seed"] + d_k)  # same initial weights for both arms at this d_k
    model = RecallModel(
        t["keys"] * t["values"] + t["keys"], t["values"], embed_dim=t["embed_dim"], d_k=d_k, scaled=scaled
    )
    opt = torch.optim.Adam(model.parameters(), lr=t["lr"])
    data = torch.Generator().manual_seed(p["seed"] + 1)

    def loss_at(step: int) -> torch.Tensor:
        ids, answer = recall_batch(t["batch"], t, data)
        return F.cross_entropy(model(ids), answer)

    arm = "scaled" if scaled else "unscaled"
    losses = common.optimize(opt, t["steps"], loss_at, progress, f"training d_k={d_k} {arm}")
    with torch.no_grad():
        ids, answer = recall_batch(1000, t, torch.Generator().manual_seed(p["seed"] + 2))
        accuracy = (model(ids).argmax(-1) == answer).float().mean().item()
    return losses, accuracy


def final_loss(losses: list[float]) -> float:
    """Mean loss over the last tenth of training (smooths batch noise)."""
    tail = losses[-max(1, len(losses) // 10) :]
    return sum(tail) / len(tail)


def criterion_checks(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The verdict's parts, from the table alone."""
    stats = {(r["d_k"], r["scaled"]): r for r in results if r["part"] == "statistics"}
    trained = {(r["d_k"], r["scaled"]): r for r in results if r["part"] == "training"}
    dks = sorted({d for d, _ in stats})
    largest = dks[-1]
    spread, _, _ = fit_power_law(dks, [stats[(d, False)]["score_std"] for d in dks])
    spread_scaled, _, _ = fit_power_law(dks, [stats[(d, True)]["score_std"] for d in dks])
    top = stats[(largest, False)]["max_prob"]
    ratio = stats[(largest, False)]["grad_scores_median"] / stats[(largest, True)]["grad_scores_median"]
    trained_largest = max(d for d, _ in trained)
    loss_s, loss_u = trained[(trained_largest, True)]["final_loss"], trained[(trained_largest, False)]["final_loss"]
    lo, hi = SPREAD_EXPONENT
    return {
        "unscaled scores grow like sqrt(d_k)": check(
            spread, list(SPREAD_EXPONENT), lo <= spread <= hi, "fitted exponent of the unscaled score std vs d_k"
        ),
        "scaled scores do not grow": check(
            spread_scaled, 0.1, abs(spread_scaled) <= 0.1, "fitted exponent of the scaled score std vs d_k"
        ),
        "unscaled softmax saturates": check(
            top, SATURATES, top >= SATURATES, f"unscaled mean largest probability at d_k={largest}"
        ),
        "unscaled gradients vanish": check(
            ratio,
            VANISHES,
            ratio <= VANISHES,
            f"median ‖∂L/∂s‖ through the softmax, unscaled / scaled, at d_k={largest}",
        ),
        "scaled model trains better": check(
            loss_s / loss_u,
            TRAINS_BETTER,
            loss_s / loss_u <= TRAINS_BETTER,
            f"final training loss scaled / unscaled at d_k={trained_largest}",
        ),
    }


def measure(p: Mapping[str, Any], progress: Progress) -> Outcome:
    s, t = p["statistics"], p["train"]
    progress.start(2 * len(s["d_k"]) + 2 * len(t["d_k"]) * t["steps"], "softmax statistics")
    results: list[dict[str, Any]] = []
    for d_k in s["d_k"]:
        for scaled in (True, False):
            generator = torch.Generator().manual_seed(p["seed"] + d_k)  # same q, k, v for both arms
            row = softmax_statistics(
                d_k,
                scaled=scaled,
                trials=s["trials"],
                num_queries=s["num_queries"],
                num_keys=s["num_keys"],
                value_dim=s["value_dim"],
                generator=generator,
            )
            results.append({"part": "statistics", "d_k": d_k, "scaled": scaled, **row})
            progress.advance(1, f"statistics d_k={d_k}")
    curves: dict[str, list[float]] = {}
    every = max(1, t["steps"] // 100)
    for d_k in t["d_k"]:
        for scaled in (True, False):
            losses, accuracy = train_recall(d_k, scaled, p, progress)
            curves[f"d_k={d_k} {'scaled' if scaled else 'unscaled'}"] = smooth(losses, every)
            results.append(
                {
                    "part": "training",
                    "d_k": d_k,
                    "scaled": scaled,
                    "final_loss": final_loss(losses),
                    "accuracy": accuracy,
                }
            )
    checks = criterion_checks(results)
    return Outcome(results, checks, _summary(results, checks, p), {"loss": curves, "loss_every": every})


def _summary(results: list[dict[str, Any]], checks: dict[str, dict[str, Any]], p: Mapping[str, Any]) -> str:
    stats = {(r["d_k"], r["scaled"]): r for r in results if r["part"] == "statistics"}
    trained = [r for r in results if r["part"] == "training"]
    dks = sorted({d for d, _ in stats})
    small, large = dks[0], dks[-1]
    chance = 1 / p["train"]["values"]
    text = (
        f"Random unit-variance queries and keys: unscaled, the score spread goes from "
        f"{stats[(small, False)]['score_std']:.1f} at d_k={small} to {stats[(large, False)]['score_std']:.1f} at "
        f"d_k={large} (fitted exponent {checks['unscaled scores grow like sqrt(d_k)']['value']:.2f}; "
        "√d_k predicts 0.5), "
        f"the largest softmax probability averages {stats[(large, False)]['max_prob']:.3f} "
        f"({stats[(large, False)]['saturated_share']:.0%} of rows above {SATURATED}) and the typical (median) "
        f"query's gradient through the softmax is {checks['unscaled gradients vanish']['value']:.1e} times the "
        f"scaled one (median ‖∂L/∂q‖: {stats[(large, False)]['grad_q_median']:.2g} vs "
        f"{stats[(large, True)]['grad_q_median']:.2g}). The mean over queries vanishes less "
        f"({stats[(large, False)]['grad_scores_mean']:.2g} vs {stats[(large, True)]['grad_scores_mean']:.2g} through "
        "the softmax): it is carried by the few nearly tied rows a saturated softmax still has. Scaled, the spread "
        f"stays {stats[(large, True)]['score_std']:.2f} and the largest probability "
        f"{stats[(large, True)]['max_prob']:.2f}. "
        "Training associative recall (chance accuracy "
        f"{chance:.2f}) for {p['train']['steps']} Adam steps: "
        + "; ".join(
            f"d_k={r['d_k']} {'scaled' if r['scaled'] else 'unscaled'} loss {r['final_loss']:.2f}, "
            f"accuracy {r['accuracy']:.2f}"
            for r in trained
        )
        + ". "
    )
    return text + common.verdict_sentence(checks)


def plot(outcome: Outcome, p: Mapping[str, Any]) -> Any:
    fig, axes = figure(2, EXPERIMENT.title, outcome.verdict, nrows=2, width=5.4, height=3.8)
    ax_std, ax_top, ax_grad, ax_loss = axes
    stats = [r for r in outcome.results if r["part"] == "statistics"]
    dks = sorted({r["d_k"] for r in stats})
    style = {True: ("o-", COLORS["good"], "scaled 1/√d_k"), False: ("s--", COLORS["bad"], "unscaled")}
    for scaled in (True, False):
        rows = sorted((r for r in stats if r["scaled"] == scaled), key=lambda r: r["d_k"])
        marker, color, label = style[scaled]
        ax_std.plot(dks, [r["score_std"] for r in rows], marker, color=color, label=label)
        ax_top.plot(dks, [r["max_prob"] for r in rows], marker, color=color, label=label)
        ax_grad.plot(dks, [r["grad_scores_median"] for r in rows], marker, color=color, label=f"{label}, median")
        ax_grad.plot(dks, [r["grad_scores_mean"] for r in rows], ":", color=color, lw=1, label=f"{label}, mean")
    ax_std.plot(dks, [math.sqrt(d) for d in dks], ":", color=COLORS["grey"], label="√d_k")
    ax_std.set_title("spread of the scores q·k (· scale)")
    ax_std.set_ylabel("std of scores")
    ax_std.set_yscale("log")
    ax_top.set_title(f"softmax saturation ({p['statistics']['num_keys']} keys)")
    ax_top.set_ylabel("mean largest probability")
    ax_top.axhline(1 / p["statistics"]["num_keys"], color=COLORS["grey"], ls=":", label="uniform")
    ax_top.set_ylim(0, 1.05)
    ax_grad.set_title("gradient through the softmax")
    ax_grad.set_ylabel("‖∂L/∂s‖ per query row (s: softmax input)")
    ax_grad.set_yscale("log")
    for ax in (ax_std, ax_top, ax_grad):
        ax.set_xscale("log", base=2)
        ax.set_xticks(dks, [str(d) for d in dks])
        ax.set_xlabel("d_k (query/key width)")
        ax.legend(fontsize=8)
    every = outcome.series["loss_every"]
    train_dks = p["train"]["d_k"]
    widths = {d: 1.0 + 1.2 * i for i, d in enumerate(train_dks)}
    for name, curve in outcome.series["loss"].items():
        d_k = int(name.split()[0].split("=")[1])
        scaled = name.endswith(" scaled")
        ax_loss.plot(
            [every * (i + 0.5) for i in range(len(curve))],
            curve,
            "-" if scaled else "--",
            color=style[scaled][1],
            lw=widths[d_k],
            alpha=0.55 + 0.45 * (d_k == max(train_dks)),
            label=name,
        )
    values = p["train"]["values"]
    ax_loss.axhline(math.log(values), color=COLORS["grey"], ls=":", label=f"chance level (ln {values})")
    ax_loss.set_title("training: associative recall, one head")
    ax_loss.set_xlabel("Adam step")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.legend(fontsize=8)
    return fig


def _sizes(d_ks: list[int], trials: int, train_dks: list[int], steps: int, batch: int) -> dict[str, Any]:
    return {
        **common.TRAINING,
        "statistics": {"d_k": d_ks, "trials": trials, "num_queries": 64, "num_keys": 64, "value_dim": 64},
        "train": {
            "d_k": train_dks,
            "steps": steps,
            "batch": batch,
            "lr": 1e-3,
            "embed_dim": 64,
            "keys": 16,
            "values": 16,
            "pairs": 12,
        },
    }


SIZES = {
    "smoke": _sizes([8, 32, 128], 1, [8, 64], 4, 8),
    "quick": _sizes([8, 16, 32, 64, 128, 256, 512, 1024], 8, [16, 512], 500, 64),
    "full": _sizes([8, 16, 32, 64, 128, 256, 512, 1024], 32, [16, 128, 1024], 3000, 64),
}

EXPERIMENT = Experiment(
    name="scaling",
    claim="Without 1/√d_k, dot products grow with d_k, softmax saturates and gradients vanish.",
    title="Without 1/√d_k, scores grow with d_k, softmax saturates, gradients vanish",
    method=(
        "Score spread, largest softmax probability and the gradient through the softmax vs d_k (8 → 1024) for "
        "random unit-variance q, k, scaled vs unscaled; training loss of a one-head recall model with and without "
        "the scaling."
    ),
    criterion=(
        f"Unscaled score std grows as d_k^k with fitted k in [{SPREAD_EXPONENT[0]}, {SPREAD_EXPONENT[1]}] while the "
        f"scaled one's |k| <= 0.1; at the largest d_k the unscaled mean largest probability is >= {SATURATES} and its "
        f"median gradient through the softmax <= {VANISHES} x the scaled one; and at the largest trained d_k the "
        f"scaled model's final loss is <= {TRAINS_BETTER} x the unscaled one."
    ),
    sizes=SIZES,
    measure=measure,
    plot=plot,
)
