"""Tokenizers of the real models, on the ``tokenizers`` library: BERT WordPiece and GGUF byte-level BPE.

``Tokenizer.from_bert_folder(folder)`` loads a ``tokenizer.json`` with its
packaged padding and truncation switched off (all-MiniLM-L6-v2's pads every
text to 128 tokens and truncates at 128; we give exactly the tokens of the text,
and a clear error past the model's 512 positions).

``Tokenizer.from_gguf(path)`` rebuilds the byte-level BPE tokenizer a GGUF file
describes in its metadata (``tokenizer.ggml.tokens``, ``.merges``, ``.token_type``,
``.pre``, the special ids and the chat template). The pre-tokenizer follows
``tokenizer.ggml.pre``: for ``"smollm"`` (and the other StarCoder-style
vocabularies) every digit is split off first, then the GPT-2 regex applies — as
in SmolLM2's own ``tokenizer.json`` and in llama.cpp. (transformers' GGUF loader
ignores ``"smollm"`` and uses plain GPT-2 splitting; the two differ only where a
run of 2+ whitespace characters is followed by a digit: ``"x  1"``.)

>>> readable_token("Ġcat"), readable_token("ĊĊ"), readable_token("##ing")
(' cat', '\\n\\n', '##ing')
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from numbers import Integral
from pathlib import Path
from typing import Any, Literal, cast

import torch

from qkv.interpret.tokenizer import BackendTokenizer
from qkv.models._files import corrupt, read_json_object
from qkv.models.packages import ModelError

__all__ = ["Tokenizer", "readable_token"]

# tokenizer.ggml.pre values whose pre-tokenizer is "each digit alone, then the GPT-2 regex"
# (llama.cpp: LLAMA_VOCAB_PRE_TYPE_STARCODER / REFACT / COMMAND_R / SMOLLM / CODESHELL / EXAONE / MINERVA)
_DIGITS_THEN_GPT2 = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"}
_GPT2 = {"gpt-2", "gpt2", "default", "olmo", "mpt", "jais"}
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3 = {"llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3"}

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


@functools.cache
def _byte_to_char() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE spells every byte as one character)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@functools.cache
def _char_to_byte() -> dict[str, int]:
    return {c: b for b, c in _byte_to_char().items()}


def readable_token(token: str) -> str:
    """A token as a person reads it: byte-level BPE spelling decoded (``'Ġcat'`` -> ``' cat'``).

    Tokens that are not byte-level spellings (WordPiece ``'##ing'``, ``'[CLS]'``)
    come back unchanged; bytes that are only part of a UTF-8 character (an emoji
    split over tokens) are shown as ``\\xf0``-style escapes.
    """
    table = _char_to_byte()
    if not token or any(c not in table for c in token):
        return token
    return bytes(table[c] for c in token).decode("utf-8", errors="backslashreplace")


class Tokenizer(BackendTokenizer):
    """Text <-> ids for one model: ``encode``, ``decode``, ``tokens``, ``batch``, chat template.

    Build it with :meth:`from_bert_folder` or :meth:`from_gguf`. ``backend`` is
    the underlying ``tokenizers.Tokenizer``, with padding and truncation off.
    For BERT, ``bos_id`` / ``eos_id`` are ``[CLS]`` / ``[SEP]``, which open and
    close every encoded text. ``encode``, ``decode`` and ``batch`` are those of
    `qkv.interpret.tokenizer.BackendTokenizer`, which transformers models' tokenizers share.
    """

    def __repr__(self) -> str:
        return (
            f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_id={self.eos_id}, pad_id={self.pad_id}, max_length={self.max_length})"
        )

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def from_bert_folder(cls, folder: str | os.PathLike[str]) -> Tokenizer:
        """The WordPiece tokenizer of a BERT folder's ``tokenizer.json``, without padding or truncation.

        The same as `from_folder`, which reads any model folder's.
        """
        return cls.from_folder(folder)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str]) -> Tokenizer:
        """The ``tokenizer.json`` of a model folder (BERT family or Llama family), without padding or truncation.

        ``kind`` is ``"wordpiece"`` for a WordPiece model, else ``"bpe"``.
        ``max_length`` is the smaller of ``config.json``'s positions
        (``max_position_embeddings``; RoBERTa's less its ``pad_token_id + 1``
        offset) and ``tokenizer_config.json``'s ``model_max_length`` (512 for MiniLM).
        ``bos_id`` / ``eos_id``: ``tokenizer_config.json``'s ``cls_token`` / ``sep_token``
        for WordPiece (``[CLS]`` / ``[SEP]``), its ``bos_token`` / ``eos_token``
        otherwise, else ``config.json``'s ids; the chat template is
        ``tokenizer_config.json``'s ``chat_template`` or ``chat_template.jinja``.
        """
        from tokenizers import Tokenizer as Backend

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ModelError(
                f"folder: expected {path} (a 'tokenizers' tokenizer.json) in the model folder; "
                "qkv.models.read_bert / read_llama_folder read the weights without one"
            )
        try:
            backend = Backend.from_file(str(path))
        except Exception as error:  # noqa: BLE001 - tokenizers raises a bare Exception for a bad file
            raise corrupt(path, "tokenizers tokenizer.json", error) from None
        padding = backend.padding or {}
        backend.no_padding()
        backend.no_truncation()
        kind: Literal["wordpiece", "bpe"] = "wordpiece" if type(backend.model).__name__ == "WordPiece" else "bpe"

        files = {name: folder / name for name in ("config.json", "tokenizer_config.json")}
        settings = {name: read_json_object(f) if f.is_file() else {} for name, f in files.items()}
        config, options = settings["config.json"], settings["tokenizer_config.json"]
        positions, pad = config.get("max_position_embeddings"), config.get("pad_token_id", 1)
        if config.get("model_type") == "roberta" and isinstance(positions, int) and isinstance(pad, int):
            positions -= pad + 1  # RoBERTa's positions start at pad_token_id + 1
        limits = [
            value
            for value in (positions, options.get("model_max_length"))
            if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**9  # 1e30: "no limit"
        ]

        def special(role: str, fallbacks: tuple[str, ...]) -> int | None:
            token = options.get(role)
            if isinstance(token, dict):  # {"content": "<s>", ...}
                token = token.get("content")
            for candidate in (token, *fallbacks):
                found = backend.token_to_id(candidate) if isinstance(candidate, str) else None
                if found is not None:
                    return int(found)
            value = config.get(f"{role.removesuffix('_token')}_token_id")
            value = value[0] if isinstance(value, list) and value else value
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        roles = ("cls_token", "sep_token") if kind == "wordpiece" else ("bos_token", "eos_token")
        bos_id = special(roles[0], ("[CLS]", "<s>"))
        eos_id = special(roles[1], ("[SEP]", "</s>"))
        pad_id = padding.get("pad_id", special("pad_token", ("[PAD]", "<pad>")))
        if pad_id is None:
            pad_id = eos_id if kind == "bpe" and eos_id is not None else 0
        template = options.get("chat_template")
        if not isinstance(template, str) and (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        return cls(
            backend,
            kind=kind,
            bos_id=bos_id,
            eos_id=eos_id,
            pad_id=int(pad_id),
            max_length=min(limits, default=512),
            chat_template=template if isinstance(template, str) else None,
        )

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """The byte-level BPE tokenizer stored in a GGUF file's metadata (``tokenizer.ggml.model == 'gpt2'``)."""
        from qkv.models.gguf_file import read_gguf_metadata

        meta = read_gguf_metadata(path)
        return cls.from_gguf_metadata(meta, where=str(path))

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any], *, where: str = "GGUF metadata") -> Tokenizer:
        """As :meth:`from_gguf`, from metadata already read with ``read_gguf_metadata``."""
        from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
        from tokenizers import Tokenizer as Backend

        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ModelError(
                f"{where}: expected a byte-level BPE tokenizer (tokenizer.ggml.model 'gpt2'), got {model!r}; "
                f"SentencePiece ('llama') GGUF tokenizers are not supported yet"
            )
        tokens = meta.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise ModelError(f"{where}: expected tokenizer.ggml.tokens, a list of token strings; the metadata lacks it")
        raw_merges = meta.get("tokenizer.ggml.merges") or []
        if not isinstance(raw_merges, list) or not all(isinstance(m, str) and " " in m for m in raw_merges):
            raise ModelError(f"{where}: expected tokenizer.ggml.merges to be a list of 'left right' strings")
        merges = [tuple(m.split(" ", 1)) for m in raw_merges]
        types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        if not isinstance(types, list) or len(types) != len(tokens):
            raise ModelError(f"{where}: expected one tokenizer.ggml.token_type per token ({len(tokens)})")
        for key in ("bos_token_id", "eos_token_id", "padding_token_id"):
            value = meta.get(f"tokenizer.ggml.{key}")
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= cast(int, value) < len(tokens)
            ):
                raise ModelError(
                    f"{where}: tokenizer.ggml.{key}: expected an id in [0, {len(tokens)}), got {value!r:.80}"
                )

        try:
            backend = Backend(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
        except Exception as error:  # noqa: BLE001 - tokenizers raises a bare Exception for merges of unknown tokens
            raise ModelError(f"{where}: the BPE vocabulary and merges do not fit together ({error})") from None
        pre = meta.get("tokenizer.ggml.pre", "default")
        pre = pre if isinstance(pre, str) else repr(pre)  # a list or a number: unknown, said below
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre in _DIGITS_THEN_GPT2:
            backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        elif pre in _GPT2:
            backend.pre_tokenizer = byte_level
        elif pre in _LLAMA3:
            backend.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        else:
            raise ModelError(
                f"{where}: tokenizer.ggml.pre {pre!r} is not known to qkv; known: "
                f"{sorted(_DIGITS_THEN_GPT2 | _GPT2 | _LLAMA3)}"
            )
        backend.decoder = decoders.ByteLevel()

        # Control tokens (<|im_start|>, <|endoftext|>...) are matched whole, before BPE, and are
        # "special" (decode can skip them); user-defined tokens are matched whole but are text.
        backend.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == _CONTROL]
        )
        backend.add_tokens(
            [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == _USER_DEFINED]
        )
        if backend.get_vocab_size(with_added_tokens=True) != len(tokens):
            raise ModelError(f"{where}: special tokens are not all in the vocabulary of {len(tokens)} tokens")

        bos = meta.get("tokenizer.ggml.bos_token_id")
        eos = meta.get("tokenizer.ggml.eos_token_id")
        if meta.get("tokenizer.ggml.add_bos_token", False) and bos is not None:
            backend.post_processor = processors.TemplateProcessing(
                single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A $B:1", special_tokens=[(tokens[bos], bos)]
            )
        pad = meta.get("tokenizer.ggml.padding_token_id", eos if eos is not None else 0)
        arch = meta.get("general.architecture", "llama")
        context = meta.get(f"{arch}.context_length", 2048)
        if isinstance(context, bool) or not isinstance(context, Integral) or context < 1:
            raise ModelError(f"{where}: {arch}.context_length: expected a positive integer, got {context!r:.80}")
        return cls(
            backend,
            kind="bpe",
            bos_id=bos,
            eos_id=eos,
            pad_id=int(pad),
            max_length=int(context),
            chat_template=meta.get("tokenizer.chat_template"),
        )

    # -- text <-> ids --------------------------------------------------------------------------

    def tokens(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        """One readable string per id: ``' cat'`` for BPE's ``'Ġcat'``; WordPiece as is (``'##ing'``)."""
        return [readable_token(token) if self.kind == "bpe" else token for token in self._pieces(ids)]

    # -- chat ----------------------------------------------------------------------------------

    def apply_chat_template(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """Format ``[{"role": ..., "content": ...}, ...]`` with the model's own chat template.

        The template is the Jinja2 text the GGUF carries (``tokenizer.chat_template``),
        rendered as transformers renders it (sandboxed, ``trim_blocks``, ``lstrip_blocks``).
        Encode the result with :meth:`encode` (no BOS is added for SmolLM2).
        """
        if self.chat_template is None:
            raise ModelError("messages: this model carries no chat template; encode plain text instead")
        for m in messages:
            if not isinstance(m, dict) or not {"role", "content"} <= m.keys():
                raise ModelError(f"messages: expected dicts with 'role' and 'content', got {m!r}")
        template = _compile_template(self.chat_template)
        tokens = [self.backend.id_to_token(i) if i is not None else "" for i in (self.bos_id, self.eos_id)]
        text: str = template.render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=tokens[0],
            eos_token=tokens[1],
        )
        return text


@functools.lru_cache(maxsize=4)
def _compile_template(source: str) -> Any:
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)
