"""Isolation under load: the events partition, with a small quota, is flooded until NOSPACE while
node lease renewals (kube's GuaranteedUpdate Txn) run against the leases partition of the same
3 journal nodes: every renewal succeeds, and only the events partition raises the alarm."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.isolation import Flood, Renewals, alarms, write_plan
from bench.journal_procs import ProcCluster
from proto.etcdserverpb import rpc_pb2 as pb
from tests.partition.procs import Partitioned
from tests.servers import make_temp_dir

EVENTS_QUOTA_BYTES = 2 * 1024 * 1024
FLOOD_TO_NOSPACE_TIMEOUT_S = 120.0
AT_NOSPACE_S = 3.0


@pytest.fixture
def isolated() -> Iterator[Partitioned]:
    base: Path = make_temp_dir("kvstore-pt-iso-")
    nodes = ProcCluster(base)
    nodes.start()
    plan = write_plan(base / "plan.toml", EVENTS_QUOTA_BYTES)
    srv = Partitioned(str(plan), ("--journal-endpoints", ",".join(nodes.endpoints)), name="iso")
    try:
        yield srv.start()
    finally:
        srv.stop()
        nodes.stop()


def test_events_flooded_to_nospace_leave_every_lease_renewal_succeeding(isolated: Partitioned) -> None:
    renewals = Renewals(isolated.target("leases"), nodes=20, threads=2)
    flood = Flood(isolated.target("events"), threads=3)
    renewals.create()
    try:
        renewals.start()
        renewals.phase = "flood"
        flood.start()
        assert flood.wait_nospace(FLOOD_TO_NOSPACE_TIMEOUT_S), "the flood never reached NOSPACE"
        renewals.phase = "at-nospace"
        time.sleep(AT_NOSPACE_S)
    finally:
        flood.stop()
        renewals.stop()
    assert renewals.failures == []
    assert renewals.ok["flood"] > 0 and renewals.ok["at-nospace"] > 0
    assert flood.ok > 0 and flood.nospace > 0 and flood.other_errors == 0
    assert alarms(isolated.target("events")) == ["NOSPACE"]
    assert alarms(isolated.target("leases")) == [] and alarms(isolated.target("default")) == []
    # `kvstore partitions status` shows the alarm on the events row only.
    out = isolated.run_cli("partitions", "status")
    rows = {name: next(r for r in out.stdout.splitlines() if isolated.url(name) in r) for name in ("events", "leases")}
    assert "NOSPACE" in rows["events"] and "NOSPACE" not in rows["leases"], out.stdout
    assert out.returncode == 0
    # The leases partition still takes writes; the events partition refuses them.
    isolated.kv("leases").Put(pb.PutRequest(key=b"/registry/leases/x/y", value=b"v"), timeout=20)
    with pytest.raises(Exception, match="database space exceeded"):
        isolated.kv("events").Put(pb.PutRequest(key=b"/registry/events/x/y", value=b"v"), timeout=20)
