"""What every experiment shares: the `Experiment` and `Result` records, seeding, fits, JSON, plots, progress.

An experiment is a claim about attention, a measurement, and a criterion that
turns the measured table into a verdict. This module holds the machinery, so an
experiment file holds only its own science: ``measure(params, progress)`` returns
an `Outcome` (table, verdict, the checks behind it, a summary) and
``plot(outcome, params)`` draws it.

A verdict is ``True`` (every check passed), ``False`` (a check failed) or
``"inconclusive"`` (none failed, but one could not be decided: its evidence lies
inside the noise margin or the controls do not separate it from chance). A check
says which with ``passed``: True, False or None (undecided).

>>> exponent, _, r2 = fit_power_law([1, 2, 4, 8], [3, 12, 48, 192])   # y = 3 x²
>>> round(exponent, 6), round(r2, 6)
(2.0, 1.0)
>>> verdict_of({"a": check(1, 0, True), "b": check(0.4, 0.5, None)})
'inconclusive'
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from qkv.errors import AttentionError

INCONCLUSIVE = "inconclusive"
"""The verdict when no check failed but the evidence did not decide one of them."""

Verdict = bool | Literal["inconclusive"]

SIZES = ("smoke", "quick", "full")
"""``smoke``: seconds, for the test suite (too small to learn; the verdict means nothing);
``quick``: under a minute on two CPU cores; ``full``: the publishable numbers."""


# ----------------------------------------------------------------------------- progress


class Progress(Protocol):
    """What an experiment reports its progress to: a known number of steps, each with a label."""

    def start(self, total: int, description: str) -> None: ...

    def advance(self, steps: int = 1, description: str | None = None) -> None: ...


class NullProgress:
    """Reports nothing (tests, library use)."""

    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, steps: int = 1, description: str | None = None) -> None:
        pass


class RichProgress:
    """A `rich.progress` bar on stderr: ``with RichProgress("scaling") as p: experiment.run(..., progress=p)``."""

    def __init__(self, name: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.name = name
        self._bar = Progress(
            TextColumn("[bold]{task.fields[name]}[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=Console(stderr=True),
        )
        self._task: Any = None

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def start(self, total: int, description: str) -> None:
        self._task = self._bar.add_task(description, total=total, name=self.name)

    def advance(self, steps: int = 1, description: str | None = None) -> None:
        if self._task is None:
            self.start(1, "")
        kwargs = {} if description is None else {"description": description}
        self._bar.update(self._task, advance=steps, **kwargs)


# ----------------------------------------------------------------------------- records


@dataclass
class Outcome:
    """What an experiment's ``measure`` returns.

    ``results`` is the table (one dict per row, the same keys in every row);
    ``checks`` maps each part of the criterion to ``{"value": measured, "threshold": ..., "passed": True | False
    | None}`` (None: the evidence does not decide this part); ``verdict`` is `verdict_of` the checks, computed,
    never written by hand; ``series``
    holds curves too long for the table (loss per step); ``timing_keys`` names the
    table columns that are wall-clock measurements (not reproducible run to run).
    """

    results: list[dict[str, Any]]
    checks: dict[str, dict[str, Any]]
    summary: str
    series: dict[str, Any] = field(default_factory=dict)
    timing_keys: tuple[str, ...] = ()
    combine: str = "all"  # "all": every check must pass; "any": one passing check is enough (see `verdict_of`)

    @property
    def verdict(self) -> Verdict:
        return verdict_of(self.checks, self.combine)


def verdict_of(checks: Mapping[str, Mapping[str, Any]], combine: str = "all") -> Verdict:
    """The verdict of a criterion's checks (``passed``: True, False or None, undecided).

    ``combine="all"`` (a claim made of parts): ``False`` if a check failed (or there are none), else
    ``"inconclusive"`` if one is undecided, else ``True``. ``combine="any"`` (a claim that some case
    shows it, e.g. "in a real model"): ``True`` if a check passed, ``False`` if every check failed,
    else ``"inconclusive"``.

    >>> verdict_of({"a": check(1, 0, True), "b": check(2, 0, True)}), verdict_of({})
    (True, False)
    >>> verdict_of({"a": check(1, 0, False), "b": check(0.4, 0.5, None)})
    False
    >>> verdict_of({"a": check(1, 0, False), "b": check(0.4, 0.5, None)}, "any")
    'inconclusive'
    """
    if combine not in ("all", "any"):
        raise AttentionError(f"combine: expected 'all' or 'any', got {combine!r}")
    passed = [c["passed"] for c in checks.values()]
    if not passed:
        return False
    if combine == "any":
        if any(p is True for p in passed):
            return True
        return False if all(p is False for p in passed) else INCONCLUSIVE
    if any(p is False for p in passed):
        return False
    if any(p is None for p in passed):
        return INCONCLUSIVE
    return True


def verdict_words(verdict: Verdict) -> str:
    """How a report says the verdict: ``HOLDS``, ``NOT SUPPORTED by this run`` or ``INCONCLUSIVE: ...``."""
    if verdict is True:
        return "HOLDS"
    if verdict is False:
        return "NOT SUPPORTED by this run"
    return "INCONCLUSIVE: this run's evidence does not decide the claim"


def verdict_sentence(
    checks: Mapping[str, Mapping[str, Any]], combine: str = "all", holds: str = "Every part of the criterion holds."
) -> str:
    """The summary's last sentence: ``holds`` (what the claim says, when every part holds), or which parts
    failed, or which are undecided.

    >>> verdict_sentence({"fast": check(1.1, 2.0, False), "exact": check(0.0, 1e-3, True)})
    'The claim is not supported by this run: failed fast.'
    >>> verdict_sentence({"exact": check(0.0, 1e-3, True)}, holds="Exact, as claimed.")
    'Exact, as claimed.'
    """
    verdict = verdict_of(checks, combine)
    failed = [name for name, c in checks.items() if c["passed"] is False]
    open_ = [name for name, c in checks.items() if c["passed"] is None]
    if combine == "any":
        if verdict is True:
            held = [name for name, c in checks.items() if c["passed"] is True]
            return f"The claim holds: {', '.join(held)} (one case is enough)."
        if verdict is False:
            return f"The claim is not supported by this run: failed {', '.join(failed)}."
        return f"Inconclusive: the evidence does not decide {', '.join(open_)}" + (
            f"; failed {', '.join(failed)}." if failed else "."
        )
    if failed:
        return f"The claim is not supported by this run: failed {', '.join(failed)}."
    if open_:
        return f"Inconclusive: the evidence does not decide {', '.join(open_)}; no part of the criterion failed."
    return holds


@dataclass
class Result:
    """One run of one experiment, as written to ``NAME.json`` (see `to_dict`)."""

    name: str
    claim: str
    criterion: str
    verdict: Verdict
    checks: dict[str, dict[str, Any]]
    results: list[dict[str, Any]]
    summary: str
    parameters: dict[str, Any]
    size: str
    seed: int
    runtime_s: float
    torch_version: str
    num_threads: int
    series: dict[str, Any] = field(default_factory=dict)
    timing_keys: tuple[str, ...] = ()
    json_path: Path | None = None
    png_path: Path | None = None
    combine: str = "all"  # how the checks make the verdict (`verdict_of`)
    date: str = ""  # when the run ended, UTC, ISO 8601
    rule_changed: str = ""  # the experiment's note on a rule changed after seeing data ("" if never)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: claim, verdict, criterion, checks, results table, summary, and how it was run.

        ``rule_changed`` is null, or the note saying the rule was changed after seeing data (when, why,
        and what the earlier rule gave)."""
        return {
            "name": self.name,
            "claim": self.claim,
            "verdict": self.verdict,
            "criterion": self.criterion,
            "rule_changed": self.rule_changed or None,
            "combine": self.combine,
            "checks": self.checks,
            "results": self.results,
            "summary": self.summary,
            "parameters": self.parameters,
            "size": self.size,
            "seed": self.seed,
            "runtime_s": round(self.runtime_s, 2),
            "date": self.date,
            "torch_version": self.torch_version,
            "num_threads": self.num_threads,
            "timing_keys": list(self.timing_keys),
            "series": self.series,
            "files": {"json": f"{self.name}.json", "png": f"{self.name}.png"},
        }

    def report(self) -> str:
        """A few lines for a terminal: verdict, criterion, summary, where the files are."""
        lines = [
            f"{self.name}: {self.claim}",
            f"verdict: {verdict_words(self.verdict)} ({self.size} run, {self.runtime_s:.0f} s, {self.num_threads} "
            f"threads, seed {self.seed})",
            f"criterion: {self.criterion}",
        ]
        if self.rule_changed:
            lines.append(f"rule changed after seeing data: {self.rule_changed}")
        lines.append(self.summary)
        if self.json_path is not None:
            lines.append(f"wrote {self.json_path} and {self.png_path}")
        return "\n".join(lines)


def check(value: Any, threshold: Any, passed: bool | None, note: str = "") -> dict[str, Any]:
    """One part of a criterion: what was measured, what it was compared with, whether it passed
    (``None``: the evidence does not decide it, e.g. a timing inside its noise margin)."""
    decided = None if passed is None else bool(passed)
    entry = {"value": jsonable(value), "threshold": jsonable(threshold), "passed": decided}
    if note:
        entry["note"] = note
    return entry


# ----------------------------------------------------------------------------- seeding and numbers


def seed_all(seed: int) -> torch.Generator:
    """Seed torch, numpy and `random`; return a fresh torch generator with that seed.

    >>> a = torch.randn(3, generator=seed_all(7)); b = torch.randn(3, generator=seed_all(7))
    >>> torch.equal(a, b)
    True
    """
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    return torch.Generator().manual_seed(seed)


TRAINING: dict[str, Any] = {"seed": 0, "threads": 1}
"""Where the sizes of an experiment that trains small models start: seed 0 and one thread (small models train
fastest on one thread; the numbers then ignore the core count)."""


def optimize(
    optimizer: torch.optim.Optimizer,
    steps: int,
    loss_at: Callable[[int], torch.Tensor],
    progress: Progress,
    description: str,
) -> list[float]:
    """``steps`` optimizer steps on ``loss_at(step)`` (a scalar loss on a batch it draws); each step's loss.

    The progress advances every 20 steps and at the last one.
    """
    losses = []
    for step in range(steps):
        loss = loss_at(step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 20 == 19 or step == steps - 1:
            progress.advance(step % 20 + 1, description)
    return losses


@contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (``None``: leave it), then restore it."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_power_law(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least squares on log-log: ``y ≈ c · x^k``; returns ``(k, c, r²)``.

    Raises `AttentionError` for fewer than two points or non-positive values.
    """
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.shape != y.shape or x.size < 2:
        raise AttentionError(f"fit_power_law: need two or more (x, y) pairs of equal length, got {x.size} and {y.size}")
    if (x <= 0).any() or (y <= 0).any():
        raise AttentionError("fit_power_law: x and y must be positive (the fit is on their logarithms)")
    lx, ly = np.log(x), np.log(y)
    k, log_c = np.polyfit(lx, ly, 1)
    pred = k * lx + log_c
    ss_res = float(((ly - pred) ** 2).sum())
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return float(k), float(math.exp(log_c)), r2


def jsonable(obj: Any) -> Any:
    """``obj`` with tensors, numpy values, paths and tuples turned into JSON types; NaN and inf become None.

    >>> jsonable({"a": torch.tensor(1.5), "b": (1, float("nan")), "c": np.float32(2.0)})
    {'a': 1.5, 'b': [1, None], 'c': 2.0}
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON (strict: no NaN)."""
    path.write_text(json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")


def smooth(values: Sequence[float], every: int) -> list[float]:
    """Means of consecutive chunks of ``every`` values (a loss curve of at most ``len / every`` points).

    >>> smooth([1.0, 3.0, 5.0, 7.0, 9.0], 2)
    [2.0, 6.0, 9.0]
    """
    return [sum(values[i : i + every]) / len(values[i : i + every]) for i in range(0, len(values), every)]


MARGIN_CONFIDENCE = 0.9
"""The noise margin of a repeated measurement: a distribution-free interval that holds its median with at least
this probability (`median_interval`)."""


def median_interval(values: Sequence[float], confidence: float = MARGIN_CONFIDENCE) -> tuple[float, float, float]:
    """``(median, low, high)``: ``[low, high]`` holds the population median with probability >= ``confidence``.

    Distribution-free (order statistics; the count of values below the median is Binomial(n, 1/2)): the widest
    ``k`` with ``P(k <= X < n - k + 1) >= confidence`` gives ``[x_(k), x_(n-k+1)]``. With 5 values that is their
    full range (93.75%); with 9, the 2nd to the 8th (96%). Needs at least 5 values (fewer cannot reach 90%).

    >>> median_interval([1.0, 5.0, 2.0, 4.0, 3.0])
    (3.0, 1.0, 5.0)
    >>> median_interval([3.0, 9.0, 1.0, 7.0, 5.0, 2.0, 8.0, 4.0, 6.0])
    (5.0, 2.0, 8.0)
    """
    x = sorted(float(v) for v in values)
    n = len(x)
    if n < 5 or not 0 < confidence < 1:
        raise AttentionError(
            f"median_interval: need 5 or more values and a confidence in (0, 1), got {n}, {confidence}"
        )

    def coverage(k: int) -> float:  # P(x_(k) <= median <= x_(n-k+1)) = 1 - 2 P(X <= k - 1)
        return 1 - 2 * sum(math.comb(n, j) for j in range(k)) / 2**n

    k = max(k for k in range(1, n // 2 + 1) if coverage(k) >= confidence)
    return float(np.median(x)), x[k - 1], x[n - k]


def decide(values: Sequence[float], threshold: float, *, at_least: bool) -> tuple[float, float, float, bool | None]:
    """Compare a repeated measurement with a threshold beyond its noise: ``(median, low, high, passed)``.

    ``passed`` is True when the whole `median_interval` lies on the claimed side of ``threshold``
    (``>=`` if ``at_least``, else ``<=``), False when it lies wholly on the other side, and None
    (undecided) when the interval straddles the threshold, or when there are fewer than 5 values (the
    smallest count whose interval can reach 90%).

    >>> decide([2.4, 2.6, 2.5, 2.7, 2.3], 2.0, at_least=True)
    (2.5, 2.3, 2.7, True)
    >>> decide([1.8, 2.2, 2.1, 1.9, 2.0], 2.0, at_least=True)[3] is None
    True
    >>> decide([1.2, 1.1, 1.3, 1.25, 1.15], 2.0, at_least=True)[3]
    False
    """
    if len(values) < 5:  # too few repeats to state a noise margin: undecided
        x = sorted(float(v) for v in values)
        return (float(np.median(x)) if x else math.nan), (x[0] if x else math.nan), (x[-1] if x else math.nan), None
    median, low, high = median_interval(values)
    if at_least:
        passed = True if low >= threshold else False if high < threshold else None
    else:
        passed = True if high <= threshold else False if low > threshold else None
    return median, low, high, passed


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds)``."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# ----------------------------------------------------------------------------- plots

COLORS = {
    "bad": "#c0392b",  # the thing the claim says fails
    "good": "#2471a3",
    "alt": "#27ae60",
    "alt2": "#8e44ad",
    "grey": "#7f8c8d",
}


def figure(
    ncols: int, title: str, verdict: Verdict, *, nrows: int = 1, width: float = 5.2, height: float = 4.2
) -> tuple[Any, list[Any]]:
    """A matplotlib Figure (no pyplot state) with ``nrows × ncols`` axes (flat list, row by row)
    and a two-line title: the claim, then whether this run supports it."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency of qkv
        raise ImportError("qkv experiments draw their plots with matplotlib: pip install matplotlib") from exc

    fig = Figure(figsize=(width * ncols, height * nrows + 0.4), layout="constrained", dpi=110)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    if verdict is True:
        mark, color = "claim holds in this run", "black"
    elif verdict is False:
        mark, color = "claim NOT supported by this run", COLORS["bad"]
    else:
        mark, color = "inconclusive: this run's evidence does not decide the claim", "#b9770e"
    fig.suptitle(f"{title}\n{mark}", fontsize=12, color=color)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def save_figure(fig: Any, path: Path) -> None:
    fig.savefig(path, format="png")


def footnote(fig: Any, text: str) -> None:
    """Small grey lines under everything else (how it was run, the criterion), wrapped to the figure's width.

    The constrained layout is told to leave room for them and for a `shared_legend` above them.
    """
    import textwrap

    lines = textwrap.wrap(text, int(fig.get_figwidth() * 17))
    inches = 0.14 * len(lines) + 0.08
    legend = getattr(fig, "_qkv_legend", None)
    if legend is not None:
        legend.set_bbox_to_anchor((0.5, inches / fig.get_figheight()), transform=fig.transFigure)
        inches += 0.32 * fig._qkv_legend_rows + 0.05
    strip = inches / fig.get_figheight()
    fig.get_layout_engine().set(rect=(0, strip, 1, 1 - strip))
    fig.text(0.005, 0.01, "\n".join(lines), fontsize=7, color=COLORS["grey"], ha="left", va="bottom")


def shared_legend(fig: Any, ax: Any, ncol: int = 4) -> None:
    """One legend for the whole figure, centred under the plots, from ``ax``'s labelled lines."""
    handles, labels = ax.get_legend_handles_labels()
    fig._qkv_legend = fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=9, frameon=False)
    fig._qkv_legend_rows = -(-len(labels) // ncol)


# ----------------------------------------------------------------------------- the experiment record


@dataclass(frozen=True)
class Experiment:
    """A claim, how it is measured, and the criterion that decides it.

    ``sizes`` maps ``"smoke"``, ``"quick"`` and ``"full"`` to the parameters
    ``measure(params, progress) -> Outcome`` is called with (``params["threads"]``,
    if there, is the torch thread count it runs under: small models train fastest
    on one thread, and their numbers then do not depend on the core count); ``plot(outcome,
    params) -> Figure`` draws the result. ``requires() -> str | None`` says why the
    experiment cannot run here (a missing pretrained model, say), or None.

    A rule is fixed before the full run it judges. ``rule_changed`` is the note for
    a rule changed after its author saw data (when, why, and what the earlier
    rule gave); it is written into every JSON and onto the docs page. Empty: the
    rule was never changed after seeing a result.
    """

    name: str
    claim: str
    title: str  # the claim in a few words, for the plot
    method: str  # what is measured, one line
    criterion: str  # how the verdict follows from the table
    sizes: Mapping[str, Mapping[str, Any]]
    measure: Callable[[Mapping[str, Any], Progress], Outcome]
    plot: Callable[[Outcome, Mapping[str, Any]], Any]
    requires: Callable[[], str | None] = lambda: None
    rule_changed: str = ""

    def run(
        self,
        quick: bool = False,
        out_dir: Path | str = "qkv-experiments",
        progress: Progress | None = None,
        *,
        size: str | None = None,
        seed: int | None = None,
    ) -> Result:
        """Measure, decide, and write ``out_dir/NAME.json`` and ``out_dir/NAME.png``.

        ``size`` (``"smoke"``, ``"quick"``, ``"full"``) overrides ``quick``; ``seed``
        overrides the size's seed. Same seed and thread count: same numbers
        (timings aside).
        """
        size = size if size is not None else ("quick" if quick else "full")
        if size not in self.sizes:
            raise AttentionError(f"size: unknown size {size!r} for {self.name}; choose one of {', '.join(self.sizes)}")
        why_not = self.requires()
        if why_not is not None:
            raise AttentionError(f"{self.name}: cannot run here: {why_not}")
        params = dict(self.sizes[size])
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise AttentionError(f"seed: expected an int, got {seed!r}")
            params["seed"] = seed
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        progress = progress if progress is not None else NullProgress()
        start = time.perf_counter()
        seed_all(params["seed"])
        with num_threads(params.get("threads")):
            threads = torch.get_num_threads()
            outcome = self.measure(params, progress)
        runtime = time.perf_counter() - start
        progress.advance(0, "writing the JSON and the plot")
        result = Result(
            name=self.name,
            claim=self.claim,
            criterion=self.criterion,
            verdict=outcome.verdict,
            checks=jsonable(outcome.checks),
            results=jsonable(outcome.results),
            summary=outcome.summary,
            parameters=jsonable(params),
            size=size,
            seed=params["seed"],
            runtime_s=runtime,
            torch_version=torch.__version__,
            num_threads=threads,
            series=jsonable(outcome.series),
            timing_keys=outcome.timing_keys,
            json_path=out / f"{self.name}.json",
            png_path=out / f"{self.name}.png",
            combine=outcome.combine,
            date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            rule_changed=self.rule_changed,
        )
        fig = self.plot(outcome, params)
        footnote(
            fig,
            f"qkv experiment {self.name} ({size} run, seed {params['seed']}, torch {torch.__version__}, "
            f"{result.num_threads} threads, {runtime:.0f} s). Criterion: {self.criterion}"
            + (" (This rule was changed after seeing data: see the JSON's rule_changed.)" if self.rule_changed else ""),
        )
        save_figure(fig, result.png_path)
        write_json(result.json_path, result.to_dict())
        return result
