"""The tmpfs backend through a real server: sizes, compaction, defragment, a 20 GiB quota.

dbSize is the state file's real size and dbSizeInUse its pages in use (as etcd reports bbolt's);
compaction frees pages in the background; defragment gives them back (the file shrinks) and keeps
every key; a 20 GiB quota starts and serves (the map is sparse).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from kvstore.member import FAULT_DEFRAG_COPY_GATE_ENV
from kvstore.mvcc.backend import STATE_FILE
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from tests.servers import make_temp_dir, start_kvstore

WAIT_S = 30.0
VALUE = b"x" * 2000
WRITES_DURING_COPY = 5


def wait_until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():
        assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s"
        time.sleep(0.01)


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
        # A commit may land between the Status and the stat (a compaction step after the swap): the
        # two agree once nothing is being written.
        wait_until(lambda: maintenance.Status(pb.StatusRequest(), timeout=WAIT_S).dbSize == state_file.stat().st_size,
                   "Status's dbSize equal to the state file's size")  # fmt: skip
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


def test_defragment_while_writing_keeps_every_write() -> None:
    """Writes go on during the copy (applying does not wait for it): the copy catches up from
    the journal before the swap, so every acknowledged write is in the new file, and in it
    after a restart. Compact with physical=true answers once the pages are free (as etcd's).
    The copy is held at a gate (a fault hook) until writes were acknowledged meanwhile."""
    gate = make_temp_dir("defrag-gate-") / "open"
    srv = start_kvstore("defrag-writing", env={FAULT_DEFRAG_COPY_GATE_ENV: str(gate)})
    try:
        kv, maintenance = rpc.KVStub(srv.channel()), rpc.MaintenanceStub(srv.channel())
        for start in range(0, 6000, 100):
            puts = [pb.PutRequest(key=b"/d/%05d" % i, value=VALUE) for i in range(start, start + 100)]
            kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_put=p) for p in puts]), timeout=WAIT_S)
        deleted = kv.DeleteRange(pb.DeleteRangeRequest(key=b"/d/", range_end=b"/d0"), timeout=WAIT_S)
        full = maintenance.Status(pb.StatusRequest(), timeout=WAIT_S)
        kv.Compact(pb.CompactionRequest(revision=deleted.header.revision, physical=True), timeout=WAIT_S)
        assert maintenance.Status(pb.StatusRequest(), timeout=WAIT_S).dbSizeInUse < full.dbSize // 4
        acked: list[int] = []
        stop = threading.Event()

        def write() -> None:
            writer = rpc.KVStub(srv.channel())
            while not stop.is_set():
                i = len(acked)
                writer.Put(pb.PutRequest(key=b"/w/%06d" % i, value=b"%d" % i), timeout=WAIT_S)
                acked.append(i)

        thread = threading.Thread(target=write)
        thread.start()
        try:
            wait_until(lambda: len(acked) >= 20, "writes before the defragment")
            defragment = maintenance.Defragment.future(pb.DefragmentRequest(), timeout=WAIT_S * 4)
            held = Path(f"{gate}.held")
            wait_until(held.exists, "the defragment copy to be taken")
            during = len(acked)
            # The copy is held: writes are applied and answered meanwhile, not held up by it.
            wait_until(lambda: len(acked) >= during + WRITES_DURING_COPY, "writes while the copy is held")
            assert not defragment.done(), "the defragment answered while its copy was held"
            gate.touch()
            defragment.result()
            during = len(acked)
            wait_until(lambda: len(acked) >= during + 20, "writes after the swap")
        finally:
            stop.set()
            thread.join()
        after = maintenance.Status(pb.StatusRequest(), timeout=WAIT_S)
        assert after.dbSize < full.dbSize // 4, (full.dbSize, after.dbSize)
        got = kv.Range(pb.RangeRequest(key=b"/w/", range_end=b"/w0"), timeout=WAIT_S)
        assert [(k.key, k.value) for k in got.kvs] == [(b"/w/%06d" % i, b"%d" % i) for i in acked]
        assert got.header.revision == deleted.header.revision + len(acked)
        hash_before = maintenance.HashKV(pb.HashKVRequest(), timeout=WAIT_S)
        srv.kill()
        srv.start()
        hash_after = rpc.MaintenanceStub(srv.channel()).HashKV(pb.HashKVRequest(), timeout=WAIT_S)
        assert (hash_after.hash, hash_after.header.revision) == (hash_before.hash, hash_before.header.revision)
    finally:
        srv.stop()
        shutil.rmtree(gate.parent, ignore_errors=True)


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
