"""docs/architecture.md names real files and functions, and its walk through one call is what qkv does."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch

import qkv

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "architecture.md").read_text()
SOURCES = [p.relative_to(ROOT / "src" / "qkv").as_posix() for p in (ROOT / "src" / "qkv").rglob("*") if p.is_file()]


def test_every_file_the_map_names_exists():
    named = set(re.findall(r"`([\w/]+\.(?:py|cpp))`", PAGE))
    assert len(named) > 30
    missing = [
        name
        for name in sorted(named)
        if not (ROOT / name).exists() and not any(s == name or s.endswith("/" + name) for s in SOURCES)
    ]
    assert not missing, f"docs/architecture.md names files that are not in src/qkv: {missing}"


def test_every_linked_page_exists():
    links = re.findall(r"\]\(([\w.-]+\.md)\)", PAGE)
    assert "masks.md" in links and "backends.md" in links
    assert [link for link in links if not (ROOT / "docs" / link).exists()] == []


def test_the_functions_of_the_walk_through_exist_where_it_says():
    where = {
        "qkv.masks.diagonal": ["sliding_window", "SlidingWindow"],
        "qkv.validation": ["check_call"],
        "qkv.functional": ["attention", "_normalized", "_backend_kwargs", "_spec_on_nan_rows"],
        "qkv.dispatch": ["choose", "Dispatch"],
        "qkv.backends.common.interface": ["cheapest", "Call", "Offer"],
        "qkv.backends.blockwise": ["estimate", "kept_fraction", "_executor", "_BlockwiseAttention"],
        "qkv.backends.blockwise.plan": ["_plan", "_memo"],
    }
    for module, names in where.items():
        found = importlib.import_module(module)
        for name in names:
            assert f"`{name}`" in PAGE or f"`{module.split('.')[-1]}.{name}`" in PAGE, (module, name)
            assert hasattr(found, name), f"{module} has no {name}"
    assert hasattr(qkv.masks.SlidingWindow, "classify_rows")


def test_auto_sends_a_long_sliding_window_to_blockwise_for_the_reason_the_map_gives():
    q = torch.randn(1, 2, 4096, 16)  # (B, H, N, D)
    chosen = qkv.explain_dispatch(q, q, q, mask=qkv.masks.sliding_window(256))
    assert chosen.backend == "blockwise"
    kept = re.search(r"keeps (\d+)% of the key tiles", chosen.reason)
    assert kept and f"it keeps {kept.group(1)}% of the key tiles" in PAGE.replace("\n   ", " ")
