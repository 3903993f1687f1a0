"""A journal node's Prometheus metrics (``kvstore journal serve --listen-metrics-urls``).

Histograms are observed as things happen on the node's event loop (append
latency on the leader, write + fsync of the log, leader changes). Positions
and lag are sampled from the node once a second on the event loop
(``sample_forever``) and served from that sample: the HTTP listener is
prometheus-client's, in a thread, and never touches the node itself.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from journal.node import JournalNode

disable_created_metrics()  # type: ignore[no-untyped-call]

SAMPLE_INTERVAL_S = 1.0
# 100 us .. ~6.5 s, doubling: a local fsync is sub-millisecond to tens of ms; an append adds a round trip.
LATENCY_BUCKETS_S = tuple(0.0001 * 2**i for i in range(17))


@dataclass(frozen=True, slots=True)
class LogSample:
    """One log's replica on this node, as last sampled."""

    log: str
    is_leader: bool
    has_leader: bool
    term: int
    commit_index: int
    commit_position: int
    readable_position: int
    last_index: int
    persisted_index: int
    first_index: int
    peer_match: dict[str, int] = field(default_factory=dict)  # leader only: follower -> durable index


@dataclass(frozen=True, slots=True)
class PeerSample:
    peer: str
    connected: bool
    frames_dropped: int


@dataclass(frozen=True, slots=True)
class NodeSample:
    logs: tuple[LogSample, ...] = ()
    peers: tuple[PeerSample, ...] = ()
    entries_served: int = 0


class JournalMetrics:
    def __init__(self, node_id: str, az: str) -> None:
        self.node_id, self.az = node_id, az
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.sample = NodeSample()
        r.register(_SampleCollector(self))
        self.append_duration = Histogram(
            "kvstore_journal_append_duration_seconds",
            "Leader: time from an append request's arrival to its answer (committed in two AZs).",
            ["log"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.fsync_duration = Histogram(
            "kvstore_journal_fsync_duration_seconds",
            "Time to write and fsync one batch of log entries and state (one persist of the replica).",
            ["log"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.leader_changes = Counter(
            "kvstore_journal_leader_changes_seen_total",
            "The number of leader changes this node has seen, per log.",
            ["log"],
            registry=r,
        )

    async def sample_forever(self, node: JournalNode) -> None:
        while True:
            self.sample = node.metrics_sample()
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    def serve(self, urls: list[str]) -> None:
        """HTTP listeners answering /metrics (every path answers the metrics, as prometheus-client does)."""
        for url in urls:
            parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
            if parsed.scheme != "http" or parsed.hostname is None or parsed.port is None:
                raise ValueError(f"{url}: a metrics URL is http://host:port")
            start_http_server(parsed.port, parsed.hostname, registry=self.registry)


class _SampleCollector(Collector):
    def __init__(self, metrics: JournalMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        sample = self.metrics.sample  # one reference: a consistent sample
        info = GaugeMetricFamily("kvstore_journal_node_info", "This journal node: 1 for its id and AZ.",
                                 labels=["node", "az"])  # fmt: skip
        info.add_metric([self.metrics.node_id, self.metrics.az], 1)
        yield info
        per_log: list[tuple[str, str, str]] = [
            ("is_leader", "1 if this node leads the log.", "gauge"),
            ("has_leader", "1 if this node knows a leader for the log.", "gauge"),
            ("term", "The log's current term (epoch).", "gauge"),
            ("commit_index", "Highest log index known committed (held in two AZs).", "gauge"),
            ("commit_position", "Journal position of the commit index.", "gauge"),
            ("readable_position", "Committed and durable on this node: what reads here may serve.", "gauge"),
            ("last_index", "Highest log index this node holds.", "gauge"),
            ("persisted_index", "Highest log index written and fsynced on this node.", "gauge"),
            ("first_index", "Lowest log index still held (above the latest trim).", "gauge"),
        ]
        for attr, doc, _kind in per_log:
            family = GaugeMetricFamily(f"kvstore_journal_{attr}", doc, labels=["log"])
            for s in sample.logs:
                family.add_metric([s.log], float(getattr(s, attr)))
            yield family
        lag = GaugeMetricFamily(
            "kvstore_journal_commit_lag_entries",
            "Committed entries not yet readable here (commit index minus persisted index, at least 0).",
            labels=["log"],
        )
        peer_lag = GaugeMetricFamily(
            "kvstore_journal_peer_lag_entries",
            "Leader only: entries a follower does not durably hold yet (last index minus its match index).",
            labels=["log", "peer"],
        )
        for s in sample.logs:
            lag.add_metric([s.log], float(max(0, s.commit_index - s.persisted_index)))
            for peer, match in sorted(s.peer_match.items()):
                peer_lag.add_metric([s.log, peer], float(max(0, s.last_index - match)))
        yield lag
        yield peer_lag
        connected = GaugeMetricFamily("kvstore_journal_peer_connected", "1 while the link to a peer is up.",
                                      labels=["peer"])  # fmt: skip
        dropped = CounterMetricFamily(
            "kvstore_journal_peer_frames_dropped",
            "Frames to a peer dropped while it was disconnected or its buffer full (Raft resends).",
            labels=["peer"],
        )
        for p in sample.peers:
            connected.add_metric([p.peer], 1.0 if p.connected else 0.0)
            dropped.add_metric([p.peer], float(p.frames_dropped))
        yield connected
        yield dropped
        yield CounterMetricFamily("kvstore_journal_read_entries", "Entries sent to readers (members tailing a log).",
                                  value=float(sample.entries_served))  # fmt: skip
