"""The sweep over transformers' families (scripts/hf_sweep.py), and the table it wrote: docs/hf-families.md.

The quick tests run the sweep's machinery on a few families; the slow one (CI, ``QKV_RUN_SLOW=1``)
runs the whole sweep and holds qkv to the page: every family the page lists as passing still
passes, and every family that does not pass says why.

    python scripts/hf_sweep.py          # rewrites docs/hf-families.md
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "hf-families.md"


def _script():
    if "hf_sweep" not in sys.modules:
        spec = importlib.util.spec_from_file_location("hf_sweep", ROOT / "scripts" / "hf_sweep.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["hf_sweep"] = module
        spec.loader.exec_module(module)
    return sys.modules["hf_sweep"]


def test_the_sweep_passes_decoders_encoders_vision_and_sinks_and_names_the_rest() -> None:
    hf_sweep = _script()
    rows = {r.model_type: r for r in hf_sweep.sweep(["llama", "bert", "vit", "gpt_oss", "whisper"], budget_s=120)}
    for family in ("llama", "bert", "vit", "gpt_oss"):
        assert rows[family].status == "passed", rows[family]
        assert "2 qkv calls" in rows[family].reason and "2 attention weights" in rows[family].reason
    assert rows["whisper"].status == "skipped"
    assert "does not declare _supports_attention_backend" in rows["whisper"].reason


def test_the_sweep_says_which_calls_got_a_dense_mask_instead_of_a_qkv_mask() -> None:
    """DeepSeek-V3.2's indexer reads a slice of the mask and its layers still get the structure; Doge adds its
    dynamic mask to the tensor, so its layers get a dense one (as on every implementation)."""
    rows = {r.model_type: r for r in _script().sweep(["deepseek_v32", "doge"], budget_s=120)}
    assert rows["deepseek_v32"].status == "passed" and "dense" not in rows["deepseek_v32"].reason, rows
    assert rows["doge"].status == "passed" and "2 qkv calls (2 with a dense mask)" in rows["doge"].reason, rows


def test_the_sweep_stops_at_its_budget_and_says_so() -> None:
    rows = _script().sweep(["llama", "bert"], budget_s=0)
    assert [r.status for r in rows] == ["skipped", "skipped"]
    assert all("not reached within" in r.reason for r in rows)


def test_a_difference_beyond_the_tolerance_fails_and_within_it_passes() -> None:
    hf_sweep = _script()
    eager = {"logits": torch.randn(2, 3, 5), "attentions": (torch.rand(2, 4, 3, 3),)}
    near = {"logits": eager["logits"] + 1e-6, "attentions": eager["attentions"]}
    hf_sweep._compare(near, eager, "outputs")
    far = {"logits": eager["logits"], "attentions": (eager["attentions"][0] + 1e-2,)}
    with pytest.raises(hf_sweep._Fail, match=r"attentions\[0\] differs by 0.01"):
        hf_sweep._compare(far, eager, "outputs")


def test_the_page_lists_every_family_once_with_the_counts() -> None:
    hf_sweep = _script()
    text = PAGE.read_text()
    statuses = hf_sweep.read_page(text)
    declared = {t for t, _ in hf_sweep.families()}
    assert set(statuses) == declared  # no family left out, none added
    c = {s: list(statuses.values()).count(s) for s in ("passed", "failed", "skipped")}
    assert f"**{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped.**" in text
    for line in text.splitlines():  # a family that does not pass says why
        cells = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[2] in ("failed", "skipped"):
            assert cells[3], line


@pytest.mark.slow
def test_every_family_the_page_lists_as_passing_still_passes() -> None:
    """The whole sweep (about 3 minutes on 2 cores), held to docs/hf-families.md."""
    hf_sweep = _script()
    torch.set_num_threads(1)
    rows = hf_sweep.sweep(budget_s=600)
    documented = hf_sweep.read_page(PAGE.read_text())
    now = {r.model_type: r for r in rows}
    # a family the time limits left unchecked on a slower machine says nothing either way
    unchecked = ("not reached within", "over the per-family limit", "qkv ran past the per-family limit")
    passing = [t for t, status in documented.items() if status == "passed" and t in now]
    checked = [t for t in passing if not now[t].reason.startswith(unchecked)]
    lost = [f"{t}: {now[t].status} ({now[t].reason})" for t in checked if now[t].status != "passed"]
    assert not lost, "families the page lists as passing no longer pass:\n" + "\n".join(lost)
    assert len(checked) >= len(passing) // 2, f"only {len(checked)} of {len(passing)} passing families were checked"
    assert all(r.reason for r in rows if r.status != "passed")
