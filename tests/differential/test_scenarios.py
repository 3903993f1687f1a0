"""Every registered scenario, against a real etcd and the server under test (DIFF_TARGET)."""

from __future__ import annotations

import pytest

from tests.differential import (  # noqa: F401  (they register scenarios)
    sc_kube,
    sc_kv,
    sc_lease,
    sc_longkeys,
    sc_misc,
    sc_restart,
    sc_txn,
    sc_watch,
)
from tests.differential.harness import SCENARIOS, PairPool, Scenario, render_mismatches, run_scenario


def test_at_least_150_scenarios() -> None:
    assert len(SCENARIOS) >= 150, len(SCENARIOS)


@pytest.mark.parametrize(
    "scenario", [pytest.param(s, id=s.name, marks=[pytest.mark.slow] if s.slow else []) for s in SCENARIOS]
)
def test_scenario(scenario: Scenario, diff_pool: PairPool) -> None:
    if scenario.deliberate and diff_pool.target != "etcd":
        _deliberate(scenario, diff_pool)
        return
    pair, mismatches = run_scenario(scenario, diff_pool, SCENARIOS.index(scenario))
    assert not mismatches, render_mismatches(scenario, pair, mismatches)


def _deliberate(scenario: Scenario, pool: PairPool) -> None:
    """A difference the design accepts must still be a difference: if the server starts answering as
    etcd does, this fails so the mark can go."""
    pair, mismatches = run_scenario(scenario, pool, SCENARIOS.index(scenario))
    assert mismatches, f"{scenario.name} now matches etcd: drop deliberate={scenario.deliberate!r}"
    pytest.xfail(f"deliberate difference: {scenario.deliberate}\n" + render_mismatches(scenario, pair, mismatches))
