"""What `kvstore serve` sets for its processes before it serves: gRPC core's experiments, CPUs."""

from __future__ import annotations

import pytest

from kvstore.transport import grpc_core
from kvstore.transport.grpc_core import core_environment, grpc_behind_multiplexer
from kvstore.workers import cpus
from kvstore.workers.cpus import pin_process, worker_cpus


def test_the_legacy_listener_is_added_to_the_experiments_the_operator_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grpc_core, "_grpcio_version", lambda: (1, 85))
    assert core_environment({}) == {"GRPC_EXPERIMENTS": "-event_engine_listener"}
    assert core_environment({"GRPC_EXPERIMENTS": "monitoring_experiment"}) == {
        "GRPC_EXPERIMENTS": "monitoring_experiment,-event_engine_listener"
    }
    # The operator's own choice about this experiment wins, either way.
    assert core_environment({"GRPC_EXPERIMENTS": "event_engine_listener"}) == {}
    assert core_environment({"GRPC_EXPERIMENTS": "x, -event_engine_listener"}) == {}


@pytest.mark.parametrize("version", [None, (1, 59), (1, 86), (2, 0)])
def test_a_grpcio_that_may_not_know_the_experiment_gets_nothing(
    monkeypatch: pytest.MonkeyPatch, version: tuple[int, int] | None
) -> None:
    monkeypatch.setattr(grpc_core, "_grpcio_version", lambda: version)
    assert core_environment({}) == {}


def test_processes_are_pinned_only_one_per_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {5, 3})
    assert worker_cpus(2, "auto") == [3, 5]  # the member's process on the first
    assert worker_cpus(2, "off") is None
    assert worker_cpus(1, "auto") is None  # one process: the kernel moves it and grpc's threads freely
    assert worker_cpus(3, "auto") is None  # more processes than CPUs
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert worker_cpus(2, "auto") is None  # fewer: the kernel places them


def test_only_grpc_behind_the_multiplexer_gets_the_legacy_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grpc_core, "_grpcio_version", lambda: (1, 85))
    assert grpc_behind_multiplexer([], {})
    assert grpc_behind_multiplexer(["--listen-client-http-urls="], {})
    assert not grpc_behind_multiplexer(["--listen-client-http-urls=http://127.0.0.1:2380"], {})
    assert not grpc_behind_multiplexer(["--name", "a", "--listen-client-http-urls", "http://127.0.0.1:2380"], {})
    assert not grpc_behind_multiplexer([], {"ETCD_LISTEN_CLIENT_HTTP_URLS": "http://127.0.0.1:2380"})
    tls = ["--listen-client-urls=https://127.0.0.1:2379", "--listen-client-http-urls=http://127.0.0.1:2380"]
    assert grpc_behind_multiplexer(tls, {})  # the multiplexer terminates TLS
    assert core_environment({}, behind_multiplexer=False) == {}


def test_a_cpu_the_process_may_not_use_leaves_it_unpinned(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(tid: int, mask: set[int]) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(cpus.os, "sched_setaffinity", refuse)
    pin_process(7)  # a warning, and the server goes on
