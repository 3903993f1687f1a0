"""Snapshots into the journal and trimming (etcd's --snapshot-count) lose nothing."""

from __future__ import annotations

from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from tests.servers import start_kvstore


def test_restart_after_trim_recovers_from_the_journal_snapshot() -> None:
    flags = ["--snapshot-count", "40", "--snapshot-catchup-entries", "10"]
    srv = start_kvstore("trim", extra_args=flags)
    try:
        kv = rpc.KVStub(srv.channel())
        for i in range(300):
            kv.Put(pb.PutRequest(key=b"/trim/%03d" % (i % 120), value=b"%d" % i), timeout=10)
        last = kv.Range(pb.RangeRequest(key=b"/trim/", range_end=b"/trim0"), timeout=10)
        log = srv.stderr_tail(1 << 20)
        assert "trimmed below" in log
        # Lose the tmpfs state file: the member must rebuild from the journal's snapshot plus its tail.
        srv.stop(cleanup=False)
        for leftover in (srv.work_dir / "state").glob("*"):
            leftover.unlink()
        srv.start()
        again = rpc.KVStub(srv.channel()).Range(pb.RangeRequest(key=b"/trim/", range_end=b"/trim0"), timeout=10)
        assert list(again.kvs) == list(last.kvs)
        assert again.header.revision == last.header.revision
    finally:
        srv.stop()
