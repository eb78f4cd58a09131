"""The weights of a model folder: ``model.safetensors``, or the shards ``model.safetensors.index.json`` lists.

`read_safetensors` reads every tensor a ``rename`` rule keeps, under the name it
gives, from one file or from all shards; `check_tensors` says which tensor a
model needs is missing or has the wrong shape. A file that cannot be read is a
`ModelError` naming it (`qkv.models._files.corrupt`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from qkv.models._files import corrupt, read_json_object
from qkv.models.packages import ModelError

__all__ = ["check_tensors", "read_safetensors", "weight_files", "weights_name"]

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def weight_files(folder: Path) -> list[Path]:
    """``[folder / model.safetensors]``, or the shard files ``model.safetensors.index.json`` maps tensors to."""
    if (folder / SINGLE).is_file():
        return [folder / SINGLE]
    index = folder / INDEX
    if not index.is_file():
        raise ModelError(
            f"folder: expected {folder / SINGLE} or a sharded {index} beside config.json, found neither; "
            "qkv reads safetensors weights (save them with safe_serialization=True)"
        )
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(f, str) for f in weight_map.values()):
        given = f"{weight_map!r:.80}"
        raise ModelError(f"{index}: expected a 'weight_map' object of tensor name -> shard file, got {given}")
    files = sorted(set(weight_map.values()))
    for name in files:
        if Path(name).name != name or not (folder / name).is_file():
            raise ModelError(f"{index}: weight_map names shard {name!r}, which is not a file in {folder}")
    return [folder / name for name in files]


def weights_name(folder: Path) -> str:
    """What errors about the folder's tensors name: its ``model.safetensors``, else its index file."""
    return str(folder / SINGLE) if (folder / SINGLE).is_file() else str(folder / INDEX)


def read_safetensors(
    folder: Path, rename: Callable[[str], str | None], *, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors file(s) that ``rename`` gives a name (None: left out), in ``dtype``."""
    from safetensors import SafetensorError, safe_open

    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        try:
            with safe_open(str(path), framework="pt") as file:
                for key in file.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    name = rename(key)
                    if name is not None:
                        tensors[name] = file.get_tensor(key).to(dtype)
        except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as error:
            # SafetensorError: a cut or garbage header; the others: a header that parses but describes nonsense
            detail = str(error).removeprefix("Error while deserializing header: ")
            raise corrupt(path, "safetensors file", detail) from None
    return tensors


def check_tensors(
    tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], *, where: str, model: str, source: str
) -> None:
    """A `ModelError` if a tensor of ``expected`` (name -> shape, from ``source``) is missing or of another shape.

    >>> check_tensors({"w": torch.zeros(2, 3)}, {"w": (3, 2)}, where="model.safetensors", model="a model",
    ...               source="config.json")
    Traceback (most recent call last):
    ...
    qkv.errors.ModelError: model.safetensors: tensor 'w': expected shape (3, 2) from config.json, got (2, 3)
    """
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ModelError(f"{where}: lacks {len(missing)} tensors {model} needs, e.g. {missing[:3]}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ModelError(
                f"{where}: tensor {name!r}: expected shape {shape} from {source}, got {tuple(tensors[name].shape)}"
            )
