"""Runnable demonstrations of attention's claims: ``qkv experiment NAME [--quick] [--out DIR]``.

Each experiment states a claim, measures it on small models built from qkv's
own modules, and decides a verdict from the measured table by a criterion it
writes down: ``True``, ``False``, or ``"inconclusive"`` where its controls or its
noise margins do not decide (timings are repeated in interleaved rounds and
judged by the 90% interval of their median). A run writes ``DIR/NAME.json``
(claim, verdict, criterion, ``rule_changed``, checks, results table, summary,
parameters, seed, date, runtime, torch version) and
``DIR/NAME.png`` (the plot). Runs are seeded: the same seed gives the same
numbers, timings aside (the experiments that train or time run on one torch
thread, which is fastest for the small models, keeps the numbers independent of
the core count, and keeps timings from spinning threads against a busy machine).

=============  ==========================================================================
name           claim
=============  ==========================================================================
bottleneck     a fixed-vector RNN encoder–decoder forgets long inputs; attention does not
scaling        without 1/√d_k, softmax saturates and gradients vanish as d_k grows
positional     attention alone is order-agnostic; positional encodings restore order
heads          several heads capture different relations at comparable cost
efficiency     attention is parallel but quadratic; sparse/local attention is linear
kv-cache       caching keys and values speeds up generation; int8 halves the memory (SmolLM2)
pruning        many heads can be pruned with little loss (SmolLM2, held-out perplexity)
coreference    "it" attends to "cat" in "The cat sat on the mat because it was tired."
=============  ==========================================================================

``--quick`` (``quick=True``) finishes in under a minute per experiment on two CPU
cores; the full run is bigger and gives the publishable numbers.

Adding one: write ``qkv/experiments/MODULE.py`` defining ``EXPERIMENT = Experiment(...)`` (see
`qkv.experiments.common.Experiment`; ``requires`` says why it cannot run where
a model is missing) and add the module name to ``_MODULES`` below.

>>> from qkv.experiments import EXPERIMENTS, list_experiments
>>> [e.name for e in list_experiments()]
['bottleneck', 'scaling', 'positional', 'heads', 'efficiency', 'kv-cache', 'pruning', 'coreference']
>>> EXPERIMENTS["scaling"].claim
'Without 1/√d_k, dot products grow with d_k, softmax saturates and gradients vanish.'
"""

from __future__ import annotations

import importlib
from pathlib import Path

from qkv.errors import AttentionError
from qkv.experiments.common import Experiment, NullProgress, Progress, Result, RichProgress

_MODULES = ("bottleneck", "scaling", "positional", "heads", "efficiency", "kv_cache", "pruning", "coreference")

EXPERIMENTS: dict[str, Experiment] = {
    experiment.name: experiment
    for experiment in (importlib.import_module(f"qkv.experiments.{module}").EXPERIMENT for module in _MODULES)
}
"""Every experiment by name, in the order `list_experiments` gives them."""


def list_experiments() -> list[Experiment]:
    """All experiments, each with ``.name``, ``.claim``, ``.method`` and ``.criterion``."""
    return list(EXPERIMENTS.values())


def get(name: str) -> Experiment:
    """The experiment called ``name``; `AttentionError` listing the known ones otherwise.

    >>> get("nonsense")
    Traceback (most recent call last):
    ...
    qkv.errors.AttentionError: experiment: unknown name 'nonsense'; choose one of bottleneck, scaling, ...
    """
    if name not in EXPERIMENTS:
        raise AttentionError(f"experiment: unknown name {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def run(
    name: str,
    *,
    quick: bool = False,
    out: Path | str = "qkv-experiments",
    progress: bool | Progress = True,
    size: str | None = None,
    seed: int | None = None,
) -> Result:
    """Run one experiment and write ``out/NAME.json`` and ``out/NAME.png``; returns the `Result`.

    ``progress=True`` draws a `rich` progress bar on stderr; ``False`` is silent;
    any object with ``start(total, description)`` and ``advance(steps, description)``
    gets the reports instead. ``size="smoke"`` is a seconds-long run for tests
    (too small to learn: its verdict means nothing). ``result.report()`` is a
    few lines for a terminal.
    """
    experiment = get(name)
    if progress is True:
        with RichProgress(name) as bar:
            return experiment.run(quick, out, bar, size=size, seed=seed)
    return experiment.run(quick, out, NullProgress() if progress is False else progress, size=size, seed=seed)


__all__ = ["EXPERIMENTS", "Experiment", "Result", "get", "list_experiments", "run"]
