"""The tmpfs backend through a real server: sizes, compaction, defragment, a 20 GiB quota.

dbSize is the state file's real size and dbSizeInUse its pages in use (as etcd reports bbolt's);
compaction frees pages in the background; defragment gives them back (the file shrinks) and keeps
every key; a 20 GiB quota starts and serves (the map is sparse).
"""

from __future__ import annotations

import time

from kvstore.mvcc.backend import STATE_FILE
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from tests.servers import start_kvstore

WAIT_S = 30.0
VALUE = b"x" * 2000


def test_defragment_shrinks_the_state_file_and_keeps_the_data() -> None:
    srv = start_kvstore("defrag")
    try:
        kv, maintenance = rpc.KVStub(srv.channel()), rpc.MaintenanceStub(srv.channel())
        for start in range(0, 3000, 100):
            puts = [pb.PutRequest(key=b"/d/%05d" % i, value=VALUE) for i in range(start, start + 100)]
            ops = [pb.RequestOp(request_put=p) for p in puts]
            kv.Txn(pb.TxnRequest(success=ops), timeout=WAIT_S)
        kv.Put(pb.PutRequest(key=b"/keep", value=b"kept"), timeout=WAIT_S)
        kv.DeleteRange(pb.DeleteRangeRequest(key=b"/d/", range_end=b"/d0"), timeout=WAIT_S)
        revision = kv.Range(pb.RangeRequest(key=b"/keep"), timeout=WAIT_S).header.revision
        full = maintenance.Status(pb.StatusRequest(), timeout=WAIT_S)
        state_file = srv.work_dir / "state" / STATE_FILE
        assert full.dbSize == state_file.stat().st_size
        assert full.dbSizeInUse <= full.dbSize
        kv.Compact(pb.CompactionRequest(revision=revision), timeout=WAIT_S)
        deadline = time.monotonic() + WAIT_S
        while maintenance.Status(pb.StatusRequest(), timeout=WAIT_S).dbSizeInUse > full.dbSize // 4:
            assert time.monotonic() < deadline, "compaction freed no pages"
            time.sleep(0.1)
        maintenance.Defragment(pb.DefragmentRequest(), timeout=WAIT_S)
        after = maintenance.Status(pb.StatusRequest(), timeout=WAIT_S)
        assert after.dbSize < full.dbSize // 4, (full.dbSize, after.dbSize)
        assert after.dbSize == state_file.stat().st_size
        assert after.dbSizeInUse <= after.dbSize
        got = kv.Range(pb.RangeRequest(key=b"/", range_end=b"0"), timeout=WAIT_S)
        assert [(k.key, k.value) for k in got.kvs] == [(b"/keep", b"kept")]
        assert got.header.revision == revision
        # writes go on after the swap, and survive a restart
        assert kv.Put(pb.PutRequest(key=b"/after", value=b"a"), timeout=WAIT_S).header.revision == revision + 1
        srv.kill()
        srv.start()
        got = rpc.KVStub(srv.channel()).Range(pb.RangeRequest(key=b"/", range_end=b"0"), timeout=WAIT_S)
        assert [k.key for k in got.kvs] == [b"/after", b"/keep"]
    finally:
        srv.stop()


def test_a_20_gib_quota_starts_and_serves() -> None:
    quota = 20 << 30
    srv = start_kvstore("quota20", flags={"quota-backend-bytes": quota})
    try:
        rpc.KVStub(srv.channel()).Put(pb.PutRequest(key=b"k", value=b"v"), timeout=WAIT_S)
        status = rpc.MaintenanceStub(srv.channel()).Status(pb.StatusRequest(), timeout=WAIT_S)
        assert status.dbSizeQuota == quota
        assert 0 < status.dbSize < 1 << 20  # the map is reserved address space, not memory
    finally:
        srv.stop()
