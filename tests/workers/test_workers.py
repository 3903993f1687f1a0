"""`kvstore serve --workers N` as one unit: front ends share the client URL, restart alone, stop with it.

Each client channel below gets a connection of its own (a local subchannel pool), so the kernel's
SO_REUSEPORT spreads them over the member's process and its front ends.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from kvstore.server import PID_FILE
from kvstore.workers.supervisor import metrics_dir_for
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from tests.servers import ServerProcess, start_kvstore

WAIT_S = 30.0
CONNECTIONS = 16  # the chance that all land on one of 2 processes is 2**-15


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def wait_for(predicate: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def front_ends_serving(srv: ServerProcess) -> int:
    """Front ends that said they listen (their log line), over the server's life."""
    return len(re.findall(r"kvstore\.workers: front end \d+ serving", srv.log_path.read_text()))


def own_channel(srv: ServerProcess) -> grpc.Channel:
    return srv.new_channel([("grpc.use_local_subchannel_pool", 1)])


def front_end_ranges(srv: ServerProcess) -> float:
    """Serializable ranges the front ends answered themselves (their multiprocess counter files)."""
    total = 0.0
    for family in MultiProcessCollector(None, path=metrics_dir_for(str(srv.work_dir / "state"))).collect():
        total += sum(s.value for s in family.samples if s.name == "etcd_mvcc_range_total")
    return total


def front_end_handled(srv: ServerProcess, method: str) -> float:
    """KV calls of `method` the front ends answered themselves."""
    total = 0.0
    for family in MultiProcessCollector(None, path=metrics_dir_for(str(srv.work_dir / "state"))).collect():
        total += sum(s.value for s in family.samples
                     if s.name == "grpc_server_handled_total" and s.labels.get("grpc_method") == method)  # fmt: skip
    return total


def metric(srv: ServerProcess, sample: str) -> float:
    with urllib.request.urlopen(f"{srv.client_url}/metrics", timeout=WAIT_S) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[1])
    raise AssertionError(f"{sample} not in /metrics")


@pytest.fixture
def two_workers() -> Iterator[ServerProcess]:
    srv = start_kvstore("workers", {"workers": 2})
    assert srv.proc is not None
    wait_for(lambda: front_ends_serving(srv) == 1, "the front end to serve")
    rpc.KVStub(srv.channel()).Range(pb.RangeRequest(key=b"x", serializable=True), timeout=WAIT_S)
    yield srv
    srv.stop()


def test_every_connection_reads_its_writes_and_front_ends_serve_reads(two_workers: ServerProcess) -> None:
    srv = two_workers
    channels = [own_channel(srv) for _ in range(CONNECTIONS)]
    try:
        kvs = [rpc.KVStub(ch) for ch in channels]
        for i, kv in enumerate(kvs):
            put = kv.Put(pb.PutRequest(key=b"/rw/%d" % i, value=b"v%d" % i), timeout=WAIT_S)
            # A serializable read on another connection (maybe another process) sees the write at once.
            other = kvs[(i + 1) % len(kvs)]
            got = other.Range(pb.RangeRequest(key=b"/rw/%d" % i, serializable=True), timeout=WAIT_S)
            assert [kv.value for kv in got.kvs] == [b"v%d" % i]
            assert got.header.revision >= put.header.revision
            assert got.header.member_id == put.header.member_id and got.header.cluster_id == put.header.cluster_id
        assert front_end_ranges(srv) > 0, "no serializable range reached the front end"
        # One /metrics for the member: the front ends' ranges are in it, counted once.
        ranges = metric(srv, "etcd_mvcc_range_total")
        served = metric(srv, 'grpc_server_handled_total{grpc_code="OK",grpc_method="Range",'
                        'grpc_service="etcdserverpb.KV",grpc_type="unary"}')  # fmt: skip
        assert ranges == served == CONNECTIONS + 1  # + the fixture's
    finally:
        for ch in channels:
            ch.close()


def test_linearizable_reads_in_front_ends_see_every_acknowledged_write(two_workers: ServerProcess) -> None:
    """A front end answers linearizable ranges from its view after a barrier: a write acknowledged
    through any connection is in every later linearizable read, through any connection."""
    srv = two_workers
    channels = [own_channel(srv) for _ in range(CONNECTIONS)]
    try:
        kvs = [rpc.KVStub(ch) for ch in channels]
        before = front_end_ranges(srv)
        for i, kv in enumerate(kvs):
            put = kv.Put(pb.PutRequest(key=b"/lin/%d" % i, value=b"v%d" % i), timeout=WAIT_S)
            for other in kvs:
                got = other.Range(pb.RangeRequest(key=b"/lin/%d" % i), timeout=WAIT_S)
                assert [kv.value for kv in got.kvs] == [b"v%d" % i]
                assert got.header.revision >= put.header.revision
        assert front_end_ranges(srv) - before > 0, "no linearizable range reached the front end"
        # Bad input gets the member's answer, from either process.
        refusals = set()
        for kv in kvs:
            with pytest.raises(grpc.RpcError) as refused:
                kv.Range(pb.RangeRequest(key=b""), timeout=WAIT_S)
            refusals.add((refused.value.code(), refused.value.details()))
        assert refusals == {(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")}, refusals
    finally:
        for ch in channels:
            ch.close()


def test_front_ends_answer_writes_as_the_member_does(two_workers: ServerProcess) -> None:
    """Put, DeleteRange and Txn proposed by a front end: the applier's answers, its errors, one order."""
    srv = two_workers
    channels = [own_channel(srv) for _ in range(CONNECTIONS)]
    try:
        kvs = [rpc.KVStub(ch) for ch in channels]
        revisions = []
        for i, kv in enumerate(kvs):
            put = kv.Put(pb.PutRequest(key=b"/w/%d" % i, value=b"v", prev_kv=True), timeout=WAIT_S)
            revisions.append(put.header.revision)
            again = kv.Put(pb.PutRequest(key=b"/w/%d" % i, value=b"v2", prev_kv=True), timeout=WAIT_S)
            assert again.prev_kv.value == b"v" and again.header.revision == put.header.revision + 1
            txn = kv.Txn(pb.TxnRequest(
                compare=[pb.Compare(key=b"/w/%d" % i, target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=b"v2")],
                success=[pb.RequestOp(request_put=pb.PutRequest(key=b"/w/%d" % i, value=b"v3"))],
            ), timeout=WAIT_S)  # fmt: skip
            assert txn.succeeded and txn.header.revision == again.header.revision + 1
            assert txn.header.member_id == put.header.member_id != 0
            # The applier's error (no such lease) and a servicer's check (no key), from either process.
            with pytest.raises(grpc.RpcError) as no_lease:
                kv.Put(pb.PutRequest(key=b"/w/l", value=b"v", lease=12345), timeout=WAIT_S)
            assert (no_lease.value.code(), no_lease.value.details()) == (
                grpc.StatusCode.NOT_FOUND,
                "etcdserver: requested lease not found",
            )
            with pytest.raises(grpc.RpcError) as no_key:
                kv.Put(pb.PutRequest(key=b"", value=b"v"), timeout=WAIT_S)
            assert (no_key.value.code(), no_key.value.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "etcdserver: key is not provided",
            )
        assert len(set(revisions)) == len(revisions)
        deleted = kvs[0].DeleteRange(pb.DeleteRangeRequest(key=b"/w/", range_end=b"/w0"), timeout=WAIT_S)
        assert deleted.deleted == CONNECTIONS
        assert front_end_handled(srv, "Put") > 0 and front_end_handled(srv, "Txn") > 0, "no write reached a front end"
        assert metric(srv, "etcd_mvcc_put_total") == 2 * CONNECTIONS  # counted once, wherever answered
    finally:
        for ch in channels:
            ch.close()


def test_front_ends_answer_lease_calls_as_the_member_does(two_workers: ServerProcess) -> None:
    """LeaseGrant, LeaseRevoke and LeaseKeepAlive proposed by a front end, LeaseTimeToLive and LeaseLeases
    read from its view: the member's answers and errors from every connection, each call counted once
    in the member's /metrics."""
    srv = two_workers
    channels = [own_channel(srv) for _ in range(CONNECTIONS)]
    try:
        for i, ch in enumerate(channels):
            kv, lease = rpc.KVStub(ch), rpc.LeaseStub(ch)
            granted = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60), timeout=WAIT_S)
            assert granted.ID > 0 and granted.TTL == 60 and granted.header.member_id != 0
            named = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30, ID=1000 + i), timeout=WAIT_S)
            assert named.ID == 1000 + i and named.header.revision >= granted.header.revision
            with pytest.raises(grpc.RpcError) as exists:
                lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30, ID=1000 + i), timeout=WAIT_S)
            assert (exists.value.code(), exists.value.details()) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "etcdserver: lease already exists",
            )
            put = kv.Put(pb.PutRequest(key=b"/lease/%d" % i, value=b"v", lease=granted.ID), timeout=WAIT_S)
            renewals = lease.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=granted.ID),
                                                  pb.LeaseKeepAliveRequest(ID=424242)]), timeout=WAIT_S)  # fmt: skip
            renewed, unknown = list(renewals)
            assert (renewed.ID, renewed.TTL) == (granted.ID, 60) and renewed.header.revision >= put.header.revision
            assert renewed.header.member_id == granted.header.member_id
            assert (unknown.ID, unknown.TTL) == (424242, 0)  # etcd answers a lease it does not hold with TTL 0
            ttl = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=granted.ID, keys=True), timeout=WAIT_S)
            assert (ttl.ID, ttl.grantedTTL, ttl.keys) == (granted.ID, 60, [b"/lease/%d" % i]) and 55 <= ttl.TTL <= 60
            assert ttl.header.revision == put.header.revision and ttl.header.member_id == granted.header.member_id
            listed = {s.ID for s in lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=WAIT_S).leases}
            assert {granted.ID, 1000 + i} <= listed
            revoked = lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=granted.ID), timeout=WAIT_S)
            assert revoked.header.revision == put.header.revision + 1  # the attached key's delete
            assert kv.Range(pb.RangeRequest(key=b"/lease/%d" % i), timeout=WAIT_S).kvs == []
            gone_ttl = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=granted.ID), timeout=WAIT_S)
            assert (gone_ttl.TTL, gone_ttl.header.revision) == (-1, revoked.header.revision)
            with pytest.raises(grpc.RpcError) as gone:
                lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=granted.ID), timeout=WAIT_S)
            assert (gone.value.code(), gone.value.details()) == (
                grpc.StatusCode.NOT_FOUND,
                "etcdserver: requested lease not found",
            )
            # A request that does not parse (ID as a length-delimited field): gogoproto's refusal, and the
            # stream's status counted.
            raw_keepalive = ch.stream_stream("/etcdserverpb.Lease/LeaseKeepAlive")
            with pytest.raises(grpc.RpcError) as malformed:
                list(raw_keepalive(iter([b"\x0a\x01x"]), timeout=WAIT_S))
            assert malformed.value.code() == grpc.StatusCode.INTERNAL
            assert malformed.value.details().startswith("grpc: error unmarshalling request"), malformed.value.details()
        for method in ("LeaseGrant", "LeaseRevoke", "LeaseKeepAlive", "LeaseTimeToLive", "LeaseLeases"):
            assert front_end_handled(srv, method) > 0, f"no {method} reached a front end"
        grants = metric(srv, 'grpc_server_handled_total{grpc_code="OK",grpc_method="LeaseGrant",'
                        'grpc_service="etcdserverpb.Lease",grpc_type="unary"}')  # fmt: skip
        streams = metric(srv, 'grpc_server_handled_total{grpc_code="OK",grpc_method="LeaseKeepAlive",'
                         'grpc_service="etcdserverpb.Lease",grpc_type="bidi_stream"}')  # fmt: skip
        refused = metric(srv, 'grpc_server_handled_total{grpc_code="Internal",grpc_method="LeaseKeepAlive",'
                         'grpc_service="etcdserverpb.Lease",grpc_type="bidi_stream"}')  # fmt: skip
        assert (grants, streams, refused) == (2 * CONNECTIONS, CONNECTIONS, CONNECTIONS)  # once, wherever answered
    finally:
        for ch in channels:
            ch.close()


def test_front_ends_answer_compactions_as_the_member_does(two_workers: ServerProcess) -> None:
    """Compact proposed by a front end: the applier's answers and errors from every connection; a
    physical one is the member's (answered once its compactor removed the records)."""
    srv = two_workers
    channels = [own_channel(srv) for _ in range(CONNECTIONS)]
    compacted = "etcdserver: mvcc: required revision has been compacted"
    try:
        for i, ch in enumerate(channels):
            kv = rpc.KVStub(ch)
            put = kv.Put(pb.PutRequest(key=b"/compact/%d" % i, value=b"v"), timeout=WAIT_S)
            done = kv.Compact(pb.CompactionRequest(revision=put.header.revision), timeout=WAIT_S)
            assert done.header.revision == put.header.revision and done.header.member_id == put.header.member_id
            rev = put.header.revision
            for call, request, message in (
                (kv.Compact, pb.CompactionRequest(revision=rev), compacted),
                (kv.Compact, pb.CompactionRequest(revision=rev + 100),
                 "etcdserver: mvcc: required revision is a future revision"),
                (kv.Range, pb.RangeRequest(key=b"/compact/", revision=rev - 1), compacted),
            ):  # fmt: skip
                with pytest.raises(grpc.RpcError) as err:
                    call(request, timeout=WAIT_S)
                assert (err.value.code(), err.value.details()) == (grpc.StatusCode.OUT_OF_RANGE, message)
        last = rpc.KVStub(channels[0]).Put(pb.PutRequest(key=b"/compact/last", value=b"v"), timeout=WAIT_S)
        for ch in channels[:4]:  # a physical one from any connection
            rpc.KVStub(ch).Compact(pb.CompactionRequest(revision=last.header.revision, physical=True), timeout=WAIT_S)
            last = rpc.KVStub(ch).Put(pb.PutRequest(key=b"/compact/last", value=b"v"), timeout=WAIT_S)
        assert front_end_handled(srv, "Compact") > 0, "no Compact reached a front end"
    finally:
        for ch in channels:
            ch.close()


def test_front_ends_answer_read_only_txns_as_the_member_does(two_workers: ServerProcess) -> None:
    """A read-only txn is a read: front ends answer it from their view (after a barrier unless every
    range in it is serializable), with the member's results, header and errors."""
    srv = two_workers
    channels = [own_channel(srv) for _ in range(CONNECTIONS)]
    try:
        kvs = [rpc.KVStub(ch) for ch in channels]
        before = front_end_handled(srv, "Txn")
        txns_before = metric(srv, "etcd_mvcc_txn_total")
        for i, kv in enumerate(kvs):
            key = b"/ro/%d" % i
            put = kv.Put(pb.PutRequest(key=key, value=b"v%d" % i), timeout=WAIT_S)
            for serializable in (False, True):
                other = kvs[(i + 1) % len(kvs)]
                got = other.Txn(pb.TxnRequest(
                    compare=[pb.Compare(key=key, target=pb.Compare.MOD, result=pb.Compare.EQUAL,
                                        mod_revision=put.header.revision)],
                    success=[pb.RequestOp(request_range=pb.RangeRequest(key=key, serializable=serializable))],
                    failure=[pb.RequestOp(request_range=pb.RangeRequest(key=b"/none"))],
                ), timeout=WAIT_S)  # fmt: skip
                assert got.succeeded
                assert [kv.value for kv in got.responses[0].response_range.kvs] == [b"v%d" % i]
                assert got.header.revision >= put.header.revision
                assert got.header.member_id == put.header.member_id != 0
        # No op at all: answered (linearizable, as etcd), at the store's revision.
        empty = kvs[0].Txn(pb.TxnRequest(), timeout=WAIT_S)
        assert empty.succeeded and empty.header.revision >= CONNECTIONS + 1
        served = front_end_handled(srv, "Txn") - before
        assert served > 0, "no read-only txn reached a front end"
        assert metric(srv, "etcd_mvcc_txn_total") - txns_before == 2 * CONNECTIONS + 1  # once, wherever answered
        refusals = set()
        for kv in kvs:
            with pytest.raises(grpc.RpcError) as refused:
                kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=b""))]), timeout=WAIT_S)
            refusals.add((refused.value.code(), refused.value.details()))
        assert refusals == {(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")}, refusals
    finally:
        for ch in channels:
            ch.close()


def test_a_killed_front_end_is_restarted_and_the_other_connections_stay_up(two_workers: ServerProcess) -> None:
    srv = two_workers
    assert srv.proc is not None
    (front_end,) = children(srv.proc.pid)
    channels = [own_channel(srv) for _ in range(CONNECTIONS)]
    try:
        watches = []
        done = threading.Event()

        def requests() -> Iterator[pb.WatchRequest]:
            yield pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"/crash/k"))
            done.wait(WAIT_S)  # the stream stays open (a half-closed watch stream ends)

        for ch in channels:
            call = rpc.WatchStub(ch).Watch(requests(), timeout=WAIT_S)
            assert next(call).created
            watches.append(call)
        os.kill(front_end, signal.SIGKILL)
        # On a connection of its own: the shared one may have been the killed front end's.
        with own_channel(srv) as ch:
            put = rpc.KVStub(ch).Put
            put(pb.PutRequest(key=b"/crash/k", value=b"after"), timeout=WAIT_S, wait_for_ready=True)
        survived = dropped = 0
        for call in watches:
            try:
                resp = next(call)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                dropped += 1
                continue
            assert [e.kv.value for e in resp.events] == [b"after"]
            survived += 1
        assert survived > 0 and dropped > 0, (survived, dropped)
        wait_for(lambda: children(srv.proc.pid) not in ([], [front_end]), "the front end's restart")  # type: ignore[union-attr]
        (restarted,) = children(srv.proc.pid)
        assert restarted != front_end and srv.running
        # The restarted front end serves: every new connection answers.
        for _ in range(CONNECTIONS):
            with own_channel(srv) as ch:
                got = rpc.KVStub(ch).Range(pb.RangeRequest(key=b"/crash/k", serializable=True), timeout=WAIT_S)
                assert [kv.value for kv in got.kvs] == [b"after"]
    finally:
        done.set()
        for ch in channels:
            ch.close()


def test_sigterm_stops_every_process(two_workers: ServerProcess) -> None:
    """The member's one PID file names the process whose SIGTERM stops them all."""
    srv = two_workers
    assert srv.proc is not None
    front_ends = children(srv.proc.pid)
    assert front_ends
    pid_file = srv.work_dir / "data" / PID_FILE
    os.kill(int(pid_file.read_text()), signal.SIGTERM)
    assert srv.proc.wait(WAIT_S) == 0
    assert pid_file.read_text() == ""  # nothing left to signal
    for pid in front_ends:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],  # noqa: E501
                 f"front end {pid} to exit")  # fmt: skip


def test_front_ends_follow_a_defragment(two_workers: ServerProcess) -> None:
    """Defragment replaces the state file: front ends reopen it and keep serving new writes."""
    srv = two_workers
    kv = rpc.KVStub(srv.channel())
    for i in range(200):
        kv.Put(pb.PutRequest(key=b"/defrag/%d" % i, value=b"x" * 1000), timeout=WAIT_S)
    rpc.MaintenanceStub(srv.channel()).Defragment(pb.DefragmentRequest(), timeout=WAIT_S)
    for round_ in range(3):
        kv.Put(pb.PutRequest(key=b"/defrag/after", value=b"%d" % round_), timeout=WAIT_S)
        for _ in range(CONNECTIONS // 2):
            with own_channel(srv) as ch:
                got = rpc.KVStub(ch).Range(pb.RangeRequest(key=b"/defrag/after", serializable=True), timeout=WAIT_S)
                assert [kv.value for kv in got.kvs] == [b"%d" % round_]


def test_a_token_from_one_connection_works_on_every_connection(two_workers: ServerProcess) -> None:
    """Simple tokens live in the member's process; front ends forward every request that carries one."""
    srv = two_workers
    auth = rpc.AuthStub(srv.channel())
    auth.UserAdd(pb.AuthUserAddRequest(name="root", password="pw"), timeout=WAIT_S)
    auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=WAIT_S)
    auth.AuthEnable(pb.AuthEnableRequest(), timeout=WAIT_S)
    token = auth.Authenticate(pb.AuthenticateRequest(name="root", password="pw"), timeout=WAIT_S).token
    rpc.KVStub(srv.channel()).Put(pb.PutRequest(key=b"/auth/k", value=b"v"), metadata=[("token", token)],
                                  timeout=WAIT_S)  # fmt: skip
    refusals = set()
    for _ in range(CONNECTIONS):
        with own_channel(srv) as ch:
            kv = rpc.KVStub(ch)
            got = kv.Range(pb.RangeRequest(key=b"/auth/k", serializable=True), metadata=[("token", token)],
                           timeout=WAIT_S)  # fmt: skip
            assert [kv.value for kv in got.kvs] == [b"v"]
            with pytest.raises(grpc.RpcError) as refused:  # auth is on: no token, no read, on any process
                kv.Range(pb.RangeRequest(key=b"/auth/k", serializable=True), timeout=WAIT_S)
            refusals.add((refused.value.code(), refused.value.details()))
    assert len(refusals) == 1, refusals


def test_a_txn_refused_for_the_quota_is_counted_by_neither_process() -> None:
    """etcd refuses it before the MVCC store sees it: not in etcd_mvcc_txn_total. A front end hands a txn
    near the quota to the member's process, which refuses it; neither may count it."""
    srv = start_kvstore("workers-quota", {"workers": 2, "quota-backend-bytes": 1})
    channels = [own_channel(srv) for _ in range(CONNECTIONS)]
    try:
        for ch in channels:
            with pytest.raises(grpc.RpcError) as full:
                rpc.KVStub(ch).Txn(pb.TxnRequest(
                    success=[pb.RequestOp(request_put=pb.PutRequest(key=b"/q", value=b"v"))]), timeout=WAIT_S)
            assert full.value.details() == "etcdserver: mvcc: database space exceeded"
        assert front_end_handled(srv, "Txn") == 0  # each went on to the member's process
        # A read-only txn is counted, once, wherever answered.
        rpc.KVStub(channels[0]).Txn(pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"/q"))]),
                                    timeout=WAIT_S)  # fmt: skip
        assert metric(srv, "etcd_mvcc_txn_total") == 1
    finally:
        for ch in channels:
            ch.close()
        srv.stop()
