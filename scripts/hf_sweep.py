"""transformers models that declare the attention interface, on ``"qkv"`` against ``"eager"``: docs/hf-families.md.

    python scripts/hf_sweep.py                      # the whole sweep; writes docs/hf-families.md
    python scripts/hf_sweep.py llama vit whisper    # some model types only; prints their rows
    python scripts/hf_sweep.py --budget 600 --per-model 20

A family is a model type of transformers' base-model mapping (``AutoModel``) whose class declares
``_supports_attention_backend = True`` (the few declaring families with no base model use their
first task class). Each is built from a tiny random configuration (its own config class with the
sizes shrunk: hidden size 32, 2 layers, 4 heads, ...), in float32, and runs one forward pass on
random inputs (``input_ids``, ``pixel_values``, ``input_features`` or ``input_values``, as its
``main_input_name`` says) under ``"eager"`` and then under ``"qkv"``; then one more with
``output_attentions=True``. A family passes when every output tensor and every attention
weight of ``"qkv"`` match ``"eager"`` within ``ATOL + RTOL × max |eager|`` of that tensor.

- *skipped*: the sweep could not build or run the family on ``"eager"`` (a config it cannot make
  tiny, inputs it does not know how to make, eager itself failing or not repeatable); the reason
  says which. Nothing about qkv is learned there.
- *failed*: ``"eager"`` ran and ``"qkv"`` raised or gave other numbers; the reason is the error or
  the largest difference.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import os
import pathlib
import platform
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "hf-families.md"
ATOL = 1e-4
RTOL = 1e-4
BUDGET_S = 300.0
PER_MODEL_S = 15.0
MAX_PARAMETERS = 20_000_000
BATCH, LENGTH, DECODER_LENGTH = 2, 8, 5
VOCAB = 128

# Tiny sizes under the names configs use for them (a key is set only where the config has it).
SIZES: dict[str, int] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "head_dim": 8,
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "n_embd": 32,
    "n_layer": 2,
    "n_head": 4,
    "n_inner": 64,
    "dim": 32,
    "n_layers": 2,
    "n_heads": 4,
    "hidden_dim": 64,
    "ffn_dim": 64,
    "num_layers": 2,
    "num_heads": 4,
    "d_ff": 64,
    "d_kv": 8,
    "embed_dim": 32,
    "projection_dim": 32,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "n_group": 1,
    "topk_group": 1,
    "q_lora_rank": 16,
    "kv_lora_rank": 16,
    "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 8,
    "v_head_dim": 8,
    "index_topk": 4,  # fewer keys than the inputs, so that a sparse-attention indexer's choice is exercised
    "image_size": 32,
    "patch_size": 8,
    "max_source_positions": 16,
    "max_target_positions": 32,
    "vocab_size": VOCAB,
}
INITIALIZER_RANGE = 0.2  # larger than the usual 0.02, so that attention is far from uniform
_TOKEN_SUFFIXES = ("_token_id", "_token_index")

# What a failure is known to mean, added to its reason.
KNOWN: dict[str, str] = {
    "deepseek_v4": "its compressed-attention layers append compressed keys to the keys and extend the mask to "
    "them only where it is a tensor (with a bias the layer computes and does not pass on), so qkv refuses the call "
    "rather than guess what the new keys may attend; use attn_implementation='eager'",
    "granite_swa": "its eager returns the softmax over the keys alone (the sink scales only the output); qkv returns "
    "the probabilities with the sink in the denominator, as gpt-oss's eager does: outputs match",
    "granitemoe_swa": "its eager returns the softmax over the keys alone (the sink scales only the output); qkv "
    "returns the probabilities with the sink in the denominator, as gpt-oss's eager does: outputs match",
}


@dataclass(frozen=True)
class Row:
    """One family's result: ``status`` is ``"passed"``, ``"failed"`` or ``"skipped"``."""

    model_type: str
    class_name: str
    status: str
    reason: str = ""
    seconds: float = 0.0


class _Skip(Exception):
    """The sweep cannot build or run this family on eager."""


class _Fail(Exception):
    """eager ran and qkv did not match it."""


class _TimeUp(BaseException):
    """The per-family time limit: a BaseException, so that no ``except Exception`` in a model swallows it."""


# ---------------------------------------------------------------------------
# which families


def families() -> list[tuple[str, str]]:
    """``(model_type, class name)`` of every family whose modeling file declares the attention interface."""
    import transformers
    from transformers.models.auto import modeling_auto
    from transformers.models.auto.configuration_auto import model_type_to_module_name

    root = pathlib.Path(transformers.__file__).parent / "models"
    declaring = {
        p.parent.name for p in root.glob("*/modeling_*.py") if "_supports_attention_backend = True" in p.read_text()
    }
    out: dict[str, str] = {}
    for model_type, name in modeling_auto.MODEL_MAPPING_NAMES.items():
        if model_type_to_module_name(model_type) in declaring and isinstance(name, str):
            out[model_type] = name
    covered = {model_type_to_module_name(t) for t in out}
    mappings = [v for k, v in vars(modeling_auto).items() if k.startswith("MODEL_") and k.endswith("_MAPPING_NAMES")]
    for module in sorted(declaring - covered):
        for mapping in mappings:
            found = [
                (t, n) for t, n in mapping.items() if model_type_to_module_name(t) == module and isinstance(n, str)
            ]
            if found:
                out.setdefault(*found[0])
                break
        else:
            out[module] = ""  # declared, but no auto class names it
    return sorted(out.items())


# ---------------------------------------------------------------------------
# a tiny configuration


def _shrink(d: dict[str, Any], remap: dict[int, int]) -> dict[str, Any]:
    """The config dict ``d`` with the known sizes made tiny, per-layer lists cut, sub-configs shrunk."""
    out = dict(d)
    old_layers = d.get("num_hidden_layers")
    old_heads = d.get("num_attention_heads")
    for key, value in SIZES.items():
        if isinstance(d.get(key), int) and not isinstance(d.get(key), bool):
            out[key] = value
    if isinstance(d.get("num_key_value_heads"), int):
        out["num_key_value_heads"] = out.get("num_attention_heads", 4) if d["num_key_value_heads"] == old_heads else 2
    if "initializer_range" in d:
        out["initializer_range"] = INITIALIZER_RANGE
    for key, value in d.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, dict) and ("model_type" in value or key.endswith("_config")):
            out[key] = _shrink(value, remap)
        elif isinstance(value, list) and old_layers and len(value) == old_layers and key != "architectures":
            out[key] = value[: out["num_hidden_layers"]]
        elif key.endswith(_TOKEN_SUFFIXES) and isinstance(value, int) and value >= VOCAB:
            out[key] = remap.setdefault(value, VOCAB - 1 - len(remap))
        elif key.endswith(_TOKEN_SUFFIXES) and isinstance(value, list):
            out[key] = [
                remap.setdefault(v, VOCAB - 1 - len(remap)) if isinstance(v, int) and v >= VOCAB else v for v in value
            ]
    sections = out.get("mrope_section")
    if isinstance(sections, list) and sections and all(isinstance(x, int) for x in sections):
        half = SIZES["head_dim"] // 2  # rotary sections over the head's half: split alike, at the tiny size
        cut = [max(1, x * half // sum(sections)) for x in sections[:-1]]
        out["mrope_section"] = [*cut, max(1, half - sum(cut))]
    size = d.get("image_size")
    if isinstance(size, list) and len(size) == 2 and all(isinstance(x, int) for x in size):
        out["image_size"] = [SIZES["image_size"]] * 2
    if "sliding_window" in d and isinstance(d["sliding_window"], int):
        out["sliding_window"] = 4  # shorter than the inputs, so the window is exercised
    rates = d.get("compress_rates")
    if isinstance(rates, dict) and all(isinstance(v, int) for v in rates.values()):
        out["compress_rates"] = {k: min(v, 4) for k, v in rates.items()}  # so that compressed keys are made
    return out


def tiny_config(config_class: type) -> Any:
    """An instance of ``config_class`` with the sizes the sweep knows made tiny."""
    try:
        default = config_class()
    except Exception as error:
        raise _Skip(f"its config has no defaults: {_message(error)}") from error
    d = default.to_dict()
    for key in ("transformers_version", "architectures", "_name_or_path", "model_type"):
        d.pop(key, None)
    try:
        return config_class(**_shrink(d, {}))
    except Exception as error:
        raise _Skip(f"the tiny config is refused: {_message(error)}") from error


def _special_ids(config: Any) -> set[int]:
    found: set[int] = set()
    for key, value in config.to_dict().items() if hasattr(config, "to_dict") else []:
        stack = [(key, value)]
        while stack:
            k, v = stack.pop()
            if isinstance(v, dict):
                stack.extend(v.items())
            elif isinstance(k, str) and k.endswith(_TOKEN_SUFFIXES) and isinstance(v, int):
                found.add(v)
            elif isinstance(k, str) and k.endswith(_TOKEN_SUFFIXES) and isinstance(v, list):
                found.update(x for x in v if isinstance(x, int))
    return found


def _find(config: Any, key: str) -> Any:
    """``config.key``, or the same key of its first sub-config that has it."""
    if key in config.to_dict() and getattr(config, key, None) is not None:
        return getattr(config, key)
    for sub in ("vision_config", "audio_config", "encoder_config", "text_config"):
        inner = getattr(config, sub, None)
        if inner is not None and getattr(inner, key, None) is not None:
            return getattr(inner, key)
    return None


def inputs(model: torch.nn.Module, config: Any, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random inputs for one forward pass, by the model's ``main_input_name``."""
    name = getattr(model, "main_input_name", "input_ids")
    vocab = _find(config, "vocab_size") or VOCAB
    allowed = torch.tensor([i for i in range(3, min(vocab, VOCAB)) if i not in _special_ids(config)])

    def ids(n: int) -> torch.Tensor:
        return allowed[torch.randint(len(allowed), (BATCH, n), generator=generator)]

    out: dict[str, torch.Tensor] = {}
    if name == "input_ids":
        out["input_ids"] = ids(LENGTH)
    elif name == "pixel_values":
        size = _find(config, "image_size") or 32
        size = size[0] if isinstance(size, (list, tuple)) else size
        channels = _find(config, "num_channels") or 3
        out["pixel_values"] = torch.randn(BATCH, channels, size, size, generator=generator)
    elif name == "input_features":
        mels = _find(config, "num_mel_bins")
        positions = _find(config, "max_source_positions")
        if mels is None or positions is None:
            raise _Skip("input_features of a shape the sweep does not know (no num_mel_bins, max_source_positions)")
        out["input_features"] = torch.randn(BATCH, mels, 2 * positions, generator=generator)
    elif name == "input_values":
        out["input_values"] = torch.randn(BATCH, 4000, generator=generator)
    else:
        raise _Skip(f"main input {name!r}: the sweep makes input_ids, pixel_values, input_features, input_values")
    if getattr(config, "is_encoder_decoder", False):
        out["decoder_input_ids"] = ids(DECODER_LENGTH)
    return out


# ---------------------------------------------------------------------------
# one family


def _message(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(error).__name__}: {text}".replace("|", "/")


def _tensors(value: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every floating-point tensor in a model output (nested tuples and ModelOutputs), named."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            yield prefix, value
    elif isinstance(value, dict):  # ModelOutput is a dict
        for k, v in value.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _tensors(v, f"{prefix}[{i}]")


def _compare(ours: Any, eager: Any, what: str) -> None:
    a, b = dict(_tensors(ours)), dict(_tensors(eager))
    if a.keys() != b.keys():
        raise _Fail(f"{what}: qkv gives outputs {sorted(a.keys() ^ b.keys())} that eager does not, or misses them")
    if not a:
        raise _Skip(f"{what}: no floating-point output to compare")
    for name, x in a.items():
        y = b[name]
        if x.shape != y.shape:
            raise _Fail(f"{what}: {name} has shape {tuple(x.shape)} on qkv, {tuple(y.shape)} on eager")
        finite = torch.isfinite(y)
        if not torch.equal(finite, torch.isfinite(x)):
            raise _Fail(f"{what}: {name} is not finite at other places than on eager")
        diff = (x - y).abs()[finite]
        bound = ATOL + RTOL * float(y.abs()[finite].max()) if bool(finite.any()) else ATOL
        if bool((diff > bound).any()):
            raise _Fail(
                f"{what}: {name} differs by {float(diff.max()):.2g} (eager's largest: {float(y.abs().max()):.2g})"
            )


def _mask_classes() -> set[str]:
    from qkv.masks import Mask

    found, stack = set(), [Mask]
    while stack:
        cls = stack.pop()
        found.add(cls.__name__)
        stack.extend(cls.__subclasses__())
    return found


def _qkv_error(error: BaseException) -> str:
    """What qkv raising means: a model that reads the mask in a way the qkv mask does not answer is named as such."""
    text = str(error)
    if isinstance(error, (TypeError, AttributeError)) and any(
        f"{n}'" in text or f"got {n}" in text for n in _mask_classes()
    ):
        return (
            "the model reads its attention mask in a way qkv's mask does not answer as a tensor would "
            f"({_message(error)})"
        )
    return f"qkv raises: {_message(error)}"


@contextlib.contextmanager
def _counting() -> Iterator[list[bool]]:
    """The `qkv.attention` calls made inside the block (`qkv.hf` calls it through the module): for each,
    whether its mask was a dense tensor rather than a qkv mask."""
    import qkv

    calls: list[bool] = []
    real = qkv.attention

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(isinstance(kwargs.get("mask"), torch.Tensor))
        return real(*args, **kwargs)

    qkv.attention = counted  # type: ignore[assignment]
    try:
        yield calls
    finally:
        qkv.attention = real


def _call(model: torch.nn.Module, kwargs: dict[str, torch.Tensor], **extra: Any) -> Any:
    with torch.no_grad():
        return model(**kwargs, **extra)


def _build(model_type: str, class_name: str) -> tuple[torch.nn.Module, Any]:
    import transformers

    if not class_name:
        raise _Skip("declares the attention interface, but no auto class names it")
    cls = getattr(transformers, class_name, None)
    if cls is None:
        raise _Skip(f"{class_name} is not importable from transformers")
    if not getattr(cls, "_supports_attention_backend", False):
        raise _Skip(f"{class_name} does not declare _supports_attention_backend (its file's other classes do)")
    config = tiny_config(cls.config_class)
    try:
        with torch.device("meta"):
            counted = cls._from_config(copy.deepcopy(config), attn_implementation="eager")
        parameters = sum(p.numel() for p in counted.parameters())
    except Exception as error:
        raise _Skip(f"cannot be built: {_message(error)}") from error
    if parameters > MAX_PARAMETERS:
        raise _Skip(f"not tiny: {parameters / 1e6:.0f}M parameters with the sizes the sweep knows")
    torch.manual_seed(0)
    try:
        model = cls._from_config(config, attn_implementation="eager").eval()
    except Exception as error:
        raise _Skip(f"cannot be built: {_message(error)}") from error
    return model, config


def check(model_type: str, class_name: str, per_model_s: float = PER_MODEL_S) -> Row:
    """Build one family tiny and compare ``"qkv"`` with ``"eager"``; never raises for the family's sake.

    ``per_model_s`` only names the limit in a reason; `sweep` enforces it.
    """
    start = time.perf_counter()
    on_qkv = False
    try:
        model, config = _build(model_type, class_name)
        kwargs = inputs(model, config, torch.Generator().manual_seed(1))
        try:
            eager = _call(model, kwargs)
            again = _call(model, kwargs)
        except Exception as error:
            raise _Skip(f"eager fails on the sweep's inputs: {_message(error)}") from error
        try:
            _compare(again, eager, "eager twice")
        except _Fail as error:
            raise _Skip(f"eager is not repeatable ({error})") from error
        if not all(bool(torch.isfinite(t).all()) for _, t in _tensors(eager)):
            raise _Skip("eager gives non-finite outputs at the sweep's sizes")
        try:
            eager_w = _call(model, kwargs, output_attentions=True)
        except Exception as error:
            eager_w = None
            weights_note = f"; weights not compared (eager: {_message(error)})"
        on_qkv = True
        try:
            model.set_attn_implementation("qkv")
        except Exception as error:
            raise _Fail(f"set_attn_implementation('qkv'): {_message(error)}") from error
        try:
            with _counting() as calls:
                ours = _call(model, kwargs)
        except Exception as error:
            raise _Fail(_qkv_error(error)) from error
        if not calls:
            raise _Skip("no layer calls the attention interface on the sweep's inputs (nothing ran on qkv)")
        _compare(ours, eager, "outputs")
        weights = [t for name, t in _tensors(eager_w) if "attentions" in name] if eager_w is not None else []
        if eager_w is not None:
            try:
                ours_w = _call(model, kwargs, output_attentions=True)
            except Exception as error:
                raise _Fail(f"qkv with output_attentions=True raises: {_message(error)}") from error
            _compare(ours_w, eager_w, "with output_attentions")
            weights_note = f"; {len(weights)} attention weights" if weights else "; no attention weights returned"
        dense = f" ({sum(calls)} with a dense mask)" if any(calls) else ""
        return Row(
            model_type,
            class_name,
            "passed",
            f"{len(calls)} qkv calls{dense}, outputs{weights_note}",
            time.perf_counter() - start,
        )
    except _Skip as error:
        return Row(model_type, class_name, "skipped", str(error), time.perf_counter() - start)
    except _Fail as error:
        note = KNOWN.get(model_type)
        reason = f"{error}; {note}" if note else str(error)
        return Row(model_type, class_name, "failed", reason, time.perf_counter() - start)
    except _TimeUp:
        if on_qkv:  # eager ran within the limit
            return Row(model_type, class_name, "failed", f"qkv ran past the per-family limit ({per_model_s:.0f} s)")
        return Row(model_type, class_name, "skipped", f"over the per-family limit ({per_model_s:.0f} s)", per_model_s)
    except Exception as error:  # the sweep's own harness failing on this family
        if os.environ.get("QKV_SWEEP_TRACE"):
            traceback.print_exc()
        return Row(model_type, class_name, "skipped", f"the sweep failed on it: {_message(error)}", 0.0)
    finally:
        gc.collect()


def _alarm(signum: int, frame: object) -> None:
    raise _TimeUp


def sweep(
    model_types: list[str] | None = None, *, budget_s: float = BUDGET_S, per_model_s: float = PER_MODEL_S
) -> list[Row]:
    """The rows of every declaring family (or of ``model_types``), within ``budget_s`` seconds in all."""
    import transformers

    import qkv.hf  # noqa: F401  (registers "qkv")

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _sweep(model_types, budget_s, per_model_s)
    finally:
        transformers.logging.set_verbosity(verbosity)


def _sweep(model_types: list[str] | None, budget_s: float, per_model_s: float) -> list[Row]:
    chosen = families()
    if model_types is not None:
        chosen = [(t, c) for t, c in chosen if t in model_types]
        missing = [t for t in model_types if t not in {c[0] for c in chosen}]
        rows0 = [Row(t, "", "skipped", "does not declare _supports_attention_backend") for t in missing]
    else:
        rows0 = []
    deadline = time.perf_counter() + budget_s
    previous = signal.signal(signal.SIGALRM, _alarm)
    rows: list[Row] = rows0
    try:
        for model_type, class_name in chosen:
            if time.perf_counter() > deadline:
                rows.append(Row(model_type, class_name, "skipped", f"not reached within the sweep's {budget_s:.0f} s"))
                continue
            signal.setitimer(signal.ITIMER_REAL, per_model_s)
            try:
                row = check(model_type, class_name, per_model_s)
            except _TimeUp:  # raised outside check's own handler (in its cleanup)
                row = Row(model_type, class_name, "skipped", f"over the per-family limit ({per_model_s:.0f} s)")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            rows.append(row)
            print(f"{row.status:8s} {model_type:32s} {row.seconds:5.1f}s {row.reason}", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGALRM, previous)
    return rows


# ---------------------------------------------------------------------------
# the page


def counts(rows: list[Row]) -> dict[str, int]:
    return {s: sum(r.status == s for r in rows) for s in ("passed", "failed", "skipped")}


def page(rows: list[Row], seconds: float) -> str:
    import transformers

    c = counts(rows)
    lines = [
        '# transformers families on `attn_implementation="qkv"`',
        "",
        "Written by `python scripts/hf_sweep.py` (run in CI as `tests/test_hf_sweep.py`, marked slow). Every model "
        "type of transformers' `AutoModel` mapping whose class declares `_supports_attention_backend = True` is built "
        "from a tiny random configuration (hidden size 32, 2 layers, 4 heads, ...; float32), runs one forward pass on "
        'random inputs under `"eager"` and under `"qkv"`, and one more with `output_attentions=True`. It passes '
        "when every output tensor and every attention weight match eager's within "
        f"{ATOL:g} + {RTOL:g} × the largest value of that tensor on eager.",
        "",
        '*Skipped* means the sweep could not build or run the family on `"eager"` at its sizes (the reason says '
        'why); nothing about qkv is learned there. *Failed* means eager ran and `"qkv"` raised or gave other '
        "numbers. Families tested in depth (float64 spec, padding, generation) are listed in [hf.md](hf.md); "
        'Whisper, which runs on `"qkv"` without declaring the flag (transformers reads it only for serving '
        "engines), is one of them and is not swept here.",
        "",
        "A call *with a dense mask* got a mask tensor instead of a qkv mask: the model changed the mask as a "
        "tensor (Doge adds its dynamic mask to it, T5Gemma 2 concatenates two), built one itself, or its rule is one "
        "qkv cannot read. qkv runs it exactly, without the sparse plan. Every other call got the qkv mask "
        "(`qkv.hf.masks.TransformersMask`), also in a model that read it as a tensor on the way (DeepSeek-V3.2's "
        "indexer slices it), and ran its structure.",
        "",
        f"transformers {transformers.__version__}, torch {torch.__version__}, Python {platform.python_version()}; "
        f"{len(rows)} families in {seconds:.0f} s.",
        "",
        f"**{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped.**",
        "",
        "| family (model type) | class | result | detail |",
        "|---|---|---|---|",
    ]
    order = {"failed": 0, "passed": 1, "skipped": 2}
    for r in sorted(rows, key=lambda r: (order[r.status], r.model_type)):
        lines.append(f"| {r.model_type} | {r.class_name or '-'} | {r.status} | {r.reason} |")
    return "\n".join(lines) + "\n"


def read_page(text: str) -> dict[str, str]:
    """``{model type: status}`` of a page `page` wrote."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[2] in ("passed", "failed", "skipped"):
            out[cells[0]] = cells[2]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_types", nargs="*", help="only these model types (then the page is not written)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole sweep")
    parser.add_argument("--per-model", type=float, default=PER_MODEL_S, help="seconds for one family")
    parser.add_argument("--out", type=pathlib.Path, default=PAGE, help="the page to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = sweep(args.model_types or None, budget_s=args.budget, per_model_s=args.per_model)
    if args.model_types:
        for r in rows:
            print(f"{r.model_type}: {r.status} {r.reason}")
    else:
        args.out.write_text(page(rows, time.perf_counter() - start))
        print(f"{args.out}: {counts(rows)}")
    return 1 if any(r.status == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
