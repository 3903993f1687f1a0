"""The replication core under the seeded simulator (journal.sim): 500 seeds in CI.

A failure prints the one command that replays it, e.g.
``python -m journal.sim --seed 1234 --nodes 5 --duration-ms 2000 -v``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from journal.replication import Ready, ReplicationCore
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


def _first_failure(nodes: int, seeds: range) -> str | None:
    for seed in seeds:
        try:
            run_seed(seed, nodes, 1_500)
        except AssertionError as e:
            return str(e)
    return None


def test_the_simulator_catches_acks_sent_before_the_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shell that sends acknowledgements before its writes are durable must be caught."""
    real_ready = ReplicationCore.ready

    def leaky_ready(self: ReplicationCore, writes: bool = True) -> Ready:
        rd = real_ready(self, writes)
        return replace(rd, messages=rd.messages + rd.messages_after_persist, messages_after_persist=())

    monkeypatch.setattr(ReplicationCore, "ready", leaky_ready)
    failure = _first_failure(3, range(20))
    assert failure is not None and "durable only on" in failure


def test_the_simulator_catches_a_light_ready_that_hands_acks(monkeypatch: pytest.MonkeyPatch) -> None:
    """ready(writes=False) while a write is in flight must keep the acks for a later full Ready."""
    real_ready = ReplicationCore.ready

    def leaky_light_ready(self: ReplicationCore, writes: bool = True) -> Ready:
        if writes:
            return real_ready(self)
        acks, self._msgs_after = tuple(self._msgs_after), []
        rd = real_ready(self, False)
        return replace(rd, messages=rd.messages + acks)

    monkeypatch.setattr(ReplicationCore, "ready", leaky_light_ready)
    failure = _first_failure(3, range(40))
    assert failure is not None and "durable only on" in failure


def test_the_simulator_catches_a_missing_election_restriction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ReplicationCore, "_up_to_date", lambda self, last_index, last_term: True)
    assert _first_failure(5, range(60)) is not None
