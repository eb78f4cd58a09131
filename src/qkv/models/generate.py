"""Autoregressive generation with a KV cache: sampling (greedy, temperature, top-k, top-p) and the decoding loop.

The loop, for a language model ``model`` (a `qkv.nn.TransformerForCausalLM`) and prompt ids ``(B, N)``::

    cache = model.new_cache(kind, batch=B, max_length=N + max_new_tokens)
    logits = lm_head(hidden_states(prompt, cache=cache)[:, -1])   # prefill: the whole prompt at once
    repeat: token = sample(logits); yield token                   # (B,)
            logits = lm_head(hidden_states(token, cache=cache)[:, -1])   # one new position per step

Each step projects only the new token; its query attends every cached key
(``causal=True`` is bottom-right aligned). With ``"contiguous"`` and ``"paged"``
caches this computes exactly the logits of recomputing the whole sequence; with
``"int8"`` keys and values are rounded to 8 bits (see `qkv.cache.Int8Cache` for the bound).

Sampling (`sample_next`) follows HF transformers' order: divide the logits by the
temperature, keep the ``top_k`` largest, then the smallest set of most probable
tokens whose probability reaches ``top_p``, and draw from what is left.
``temperature=0`` is greedy (argmax) and ignores top-k / top-p.

>>> import torch
>>> logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
>>> sample_next(logits).tolist()                                    # greedy
[1]
>>> g = torch.Generator().manual_seed(0)
>>> draws = {sample_next(logits, temperature=1.0, top_k=2, generator=g).item() for _ in range(50)}
>>> sorted(draws)                                                   # only the 2 most likely ids
[1, 2]
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv import checks
from qkv.cache import KINDS
from qkv.models.packages import ModelError
from qkv.nn import TransformerForCausalLM

__all__ = ["GenerationConfig", "filter_logits", "generate", "generate_steps", "sample_next"]


def _optional_int(name: str, value: object, minimum: int) -> None:
    if value is not None:
        checks.integer(name, value, minimum=minimum, error=ModelError)


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode (HF's ``GenerationConfig``, in qkv's names); every field is checked when it is made.

    Attributes:
        max_new_tokens: at most this many new tokens.
        temperature: 0 is greedy (argmax); above 0 draws from ``softmax(logits / temperature)``.
        top_k, top_p: draw only among the ``top_k`` most likely ids / the most likely
            ids whose probability reaches ``top_p`` (`filter_logits`).
        seed: makes the draws reproducible.
        cache: the KV cache, ``"contiguous"``, ``"paged"`` or ``"int8"`` (`qkv.cache`).
        eos_id: a row that produced it is finished; its later tokens are ``pad_id``
            (``eos_id`` if None), and decoding ends when every row is finished.

    >>> GenerationConfig(max_new_tokens=8, temperature=0.7, top_p=0.9).top_p
    0.9
    >>> GenerationConfig(cache="dense")
    Traceback (most recent call last):
    ...
    qkv.errors.ModelError: cache: expected one of ['contiguous', 'paged', 'int8'], got 'dense'
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    cache: str = "contiguous"
    eos_id: int | None = None
    pad_id: int | None = None

    def __post_init__(self) -> None:
        checks.sampling(self.temperature, self.top_k, self.top_p, error=ModelError)
        checks.integer("max_new_tokens", self.max_new_tokens, error=ModelError)
        if self.cache not in KINDS:
            raise ModelError(f"cache: expected one of {list(KINDS)}, got {self.cache!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ModelError(f"seed: expected None or an integer, got {self.seed!r}")
        _optional_int("eos_id", self.eos_id, 0)
        _optional_int("pad_id", self.pad_id, 0)

    @classmethod
    def of(cls, config: GenerationConfig | None = None, /, **options: object) -> GenerationConfig:
        """``config`` (default: the defaults) with ``options`` in place of its fields; unknown names refused.

        >>> config = GenerationConfig.of(GenerationConfig(temperature=0.5), max_new_tokens=3)
        >>> config.max_new_tokens, config.temperature
        (3, 0.5)
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ModelError(f"{unknown[0]}: not a generation option; the options are {names}")
        if config is not None and not isinstance(config, GenerationConfig):
            raise ModelError(f"config: expected None or a GenerationConfig, got {type(config).__name__}")
        return dataclasses.replace(config or cls(), **options)  # type: ignore[arg-type]  # checked in __post_init__


def filter_logits(logits: Tensor, *, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """``logits (..., V)`` with every id outside the top-k / top-p set at ``-inf`` (float32 or wider).

    ``top_k``: keep the ``k`` largest (ties at the k-th value are all kept).
    ``top_p``: keep the most probable ids, in order, until their probability
    reaches ``top_p``: an id stays when the ids more probable than it sum to
    less than ``top_p`` (so the most probable id always stays).

    >>> import torch
    >>> logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    >>> filter_logits(logits, top_p=0.8).isfinite().tolist()        # 0.5 + 0.3 reaches 0.8
    [True, True, False, False]
    >>> filter_logits(logits, top_p=0.81).isfinite().tolist()
    [True, True, True, False]
    """
    checks.sampling(1.0, top_k, top_p, error=ModelError)
    scores = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    if top_k is not None and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[..., -1:]  # (..., 1)
        scores = scores.masked_fill(scores < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)  # (..., V)
        probs = sorted_scores.softmax(-1)
        before = probs.cumsum(-1) - probs  # probability of the ids more likely than each
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to id order
        scores = scores.masked_fill(drop, -math.inf)
    return scores


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The next token of each row: ``logits (B, V)`` -> ids ``(B,)`` (int64).

    ``temperature=0``: argmax. Otherwise a draw from ``softmax(logits / temperature)``
    restricted by `filter_logits`; ``generator`` makes the draws reproducible.
    """
    checks.sampling(temperature, top_k, top_p, error=ModelError)
    if temperature == 0:
        return logits.argmax(dim=-1)
    scores = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p)  # (B, V)
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]  # (B, 1) -> (B,)


def _check_ids(input_ids: object, attention_mask: object) -> tuple[Tensor, Tensor | None]:
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.int32, torch.int64):
        given: object = (
            f"{input_ids.dtype} {tuple(input_ids.shape)}" if isinstance(input_ids, Tensor) else type(input_ids)
        )
        raise ModelError(f"input_ids: expected an integer tensor (B, N) of token ids, got {given}")
    if input_ids.shape[1] == 0:
        raise ModelError("input_ids: the prompt is empty (N = 0); give at least one token to continue from")
    if attention_mask is None:
        return input_ids.long(), None
    if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
        given = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
        raise ModelError(
            f"attention_mask: expected input_ids' shape {tuple(input_ids.shape)} (True / 1 at real tokens, "
            f"left padding), got {given}"
        )
    mask = attention_mask.bool()
    if not mask[:, -1].all():
        raise ModelError(
            "attention_mask: the last position of every row must be a real token (pad prompts on the left: "
            "tokenizer.batch(texts, padding_side='left'))"
        )
    return input_ids.long(), (None if mask.all() else mask)


def generate_steps(
    model: TransformerForCausalLM,
    input_ids: Tensor,
    config: GenerationConfig | None = None,
    *,
    attention_mask: Tensor | None = None,
    **options: object,
) -> Iterator[Tensor]:
    """Decode token by token: yields each step's new ids ``(B,)``, at most ``max_new_tokens`` times.

    ``config`` (a `GenerationConfig`) and ``options`` (its fields by name:
    ``max_new_tokens=20, temperature=0.7``, in place of the config's) say how.
    ``attention_mask (B, N)`` marks the real tokens of a left-padded prompt.
    Raises `ModelError` for bad arguments, before any work, when the generator is created.
    """
    config = GenerationConfig.of(config, **options)
    ids, mask = _check_ids(input_ids, attention_mask)
    n = ids.shape[1]
    limit = getattr(model, "context_length", None)
    if limit is not None and n + config.max_new_tokens > limit:
        raise ModelError(
            f"max_new_tokens: the prompt's {n} tokens + {config.max_new_tokens} new ones exceed the model's context "
            f"of {limit} positions; shorten the prompt or ask for at most {max(limit - n, 0)} new tokens"
        )
    return _steps(model, ids, mask, config)


def _steps(model: TransformerForCausalLM, ids: Tensor, mask: Tensor | None, c: GenerationConfig) -> Iterator[Tensor]:
    if c.max_new_tokens == 0:
        return
    b, n = ids.shape
    device = model.lm_head.weight.device
    ids = ids.to(device)
    generator = None
    if c.seed is not None and c.temperature > 0:
        generator = torch.Generator(device=device).manual_seed(c.seed)
    pad = c.eos_id if c.pad_id is None else c.pad_id
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    with torch.no_grad():
        kv = model.new_cache(c.cache, batch=b, max_length=n + c.max_new_tokens)
        if mask is not None:
            mask = mask.to(device)

        def next_logits(new: Tensor) -> Tensor:
            hidden = model.hidden_states(new, mask=None if mask is None else mask[:, None, None, :], cache=kv)
            logits: Tensor = model.lm_head(hidden[:, -1])  # (B, E) -> (B, V): only the last position is needed
            return logits

        logits = next_logits(ids)  # prefill: (B, N) at once
        for step in range(c.max_new_tokens):
            token = sample_next(logits, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, generator=generator)
            if c.eos_id is not None:
                assert pad is not None, "with an eos_id there is a pad id"
                token = torch.where(finished, torch.full_like(token, pad), token)
                finished |= token == c.eos_id
            yield token
            if step == c.max_new_tokens - 1 or bool(finished.all()):
                return
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)  # (B, L) -> (B, L + 1)
            logits = next_logits(token[:, None])  # (B, 1)


def generate(
    model: TransformerForCausalLM,
    input_ids: Tensor,
    config: GenerationConfig | None = None,
    *,
    attention_mask: Tensor | None = None,
    progress: bool | None = None,
    **options: object,
) -> Tensor:
    """Generate up to ``max_new_tokens`` after ``input_ids (B, N)``; returns ids ``(B, N + new)``, prompt included.

    Arguments as in `generate_steps`. ``progress``: show a progress bar on stderr
    (default: for 64 or more new tokens when stderr is a terminal).

    >>> import torch
    >>> from qkv.nn import DecoderConfig, TransformerForCausalLM
    >>> cfg = DecoderConfig.llama(vocab_size=50, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=64)
    >>> lm = TransformerForCausalLM(cfg).eval()
    >>> prompt = torch.tensor([[3, 1, 4, 1, 5]])
    >>> out = generate(lm, prompt, max_new_tokens=6)
    >>> out.shape
    torch.Size([1, 11])
    >>> x = prompt                                  # the same, recomputing everything at each step
    >>> for _ in range(6):
    ...     x = torch.cat([x, lm(x)[:, -1].argmax(-1, keepdim=True)], dim=1)
    >>> torch.equal(out, x)
    True
    """
    config = GenerationConfig.of(config, **options)
    steps = generate_steps(model, input_ids, config, attention_mask=attention_mask)
    if progress is None:
        progress = config.max_new_tokens >= 64 and sys.stderr.isatty()
    new = list(_with_progress(steps, config.max_new_tokens) if progress else steps)
    prompt = input_ids.long().to(model.lm_head.weight.device)
    if not new:
        return prompt
    return torch.cat([prompt, torch.stack(new, dim=1)], dim=1)  # (B, N) + (B, new) -> (B, N + new)


def _with_progress(steps: Iterator[Tensor], total: int) -> Iterator[Tensor]:
    """Pass the steps through, drawing a transient progress bar with tokens/s on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    started = time.perf_counter()
    columns = (
        TextColumn("generating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("generate", total=total, rate="")
        for count, token in enumerate(steps, start=1):
            rate = count / max(time.perf_counter() - started, 1e-9)
            bar.update(task, completed=count, rate=f"{rate:.1f} tokens/s")
            yield token
