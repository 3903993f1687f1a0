"""Leases and compaction across kill -9: the same steps against a real etcd and our server.

A lease granted before the crash still exists after it, with its keys and a TTL no longer than
granted, and keeps working (keep-alive, revoke); a short lease still expires and takes its key;
the compaction point survives (a read below it is refused with etcd's error, a watch below it is
cancelled with compact_revision); revisions continue after it.
"""

from __future__ import annotations

import time

import grpc
import pytest

from proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from tests.servers import ServerProcess

WAIT_S = 20.0
LONG_TTL_S = 600
SHORT_TTL_S = 3
COMPACTED = "etcdserver: mvcc: required revision has been compacted"


def _watch_once(ch: grpc.Channel, key: bytes, start_revision: int) -> rpc_pb2.WatchResponse:
    """Create a watch and return the first response after `created` (bounded)."""
    create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=key, start_revision=start_revision))
    call = rpc_pb2_grpc.WatchStub(ch).Watch(iter([create]), timeout=WAIT_S)
    try:
        for resp in call:
            if resp.created and not resp.canceled:
                continue
            return resp
        raise AssertionError("watch stream ended without a response")
    finally:
        call.cancel()


def test_leases_and_compaction_survive_kill9(either_server: ServerProcess) -> None:
    server = either_server
    kv = rpc_pb2_grpc.KVStub(server.channel())
    lease = rpc_pb2_grpc.LeaseStub(server.channel())
    long_id = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=LONG_TTL_S), timeout=WAIT_S).ID
    short_id = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=SHORT_TTL_S), timeout=WAIT_S).ID
    kv.Put(rpc_pb2.PutRequest(key=b"/s/long/1", value=b"a", lease=long_id), timeout=WAIT_S)
    kv.Put(rpc_pb2.PutRequest(key=b"/s/long/2", value=b"b", lease=long_id), timeout=WAIT_S)
    kv.Put(rpc_pb2.PutRequest(key=b"/s/short", value=b"c", lease=short_id), timeout=WAIT_S)
    first = kv.Put(rpc_pb2.PutRequest(key=b"/s/k", value=b"v1"), timeout=WAIT_S).header.revision
    compact_at = kv.Put(rpc_pb2.PutRequest(key=b"/s/k", value=b"v2"), timeout=WAIT_S).header.revision
    last = kv.Put(rpc_pb2.PutRequest(key=b"/s/k", value=b"v3"), timeout=WAIT_S).header.revision
    kv.Compact(rpc_pb2.CompactionRequest(revision=compact_at, physical=True), timeout=WAIT_S)

    server.kill()
    server.restart()
    ch = server.channel()
    kv, lease = rpc_pb2_grpc.KVStub(ch), rpc_pb2_grpc.LeaseStub(ch)

    # the long lease and its keys
    ttl = lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=long_id, keys=True), timeout=WAIT_S)
    assert 0 < ttl.TTL <= LONG_TTL_S and ttl.grantedTTL == LONG_TTL_S, ttl
    assert sorted(ttl.keys) == [b"/s/long/1", b"/s/long/2"]
    assert long_id in {item.ID for item in lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=WAIT_S).leases}
    got = kv.Range(rpc_pb2.RangeRequest(key=b"/s/long/1"), timeout=WAIT_S)
    assert got.kvs[0].lease == long_id and got.kvs[0].value == b"a"

    # compaction survived: below it refused, at it readable, a watch below it cancelled
    with pytest.raises(grpc.RpcError) as err:
        kv.Range(rpc_pb2.RangeRequest(key=b"/s/k", revision=first), timeout=WAIT_S)
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE and err.value.details() == COMPACTED
    at = kv.Range(rpc_pb2.RangeRequest(key=b"/s/k", revision=compact_at), timeout=WAIT_S)
    assert at.kvs[0].value == b"v2"
    cancelled = _watch_once(ch, b"/s/k", first)
    assert cancelled.canceled and cancelled.compact_revision == compact_at, cancelled
    resumed = _watch_once(ch, b"/s/k", compact_at)
    assert [(e.kv.value, e.kv.mod_revision) for e in resumed.events][:1] == [(b"v2", compact_at)]
    with pytest.raises(grpc.RpcError) as err:
        kv.Compact(rpc_pb2.CompactionRequest(revision=compact_at), timeout=WAIT_S)
    assert err.value.details() == COMPACTED

    # keep-alive renews the long lease to its full TTL
    renewed = next(iter(lease.LeaseKeepAlive(iter([rpc_pb2.LeaseKeepAliveRequest(ID=long_id)]), timeout=WAIT_S)))
    assert renewed.ID == long_id and renewed.TTL == LONG_TTL_S

    # the short lease still expires, and takes its key (with a revision of its own)
    deadline = time.monotonic() + WAIT_S
    while kv.Range(rpc_pb2.RangeRequest(key=b"/s/short"), timeout=WAIT_S).kvs:
        assert time.monotonic() < deadline, "the short lease never expired after the restart"
        time.sleep(0.1)
    short = lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=short_id), timeout=WAIT_S)
    assert short.TTL == -1

    # revisions continue: the expiry took one, the next put takes the next
    now = kv.Range(rpc_pb2.RangeRequest(key=b"/s/k"), timeout=WAIT_S).header.revision
    assert now == last + 1, f"{now} after the expiry, {last} before the crash"
    assert kv.Put(rpc_pb2.PutRequest(key=b"/s/k", value=b"v4"), timeout=WAIT_S).header.revision == now + 1

    # revoking the long lease deletes both keys in one revision
    lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=long_id), timeout=WAIT_S)
    gone = kv.Range(rpc_pb2.RangeRequest(key=b"/s/long/", range_end=b"/s/long0"), timeout=WAIT_S)
    assert gone.count == 0 and gone.header.revision == now + 2
