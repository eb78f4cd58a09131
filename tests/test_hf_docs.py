"""docs/hf.md: its Python examples run, one after the other, and print what the text says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")

DOC = Path(__file__).resolve().parents[1] / "docs" / "hf.md"


def test_the_hf_doc_examples_run_and_print_what_they_say() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) == 3
    printed = io.StringIO()
    namespace: dict[str, object] = {}
    with contextlib.redirect_stdout(printed):
        for block in blocks:
            exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - the doc's own examples
    lines = printed.getvalue().splitlines()
    assert lines[0] == "torch.Size([2, 6, 64]) torch.Size([2, 4, 6, 6])"
    assert lines[1] == "torch.Size([2, 10])"
    assert lines[2] == "sliding_window(64) & ~padding(lengths=[0, 12])"
    assert lines[3] == "blockwise"
    assert lines[4] == "['model.layers.1.self_attn'] torch.Size([2, 2, 1, 6])"
    assert lines[5] == "TransformersCall(layer 1 'model.layers.1.self_attn', 4 heads, 6 queries × 6 keys, causal)"
