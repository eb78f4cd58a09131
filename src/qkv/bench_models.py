"""The real-model part of `qkv bench`: qkv's models against transformers on the same weights, same threads.

- SmolLM2 greedy generation, tokens per second: qkv with each KV cache, qkv
  without a cache (the whole sequence recomputed for every new token), and
  transformers' own ``generate`` on the same GGUF weights (dequantized to float32).
- MiniLM sentence embeddings, sentences per second: qkv's ``embed`` against
  transformers' ``AutoModel`` with the same mean pooling.

Contenders take turns round by round and each reports its median rate (see
`qkv.bench.interleaved`), so the ratios hold up on a machine whose speed drifts.
transformers is not a dependency of qkv; without it the peer is reported as
missing (with the command that installs it) and qkv's own numbers still run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from qkv.bench import interleaved

PROMPT = "The cat sat on the mat because it was tired. The next morning, the cat"
SENTENCES = [
    "The cat sat on the mat because it was tired.",
    "Attention lets every token look at every other token.",
    "A key-value cache stores what earlier tokens computed.",
    "Sliding windows keep the cost linear in the sequence length.",
]
INSTALL = "pip install transformers accelerate"


@dataclass
class ModelMeasurement:
    task: str  # "smollm2 greedy generation" | "minilm embedding"
    unit: str  # "tokens/s" | "sentences/s"
    rates: dict[str, float] = field(default_factory=dict)  # peer -> rate
    notes: dict[str, str] = field(default_factory=dict)
    same_output: bool | None = None  # transformers produced the same tokens / embeddings
    rounds: dict[str, list[float]] = field(default_factory=dict)  # peer -> its rate in each round

    def ratio(self, mine: str, peer: str) -> float | None:
        if mine not in self.rates or peer not in self.rates:
            return None
        return self.rates[mine] / self.rates[peer]

    def ratio_range(self, mine: str, peer: str) -> tuple[float, float] | None:
        """The lowest and highest ratio of one round's rates: how far the machine's drift moves the ratio."""
        if mine not in self.rounds or peer not in self.rounds:
            return None
        ratios = [a / b for a, b in zip(self.rounds[mine], self.rounds[peer])]
        return min(ratios), max(ratios)


def _transformers():
    try:
        import transformers  # noqa: F401

        return transformers
    except ImportError:
        return None


def _rates(
    contenders: dict[str, Callable[[], tuple[object, int]]], rounds: int
) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Each contender's rate (items per second) in each round, taking turns (`qkv.bench.interleaved`),
    and its last output."""
    times, results = interleaved(contenders, rounds)
    rates = {name: [results[name][1] / t for t in ts] for name, ts in times.items()}  # type: ignore[index]
    return rates, {name: result[0] for name, result in results.items()}  # type: ignore[index]


def _greedy_without_cache(lm, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding that recomputes the whole sequence for every new token."""
    for _ in range(new_tokens):
        logits = lm.model(ids)  # (1, N, V)
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)  # (1, N) -> (1, N + 1)
    return ids


def smollm2_generation(
    new_tokens: int = 32, caches: tuple[str, ...] = ("contiguous", "paged", "int8"), rounds: int = 3
) -> ModelMeasurement:
    import qkv.models

    m = ModelMeasurement("smollm2 greedy generation", "tokens/s")
    lm = qkv.models.load("smollm2")
    ids = torch.tensor([lm.prompt_ids(PROMPT)])  # (1, N)

    def qkv_generate(cache: str) -> Callable[[], tuple[torch.Tensor, int]]:
        def run() -> tuple[torch.Tensor, int]:
            out = lm.generate(ids, max_new_tokens=new_tokens, cache=cache)
            return out, out.shape[1] - ids.shape[1]

        return run

    contenders = {f"qkv[{cache}]": qkv_generate(cache) for cache in caches}
    transformers = _transformers()
    if transformers is None:
        m.notes["transformers"] = f"not installed: {INSTALL}"
    else:
        path = lm.path
        model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        model.eval()

        def theirs() -> tuple[torch.Tensor, int]:
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=lm.tokenizer.eos_id,
                pad_token_id=lm.tokenizer.eos_id,
            )
            return out, out.shape[1] - ids.shape[1]

        contenders["transformers"] = theirs
    with torch.no_grad():
        for run in contenders.values():  # warm-up
            run()
        m.rounds, outputs = _rates(contenders, rounds)
        start = time.perf_counter()
        _greedy_without_cache(lm, ids, new_tokens)
        no_cache = new_tokens / (time.perf_counter() - start)
    m.rates = {name: statistics.median(m.rounds[name]) for name in contenders if name != "transformers"}
    m.rates["qkv[no cache]"] = no_cache
    if "transformers" in m.rounds:
        m.rates["transformers"] = statistics.median(m.rounds["transformers"])
        mine, theirs_out = outputs[f"qkv[{caches[0]}]"], outputs["transformers"]
        m.same_output = mine.shape == theirs_out.shape and bool(torch.equal(mine, theirs_out))
    return m


def minilm_embedding(batch: int = 32, rounds: int = 3) -> ModelMeasurement:
    import qkv.models

    m = ModelMeasurement("minilm embedding", "sentences/s")
    encoder = qkv.models.load("minilm")
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(batch)]
    contenders: dict[str, Callable[[], tuple[torch.Tensor, int]]] = {"qkv": lambda: (encoder.embed(texts), batch)}
    transformers = _transformers()
    if transformers is None:
        m.notes["transformers"] = f"not installed: {INSTALL}"
    else:
        folder = encoder.path
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        model = transformers.AutoModel.from_pretrained(folder).eval()

        def theirs() -> tuple[torch.Tensor, int]:
            enc = tokenizer(texts, padding=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state  # (B, N, 384)
            weights = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, N, 1)
            pooled = (hidden * weights).sum(1) / weights.sum(1)  # (B, 384)
            return torch.nn.functional.normalize(pooled, dim=-1), batch

        contenders["transformers"] = theirs
    with torch.no_grad():
        for run in contenders.values():  # warm-up
            run()
        m.rounds, outputs = _rates(contenders, rounds)
    m.rates = {name: statistics.median(rates) for name, rates in m.rounds.items()}
    if "transformers" in outputs:
        m.same_output = bool((outputs["qkv"] - outputs["transformers"]).abs().max() < 1e-4)
    return m


def run(quick: bool = False) -> list[ModelMeasurement]:
    return [
        minilm_embedding(batch=16 if quick else 64, rounds=3 if quick else 5),
        smollm2_generation(new_tokens=16 if quick else 64, rounds=3 if quick else 5),
    ]
