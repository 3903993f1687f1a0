"""`kvstore serve`'s default --workers: one process per usable core; `--workers 1` is one process.

The suite's KVSTORE_TEST_WORKERS is taken away here: these tests are about what a user who gives
no --workers gets.
"""

from __future__ import annotations

import os
import urllib.request

import pytest

from kvstore.flags import apply_env_defaults
from kvstore.server import build_parser, cgroup_cpu_limit, check_workers, usable_cores
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from tests.servers import TEST_WORKERS_ENV, start_kvstore
from tests.workers.test_workers import WAIT_S, children, front_ends_serving, wait_for


def workers_for(argv: list[str], environ: dict[str, str] | None = None) -> int:
    parser = build_parser()
    apply_env_defaults(parser, environ or {})
    args = parser.parse_args(argv)
    check_workers(args)
    workers: int = args.workers
    return workers


def test_the_default_is_the_usable_cores_and_a_given_number_wins() -> None:
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))
    assert workers_for([]) == usable_cores()
    assert workers_for(["--workers", "1"]) == 1
    assert workers_for([], {"ETCD_WORKERS": "3"}) == 3
    assert workers_for(["--workers", "1"], {"ETCD_WORKERS": "3"}) == 1
    with pytest.raises(SystemExit, match="at least 1"):
        workers_for(["--workers", "0"])


def test_a_cgroup_cpu_quota_caps_the_cores() -> None:
    assert cgroup_cpu_limit("max 100000\n") is None  # no quota
    assert cgroup_cpu_limit("200000 100000\n") == 2  # docker run --cpus 2
    assert cgroup_cpu_limit("150000 100000") == 1  # --cpus 1.5: whole CPUs
    assert cgroup_cpu_limit("50000 100000") == 1  # under one CPU: still one process
    assert cgroup_cpu_limit("garbage") is None


def serves(srv_url: str, kv: rpc.KVStub) -> None:
    put = kv.Put(pb.PutRequest(key=b"/default/k", value=b"v"), timeout=WAIT_S)
    got = kv.Range(pb.RangeRequest(key=b"/default/k"), timeout=WAIT_S)
    assert [(k.value, k.mod_revision) for k in got.kvs] == [(b"v", put.header.revision)]
    with urllib.request.urlopen(f"{srv_url}/health", timeout=WAIT_S) as resp:
        assert b'"health":"true"' in resp.read().replace(b" ", b"")


def test_a_member_without_workers_runs_one_process_per_usable_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TEST_WORKERS_ENV, raising=False)
    srv = start_kvstore("default-workers")
    try:
        assert srv.proc is not None
        cores = usable_cores()
        wait_for(lambda: front_ends_serving(srv) == cores - 1, f"{cores - 1} front ends to serve")
        assert len(children(srv.proc.pid)) == cores - 1
        serves(srv.client_url, rpc.KVStub(srv.channel()))
    finally:
        srv.stop()


def test_workers_1_is_the_single_process_member() -> None:
    srv = start_kvstore("one-worker", {"workers": 1})
    try:
        assert srv.proc is not None
        serves(srv.client_url, rpc.KVStub(srv.channel()))
        assert children(srv.proc.pid) == []
        assert front_ends_serving(srv) == 0
    finally:
        srv.stop()


def thread_cpus(pid: int) -> set[frozenset[int]]:
    """The CPU masks of a process's threads."""
    return {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}


def test_one_process_per_cpu_pins_each_to_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TEST_WORKERS_ENV, raising=False)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or usable_cores() != len(cpus):
        pytest.skip("needs 2 or more CPUs and no smaller CPU quota")
    srv = start_kvstore("pinned-workers")
    try:
        assert srv.proc is not None
        wait_for(lambda: front_ends_serving(srv) == len(cpus) - 1, "every front end to serve")
        masks = [thread_cpus(srv.proc.pid)] + [thread_cpus(pid) for pid in children(srv.proc.pid)]
        # Every thread of a process on one CPU, every process on its own, the member's on the first.
        assert all(len(m) == 1 and len(next(iter(m))) == 1 for m in masks), masks
        placed = [min(next(iter(m))) for m in masks]
        assert placed[0] == cpus[0] and sorted(placed) == cpus, placed
        serves(srv.client_url, rpc.KVStub(srv.channel()))
    finally:
        srv.stop()
    srv = start_kvstore("unpinned-workers", {"worker-cpu-affinity": "off"})
    try:
        assert srv.proc is not None
        wait_for(lambda: front_ends_serving(srv) == len(cpus) - 1, "every front end to serve")
        assert thread_cpus(srv.proc.pid) == {frozenset(cpus)}
    finally:
        srv.stop()
