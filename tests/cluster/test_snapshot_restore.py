"""`etcdctl snapshot save` against our server gives a file that seeds a new server."""

from __future__ import annotations

import os
import subprocess

from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from tests.etcdctl.ctl import ETCDCTL
from tests.servers import make_temp_dir, start_kvstore


def test_snapshot_saved_by_etcdctl_seeds_a_new_server() -> None:
    source = start_kvstore("snap-src")
    try:
        kv = rpc.KVStub(source.channel())
        for i in range(50):
            kv.Put(pb.PutRequest(key=b"/snap/%02d" % i, value=b"v%d" % i), timeout=10)
        kv.DeleteRange(pb.DeleteRangeRequest(key=b"/snap/07"), timeout=10)
        lease = rpc.LeaseStub(source.channel()).LeaseGrant(pb.LeaseGrantRequest(TTL=3600), timeout=10)
        kv.Put(pb.PutRequest(key=b"/snap/leased", value=b"x", lease=lease.ID), timeout=10)
        before = kv.Range(pb.RangeRequest(key=b"/snap/", range_end=b"/snap0"), timeout=10)
        path = make_temp_dir("kvstore-snapshot-") / "backup.db"
        out = subprocess.run(
            [ETCDCTL, f"--endpoints={source.endpoint}", "snapshot", "save", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, ETCDCTL_API="3"),
        )
        assert out.returncode == 0, out.stderr
    finally:
        source.stop()

    restored = start_kvstore("snap-dst", extra_args=["--restore-snapshot", str(path)])
    try:
        kv = rpc.KVStub(restored.channel())
        after = kv.Range(pb.RangeRequest(key=b"/snap/", range_end=b"/snap0"), timeout=10)
        assert list(after.kvs) == list(before.kvs)
        assert after.header.revision == before.header.revision
        ttl = rpc.LeaseStub(restored.channel()).LeaseTimeToLive(
            pb.LeaseTimeToLiveRequest(ID=lease.ID, keys=True), timeout=10
        )
        assert list(ttl.keys) == [b"/snap/leased"]
        assert (
            kv.Put(pb.PutRequest(key=b"/snap/new", value=b"n"), timeout=10).header.revision
            == before.header.revision + 1
        )
        # The restored state survives a restart with its tmpfs state file gone (journal snapshot + replay).
        restored.stop(cleanup=False)
        for leftover in (restored.work_dir / "state").glob("*"):
            leftover.unlink()
        restored.start()
        again = rpc.KVStub(restored.channel()).Range(pb.RangeRequest(key=b"/snap/new"), timeout=10)
        assert again.kvs[0].mod_revision == before.header.revision + 1
    finally:
        restored.stop()
