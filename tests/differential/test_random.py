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
