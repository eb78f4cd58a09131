"""The blockwise CPU kernel's build cache: one build per environment, said on stderr when it happens."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from qkv.backends.blockwise import cpu_kernel


def test_the_build_key_names_torch_the_environment_and_the_compiler() -> None:
    key = cpu_kernel.build_key()
    assert torch.__version__ in key["torch"] and str(Path(torch.__file__).resolve().parent) in key["torch"]
    assert sys.prefix in key["python"] and os.path.realpath(sys.executable) in key["python"]
    assert key["compiler"].strip() and key["cflags"] == " ".join(cpu_kernel.CFLAGS)
    assert cpu_kernel.build_key() == key  # the same environment: the same key, the same build


def test_every_part_of_the_key_moves_the_build_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QKV_CACHE_DIR", str(tmp_path))
    key = cpu_kernel.build_key()
    here = cpu_kernel.build_directory(key)
    assert here == cpu_kernel.build_directory() and here.parent == tmp_path / "kernels"
    for name in key:
        other = dict(key, **{name: key[name] + " (another)"})
        assert cpu_kernel.build_directory(other) != here, name


def test_another_virtual_environment_or_compiler_gets_its_own_build(monkeypatch: pytest.MonkeyPatch) -> None:
    here = cpu_kernel.build_directory()
    monkeypatch.setattr(sys, "prefix", sys.prefix + "-other-venv")
    assert cpu_kernel.build_directory() != here
    monkeypatch.undo()
    monkeypatch.setenv("CXX", "clang++-that-is-not-here")
    assert "clang++-that-is-not-here" in cpu_kernel.build_key()["compiler"]
    assert cpu_kernel.build_directory() != here


def test_a_build_says_so_on_stderr_and_a_failed_one_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torch.utils import cpp_extension

    def no_compiler(**kwargs: object) -> None:
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setenv("QKV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setattr(cpu_kernel, "_ops", None)
    monkeypatch.setattr(cpu_kernel, "_failure", None)
    monkeypatch.setattr(cpu_kernel, "ENABLED", True)
    assert cpu_kernel._load() is None
    assert "qkv: compiling the blockwise CPU kernel for this environment (once, ~20 s)" in capsys.readouterr().err
    assert not cpu_kernel.available()
    assert "not built (RuntimeError: no C++ compiler found)" in cpu_kernel.status()
    assert capsys.readouterr().err == ""  # said once per process, not on every call
