"""An etcd snapshot imported into a replicated journal log reaches every member of the log.

m1 imports a real etcd 3.5.1's snapshot into a new log on three journal nodes; m2 joins the log
without the flag and answers every Range at every revision as etcd does."""

from __future__ import annotations

import subprocess
from pathlib import Path

from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from tests.etcdctl.test_import_etcd_snapshot import answers, load, revisions
from tests.servers import JournalNodes, etcd_binary, make_temp_dir, start_etcd, start_kvstore


def test_imported_snapshot_reaches_every_member_of_the_log(tmp_path: Path) -> None:
    etcd = start_etcd("import-journal-source")
    base = make_temp_dir("kvstore-import-journal-")
    nodes = JournalNodes(base)
    members = []
    try:
        load(etcd)
        snap = tmp_path / "etcd.db"
        r = subprocess.run([etcd_binary("etcdctl") or "etcdctl", f"--endpoints={etcd.endpoint}", "snapshot", "save",
                            str(snap)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        for n in "abc":
            nodes.start(n)
        journal = ["--journal-endpoints", nodes.endpoints]
        members.append(start_kvstore("imp1", extra_args=[*journal, "--import-etcd-snapshot", str(snap)]))
        members.append(start_kvstore("imp2", extra_args=journal))
        compacted, current = revisions(etcd)
        ref = rpc.KVStub(etcd.channel())
        for m in members:
            got = rpc.KVStub(m.channel())
            for rev in range(compacted - 1, current + 1):
                assert answers(got, rev) == answers(ref, rev), (m.name, rev)
        put = rpc.KVStub(members[1].channel()).Put(pb.PutRequest(key=b"/after-import", value=b"v"), timeout=20)
        assert put.header.revision == current + 1
        seen = rpc.KVStub(members[0].channel()).Range(pb.RangeRequest(key=b"/after-import"), timeout=20)
        assert seen.kvs[0].mod_revision == current + 1
    finally:
        for m in members:
            m.stop()
        nodes.stop_all()
        etcd.stop()
