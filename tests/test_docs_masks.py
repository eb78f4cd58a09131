"""docs/masks.md: the example of a mask and a score mod of one's own runs, and prints what the page says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "masks.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


def _expected_output(block: str) -> list[str]:
    """The comment lines right after each ``print(...)`` line: what that print shows."""
    expected, lines = [], block.splitlines()
    for n, line in enumerate(lines):
        if line.lstrip().startswith("print("):
            indent = line[: len(line) - len(line.lstrip())] + "# "
            for after in lines[n + 1 :]:
                if not after.startswith(indent):
                    break
                expected.append(after[len(indent) :])
    return expected


def test_the_page_shows_a_complete_example():
    blocks = _blocks()
    assert len(blocks) == 1, "one complete example, in one block"
    assert "class ChunkedCausal(masks.Mask)" in blocks[0] and "class SymmetricALiBi(mods.AdditiveMod)" in blocks[0]
    for name in ("rule", "check", "classify_tiles", "offset_invariant", "bias", "Tiling"):
        assert f"`{name}" in PAGE.read_text(), f"the protocol table names {name}"


def test_the_example_runs_and_prints_what_the_page_says():
    (block,) = _blocks()
    namespace: dict[str, object] = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block, str(PAGE), "exec"), namespace)  # its asserts check it against the spec
    expected = _expected_output(block)
    assert len(expected) >= 7, "the page shows the dense mask and the error"
    assert [line.rstrip() for line in printed.getvalue().splitlines()] == expected
