"""Several members on one replicated journal: real processes on loopback.

Three journal nodes (AZs a, b, c) and two etcd-compatible members tail the
same log. Any member serves any request; reads are linearizable across
members; a journal node can die without losing an acknowledged write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from tests.servers import JournalNodes, ServerProcess, members_on_journal


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[JournalNodes, ServerProcess, ServerProcess]]:
    with members_on_journal("kvstore-cluster-", {"m1": {}, "m2": {}}) as (nodes, members):
        yield nodes, members["m1"], members["m2"]


def kv(member: ServerProcess) -> rpc.KVStub:
    return rpc.KVStub(member.channel())


def put(member: ServerProcess, key: bytes, value: bytes) -> pb.PutResponse:
    return kv(member).Put(pb.PutRequest(key=key, value=value), timeout=20)


def get(member: ServerProcess, key: bytes) -> pb.RangeResponse:
    return kv(member).Range(pb.RangeRequest(key=key), timeout=20)


def test_write_on_one_member_is_read_on_the_other(cluster: tuple[JournalNodes, ServerProcess, ServerProcess]) -> None:
    _, m1, m2 = cluster
    for i in range(20):
        resp = put(m1 if i % 2 else m2, b"/rw/k", b"%d" % i)
        other = get(m2 if i % 2 else m1, b"/rw/k")  # linearizable: must see the write just acknowledged
        assert other.kvs[0].value == b"%d" % i
        assert other.kvs[0].mod_revision == resp.header.revision


def test_compare_and_swap_from_both_members_loses_no_update(
    cluster: tuple[JournalNodes, ServerProcess, ServerProcess],
) -> None:
    _, m1, m2 = cluster
    put(m1, b"/cas/counter", b"0")
    per_member = 15

    def increment(member: ServerProcess) -> None:
        done = 0
        while done < per_member:
            cur = get(member, b"/cas/counter").kvs[0]
            txn = pb.TxnRequest(
                compare=[
                    pb.Compare(
                        key=cur.key, target=pb.Compare.MOD, result=pb.Compare.EQUAL, mod_revision=cur.mod_revision
                    )
                ],
                success=[pb.RequestOp(request_put=pb.PutRequest(key=cur.key, value=b"%d" % (int(cur.value) + 1)))],
            )
            if kv(member).Txn(txn, timeout=20).succeeded:
                done += 1

    threads = [threading.Thread(target=increment, args=(m,)) for m in (m1, m2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert get(m1, b"/cas/counter").kvs[0].value == b"%d" % (2 * per_member)


def test_watch_on_one_member_sees_writes_through_the_other(
    cluster: tuple[JournalNodes, ServerProcess, ServerProcess],
) -> None:
    _, m1, m2 = cluster
    start = put(m1, b"/watch/start", b"x").header.revision + 1
    for i in range(5):
        put(m1, b"/watch/k%d" % i, b"v")
    requests = iter(
        [
            pb.WatchRequest(
                create_request=pb.WatchCreateRequest(key=b"/watch/k", range_end=b"/watch/l", start_revision=start)
            )
        ]
    )
    stream = rpc.WatchStub(m2.channel()).Watch(requests, timeout=20)
    seen: list[int] = []
    for resp in stream:
        seen.extend(ev.kv.mod_revision for ev in resp.events)
        if len(seen) >= 5:
            break
    stream.cancel()
    assert seen == list(range(start, start + 5))


def test_journal_node_failure_loses_nothing(cluster: tuple[JournalNodes, ServerProcess, ServerProcess]) -> None:
    nodes, m1, m2 = cluster
    acked: dict[bytes, int] = {}
    for i in range(10):
        acked[b"/fail/%d" % i] = put(m1, b"/fail/%d" % i, b"v").header.revision
    nodes.kill("a")  # whichever role it had
    deadline = time.monotonic() + 30
    for i in range(10, 30):
        while True:
            try:
                acked[b"/fail/%d" % i] = put(m2 if i % 2 else m1, b"/fail/%d" % i, b"v").header.revision
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "writes did not resume after one journal node died"
                time.sleep(0.2)
    nodes.start("a")
    for member in (m1, m2):
        for key, rev in acked.items():
            assert get(member, key).kvs[0].mod_revision == rev


def test_lease_expiry_is_seen_by_every_member(cluster: tuple[JournalNodes, ServerProcess, ServerProcess]) -> None:
    _, m1, m2 = cluster
    lease = rpc.LeaseStub(m1.channel()).LeaseGrant(pb.LeaseGrantRequest(TTL=2), timeout=20)
    kv(m1).Put(pb.PutRequest(key=b"/lease/k", value=b"v", lease=lease.ID), timeout=20)
    assert get(m2, b"/lease/k").count == 1
    deadline = time.monotonic() + 20
    while get(m2, b"/lease/k").count:
        assert time.monotonic() < deadline, "the leased key outlived its lease"
        time.sleep(0.2)
    ttl = rpc.LeaseStub(m2.channel()).LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease.ID), timeout=20)
    assert ttl.TTL == -1
