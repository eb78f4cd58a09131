"""The layer rule of DESIGN.md, checked: the import-linter contracts in pyproject.toml hold and cover every module.

`make lint` runs the contracts too; here they also run with the test suite, and two
things the contracts cannot say are checked: that every top-level module of qkv sits
in a layer (a new module outside the layers would escape the rule), and that the
spec, ``qkv.backends.reference``, depends on nothing but torch.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _contract(contract_id: str) -> dict[str, Any]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract: dict[str, Any] = next(c for c in config["contracts"] if c["id"] == contract_id)
    return contract


def _layer_names() -> set[str]:
    """Every module named in the layers contract, optional ones included: ``(hf)`` -> ``hf``."""
    names: set[str] = set()
    for layer in _contract("layers")["layers"]:
        names.update(part.strip().strip("()") for part in re.split(r"[|:]", layer))
    return names


def test_the_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed: pip install -e '.[dev]'")
    result = subprocess.run([str(lint), "--no-cache", "--no-logo"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_top_level_module_is_in_a_layer() -> None:
    package = ROOT / "src" / "qkv"
    modules = {p.stem for p in package.glob("*.py")} | {p.parent.name for p in package.glob("*/__init__.py")}
    modules.discard("__init__")
    missing = sorted(modules - _layer_names())
    assert not missing, f"add {missing} to a layer of [tool.importlinter] in pyproject.toml (see DESIGN.md's layers)"


def test_the_reference_backend_depends_on_nothing_but_torch() -> None:
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter: pip install -e '.[dev]'")
    graph = grimp.build_graph("qkv", include_external_packages=True)
    imported = graph.find_modules_directly_imported_by("qkv.backends.reference")
    outside = {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names}
    assert outside <= {"torch"}, sorted(outside)  # Python's own library and torch: nothing of qkv
