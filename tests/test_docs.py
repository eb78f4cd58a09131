"""The README's Python examples run, and the command line answers as documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from qkv.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_blocks_run():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README should show Python examples"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_readme_shows_the_two_commands_first():
    text = (ROOT / "README.md").read_text()
    first_block = text.index("```")
    assert "make demo" in text[first_block : first_block + 200]
    assert "make test" in text[first_block : first_block + 200]


def test_check_command_reports_every_backend_within_budget(capsys):
    assert main(["check"]) == 0
    printed = capsys.readouterr().out
    assert "agree with the float64 reference within budget" in printed
    for backend in ("eager", "sdpa"):
        assert backend in printed


def test_console_script_runs_as_module():
    result = subprocess.run(
        [sys.executable, "-m", "qkv", "check", "--seed", "3"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "within budget" in result.stdout


def test_unknown_command_is_a_one_line_error():
    result = subprocess.run([sys.executable, "-m", "qkv", "nonsense"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "invalid choice: 'nonsense'" in result.stderr
    assert "Traceback" not in result.stderr
