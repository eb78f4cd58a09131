"""positional: attention alone is order-agnostic; positional encodings restore order.

Four small encoders from `qkv.nn` (two bidirectional layers, same sizes) differ
only in how they learn where a token is: ``none``, ``sinusoidal`` (added to
the token embeddings), ``learned`` (a trained table) and ``rotary`` (RoPE on
queries and keys). Two measurements:

1. Permutation equivariance: permute the input tokens and compare
   ``f(P·x)`` with ``P·f(x)``. Self-attention without positions is a function
   of the set of tokens, so the two agree to rounding; any encoding breaks that.
2. An order-dependent task: output, at every position, the token one to its
   left. Without positions each token sees only the *set* of the others, so no
   model can beat the order-free ceiling: guessing the most frequent other
   token, which the experiment computes on its test data.

>>> import torch
>>> from qkv.experiments.positional import order_free_ceiling
>>> x = torch.tensor([[1, 1, 1, 2]])            # each token's predecessor is one of the 3 others
>>> round(order_free_ceiling(x), 4)             # 1, 1, 2 for the 1s (2/3); 1, 1, 1 for the 2 (1)
0.7778
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.experiments import common
from qkv.experiments.common import COLORS, Experiment, Outcome, Progress, check, figure, smooth
from qkv.nn import EmbeddingConfig, EncoderConfig, LayerConfig, RotaryConfig, TransformerEncoder

ENCODINGS = ("none", "sinusoidal", "learned", "rotary")
ENCODING_COLORS = {
    "none": COLORS["bad"],
    "sinusoidal": COLORS["good"],
    "learned": COLORS["alt"],
    "rotary": COLORS["alt2"],
}
EQUIVARIANT = 1e-5  # relative error below which a model counts as permutation-equivariant
BROKEN = 1e-2  # relative error above which the symmetry counts as broken
BLIND = 0.05  # "none" may exceed the order-free ceiling by at most this
RESTORES = 0.5  # each encoding beats "none" by at least this accuracy


class Tagger(nn.Module):
    """Token ids ``(B, N)`` -> logits ``(B, N, V)``: a `qkv.nn.TransformerEncoder` and a linear readout."""

    def __init__(self, encoding: str, p: Mapping[str, Any]) -> None:
        super().__init__()
        rotary = RotaryConfig() if encoding == "rotary" else None
        layer = LayerConfig(
            embed_dim=p["embed_dim"], num_heads=p["num_heads"], ffn_dim=p["ffn_dim"], norm_first=True, rotary=rotary
        )
        positions = encoding if encoding in ("sinusoidal", "learned") else "none"
        embeddings = EmbeddingConfig(p["vocab"], positions=positions, max_positions=p["length"])
        self.encoder = TransformerEncoder(EncoderConfig(layer=layer, num_layers=p["num_layers"], embeddings=embeddings))
        self.readout = nn.Linear(p["embed_dim"], p["vocab"])

    def forward(self, ids: Tensor) -> Tensor:
        return self.readout(self.encoder(ids))  # (B, N) -> (B, N, E) -> (B, N, V)


def order_free_ceiling(x: Tensor) -> float:
    """Best accuracy at predicting each token's left neighbour (positions 1..N-1) from the *set* of tokens.

    By symmetry the neighbour of token ``i`` is equally likely any of the other ``N-1``
    tokens, so the best guess is the most frequent of them: ``max count / (N-1)``.
    """
    b, n = x.shape
    vocab = int(x.max()) + 1
    counts = F.one_hot(x, vocab).sum(dim=1)  # (B, N, V) -> (B, V): the multiset of each sequence
    others = counts[:, None, :] - F.one_hot(x, vocab)  # (B, 1, V) - (B, N, V) -> (B, N, V): without token i
    best = others.max(dim=-1).values[:, 1:].float() / (n - 1)  # (B, N) -> (B, N-1)
    return best.mean().item()


def equivariance_error(model: nn.Module, p: Mapping[str, Any], generator: torch.Generator) -> float:
    """``max |f(P·x) - P·f(x)| / max |f(x)|`` over random inputs and a random permutation."""
    x = torch.randint(0, p["vocab"], (16, p["length"]), generator=generator)  # (B, N)
    perm = torch.randperm(p["length"], generator=generator)  # (N,)
    with torch.no_grad():
        out = model(x)  # (B, N, V)
        out_perm = model(x[:, perm])  # (B, N, V)
    return ((out_perm - out[:, perm]).abs().max() / out.abs().max()).item()


def train(encoding: str, p: Mapping[str, Any], progress: Progress) -> tuple[nn.Module, list[float]]:
    torch.manual_seed(p["seed"])  # the same draws for every variant (the shared parts start alike)
    model = Tagger(encoding, p)
    opt = torch.optim.Adam(model.parameters(), lr=p["lr"])
    data = torch.Generator().manual_seed(p["seed"] + 1)  # the same batches for every variant

    def loss_at(step: int) -> torch.Tensor:
        x = torch.randint(0, p["vocab"], (p["batch"], p["length"]), generator=data)  # (B, N)
        logits = model(x)[:, 1:]  # (B, N-1, V): position i predicts x[i - 1]
        return F.cross_entropy(logits.reshape(-1, p["vocab"]), x[:, :-1].reshape(-1))

    return model, common.optimize(opt, p["steps"], loss_at, progress, f"training {encoding}")


def criterion_checks(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The verdict's parts, from the table alone."""
    row = {r["encoding"]: r for r in results}
    none = row["none"]
    checks = {
        "no encoding: permutation-equivariant": check(
            none["equivariance_error"],
            EQUIVARIANT,
            none["equivariance_error"] <= EQUIVARIANT,
            "max |f(Px) - P f(x)| / max |f(x)| without positions",
        ),
        "no encoding: stuck at the order-free ceiling": check(
            none["accuracy"] - none["order_free_ceiling"],
            BLIND,
            none["accuracy"] - none["order_free_ceiling"] <= BLIND,
            "accuracy minus the best an order-blind model can do",
        ),
    }
    for encoding in ENCODINGS[1:]:
        r = row[encoding]
        checks[f"{encoding}: breaks the symmetry"] = check(
            r["equivariance_error"], BROKEN, r["equivariance_error"] >= BROKEN, "relative equivariance error"
        )
        gain = r["accuracy"] - none["accuracy"]
        checks[f"{encoding}: restores order"] = check(gain, RESTORES, gain >= RESTORES, "accuracy minus none's")
    return checks


def measure(p: Mapping[str, Any], progress: Progress) -> Outcome:
    progress.start(len(ENCODINGS) * p["steps"], "previous-token task")
    test_data = torch.Generator().manual_seed(p["seed"] + 2)
    test = torch.randint(0, p["vocab"], (p["eval_samples"], p["length"]), generator=test_data)  # (B, N)
    ceiling = order_free_ceiling(test)
    results, curves = [], {}
    every = max(1, p["steps"] // 100)
    for encoding in ENCODINGS:
        model, losses = train(encoding, p, progress)
        model.eval()
        with torch.no_grad():
            accuracy = (model(test)[:, 1:].argmax(-1) == test[:, :-1]).float().mean().item()  # (B, N-1)
        error = equivariance_error(model, p, torch.Generator().manual_seed(p["seed"] + 3))
        curves[encoding] = smooth(losses, every)
        results.append(
            {
                "encoding": encoding,
                "equivariance_error": error,
                "accuracy": accuracy,
                "order_free_ceiling": ceiling,
                "chance": 1 / p["vocab"],
                "final_loss": sum(losses[-max(1, len(losses) // 10) :]) / max(1, len(losses) // 10),
            }
        )
    checks = criterion_checks(results)
    return Outcome(results, checks, _summary(results, checks, p), {"loss": curves, "loss_every": every})


def _summary(results: list[dict[str, Any]], checks: dict[str, dict[str, Any]], p: Mapping[str, Any]) -> str:
    row = {r["encoding"]: r for r in results}
    text = (
        f"Without positions, permuting the {p['length']} input tokens permutes the outputs to within "
        f"{row['none']['equivariance_error']:.1e} (relative); with sinusoidal, learned and rotary encodings the "
        f"error is {row['sinusoidal']['equivariance_error']:.2f}, {row['learned']['equivariance_error']:.2f} and "
        f"{row['rotary']['equivariance_error']:.2f}. Predicting each token's left neighbour "
        f"({p['vocab']} symbols, chance {1 / p['vocab']:.2f}, order-free ceiling "
        f"{row['none']['order_free_ceiling']:.2f}) after {p['steps']} steps: none {row['none']['accuracy']:.2f}, "
        f"sinusoidal {row['sinusoidal']['accuracy']:.2f}, learned {row['learned']['accuracy']:.2f}, "
        f"rotary {row['rotary']['accuracy']:.2f}. "
    )
    holds = "Attention alone sees a set; each encoding gives it the order back."
    return text + common.verdict_sentence(checks, holds=holds)


def plot(outcome: Outcome, p: Mapping[str, Any]) -> Any:
    fig, (ax_eq, ax_acc, ax_loss) = figure(3, EXPERIMENT.title, outcome.verdict, width=4.8)
    row = {r["encoding"]: r for r in outcome.results}
    x = range(len(ENCODINGS))
    colors = [ENCODING_COLORS[e] for e in ENCODINGS]
    errors = [max(row[e]["equivariance_error"], 1e-9) for e in ENCODINGS]
    ax_eq.bar(x, errors, color=colors)
    ax_eq.set_yscale("log")
    ax_eq.axhline(EQUIVARIANT, color=COLORS["grey"], ls=":", label=f"equivariant below {EQUIVARIANT:g}")
    ax_eq.set_title("permute the input: does the output just permute?")
    ax_eq.set_ylabel("max |f(Px) − P f(x)| / max |f(x)|")
    ax_eq.set_ylim(min(errors) / 5, max(errors) * 1e3)  # room above the bars for the legend
    ax_eq.legend(fontsize=8, loc="upper left")
    accs = [row[e]["accuracy"] for e in ENCODINGS]
    ax_acc.bar(x, accs, color=colors)
    for i, a in enumerate(accs):
        ax_acc.text(i, a + 0.02, f"{a:.2f}", ha="center", fontsize=9)
    ax_acc.axhline(row["none"]["order_free_ceiling"], color=COLORS["bad"], ls="--", label="order-free ceiling")
    ax_acc.axhline(1 / p["vocab"], color=COLORS["grey"], ls=":", label=f"chance (1/{p['vocab']})")
    ax_acc.set_ylim(0, 1.3)
    ax_acc.set_title(f"task: output the token to the left (N={p['length']})")
    ax_acc.set_ylabel("test accuracy")
    ax_acc.legend(fontsize=8, loc="upper center", ncol=2)
    for ax in (ax_eq, ax_acc):
        ax.set_xticks(list(x), list(ENCODINGS))
        ax.set_xlabel("positional encoding")
    every = outcome.series["loss_every"]
    for encoding, curve in outcome.series["loss"].items():
        steps = [every * (i + 0.5) for i in range(len(curve))]
        ax_loss.plot(steps, curve, color=ENCODING_COLORS[encoding], label=encoding)
    ax_loss.set_title("training loss")
    ax_loss.set_xlabel("Adam step")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend(fontsize=8)
    return fig


def _size(length: int, steps: int, batch: int, eval_samples: int, embed_dim: int, heads: int) -> dict[str, Any]:
    return {
        **common.TRAINING,
        "vocab": 16,
        "length": length,
        "steps": steps,
        "batch": batch,
        "eval_samples": eval_samples,
        "embed_dim": embed_dim,
        "num_heads": heads,
        "num_layers": 2,
        "ffn_dim": 2 * embed_dim,
        "lr": 1e-3,
    }


SIZES = {
    "smoke": _size(8, 3, 4, 16, 16, 2),
    "quick": _size(32, 400, 64, 500, 64, 4),
    "full": _size(64, 2000, 64, 2000, 64, 4),
}

EXPERIMENT = Experiment(
    name="positional",
    claim="Attention alone is order-agnostic; positional encodings restore order.",
    title="Attention alone is order-agnostic; positional encodings restore order",
    method=(
        "Permutation-equivariance error of encoders with none / sinusoidal / learned / rotary positions, and their "
        "accuracy at outputting each token's left neighbour, against the best any order-blind model can do."
    ),
    criterion=(
        f"Without positions the relative equivariance error is <= {EQUIVARIANT:g} and the accuracy at most "
        f"{BLIND} above the order-free ceiling; each encoding has error >= {BROKEN:g} and beats 'none' by at "
        f"least {RESTORES} accuracy."
    ),
    sizes=SIZES,
    measure=measure,
    plot=plot,
)
