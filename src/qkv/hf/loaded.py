"""A transformers model and its tokenizer as qkv's tools read a loaded model: `load`, `wrap`, `TransformersModel`.

`qkv explain`, the explorer and the course read a model through what `qkv.models.load` returns:
``.tokenizer`` (``encode``, ``tokens``, ``decode``, ``backend``), ``.attentions(text)``,
``.context_length``, ``.causal``, ``.name``, ``.kind``, ``.load_seconds``. `TransformersModel`
gives the same for any transformers model running on ``attn_implementation="qkv"``: the
weights are the exact probabilities of the pass itself (`qkv.hf.record`), and `record_calls`
keeps each layer's weight function instead of its weights, so that a long text's rows are
computed a block at a time, as for qkv's own models (`qkv.interpret.RecordedCall`)::

    model = qkv.hf.loaded.load("path/to/gpt2-folder")    # AutoModelForCausalLM + AutoTokenizer
    model.implementation                                  # "transformers GPT2LMHeadModel with attn_..."
    model.attentions("The cat sat.").weights              # (L, H, N, N)
    model.generate("Once upon a time", max_new_tokens=8)  # a causal LM: the new text

The architecture is the one ``config.json`` names (``architectures``): a causal-LM class
(``GPT2LMHeadModel``, ``Qwen2ForCausalLM``, ...) is loaded as itself and can generate; any other
(``RobertaForMaskedLM``, none given) loads as its base model (``AutoModel``), whose hidden
states are all the tools need. Encoder-decoder models are refused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import qkv.interpret
from qkv import checks
from qkv.hf._transformers import ModelError, require_transformers
from qkv.hf.record import TransformersCall, attention_modules, record
from qkv.hf.registration import NAME
from qkv.interpret.attentions import Attentions
from qkv.interpret.tokenizer import BackendTokenizer, id_list

__all__ = ["Attentions", "TransformersCall", "TransformersModel", "TransformersTokenizer", "load", "wrap"]

# A tokenizer's model_max_length at or above this means "no limit" (transformers writes 1e30).
_NO_LIMIT = 10**9


def _some_text(text: object) -> str:
    """``text`` if it is a str with something in it; else the `ModelError` that says so."""
    return checks.string("text", text, empty="give a sentence to look at", error=ModelError)


class TransformersTokenizer(BackendTokenizer):
    """A transformers fast tokenizer with the methods of `qkv.models.Tokenizer`.

    ``backend`` is a copy of its ``tokenizers.Tokenizer`` with padding and truncation off:
    ``encode`` gives exactly the tokens of the text (with the specials transformers adds, as
    ``tokenizer(text)["input_ids"]`` does) and raises `ModelError` past ``max_length``; ``encode``,
    ``decode`` and ``batch`` are qkv's own tokenizers' (`qkv.interpret.tokenizer.BackendTokenizer`).
    ``kind`` is ``"wordpiece"`` for a WordPiece vocabulary, else ``"bpe"``.
    """

    def __init__(self, tokenizer: Any, *, max_length: int) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ModelError(
                f"tokenizer: expected a fast tokenizer (a tokenizer.json), got {type(tokenizer).__name__}; "
                "save the tokenizer with transformers' PreTrainedTokenizerFast (or convert it) first"
            )
        from tokenizers import Tokenizer as Backend

        backend = Backend.from_str(tokenizer.backend_tokenizer.to_str())  # a copy: the caller's stays as it was
        backend.no_padding()
        backend.no_truncation()
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        super().__init__(
            backend,
            kind="wordpiece" if type(backend.model).__name__ == "WordPiece" else "bpe",
            bos_id=bos,
            eos_id=eos,
            pad_id=0 if pad is None else int(pad),
            max_length=max_length,
            chat_template=getattr(tokenizer, "chat_template", None),
        )
        self.hf = tokenizer

    def __repr__(self) -> str:
        return (
            f"TransformersTokenizer({type(self.hf).__name__}, kind={self.kind!r}, vocab_size={self.vocab_size}, "
            f"max_length={self.max_length})"
        )

    def tokens(self, ids: Sequence[int] | Tensor) -> list[str]:
        """One readable string per id: the tokenizer's decoder applied to each token alone (``'Ġcat'`` -> ``' cat'``).

        WordPiece pieces keep their ``##``; a token that is part of a UTF-8 character shows as ``'�'``.
        """
        decoder = self.backend.decoder
        pieces = self._pieces(ids)
        if decoder is None or self.kind == "wordpiece":
            return pieces
        return [str(decoder.decode([token])) for token in pieces]

    def apply_chat_template(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """``messages`` in the tokenizer's own chat template (transformers renders it)."""
        if self.chat_template is None:
            raise ModelError("messages: this model carries no chat template; encode plain text instead")
        text: str = self.hf.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return text


@dataclass
class TransformersModel:
    """A transformers model on ``attn_implementation="qkv"`` with its tokenizer, read as qkv's loaded models are.

    Attributes:
        model: the transformers ``PreTrainedModel``, in eval mode.
        tokenizer: its tokenizer as a `TransformersTokenizer`.
        kind: the config's ``model_type`` (``"gpt2"``, ``"electra"``, ...).
        name: the path it was loaded from (or the name given to `wrap`).
        path: the folder, or None for a model given to `wrap`.
        load_seconds: how long loading took.
    """

    model: nn.Module
    tokenizer: TransformersTokenizer
    kind: str
    name: str
    path: Path | None = None
    load_seconds: float = 0.0
    causal: bool = False

    @property
    def implementation(self) -> str:
        """What runs the model: ``"transformers GPT2LMHeadModel with attn_implementation='qkv'"``."""
        return f"transformers {type(self.model).__name__} with attn_implementation={NAME!r}"

    @property
    def context_length(self) -> int:
        """The most tokens one text may have."""
        return self.tokenizer.max_length

    @property
    def attention_shape(self) -> tuple[int, int]:
        """(attention layers, query heads per layer), before the model runs."""
        layers = len(attention_modules(self.model))
        config = self.model.config  # type: ignore[union-attr]
        return layers, int(getattr(config, "num_attention_heads", 0) or 0)

    @property
    def can_generate(self) -> bool:
        """Whether the model has a language-model head (a ``...ForCausalLM``) and so can `generate`."""
        return self.causal and bool(getattr(self.model, "can_generate", lambda: False)())

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``; `ModelError` for an empty text or one longer than the model's context."""
        return self.tokenizer.encode(_some_text(text))

    def _forward(self, ids: list[int]) -> None:
        """One pass of the base model (no language-model head: its logits would be ``N × V`` numbers) over ``ids``."""
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)  # (1, N)
        base = getattr(self.model, "base_model", self.model)
        with torch.no_grad():
            base(input_ids=input_ids)

    def record_calls(self, ids: Sequence[int], layers: Sequence[int] | None = None) -> list[TransformersCall]:
        """Run the model on ``ids``, keeping each attention call of ``layers`` (default all) but no weights."""
        ids = id_list(ids)
        with qkv.interpret.record(self.model, layers=layers, keep="calls") as kept:
            self._forward(ids)
        calls = [c for c in kept.calls if isinstance(c, TransformersCall)]
        if not calls:
            raise self._ran_no_qkv()
        return calls

    def _ran_no_qkv(self) -> ModelError:
        return ModelError(
            f"model: {type(self.model).__name__}'s attention layers did not call the attention function "
            f"registered as {NAME!r}, so qkv saw no attention to record; this model class cannot be read on qkv"
        )

    def attentions(self, text: str, *, layers: Sequence[int] | None = None) -> Attentions:
        """Every layer's (or ``layers``') attention probabilities ``(L, H, N, N)`` for ``text``, exact from the pass."""
        ids = self.encode(text)
        with record(self.model, layers=layers) as rec:
            self._forward(ids)
        if not rec.weights:
            raise self._ran_no_qkv()
        weights = torch.stack([w[0] for w in rec.weights]).float().cpu()  # L × (1, H, N, N) -> (L, H, N, N)
        return Attentions.read(self.tokenizer, text, ids, model=self.name, weights=weights, causal=self.causal)

    def generate(
        self,
        prompt: str | Tensor,
        max_new_tokens: int = 64,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> str | Tensor:
        """Continue ``prompt`` by up to ``max_new_tokens`` tokens with transformers' ``generate`` (on qkv attention).

        A str gives the new text; a LongTensor ``(B, N)`` of ids gives ids ``(B, N + new)``.
        Temperature 0 (the default) is greedy; above 0 samples (``top_k``, ``top_p``, ``seed``).
        """
        self._check_can_generate()
        ids = torch.tensor([self.encode(prompt)], dtype=torch.long) if isinstance(prompt, str) else prompt
        options: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            options.update(temperature=temperature, top_k=top_k or 0, top_p=1.0 if top_p is None else top_p)
            if seed is not None:
                torch.manual_seed(seed)
        device = next(self.model.parameters()).device
        with torch.no_grad():
            out = self.model.generate(  # type: ignore[operator]
                ids.to(device),
                attention_mask=torch.ones_like(ids, device=device),
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_id,
                eos_token_id=self.tokenizer.eos_id,
                **options,
            )
        if isinstance(prompt, str):
            return self.tokenizer.decode(out[0, ids.shape[1] :].cpu(), skip_special_tokens=True)
        return out

    def stream(
        self,
        prompt: str,
        max_new_tokens: int = 64,
        *,
        chat: bool = False,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        """The new text after ``prompt``, piece by piece as the tokens come (`qkv.hf.generation.token_steps`).

        Greedy by default, where ``"".join(stream(...)) == generate(...)``; ``temperature > 0``
        samples (``top_k``, ``top_p``; ``seed`` makes it repeatable). ``chat=True`` sends the
        prompt as one user message of the tokenizer's chat template. The arguments, and the
        prompt with its new tokens against the model's context, are checked before any step.
        """
        from qkv.hf.generation import token_steps
        from qkv.streaming import text_pieces

        self._check_can_generate()
        if chat:
            checks.string("prompt", prompt, error=ModelError)
            prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
        ids = self.encode(prompt)
        if len(ids) + max_new_tokens > self.context_length:
            raise ModelError(
                f"max_new_tokens: the prompt's {len(ids)} tokens + {max_new_tokens} new ones exceed the model's "
                f"context of {self.context_length} positions; shorten the prompt or ask for at most "
                f"{max(self.context_length - len(ids), 0)} new tokens"
            )
        steps = token_steps(
            self.model,
            torch.tensor([ids], dtype=torch.long),  # (1, N)
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            eos_id=self.tokenizer.eos_id,
            pad_id=self.tokenizer.pad_id,
        )
        tokens = (int(token[0]) for token in steps)
        return text_pieces(tokens, lambda new: self.tokenizer.decode(new, skip_special_tokens=True))

    def _check_can_generate(self) -> None:
        if not self.can_generate:
            raise ModelError(
                f"generate: {self.name!r} loads as {type(self.model).__name__}, which has no language-model head; "
                "generation needs a causal language model (config.json's architectures naming a ...ForCausalLM)"
            )

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        return f"{type(self).__name__}(name={self.name!r}, {type(self.model).__name__}, parameters={params / 1e6:.1f}M)"


def _is_causal(model: nn.Module) -> bool:
    """Whether the model's self-attention is causal (a decoder): its attention modules say so."""
    modules = attention_modules(model)
    flags = [bool(getattr(m, "is_causal", False)) for _, m in modules]
    return any(flags) or bool(getattr(getattr(model, "config", None), "is_decoder", False))


def _context_length(config: Any, tokenizer: Any) -> int:
    limits = []
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and not isinstance(positions, bool) and 0 < positions < _NO_LIMIT:
        limits.append(positions)
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < _NO_LIMIT:
        limits.append(declared)
    return min(limits, default=_NO_LIMIT)


def wrap(model: nn.Module, tokenizer: Any, *, name: str | None = None) -> TransformersModel:
    """A transformers model you already have (on ``"qkv"``) and its fast tokenizer, as `load` gives them.

    Raises:
        ModelError: the model does not run on ``attn_implementation="qkv"`` (the message says how to switch it),
            has no attention modules transformers can name, is an encoder-decoder, or the tokenizer is not fast.
    """
    require_transformers()
    config = getattr(model, "config", None)
    if config is None or not isinstance(model, nn.Module):
        raise ModelError(f"model: expected a transformers PreTrainedModel, got {type(model).__name__}")
    implementation = getattr(config, "_attn_implementation", None)
    if implementation != NAME:
        raise ModelError(
            f"model: it runs attn_implementation={implementation!r}; load it with attn_implementation='qkv' "
            "or call model.set_attn_implementation('qkv') after import qkv.hf"
        )
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(
            f"model: {type(model).__name__} is an encoder-decoder; qkv's tools read encoder-only and "
            "decoder-only models"
        )
    if not attention_modules(model):
        raise ModelError(
            f"model: found no attention modules in {type(model).__name__} (its _can_record_outputs names none)"
        )
    return TransformersModel(
        model=model.eval(),
        tokenizer=TransformersTokenizer(tokenizer, max_length=_context_length(config, tokenizer)),
        kind=str(getattr(config, "model_type", type(model).__name__)),
        name=name or str(getattr(config, "name_or_path", "") or type(model).__name__),
        causal=_is_causal(model),
    )


def _model_class(config: Any) -> Any:
    """The class to load: the causal-LM class ``architectures`` names, else ``AutoModel`` (the base model)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal_lms = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    for architecture in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, architecture, None)
        if cls is not None and architecture in causal_lms:
            return cls
    return transformers.AutoModel


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """transformers' weight-loading progress bar off while it lasts (the command line shows its own spinner)."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


def load(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> TransformersModel:
    """A local transformers model folder (``config.json``, weights, tokenizer) on ``attn_implementation="qkv"``.

    Raises:
        ModelError: transformers is missing (the message says ``pip install transformers``), the folder
            is not one transformers can load, its model cannot run on ``"qkv"``, or it has no fast tokenizer.
    """
    started = time.perf_counter()
    require_transformers()
    from transformers import AutoConfig, AutoTokenizer

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelError(f"model: expected a transformers model folder with config.json, got {str(path)!r}")
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(f"model: transformers cannot read {folder / 'config.json'}: {error}") from None
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(
            f"model: {str(path)!r} is an encoder-decoder ({config.model_type}); qkv's tools read encoder-only "
            "and decoder-only models"
        )
    cls = _model_class(config)
    try:
        with _quiet_progress():
            model = cls.from_pretrained(folder, attn_implementation=NAME, dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelError(
            f"model: transformers cannot load {str(path)!r} as {getattr(cls, '__name__', cls)} on "
            f"attn_implementation='qkv': {' '.join(str(error).split())[:300]}"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"model: transformers cannot load the tokenizer of {str(path)!r}: {error}") from None
    loaded = wrap(model, tokenizer, name=str(path))
    loaded.path = folder
    if device is not None:
        loaded.model.to(device)
    loaded.load_seconds = time.perf_counter() - started
    return loaded
