"""Backends answer one interface; `auto` runs the cheapest that computes the call; crossovers come from a table."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

import qkv
from qkv import masks, mods
from qkv.backends import BACKENDS, blockwise, eager, register
from qkv.backends.blockwise import cpu_kernel
from qkv.backends.common import crossovers
from qkv.backends.common.interface import Call, Offer, cheapest
from tests.conftest import qkv_inputs

ROOT = Path(__file__).resolve().parents[1]


class Toy:
    """Eager under another name: refuses dropout, and costs what the test says."""

    NAME = "toy"
    TAKES_MASK_OBJECTS = False
    TAKES_SCORE_MODS = True

    def __init__(self, cost: float) -> None:
        self.cost = cost

    def refuse(self, call: Call) -> str | None:
        return "the toy has no dropout" if call.dropout_p > 0 else None

    def estimate(self, call: Call) -> Offer:
        return Offer(self.cost, "the toy is cheap")

    def attention(self, q, k, v, **kwargs):
        return eager.attention(q, k, v, **kwargs)


@pytest.fixture
def toy():
    saved = dict(BACKENDS)
    backend = Toy(0.5)
    register(BACKENDS, backend)
    yield backend
    BACKENDS.clear()
    BACKENDS.update(saved)


def test_a_registered_backend_can_be_forced_and_its_refusal_is_the_error(toy):
    q, k, v = qkv_inputs(1, 2, 2, 12, 12, 8)
    assert qkv.explain_dispatch(q, k, v, backend="toy").reason == "requested by the caller"
    torch.testing.assert_close(qkv.attention(q, k, v, backend="toy"), qkv.attention(q, k, v, backend="eager"))
    with pytest.raises(qkv.AttentionError, match="'toy' cannot compute this call exactly: the toy has no dropout"):
        qkv.attention(q, k, v, dropout_p=0.1, backend="toy")


def test_auto_runs_the_cheapest_backend_and_lists_the_cheaper_ones_that_refused(toy):
    q, k, v = qkv_inputs(1, 2, 2, 12, 12, 8)
    chosen = qkv.explain_dispatch(q, k, v)
    assert (chosen.backend, chosen.reason, chosen.rejected) == ("toy", "the toy is cheap", ())
    refused = qkv.explain_dispatch(q, k, v, dropout_p=0.1)
    assert refused.backend == "sdpa" and refused.rejected == (("toy", "the toy has no dropout"),)
    toy.cost = 100.0  # dearer than eager: never chosen, never listed
    assert qkv.explain_dispatch(q, k, v, return_lse=True, dropout_p=0.1).backend == "eager"
    assert "toy" not in dict(qkv.explain_dispatch(q, k, v, return_lse=True, dropout_p=0.1).rejected)


def test_equal_costs_go_to_the_later_registered_and_infinite_costs_are_never_chosen():
    q = torch.randn(1, 1, 4, 8)
    first, second = Toy(1.0), Toy(1.0)
    first.NAME, second.NAME = "first", "second"
    assert cheapest([first, second], Call(q, q, q)).name == "second"
    never = Toy(float("inf"))
    assert cheapest([never], Call(q, q, q)) is None


def test_register_checks_the_interface_and_the_name():
    registry: dict = {}
    register(registry, Toy(1.0))
    with pytest.raises(ValueError, match="name is taken"):
        register(registry, Toy(1.0))
    with pytest.raises(TypeError, match="missing refuse, estimate, attention"):
        register(registry, type("Half", (), {"NAME": "half", "TAKES_MASK_OBJECTS": 1, "TAKES_SCORE_MODS": 1})())


def test_the_docs_example_backend_runs():
    text = (ROOT / "docs" / "backends.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    names = set(BACKENDS)
    for block in blocks:
        exec(compile(block, "docs/backends.md", "exec"), {})
    assert set(BACKENDS) == names


def test_blockwise_counts_kept_tiles_as_the_mask_and_causal_combined_do():
    b, h, n = 1, 2, 700
    cases = [
        masks.sliding_window(64),
        masks.document((torch.arange(n) >= 300).long()),
        masks.padding([500]),
        masks.sliding_window(200) | masks.global_tokens([0, 1, 2]),
        masks.local(9),
    ]
    q = torch.randn(b, h, n, 8)
    for mask in cases:
        for causal in (False, True):
            combined = mask & masks.causal() if causal else mask
            kinds = combined.tile_kinds(b, h, n, n, 128, 128)
            expected = float((kinds != masks.TileKind.EMPTY).float().mean())
            kept = blockwise.kept_fraction(Call(q, q, q, mask, None, causal), 128)
            assert kept == pytest.approx(expected, rel=1e-6)  # counted apart, rounded apart (float32 mean here)


def test_blockwise_runs_the_first_executor_that_serves(monkeypatch):
    q, k, v = qkv_inputs(1, 2, 2, 64, 64, 8)
    if cpu_kernel.available():
        assert blockwise._executor(Call(q, k, v))[0].NAME == "kernel"
    assert blockwise._executor(Call(q, k, v, bias=mods.softcap(20.0)))[0].NAME == "portable"
    monkeypatch.setattr(cpu_kernel, "ENABLED", False)
    assert blockwise._executor(Call(q, k, v))[0].NAME == "fused"
    assert blockwise._executor(Call(q, k, v[..., :4]))[0].NAME == "portable"  # fused wants one head size


# ----------------------------------------------------------------------------- the crossovers table


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty qkv directory of the user's; the table is read again from it, and again after the test."""
    monkeypatch.setenv("QKV_HOME", str(tmp_path))
    crossovers.reload()
    yield tmp_path
    monkeypatch.undo()
    crossovers.reload()


def test_the_defaults_ship_with_their_measurements():
    table = crossovers.load(user=None)
    assert table.source == "defaults"
    assert (table.dense_enough, table.dense_enough_kernel, table.kernel_min_scores) == (0.6, 0.9, 1024 * 1024)
    assert (table.causal_kernel_min_rows, table.causal_kernel_max_scores) == (128, 2048 * 2048)
    text = crossovers.DEFAULTS.read_text()
    assert "Measured" in text and "blockwise 1.5-1.9x faster" in text


def test_a_user_file_overrides_the_defaults_key_by_key_and_changes_decisions(home):
    q, k, v = qkv_inputs(1, 2, 2, 1024, 1024, 16)
    window = masks.sliding_window(300)  # keeps about 45% of the 128 x 128 tiles
    assert qkv.explain_dispatch(q, k, v, mask=window).backend == "blockwise"
    path = crossovers.write({"dense_enough": 0.2, "dense_enough_kernel": 0.25}, note="a test")
    assert path == home / "crossovers.toml" and "# a test" in path.read_text()
    table = crossovers.reload()
    assert (table.dense_enough, table.dense_enough_kernel, table.eager) == (0.2, 0.25, 4.5)
    assert table.source == str(path)
    assert qkv.explain_dispatch(q, k, v, mask=window).backend == "sdpa"


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("dense_enough = [", "cannot be read"),
        ("dense_enough = 1.5", "dense_enough must be a number above 0 and below 1, got 1.5"),
        ("probe_block = 0.5", "probe_block must be a whole number of at least 1"),
        ("eager = -1", "eager must be a number above 0"),
        ("speed = 2", "unknown key speed"),
    ],
)
def test_a_broken_user_file_is_ignored_with_a_warning_naming_it(home, content, named):
    (home / "crossovers.toml").write_text(content + "\n")
    with pytest.warns(RuntimeWarning, match=re.escape(named)) as caught:
        table = crossovers.reload()
    assert str(home / "crossovers.toml") in str(caught[0].message) and "--write-crossovers" in str(caught[0].message)
    assert table == crossovers.load(user=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = torch.randn(1, 2, 4, 8)
        assert qkv.explain_dispatch(q, q, q).backend == "sdpa"  # read once: no warning on every call


def test_writing_refuses_values_out_of_range(home):
    with pytest.raises(ValueError, match="dense_enough must be a number above 0 and below 1"):
        crossovers.write({"dense_enough": 0.0})
    assert not (home / "crossovers.toml").exists()


def test_bench_writes_crossovers_the_next_table_reads(home, monkeypatch, capsys):
    from qkv import bench
    from qkv.cli import main

    monkeypatch.setitem(bench.CROSSOVER_SIZES, "quick", (128, 1024))
    monkeypatch.setitem(bench.CAUSAL_SIZES, "quick", (64, 256))
    assert main(["bench", "--write-crossovers", "--quick", "--repeats", "1"]) == 0
    path = home / "crossovers.toml"
    assert f"wrote {path}" in " ".join(capsys.readouterr().out.split())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = crossovers.reload()
    assert table.source == str(path)
    written = {line.split(" = ")[0] for line in path.read_text().splitlines() if not line.startswith("#")}
    assert {"eager", "dense_bias", "dense_enough"} <= written
    assert ("dense_enough_kernel" in written) == cpu_kernel.available()
