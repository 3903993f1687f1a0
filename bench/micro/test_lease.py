"""The lease table: the expiry scan a member runs on every tick, and a keepalive's renew."""

from __future__ import annotations

from typing import Any

import pytest

from kvstore.lease import LeaseTable
from kvstore.mvcc.backend import Backend

NOW_MS = 1_700_000_000_000


def table(n: int) -> LeaseTable:
    """n leases in a backend, with a write batch left open (renew writes into it)."""
    backend = Backend.temporary()
    backend.begin_batch()
    t = LeaseTable(backend)
    for i in range(1, n + 1):
        t.grant(i, 60 + i % 3600, NOW_MS)  # deadlines spread over an hour, none due at NOW_MS
    return t


@pytest.mark.parametrize("leases", [1_000, 100_000])
def test_due_scan_nothing_due(benchmark: Any, leases: int) -> None:
    """What finding no expired lease costs with this many live leases (kube: one per 1000 events)."""
    t = table(leases)
    assert benchmark(t.due, NOW_MS, 1000) == []


def test_due_scan_some_due(benchmark: Any) -> None:
    t = table(100_000)
    due = benchmark(t.due, NOW_MS + 120_000, 1000)  # leases with TTL 60..119 s are due
    assert len(due) == 1000


def test_renew(benchmark: Any) -> None:
    t = table(100_000)
    n = iter(range(10**9))

    def step() -> None:
        assert t.renew(1 + next(n) % 100_000, NOW_MS + 1000) is not None

    benchmark(step)
