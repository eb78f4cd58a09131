"""A mutation check for the core: break the code on purpose, and the suite must fail.

Each mutant is one small, plausible bug written as a text replacement in one module of qkv:
the mask polarity flipped, the ``1/sqrt(D)`` scale dropped, a key tile or a query block
skipped in the blockwise loop. `run` starts ``python -m pytest`` on the core test files in a
child process with this module as a pytest plugin (``-p tests.mutants``) and the mutant named
in ``$QKV_MUTANT``; the plugin puts an import hook first on ``sys.meta_path`` that compiles
that one module from its source with the replacement made (in memory: nothing on disk
changes, no bytecode is written, every other file is the working tree's own, so the CPU
kernel's build is reused). A mutant is caught when pytest reports a failing test (exit
status 1); a mutant whose text is no longer in the source stops the run with a message
naming it, so a change to the code cannot silently retire a mutant.

tests/test_mutants.py (marked slow: CI runs it) asserts that every mutant is caught. By hand,
``python -m tests.mutants`` runs every mutant over all the core files, not stopping at the
first failure, and prints which tests catch each one.
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.machinery
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the core test files, fastest to fail first
CORE_TESTS = (
    "tests/test_semantics.py",
    "tests/test_accuracy.py",
    "tests/test_structured.py",
    "tests/test_blockwise_kernel.py",
    "tests/test_masks.py",
)


@dataclass(frozen=True)
class Mutant:
    """``old`` replaced by ``new`` (each exactly once) in ``module``; ``tests``: the core files that run first."""

    name: str
    module: str
    old: str
    new: str
    tests: tuple[str, ...] = CORE_TESTS


MUTANTS = (
    Mutant(
        "the spec's mask polarity flipped (False = may attend)",
        "qkv.backends.reference",
        's = s.masked_fill(~mask, float("-inf"))',
        's = s.masked_fill(mask, float("-inf"))',
    ),
    Mutant(
        "the eager backend's mask polarity flipped",
        "qkv.backends.eager",
        's = s.masked_fill(~allowed, float("-inf"))',
        's = s.masked_fill(allowed, float("-inf"))',
    ),
    Mutant(
        "the default scale dropped everywhere (1 instead of 1/sqrt(D))",
        "qkv.validation",
        "return 1.0 / math.sqrt(head_dim)",
        "return 1.0",
    ),
    Mutant(
        "the eager backend's scale dropped",
        "qkv.backends.eager",
        "s = (qg @ kg.transpose(-2, -1)) * scale",
        "s = qg @ kg.transpose(-2, -1)",
    ),
    Mutant(
        "blockwise: the first key tile of query block 1 skipped",
        "qkv.backends.blockwise.plan",
        "keys.append(slice(first[r] * BLOCK_K, min((last[r] + 1) * BLOCK_K, nk)))",
        "keys.append(slice((first[r] + (r == 1 and count[r] > 1)) * BLOCK_K, min((last[r] + 1) * BLOCK_K, nk)))",
        ("tests/test_accuracy.py", "tests/test_structured.py", "tests/test_blockwise_kernel.py"),
    ),
    Mutant(
        "blockwise: query block 1 skipped in the loop over blocks",
        "qkv.backends.blockwise.plan",
        "        if keys is not None:\n            q0 = r * BLOCK_Q",
        "        if keys is not None and r != 1:\n            q0 = r * BLOCK_Q",
        ("tests/test_accuracy.py", "tests/test_structured.py", "tests/test_blockwise_kernel.py"),
    ),
)


@dataclass(frozen=True)
class Result:
    mutant: Mutant
    returncode: int
    failed: tuple[str, ...]  # the failing tests pytest names, "path::test[params]"
    output: str

    @property
    def caught(self) -> bool:
        return self.returncode == 1 and bool(self.failed)


def run(mutant: Mutant, *, first_failure_only: bool = True, timeout: float = 600) -> Result:
    """The mutant's test files in a child pytest with the mutant applied; which tests failed."""
    env = {k: v for k, v in os.environ.items() if k != "QKV_RUN_SLOW"}  # the long sweeps stay off
    env["QKV_MUTANT"] = json.dumps({"module": mutant.module, "old": mutant.old, "new": mutant.new})
    command = [sys.executable, "-m", "pytest", "-q", "-p", "tests.mutants", "-p", "no:cacheprovider"]
    command += ["--tb=line", "-rfE", *(["-x"] if first_failure_only else []), *mutant.tests]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    # "FAILED tests/x.py::test[a, b] - message": a test id may hold spaces
    failed = tuple(dict.fromkeys(re.findall(r"^FAILED (.+?)(?: - .*)?$", output, flags=re.MULTILINE)))
    return Result(mutant, result.returncode, failed, output)


# -- the plugin side: runs inside the child pytest ---------------------------------------------------


class _MutatedLoader(importlib.machinery.SourceFileLoader):
    """Compiles the module from its source with one replacement made; reads and writes no bytecode."""

    def __init__(self, fullname: str, path: str, old: str, new: str) -> None:
        super().__init__(fullname, path)
        self.old, self.new = old, new

    def get_code(self, fullname: str) -> CodeType:
        source = Path(self.path).read_text()
        if source.count(self.old) != 1:
            raise ImportError(
                f"mutant for {fullname}: {self.old!r} occurs {source.count(self.old)} times in {self.path}, "
                "not once; update the mutant in tests/mutants.py to the code as it is now"
            )
        return compile(source.replace(self.old, self.new), self.path, "exec", dont_inherit=True)

    def exec_module(self, module: ModuleType) -> None:
        super().exec_module(module)
        module.__qkv_mutant__ = self.new  # type: ignore[attr-defined]


class _MutantFinder(importlib.abc.MetaPathFinder):
    def __init__(self, module: str, old: str, new: str) -> None:
        self.module, self.old, self.new = module, old, new

    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if fullname != self.module:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None:
            return None
        spec.loader = _MutatedLoader(fullname, spec.origin, self.old, self.new)
        return spec


def _install() -> None:
    raw = os.environ.get("QKV_MUTANT")
    if not raw or any(isinstance(finder, _MutantFinder) for finder in sys.meta_path):
        return
    mutant = json.loads(raw)
    if any(name == mutant["module"] or name.startswith(mutant["module"] + ".") for name in sys.modules):
        raise SystemExit(f"mutant for {mutant['module']}: the module was imported before the plugin")
    sys.meta_path.insert(0, _MutantFinder(mutant["module"], mutant["old"], mutant["new"]))


def pytest_collection_finish(session: pytest.Session) -> None:
    """After collection the tests have imported qkv: the mutated module must be the one they run."""
    raw = os.environ.get("QKV_MUTANT")
    if raw and not session.testsfailed:  # a collection error (a mutant that no longer applies) speaks for itself
        module = sys.modules.get(json.loads(raw)["module"])
        if module is None or not hasattr(module, "__qkv_mutant__"):
            pytest.exit("mutant: the tests never imported the mutated module; nothing was checked", returncode=4)


if __name__ != "__main__":
    _install()


def main() -> int:
    """Every mutant over every core file: which tests catch it."""
    missed = 0
    for mutant in MUTANTS:
        result = run(dataclasses.replace(mutant, tests=CORE_TESTS), first_failure_only=False, timeout=1800)
        missed += not result.caught
        print(f"{'caught' if result.caught else 'MISSED'}: {mutant.name} ({len(result.failed)} failing tests)")
        for test in result.failed:
            print(f"    {test}")
        if not result.caught:
            print(result.output[-3000:])
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
