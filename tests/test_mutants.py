"""The mutation check (tests/mutants.py): each deliberate bug in the core makes the core tests fail.

Slow (a child pytest per mutant, stopping at its first failing test): CI runs it. By hand,
``python -m tests.mutants`` lists every test that catches each mutant.
"""

from __future__ import annotations

import pytest

from tests import mutants


@pytest.mark.slow
@pytest.mark.parametrize("mutant", mutants.MUTANTS, ids=lambda m: m.name)
def test_the_core_tests_catch_the_mutant(mutant: mutants.Mutant) -> None:
    result = mutants.run(mutant)
    assert result.caught, f"not caught: {mutant.name} (exit status {result.returncode})\n{result.output[-4000:]}"
    print(f"{mutant.name}: caught by {result.failed[0]}")


def test_a_mutant_whose_text_is_gone_stops_the_run_instead_of_passing() -> None:
    gone = mutants.Mutant("gone", "qkv.errors", "text that is not in the module", "x", ("tests/test_kernel_build.py",))
    result = mutants.run(gone)
    assert not result.caught and result.returncode != 0
    assert "update the mutant" in result.output
