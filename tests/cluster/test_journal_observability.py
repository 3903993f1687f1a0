"""A journal node's metrics port, health command and JSON logs, on three real node processes
with a member writing through them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from tests.servers import ROOT, JournalNodes, ServerProcess, free_port, make_temp_dir, start_kvstore
from tests.workers.test_workers import CONNECTIONS, children, front_ends_serving, own_channel, wait_for

WAIT_S = 30.0


def _health(endpoint: str) -> tuple[int, dict[str, str]]:
    r = subprocess.run(
        [sys.executable, "-m", "kvstore", "journal", "health", "--endpoint", endpoint, "--timeout-ms", "1000"],
        capture_output=True, text=True, cwd=ROOT, timeout=30,
    )  # fmt: skip
    return r.returncode, json.loads(r.stdout)


def _metric(text: str, name: str, **labels: str) -> float | None:
    for got_labels, value in re.findall(rf"(?m)^{name}(?:\{{([^}}]*)\}})? (\S+)$", text):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', got_labels or ""))
        if all(pairs.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[JournalNodes, dict[str, int], ServerProcess]]:
    base = make_temp_dir("journal-observability-")
    metrics_ports = {n: free_port() for n in "abc"}
    nodes = JournalNodes(base, lambda n: ["--listen-metrics-urls", f"http://127.0.0.1:{metrics_ports[n]}",
                                          "--log-format", "json", "--log-level", "info"])  # fmt: skip
    for n in "abc":
        nodes.start(n)
    member = start_kvstore("observed", extra_args=["--journal-endpoints", nodes.endpoints, "--metrics", "extensive"])
    try:
        yield nodes, metrics_ports, member
    finally:
        member.stop()
        nodes.stop_all()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


Cluster = tuple[JournalNodes, dict[str, int], ServerProcess]


def test_metrics_show_one_leader_positions_and_latencies(cluster: Cluster) -> None:
    _nodes, ports, member = cluster
    # Over many connections: each lands on one of the member's processes, and front ends append too.
    assert member.proc is not None
    front_ends = len(children(member.proc.pid))
    wait_for(lambda: front_ends_serving(member) == front_ends, "the front ends to serve")
    channels = [own_channel(member) for _ in range(CONNECTIONS)]
    for i, ch in enumerate(channels):
        rpc.KVStub(ch).Put(pb.PutRequest(key=b"k%d" % i, value=b"v"), timeout=10)
        ch.close()
    deadline = time.monotonic() + WAIT_S
    while True:  # positions are sampled once a second
        texts = {n: _scrape(p) for n, p in ports.items()}
        commits = [_metric(t, "kvstore_journal_commit_position", log="default") or 0 for t in texts.values()]
        if min(commits) >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert min(commits) >= 5, commits
    leaders = [n for n, t in texts.items() if _metric(t, "kvstore_journal_is_leader", log="default") == 1]
    assert len(leaders) == 1, leaders
    lead = texts[leaders[0]]
    assert (_metric(lead, "kvstore_journal_append_duration_seconds_count", log="default") or 0) >= 1
    for n, t in texts.items():
        assert (_metric(t, "kvstore_journal_fsync_duration_seconds_count", log="default") or 0) >= 1, n
        assert _metric(t, "kvstore_journal_has_leader", log="default") == 1, n
        assert _metric(t, "kvstore_journal_node_info", node=n, az=n) == 1, n
        for peer in set("abc") - {n}:
            assert _metric(t, "kvstore_journal_peer_connected", peer=peer) == 1, (n, peer)
    for peer in set("abc") - {leaders[0]}:
        assert _metric(lead, "kvstore_journal_peer_lag_entries", log="default", peer=peer) is not None, peer
    assert "# TYPE kvstore_journal_append_duration_seconds histogram" in lead
    with urllib.request.urlopen(member.metrics_url + "/metrics", timeout=5) as r:  # type: ignore[attr-defined]
        member_text = r.read().decode()
    # the member's side: its durable writes, and its front ends', are etcd's WAL fsync
    fsyncs = _metric(member_text, "etcd_disk_wal_fsync_duration_seconds_count") or 0
    assert fsyncs >= CONNECTIONS, fsyncs  # one put at a time: one append each
    slowest = _metric(member_text, "etcd_disk_wal_fsync_duration_seconds_bucket", le="+Inf")
    assert slowest == fsyncs, (slowest, fsyncs)


def test_health_command_and_json_logs(cluster: Cluster) -> None:
    nodes, _ports, _member = cluster
    for n in "abc":
        assert _health(f"127.0.0.1:{nodes.ports[n]}") == (0, {"health": "true", "reason": ""}), n
    lines = (nodes.base / "journal-a.log").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records, lines[:5]
    assert all(r["journal-node"] == "a" and r["az"] == "a" and {"level", "ts", "caller", "msg"} <= r.keys()
               for r in records), records[:3]  # fmt: skip
    assert any("listening on" in r["msg"] for r in records), records[:3]
    assert any(r.get("partition") == "default" and "journal-position" in r for r in records), records
    nodes.kill("c")
    code, answer = _health(f"127.0.0.1:{nodes.ports['c']}")
    assert code == 1 and answer["health"] == "false", answer
    nodes.start("c")


def test_the_grafana_dashboard_reads_only_metrics_that_exist(cluster: Cluster) -> None:
    """deploy/grafana's panels query names a member (--metrics extensive) or a journal node exposes."""
    _nodes, ports, member = cluster
    with urllib.request.urlopen(member.metrics_url + "/metrics", timeout=5) as r:  # type: ignore[attr-defined]
        texts = [r.read().decode(), _scrape(ports["a"])]
    exposed = {name for t in texts for name in re.findall(r"(?m)^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", t)}
    families = {name for t in texts for name in re.findall(r"(?m)^# TYPE (\S+)", t)}  # also those with no sample yet
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "kvstore-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    used = {n for e in exprs for n in re.findall(r"\b((?:etcd|grpc|kvstore|process)_[a-z0-9_]+)\{", e)}
    missing = sorted(n for n in used if n not in exposed and re.sub(r"_(bucket|count|sum)$", "", n) not in families)
    assert not missing, missing
