"""Fixtures shared by the whole test suite: real servers on free loopback ports.

DIFF_TARGET selects the server the differential and etcdctl suites compare with a real etcd:
`kvstore` (default: our `kvstore serve`) or `etcd` (a second real etcd, which validates the harness
and its normalisation: every scenario must pass etcd against etcd).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.differential.harness import PairPool
from tests.servers import ServerProcess, kvstore_available, start_etcd, start_kvstore, start_server

DIFF_TARGET = os.environ.get("DIFF_TARGET", "kvstore")


def _target_or_skip() -> str:
    if DIFF_TARGET not in ("kvstore", "etcd"):
        raise pytest.UsageError(f"DIFF_TARGET must be kvstore or etcd, not {DIFF_TARGET!r}")
    if DIFF_TARGET == "kvstore" and not kvstore_available():
        pytest.skip("kvstore.server does not exist yet (run with DIFF_TARGET=etcd to check the harness)")
    return DIFF_TARGET


@pytest.fixture(scope="session")
def diff_target() -> str:
    return _target_or_skip()


@pytest.fixture(scope="session")
def diff_pool(diff_target: str) -> Iterator[PairPool]:
    pool = PairPool(diff_target, lambda kind, name, flags: start_server(kind, name, flags))
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[ServerProcess]:
    """One real etcd shared by the session (use a unique key prefix per test)."""
    srv = start_etcd("session-etcd")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def kvstore_server() -> Iterator[ServerProcess]:
    """One `kvstore serve` shared by the session (use a unique key prefix per test)."""
    if not kvstore_available():
        pytest.skip("kvstore.server does not exist yet")
    srv = start_kvstore("session-kvstore")
    yield srv
    srv.stop()
