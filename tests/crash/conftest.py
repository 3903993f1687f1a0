"""Crash-test fixtures: a failing test's report carries the server's stderr, and its work dir
(data dir with the journal, state dir with the state file) is kept for a post-mortem."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from tests.servers import ServerProcess, kvstore_available, start_etcd, start_kvstore


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        item.crash_failed = True  # type: ignore[attr-defined]
        for srv in getattr(item, "crash_servers", []):
            report.sections.append((f"{srv.kind} stderr (work dir kept: {srv.work_dir})", srv.stderr_tail()))


def _serve(request: pytest.FixtureRequest, srv: ServerProcess) -> Iterator[ServerProcess]:
    request.node.crash_servers = [*getattr(request.node, "crash_servers", []), srv]
    yield srv
    srv.stop(cleanup=not getattr(request.node, "crash_failed", False))


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """Our server with its default journal fsync policy (always)."""
    if not kvstore_available():
        pytest.skip("kvstore.server does not exist yet")
    yield from _serve(request, start_kvstore("crash"))


@pytest.fixture(params=["etcd", "kvstore"])
def either_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """A real etcd, then our server: the same steps must pass on both."""
    if request.param == "kvstore" and not kvstore_available():
        pytest.skip("kvstore.server does not exist yet")
    srv = start_etcd("crash-state") if request.param == "etcd" else start_kvstore("crash-state")
    yield from _serve(request, srv)
