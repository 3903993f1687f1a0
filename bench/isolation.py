"""Partition isolation under load: node lease renewals on the leases partition while the events
partition is flooded past its quota.

    python -m bench.isolation [--journal-nodes 3] [--phase-s 10] [--events-quota-bytes 33554432]

starts `kvstore serve --partitions` with a plan of three partitions (default, events with a small
quota, leases), on 3 journal nodes by default, then in one run measures lease renewals (kube's
GuaranteedUpdate Txn, as the `kube` load profile sends it) in three phases: alone, while the
events partition takes a flood of writes, and while the flood goes on against the events
partition at NOSPACE. It prints renewal p50/p99 per phase. The isolation test
(tests/partition/test_isolation.py) drives the same Renewals and Flood.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from bench.histogram import Histogram
from bench.workloads import failure_rev, txn_create, txn_update
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc

NODE_LEASE_KEY = "/registry/leases/kube-node-lease/node-{:05d}"
RENEW_TIMEOUT_S = 10.0  # kubelet's renew deadline is 10 s
FLOOD_VALUE_BYTES = 32 * 1024

ISOLATION_PLAN = """
name = "isolation"
[[partition]]
name = "default"
[[partition]]
name = "events"
resources = ["/events"]
quota_backend_bytes = {quota}
[[partition]]
name = "leases"
resources = ["coordination.k8s.io/leases"]
"""


def write_plan(path: Path, events_quota_bytes: int) -> Path:
    path.write_text(ISOLATION_PLAN.format(quota=events_quota_bytes))
    return path


class Renewals:
    """Threads renewing node leases in a closed loop; every renewal must succeed."""

    def __init__(self, target: str, nodes: int = 50, threads: int = 4) -> None:
        self.channel = grpc.insecure_channel(target)
        self.kv = rpc.KVStub(self.channel)
        self.keys = [NODE_LEASE_KEY.format(i).encode() for i in range(nodes)]
        self.threads_n = threads
        self.phase = "baseline"
        self.hists: dict[str, Histogram] = collections.defaultdict(Histogram)
        self.ok: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def create(self) -> None:
        for key in self.keys:
            self.kv.Txn(txn_create(key, b"holder"), timeout=RENEW_TIMEOUT_S)

    def _loop(self, keys: list[bytes]) -> None:
        revs: dict[bytes, int] = {}
        n = 0
        while not self._stop.is_set():
            key = keys[n % len(keys)]
            n += 1
            phase = self.phase
            t = time.monotonic_ns()
            try:
                rev = revs.get(key)
                if rev is None:
                    got = self.kv.Range(pb.RangeRequest(key=key), timeout=RENEW_TIMEOUT_S)
                    rev = got.kvs[0].mod_revision
                resp = self.kv.Txn(txn_update(key, rev, b"renew-%d" % n), timeout=RENEW_TIMEOUT_S)
            except grpc.RpcError as e:
                with self._lock:
                    self.failures.append(f"{phase}: {e.code().name} {e.details()}")
                continue
            if not resp.succeeded:
                revs[key] = failure_rev(resp)
                with self._lock:
                    self.failures.append(f"{phase}: conflict on {key!r}")
                continue
            revs[key] = resp.header.revision
            with self._lock:
                self.hists[phase].record((time.monotonic_ns() - t) // 1000)
                self.ok[phase] += 1

    def start(self) -> None:
        for i in range(self.threads_n):
            t = threading.Thread(target=self._loop, args=(self.keys[i :: self.threads_n],), daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(RENEW_TIMEOUT_S * 2)
        self.channel.close()


def _flood_process(target: str, threads: int, value_bytes: int, stop: Any, ok: Any, nospace: Any, other: Any) -> None:
    channel = grpc.insecure_channel(target)
    kv = rpc.KVStub(channel)
    value = b"e" * value_bytes

    def loop(i: int) -> None:
        n = 0
        while not stop.is_set():
            key = f"/registry/events/flood/e-{i}-{n}".encode()
            n += 1
            try:
                kv.Txn(txn_create(key, value), timeout=RENEW_TIMEOUT_S)
            except grpc.RpcError as e:
                full = e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "space exceeded" in (e.details() or "")
                counter = nospace if full else other
                with counter.get_lock():
                    counter.value += 1
                continue
            with ok.get_lock():
                ok.value += 1

    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    channel.close()


class Flood:
    """A separate process (its own GIL, as a real controller would be) writing big event objects
    as fast as the events partition takes them, and on at NOSPACE."""

    def __init__(self, target: str, threads: int = 4, value_bytes: int = FLOOD_VALUE_BYTES) -> None:
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        self._ok, self._nospace, self._other = ctx.Value("q", 0), ctx.Value("q", 0), ctx.Value("q", 0)
        self._proc = ctx.Process(
            target=_flood_process,
            args=(target, threads, value_bytes, self._stop, self._ok, self._nospace, self._other),
            daemon=True,
        )

    @property
    def ok(self) -> int:
        return int(self._ok.value)

    @property
    def nospace(self) -> int:
        return int(self._nospace.value)

    @property
    def other_errors(self) -> int:
        return int(self._other.value)

    def start(self) -> None:
        self._proc.start()

    def wait_nospace(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.nospace == 0:
            if time.monotonic() > deadline or not self._proc.is_alive():
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        self._stop.set()
        self._proc.join(RENEW_TIMEOUT_S * 2)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


def alarms(target: str) -> list[str]:
    with grpc.insecure_channel(target) as ch:
        resp = rpc.MaintenanceStub(ch).Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET), timeout=10)
    return [pb.AlarmType.Name(a.alarm) for a in resp.alarms]


def main(argv: list[str] | None = None) -> int:
    from bench.servers import start_kvstore

    p = argparse.ArgumentParser(prog="python -m bench.isolation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--journal-nodes", type=int, choices=(0, 3), default=3)
    p.add_argument("--phase-s", type=float, default=10.0, help="seconds of each phase")
    p.add_argument("--events-quota-bytes", type=int, default=32 * 1024 * 1024)
    p.add_argument("--renew-threads", type=int, default=4)
    p.add_argument("--flood-threads", type=int, default=4)
    ns = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="kvstore-isolation-", dir="/var/tmp"))
    plan = write_plan(work / "plan.toml", ns.events_quota_bytes)
    server = start_kvstore(work, "iso", journal_nodes=ns.journal_nodes, partitions=str(plan))
    events, leases = (u.split("://", 1)[1] for u in server.endpoints[1:3])
    renewals = Renewals(leases, threads=ns.renew_threads)
    flood = Flood(events, threads=ns.flood_threads)
    phase_s: dict[str, float] = {}

    def phase(name: str, t0: float) -> float:
        phase_s[renewals.phase] = time.monotonic() - t0
        renewals.phase = name
        return time.monotonic()

    try:
        renewals.create()
        renewals.start()
        t = time.monotonic()
        time.sleep(ns.phase_s)
        t = phase("flood", t)
        flood.start()
        reached = flood.wait_nospace(max(60.0, 6 * ns.phase_s))
        flood_ok = flood.ok
        t = phase("flood at NOSPACE", t)
        time.sleep(ns.phase_s)
        flood.stop()
        t = phase("NOSPACE, flood stopped", t)
        time.sleep(ns.phase_s)
        phase("end", t)
    finally:
        flood.stop()
        renewals.stop()
        events_alarms = alarms(events)
        leases_alarms = alarms(leases)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    journal = "3 journal nodes" if ns.journal_nodes else "local journals"
    print(f"journal: {journal}; events quota {ns.events_quota_bytes} bytes; flood: {ns.flood_threads} threads "
          f"of {FLOOD_VALUE_BYTES} B events in a separate process, {flood_ok} written in "
          f"{phase_s.get('flood', 0):.1f} s before NOSPACE{'' if reached else ' (NOSPACE NOT REACHED)'}, "
          f"{flood.nospace} refused with NOSPACE, other errors {flood.other_errors}; alarms: events "
          f"{events_alarms}, leases {leases_alarms or 'none'}")  # fmt: skip
    print("| phase | seconds | renewals ok | renewals/s | p50 ms | p99 ms | failed |")
    print("|---|---|---|---|---|---|---|")
    for name in ("baseline", "flood", "flood at NOSPACE", "NOSPACE, flood stopped"):
        h = renewals.hists[name]
        failed = sum(1 for f in renewals.failures if f.startswith(name + ":"))
        secs = phase_s.get(name, 0.0)
        print(f"| {name} | {secs:.1f} | {renewals.ok[name]} | {renewals.ok[name] / max(secs, 1e-9):,.0f} | "
              f"{h.percentile(0.5) / 1000:.2f} | {h.percentile(0.99) / 1000:.2f} | {failed} |")  # fmt: skip
    for f in renewals.failures[:10]:
        print("failure:", f)
    return 1 if renewals.failures else 0


if __name__ == "__main__":
    sys.exit(main())
