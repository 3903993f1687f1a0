"""The front ends' counts, summed into the member's /metrics.

A front end counts what it answers itself (its ranges, writes and lease calls:
etcd's grpc_server_started_total, grpc_server_handled_total; etcd_mvcc_range_total;
the watches it serves: etcd_debugging_mvcc_watcher_total and _watch_stream_total;
its own appends to a remote journal: etcd_disk_wal_fsync_duration_seconds)
with prometheus_client in multiprocess mode: the counters live in files in a
directory the supervisor hands it (PROMETHEUS_MULTIPROC_DIR), which survive
the process, so a restarted front end never makes a counter go back. The
calls it forwards are counted by the member's own gRPC interceptor, once. The
member's /metrics adds the files' sums to its own series of the same name and
labels: one set of metrics with etcd's names for the whole member.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from kvstore.metrics import DISK_BUCKETS_S, GRPC_BUCKETS_S, GRPC_CODE_NAMES

# The member's counters a front end adds to (kvstore/workers/writes.py bumps them).
FRONT_END_COUNTERS = (
    "etcd_mvcc_put_total",
    "etcd_mvcc_delete_total",
    "etcd_mvcc_txn_total",
    "etcd_server_proposals_failed_total",
)

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class FrontEndMetrics:
    def __init__(self, level: str = "basic") -> None:
        labels = ("grpc_type", "grpc_service", "grpc_method")
        # Not registered anywhere: the member reads the multiprocess files.
        self.started = Counter("grpc_server_started_total", "", labels, registry=None)
        self.handled = Counter("grpc_server_handled_total", "", (*labels, "grpc_code"), registry=None)
        self.ranges = Counter("etcd_mvcc_range_total", "", registry=None)
        self._counters = {name: Counter(name, "", registry=None) for name in FRONT_END_COUNTERS}
        # The watches it serves, summed over the live front ends (the supervisor drops a dead one's file).
        self.watchers = Gauge("etcd_debugging_mvcc_watcher_total", "", registry=None, multiprocess_mode="livesum")
        self.watch_streams = Gauge("etcd_debugging_mvcc_watch_stream_total", "", registry=None,
                                   multiprocess_mode="livesum")  # fmt: skip
        # Its own appends to a remote journal: etcd's WAL fsync, as the member times its own.
        self.wal_fsync = Histogram("etcd_disk_wal_fsync_duration_seconds", "", buckets=DISK_BUCKETS_S, registry=None)
        self.handling: Histogram | None = None  # --metrics extensive, as the member's
        self._children: dict[tuple[str, grpc.StatusCode], tuple[Any, Any, Any]] = {}
        if level == "extensive":
            self.handling = Histogram("grpc_server_handling_seconds", "", labels, buckets=GRPC_BUCKETS_S, registry=None)

    def range_served(self, code: grpc.StatusCode, started_s: float) -> None:
        self.served("/etcdserverpb.KV/Range", code, started_s)
        self.ranges.inc()

    def served(self, full_method: str, code: grpc.StatusCode, started_s: float, grpc_type: str = "unary") -> None:
        """One call of full_method ("/etcdserverpb.KV/Put") the front end answered itself (started_s:
        its time.monotonic() at start)."""
        key = (full_method, code)
        children = self._children.get(key)
        if children is None:  # each labelled child looked up once, not per call
            service, _, method = full_method.lstrip("/").rpartition("/")
            labels = (grpc_type, service, method)
            children = self._children[key] = (
                self.started.labels(*labels),
                self.handled.labels(*labels, GRPC_CODE_NAMES[code]),
                None if self.handling is None else self.handling.labels(*labels),
            )
        started, handled, handling = children
        started.inc()
        handled.inc()
        if handling is not None:
            handling.observe(time.monotonic() - started_s)

    def watching(self, streams: int, watchers: int) -> None:
        self.watch_streams.set(streams)
        self.watchers.set(watchers)

    def count(self, name: str, amount: float) -> None:
        """One of the member's own counters (FRONT_END_COUNTERS), by what the front end did."""
        if amount > 0:
            self._counters[name].inc(amount)


def front_end_counts(metrics_dir: str) -> dict[SampleKey, float]:
    """Every front end's samples (dead ones' too), summed by name and labels."""
    counts: dict[SampleKey, float] = defaultdict(float)
    for family in MultiProcessCollector(None, path=metrics_dir).collect():  # type: ignore[no-untyped-call]
        for sample in family.samples:
            counts[(sample.name, tuple(sorted(sample.labels.items())))] += sample.value
    return counts


class _Summed:
    """A registry's families with the front ends' counts added to the samples they share."""

    def __init__(self, registry: CollectorRegistry, counts: dict[SampleKey, float]) -> None:
        self.registry = registry
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            summed = Metric(family.name, family.documentation, family.type, family.unit)
            for s in family.samples:
                extra = self.counts.get((s.name, tuple(sorted(s.labels.items()))), 0.0)
                summed.add_sample(s.name, s.labels, s.value + extra, s.timestamp, s.exemplar)
            yield summed


def with_front_ends(metrics_dir: str) -> Callable[[CollectorRegistry], Any]:
    """What the member's exposition collects from: its registry plus the front ends' files."""

    def collector(registry: CollectorRegistry) -> Any:
        return _Summed(registry, front_end_counts(metrics_dir))

    return collector
