"""A member whose journal is unreachable says so: /health false, etcd's errors, no hang; then recovers.

Real processes: three journal nodes, one member. The journal nodes are frozen
(SIGSTOP: connections stay open, nothing answers, the gray failure), then
resumed.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from tests.servers import JournalNodes, ServerProcess, make_temp_dir, start_kvstore
from tests.workers.test_workers import CONNECTIONS, own_channel

WAIT_S = 30.0  # generous bounds on waiting for a state change; no timing is asserted


def health(member: ServerProcess) -> tuple[int, dict[str, str]]:
    url = f"{member.metrics_url}/health"  # type: ignore[attr-defined]
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_health(member: ServerProcess, status: int) -> dict[str, str]:
    deadline = time.monotonic() + WAIT_S
    while True:
        code, body = health(member)
        if code == status:
            return body
        assert time.monotonic() < deadline, f"/health stayed {code} {body}"
        time.sleep(0.2)


@pytest.fixture
def member_and_nodes() -> Iterator[tuple[ServerProcess, JournalNodes]]:
    nodes = JournalNodes(make_temp_dir("kvstore-unreachable-"))
    for n in "abc":
        nodes.start(n)
    member = start_kvstore("unreachable", extra_args=["--journal-endpoints", nodes.endpoints])
    try:
        yield member, nodes
    finally:
        for proc in nodes.procs.values():
            proc.send_signal(signal.SIGCONT)
        member.stop()
        nodes.stop_all()


def test_member_with_frozen_journal_answers_errors_and_health_false(
    member_and_nodes: tuple[ServerProcess, JournalNodes],
) -> None:
    member, nodes = member_and_nodes
    kv = rpc.KVStub(member.channel())
    kv.Put(pb.PutRequest(key=b"/u/k", value=b"1"), timeout=WAIT_S)
    assert wait_health(member, 200) == {"health": "true", "reason": ""}
    for proc in nodes.procs.values():
        proc.send_signal(signal.SIGSTOP)
    assert wait_health(member, 503) == {"health": "false", "reason": "RAFT NO LEADER"}
    # etcd's /health?serializable=true does not ask for a leader.
    url = f"{member.metrics_url}/health?serializable=true"  # type: ignore[attr-defined]
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
    # Nothing that needs the journal can be answered: etcd's request timeout error, well before the
    # client's own deadline, from every process of the member (connections land on any of them).
    read_only_txn = pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"/u/k"))])
    channels = [own_channel(member) for _ in range(CONNECTIONS)]
    try:
        calls = []
        for ch in channels:
            stub = rpc.KVStub(ch)
            calls += [
                stub.Put.future(pb.PutRequest(key=b"/u/k", value=b"2"), timeout=60),
                stub.Range.future(pb.RangeRequest(key=b"/u/k"), timeout=60),  # linearizable: needs the journal
                stub.Txn.future(read_only_txn, timeout=60),  # linearizable too
            ]
        for call in calls:
            assert (call.code(), call.details()) == (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out")
    finally:
        for ch in channels:
            ch.close()
    # Serializable reads keep working from local state.
    got = kv.Range(pb.RangeRequest(key=b"/u/k", serializable=True), timeout=10)
    assert got.kvs[0].value == b"1"
    for proc in nodes.procs.values():
        proc.send_signal(signal.SIGCONT)
    assert wait_health(member, 200)["health"] == "true"
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            kv.Put(pb.PutRequest(key=b"/u/k", value=b"3"), timeout=10)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, "writes did not come back after the journal did"
    assert kv.Range(pb.RangeRequest(key=b"/u/k"), timeout=10).kvs[0].value in (b"2", b"3")
