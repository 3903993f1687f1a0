"""Seeded random operations (>= 2000 per seed) against etcd and the server under test."""

from __future__ import annotations

import pytest

from tests.differential.harness import PairPool
from tests.differential.randomops import DEFAULT_OPS, run_seed

CI_SEEDS = [1, 2]  # ~30 s each against kvstore serve on 2 busy cores; more seeds run with -m slow
SLOW_SEEDS = [3, *range(100, 119)]


@pytest.mark.parametrize("seed", CI_SEEDS, ids=lambda s: f"seed={s}")
def test_random_ops(seed: int, diff_pool: PairPool) -> None:
    report, mismatches = run_seed(diff_pool, seed, DEFAULT_OPS)
    assert not mismatches, report


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS, ids=lambda s: f"seed={s}")
def test_random_ops_slow(seed: int, diff_pool: PairPool) -> None:
    report, mismatches = run_seed(diff_pool, seed, 5 * DEFAULT_OPS)
    assert not mismatches, report


RESTART_SEEDS = [11, 12]


@pytest.mark.slow
@pytest.mark.parametrize("seed", RESTART_SEEDS, ids=lambda s: f"seed={s}")
def test_random_ops_with_crashes_and_snapshots(seed: int, diff_pool: PairPool) -> None:
    """Random operations with 4 kill -9 + restarts of both servers, and a snapshot every 200 entries
    (etcd: raft snapshots; ours: journal snapshots and trimming below them)."""
    report, mismatches = run_seed(diff_pool, seed, 3000, restarts=4, flags={"snapshot-count": 200})
    assert not mismatches, report
