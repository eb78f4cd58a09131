"""The real-model part of `qkv bench`: qkv's models against transformers on the same weights, same threads.

- SmolLM2 greedy generation, tokens per second: qkv with each KV cache, qkv
  without a cache (the whole sequence recomputed for every new token), and
  transformers' own ``generate`` on the same GGUF weights (dequantized to float32).
- MiniLM sentence embeddings, sentences per second: qkv's ``embed`` against
  transformers' ``AutoModel`` with the same mean pooling.

transformers is not a dependency of qkv; without it the peer is reported as
missing (with the command that installs it) and qkv's own numbers still run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

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

    def ratio(self, mine: str, peer: str) -> float | None:
        if mine not in self.rates or peer not in self.rates:
            return None
        return self.rates[mine] / self.rates[peer]


def _transformers():
    try:
        import transformers  # noqa: F401

        return transformers
    except ImportError:
        return None


def _greedy_without_cache(lm, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding that recomputes the whole sequence for every new token."""
    for _ in range(new_tokens):
        logits = lm.model(ids)  # (1, N, V)
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)  # (1, N) -> (1, N + 1)
    return ids


def smollm2_generation(new_tokens: int = 32, caches: tuple[str, ...] = ("contiguous", "paged", "int8")) -> ModelMeasurement:
    import qkv.models

    m = ModelMeasurement("smollm2 greedy generation", "tokens/s")
    lm = qkv.models.load("smollm2")
    ids = torch.tensor([lm.prompt_ids(PROMPT)])  # (1, N)
    produced: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for cache in caches:
            lm.generate(ids, max_new_tokens=2, cache=cache)  # warm-up
            start = time.perf_counter()
            out = lm.generate(ids, max_new_tokens=new_tokens, cache=cache)
            m.rates[f"qkv[{cache}]"] = (out.shape[1] - ids.shape[1]) / (time.perf_counter() - start)
            produced[cache] = out
        start = time.perf_counter()
        out = _greedy_without_cache(lm, ids, new_tokens)
        m.rates["qkv[no cache]"] = new_tokens / (time.perf_counter() - start)
    transformers = _transformers()
    if transformers is None:
        m.notes["transformers"] = f"not installed: {INSTALL}"
        return m
    path = lm.path
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        model.generate(ids, max_new_tokens=2, do_sample=False)  # warm-up
        start = time.perf_counter()
        theirs = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
            eos_token_id=lm.tokenizer.eos_id, pad_token_id=lm.tokenizer.eos_id,
        )
        m.rates["transformers"] = (theirs.shape[1] - ids.shape[1]) / (time.perf_counter() - start)
    mine = produced.get("contiguous", out)
    m.same_output = mine.shape == theirs.shape and bool(torch.equal(mine, theirs))
    return m


def minilm_embedding(batch: int = 32, repeats: int = 3) -> ModelMeasurement:
    import qkv.models

    m = ModelMeasurement("minilm embedding", "sentences/s")
    encoder = qkv.models.load("minilm")
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(batch)]
    with torch.no_grad():
        encoder.embed(texts)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            mine = encoder.embed(texts)  # (B, 384)
        m.rates["qkv"] = batch * repeats / (time.perf_counter() - start)
    transformers = _transformers()
    if transformers is None:
        m.notes["transformers"] = f"not installed: {INSTALL}"
        return m
    folder = encoder.path
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()

    def theirs_embed() -> torch.Tensor:
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        hidden = model(**enc).last_hidden_state  # (B, N, 384)
        weights = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, N, 1)
        pooled = (hidden * weights).sum(1) / weights.sum(1)  # (B, 384)
        return torch.nn.functional.normalize(pooled, dim=-1)

    with torch.no_grad():
        theirs_embed()
        start = time.perf_counter()
        for _ in range(repeats):
            theirs = theirs_embed()
        m.rates["transformers"] = batch * repeats / (time.perf_counter() - start)
    m.same_output = bool((mine - theirs).abs().max() < 1e-4)
    return m


def run(quick: bool = False) -> list[ModelMeasurement]:
    return [
        minilm_embedding(batch=16 if quick else 64),
        smollm2_generation(new_tokens=16 if quick else 64),
    ]
