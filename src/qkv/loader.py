"""`load`: a model by name or path, on qkv's own implementation where it has one, else transformers' on qkv attention.

What ``qkv explain --model`` and ``qkv explore --model`` load. `qkv.models.load` builds the
architectures qkv implements itself (BERT and Llama families, ``"minilm"``, ``"smollm2"``); a
model folder of any other architecture (GPT-2, Electra, ...) loads through transformers with
``attn_implementation="qkv"`` (`qkv.hf.loaded`), the same interface either way. `implementation`
says which ran::

    model = qkv.loader.load("path/to/gpt2-folder")
    qkv.loader.implementation(model)     # "transformers GPT2LMHeadModel with attn_implementation='qkv'"
    qkv.loader.implementation(qkv.loader.load("smollm2"))    # "qkv's own Llama"

Without transformers, such a folder is a `ModelError` that says ``pip install transformers``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qkv.errors import ModelError

if TYPE_CHECKING:
    from qkv.hf.loaded import TransformersModel
    from qkv.models import LanguageModel, TextEncoder

__all__ = ["INSTALL", "attention_shape", "implementation", "load"]

INSTALL = "pip install transformers"
"""The command that makes the models qkv does not implement itself loadable."""

_FAMILIES = {"bert": "BERT", "llama": "Llama"}


def _unsupported(error: ModelError) -> bool:
    """Whether qkv's loader refused an architecture it does not implement (not a broken or missing file)."""
    if any(cls.__name__ == "UnsupportedModelError" for cls in type(error).__mro__):
        return True
    # a loader that predates UnsupportedModelError words the refusal by the config's model_type
    return "got model_type" in str(error)


def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def load(name_or_path: str | os.PathLike[str], **options: Any) -> TextEncoder | LanguageModel | TransformersModel:
    """`qkv.models.load` of ``name_or_path``; a folder of an architecture it does not implement, through transformers.

    ``options`` (``dtype``, ``device``) go to whichever loader runs.

    Raises:
        ModelError: what `qkv.models.load` raises for a bad name or a broken file; for a folder of another
            architecture without transformers installed, one that names the architecture and ``pip install
            transformers``; what `qkv.hf.loaded.load` raises when transformers cannot load it.
    """
    import qkv.models

    try:
        return qkv.models.load(name_or_path, **options)
    except ModelError as error:
        folder = Path(os.fspath(name_or_path)).expanduser() if isinstance(name_or_path, (str, os.PathLike)) else None
        if folder is None or not _unsupported(error) or not (folder / "config.json").is_file():
            raise
        refused = error
    if not _has_transformers():
        raise ModelError(f"{refused}. transformers runs it on qkv attention; install it with: {INSTALL}") from None
    from qkv.hf.loaded import load as load_transformers

    return load_transformers(folder, **options)


def implementation(model: Any) -> str:
    """Which implementation runs a loaded model: ``"qkv's own BERT"``, ``"qkv's own Llama"``, or the transformers
    class on ``attn_implementation='qkv'`` (``"transformers GPT2LMHeadModel with attn_implementation='qkv'"``).

    >>> from types import SimpleNamespace
    >>> implementation(SimpleNamespace(kind="llama"))
    "qkv's own Llama"
    """
    named = getattr(model, "implementation", None)
    if isinstance(named, str):
        return named
    kind = str(getattr(model, "kind", ""))
    return f"qkv's own {_FAMILIES.get(kind, kind)}"


def attention_shape(model: Any) -> tuple[int, int]:
    """(attention layers, query heads per layer) of a loaded model, before it runs.

    >>> attention_shape(load("minilm"))
    (6, 12)
    """
    from qkv.nn import MultiHeadAttention

    shape = getattr(model, "attention_shape", None)  # a transformers model (`qkv.hf.loaded`) tells it
    if shape is not None:
        return int(shape[0]), int(shape[1])
    modules = [m for m in model.model.modules() if isinstance(m, MultiHeadAttention)]
    return len(modules), (modules[-1].num_heads if modules else 0)
