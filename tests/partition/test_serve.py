"""`kvstore serve --partitions kube` as real processes: on a local journal and on 3 journal nodes.

Each partition is an independent etcd: its own revisions and watch history; `kube-flags`
names every partition's URL in kube-apiserver's syntax; kill -9 of one member leaves the
others serving (and the supervisor brings it back); no member outlives the supervisor.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bench.journal_procs import ProcCluster
from kvstore.partition.plan import kube_plan
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from tests.partition.procs import Partitioned, alive
from tests.partition.test_plan import parse_flags
from tests.servers import make_temp_dir

# One key per partition, as kube-apiserver would write it.
KEYS = {
    "default": b"/registry/configmaps/default/c",
    "events": b"/registry/events/default/e",
    "leases": b"/registry/leases/kube-node-lease/node-1",
    "pods": b"/registry/pods/default/p",
    "nodes": b"/registry/minions/node-1",
}


@pytest.fixture(scope="module", params=["local", "journal-3"])
def kube(request: pytest.FixtureRequest) -> Iterator[Partitioned]:
    nodes: ProcCluster | None = None
    extra: tuple[str, ...] = ()
    if request.param == "journal-3":
        base: Path = make_temp_dir("kvstore-pt-journal-")
        nodes = ProcCluster(base)
        nodes.start()
        extra = ("--journal-endpoints", ",".join(nodes.endpoints))
    srv = Partitioned("kube", extra, name=f"kube-{request.param}")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        if nodes is not None:
            nodes.stop()


def put(srv: Partitioned, key: bytes, value: bytes = b"v") -> pb.PutResponse:
    part = srv.plan.partition_for(key).name
    return srv.kv(part).Put(pb.PutRequest(key=key, value=value), timeout=20)


def revision(srv: Partitioned, partition: str) -> int:
    return int(srv.kv(partition).Range(pb.RangeRequest(key=b"x"), timeout=20).header.revision)


def test_each_partition_has_its_own_revisions(kube: Partitioned) -> None:
    before = {p: revision(kube, p) for p in KEYS}
    for _ in range(3):
        put(kube, KEYS["leases"])
    put(kube, KEYS["pods"])
    after = {p: revision(kube, p) for p in KEYS}
    assert after["leases"] == before["leases"] + 3
    assert after["pods"] == before["pods"] + 1
    for p in ("default", "events", "nodes"):
        assert after[p] == before[p]
    # A partition is a full keyspace: a key outside its prefixes is served, not refused.
    resp = kube.kv("nodes").Put(pb.PutRequest(key=b"/elsewhere", value=b"x"), timeout=20)
    assert resp.header.revision == after["nodes"] + 1
    assert not kube.kv("default").Range(pb.RangeRequest(key=b"/elsewhere"), timeout=20).kvs


def test_a_watch_on_one_partition_sees_only_its_own_events(kube: Partitioned) -> None:
    requests: queue.Queue[pb.WatchRequest | None] = queue.Queue()
    requests.put(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"\0", range_end=b"\0")))

    def gen() -> Iterator[pb.WatchRequest]:
        while (r := requests.get()) is not None:
            yield r

    stream = rpc.WatchStub(kube.channel("pods")).Watch(gen(), timeout=60)
    seen: list[bytes] = []
    created = threading.Event()
    done = threading.Event()

    def read() -> None:
        for resp in stream:
            if resp.created:
                created.set()
            for ev in resp.events:
                seen.append(ev.kv.key)
                if ev.kv.key == b"/registry/pods/default/last":
                    done.set()
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert created.wait(20)
    for part in ("default", "events", "leases", "nodes"):
        put(kube, KEYS[part])
    put(kube, KEYS["pods"])
    put(kube, b"/registry/pods/default/last")
    assert done.wait(20), seen
    requests.put(None)
    stream.cancel()
    assert seen == [KEYS["pods"], b"/registry/pods/default/last"]


def test_kube_flags_name_every_partition_url(kube: Partitioned) -> None:
    out = kube.run_cli("kube-flags")
    assert out.returncode == 0, out.stderr
    servers, overrides = parse_flags(out.stdout.splitlines())
    plan = kube.plan
    assert servers == [kube.url("default")]
    for part in plan.partitions[1:]:
        for resource in part.resource_names:
            assert overrides[resource] == [kube.url(part.name)]
    assert set(overrides) == {"/events", "events.k8s.io/events", "coordination.k8s.io/leases", "/pods", "/nodes"}
    # Every URL named is a live etcd endpoint of the partition the plan says.
    for resource, urls in overrides.items():
        part = next(p for p in plan.partitions if resource in p.resource_names)
        key = KEYS[part.name]
        with grpc.insecure_channel(urls[0].split("://")[1]) as ch:
            rpc.KVStub(ch).Put(pb.PutRequest(key=key, value=b"via-flags"), timeout=20)
        assert kube.kv(part.name).Range(pb.RangeRequest(key=key), timeout=20).kvs[0].value == b"via-flags"


def test_partitions_status_has_one_row_per_partition(kube: Partitioned) -> None:
    put(kube, KEYS["events"])
    out = kube.run_cli("partitions", "status")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [line for line in out.stdout.splitlines() if "http://127.0.0.1:" in line]
    assert len(rows) == len(kube_plan().partitions)
    for part in kube.plan.partitions:
        row = next(r for r in rows if kube.url(part.name) in r)
        assert part.name in row
        assert f" {revision(kube, part.name)} " in row
        assert "GiB" in row and "-" in row


def test_kill_9_of_one_member_leaves_the_others_serving(kube: Partitioned) -> None:
    victim = kube.member_pid("events")
    rev_events = revision(kube, "events")
    os.kill(victim, signal.SIGKILL)
    for part in ("default", "leases", "pods", "nodes"):
        put(kube, KEYS[part])
    with pytest.raises(grpc.RpcError):
        with grpc.insecure_channel(kube.target("events")) as ch:
            rpc.KVStub(ch).Range(pb.RangeRequest(key=b"x"), timeout=0.5)
    # The supervisor restarts it; nothing acknowledged before the kill is lost.
    kube.close_channels()
    kube.wait_ready(["events"])
    assert kube.member_pid("events") != victim
    assert revision(kube, "events") == rev_events


def test_no_member_outlives_the_supervisor(tmp_path: Path) -> None:
    for how in ("SIGTERM", "SIGKILL"):
        srv = Partitioned("kube", ("--journal-fsync", "never"), name="pdeath").start()
        pids = srv.member_pids()
        assert len(pids) == len(kube_plan().partitions)
        assert srv.proc is not None
        if how == "SIGKILL":
            srv.proc.kill()  # no goodbye: the kernel's parent-death signal stops the members
            srv.proc.wait()
        else:
            assert srv.stop(cleanup=False) == 0
        deadline = time.monotonic() + 20
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p for p in pids if alive(p)]
        srv.stop()
        assert not left, f"{how}: members still running: {left}"


def test_bench_kube_profile_routes_each_operation_as_kube_apiserver(kube: Partitioned, tmp_path: Path) -> None:
    before = {p.name: revision(kube, p.name) for p in kube.plan.partitions}
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "kvstore", "bench", "kube", "--partitions", "kube", "--endpoints", kube.url("default"),
         "--total", "300", "--clients", "4", "--kube-nodes", "10", "--kube-pods", "50", "--json", str(out), "--quiet"],
        capture_output=True, text=True, env=kube.env(), timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["errors_total"] == 0
    after = {p.name: revision(kube, p.name) for p in kube.plan.partitions}
    # Leases renewals, pods and events each landed in their own partition; nothing in the default one
    # (the profile writes no other resource) and nothing in nodes (it renews leases, not Node objects).
    for moved in ("events", "leases", "pods"):
        assert after[moved] > before[moved], moved
    assert after["default"] == before["default"] and after["nodes"] == before["nodes"]
    # Every key the profile wrote is in the partition the plan routes it to.
    for part in kube.plan.partitions:
        resp = kube.kv(part.name).Range(pb.RangeRequest(key=b"\0", range_end=b"\0", keys_only=True), timeout=20)
        for kv in resp.kvs:
            if kv.key.startswith(b"/registry/"):
                assert kube.plan.partition_for(kv.key).name == part.name, kv.key


def test_a_member_that_cannot_start_stops_the_whole_plan() -> None:
    srv = Partitioned("kube", ("--journal-fsync", "never"), name="busy-port")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", int(srv.target("leases").rsplit(":", 1)[1])))
        with pytest.raises(RuntimeError, match="supervisor exited with 1"):
            srv.start()
    assert "partition leases: member exited" in srv.log_tail()
    pids = srv.member_pids()
    srv.stop()
    assert pids == []
