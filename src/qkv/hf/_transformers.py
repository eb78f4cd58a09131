"""The one place `qkv.hf` meets the optional dependency: transformers, checked once, with the fix in the message."""

from __future__ import annotations

from qkv.errors import ModelError


def require_transformers() -> str:
    """Import transformers (and the interfaces `qkv.hf` registers with); return its version.

    Raises:
        ModelError: transformers is missing (``pip install transformers``) or too old to have
            ``AttentionInterface`` and ``AttentionMaskInterface``.
    """
    try:
        import transformers
    except ImportError as error:
        raise ModelError(
            "qkv.hf runs transformers models on qkv attention and needs transformers: pip install transformers "
            "(or pip install 'qkv[hf]')"
        ) from error
    try:
        from transformers import AttentionInterface  # noqa: F401
        from transformers.masking_utils import AttentionMaskInterface  # noqa: F401
    except ImportError as error:
        raise ModelError(
            f"qkv.hf needs transformers with AttentionInterface and AttentionMaskInterface (4.53 or newer); "
            f"found {transformers.__version__}: pip install -U transformers"
        ) from error
    return str(transformers.__version__)


__all__ = ["ModelError", "require_transformers"]
