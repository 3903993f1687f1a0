"""The replication core under the seeded simulator (journal.sim): 500 seeds in CI.

A failure prints the one command that replays it, e.g.
``python -m journal.sim --seed 1234 --nodes 5 --duration-ms 2000 -v``.
"""

from __future__ import annotations

import pytest

from journal.sim import InvariantViolation, run_seed

CHUNK = 25  # seeds per test case: small enough to localise, large enough to amortise


def _run_chunk(nodes: int, first: int, count: int, duration_ms: int) -> dict[str, int]:
    totals = {"acked": 0, "barriers": 0, "terms": 0}
    for seed in range(first, first + count):
        try:
            stats = run_seed(seed, nodes, duration_ms)
        except InvariantViolation:
            raise
        except AssertionError as e:  # an assertion inside the core
            cmd = f"python -m journal.sim --seed {seed} --nodes {nodes} --duration-ms {duration_ms} -v"
            raise AssertionError(f"seed {seed}: {e!r}\n  replay: {cmd}") from e
        for key in totals:
            totals[key] += stats[key]
    return totals


@pytest.mark.parametrize("first", range(0, 250, CHUNK))
def test_three_nodes(first: int) -> None:
    totals = _run_chunk(3, first, CHUNK, 1_500)
    # The runs must do real work, or the checks above prove nothing.
    assert totals["acked"] > CHUNK * 5 and totals["barriers"] > CHUNK and totals["terms"] > CHUNK


@pytest.mark.parametrize("first", range(10_000, 10_250, CHUNK))
def test_five_nodes(first: int) -> None:
    totals = _run_chunk(5, first, CHUNK, 1_500)
    assert totals["acked"] > CHUNK * 5 and totals["barriers"] > CHUNK and totals["terms"] > CHUNK


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("first", range(100_000, 102_000, 500))
def test_many_long_runs(nodes: int, first: int) -> None:
    _run_chunk(nodes, first, 500, 6_000)
