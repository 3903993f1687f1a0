"""Every registered scenario, against a real etcd and the server under test (DIFF_TARGET)."""

from __future__ import annotations

import pytest

from tests.differential import (  # noqa: F401  (they register scenarios)
    sc_kube,
    sc_kv,
    sc_lease,
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
    pair, mismatches = run_scenario(scenario, diff_pool, SCENARIOS.index(scenario))
    assert not mismatches, render_mismatches(scenario, pair, mismatches)
