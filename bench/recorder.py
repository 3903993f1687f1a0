"""What one load process measures, and how the results of several processes merge."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.histogram import Histogram

TIMELINE_BUCKET_NS = 100_000_000  # completions are counted per 100 ms of CLOCK_MONOTONIC
TIMELINE_BUCKETS_MAX = 200_000  # ~5.5 hours; a longer run stops extending its timeline


class Recorder:
    """Latency histograms per operation label, error counts per gRPC code, named counters, and
    a timeline of completions (to see stalls that averages hide)."""

    def __init__(self) -> None:
        self.hists: dict[str, Histogram] = {}
        self.errors: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.timeline: Counter[int] = Counter()  # bucket (monotonic ns // TIMELINE_BUCKET_NS) -> ok ops
        self.done = 0  # operations finished (ok or failed), drives the progress bar

    def completed(self, now_ns: int) -> None:
        b = now_ns // TIMELINE_BUCKET_NS
        if b in self.timeline or len(self.timeline) < TIMELINE_BUCKETS_MAX:
            self.timeline[b] += 1

    def record(self, label: str, latency_us: int) -> None:
        h = self.hists.get(label)
        if h is None:
            h = self.hists[label] = Histogram()
        h.record(latency_us)


@dataclass
class ProcessResult:
    """One process's measurement, in a form that crosses a process boundary (plain JSON)."""

    proc_index: int
    start_ns: int  # time.monotonic_ns(): CLOCK_MONOTONIC is one clock for every process of the machine
    end_ns: int
    ops: int  # operations the clients issued and finished (ok or error)
    cpu_s: float  # user + system CPU of this process over [start_ns, end_ns]
    server_cpu_s: float = 0.0  # CPU of opts.server_pids over this process's window (process 0 only)
    host_busy: float = 0.0  # fraction of the machine's CPU time busy (any process) over the same window
    hists: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    timeline: dict[str, int] = field(default_factory=dict)  # bucket -> ok ops (JSON keys are strings)

    def to_json(self) -> dict[str, Any]:
        return {
            "proc_index": self.proc_index,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "ops": self.ops,
            "cpu_s": self.cpu_s,
            "host_busy": self.host_busy,
            "server_cpu_s": self.server_cpu_s,
            "hists": self.hists,
            "errors": self.errors,
            "counters": self.counters,
            "timeline": self.timeline,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ProcessResult:
        return cls(**d)


@dataclass
class Merged:
    wall_s: float
    ops: int
    hists: dict[str, Histogram]
    errors: Counter[str]
    counters: Counter[str]
    cpu_s: float
    proc_core_fraction_max: float  # the busiest process's CPU time / wall time
    host_busy: float  # the machine's busy CPU fraction while the load ran (max over processes)
    server_cpu_s: float
    timeline: Counter[int]  # merged over processes, same buckets (one machine-wide clock)
    start_ns: int
    end_ns: int


def timeline_stats(timeline: Counter[int], start_ns: int, end_ns: int) -> dict[str, float]:
    """Throughput per whole second of the run (min, median, max) and the longest span of whole
    100 ms buckets in which no operation completed (resolution: one bucket)."""
    first = start_ns // TIMELINE_BUCKET_NS + 1  # the first and last buckets are partial: skipped
    last = end_ns // TIMELINE_BUCKET_NS - 1
    if last < first:
        return {"per_s_min": 0.0, "per_s_median": 0.0, "per_s_max": 0.0, "stall_ms_max": 0.0}
    per_bucket = [timeline.get(b, 0) for b in range(first, last + 1)]
    k = 1_000_000_000 // TIMELINE_BUCKET_NS
    seconds = sorted(sum(per_bucket[i : i + k]) for i in range(0, len(per_bucket) - k + 1, k))
    stall = longest = 0
    for c in per_bucket:
        stall = stall + 1 if c == 0 else 0
        longest = max(longest, stall)
    if not seconds:
        seconds = [sum(per_bucket) * k // len(per_bucket)]  # under a second: scaled to a rate
    return {
        "per_s_min": float(seconds[0]),
        "per_s_median": float(seconds[len(seconds) // 2]),
        "per_s_max": float(seconds[-1]),
        "stall_ms_max": float(longest * TIMELINE_BUCKET_NS // 1_000_000),
    }


def merge(results: list[ProcessResult]) -> Merged:
    """Add histograms bucket by bucket and counters by name; wall time spans all processes."""
    assert results, "no process results"
    start = min(r.start_ns for r in results)
    end = max(r.end_ns for r in results)
    wall_s = max(end - start, 1) / 1e9
    hists: dict[str, Histogram] = {}
    errors: Counter[str] = Counter()
    counters: Counter[str] = Counter()
    timeline: Counter[int] = Counter()
    for r in results:
        timeline.update({int(b): c for b, c in r.timeline.items()})
        for label, data in r.hists.items():
            h = Histogram.from_json(data)
            if label in hists:
                hists[label].merge(h)
            else:
                hists[label] = h
        errors.update(r.errors)
        counters.update(r.counters)
    frac = max(r.cpu_s / max((r.end_ns - r.start_ns) / 1e9, 1e-9) for r in results)
    return Merged(
        wall_s=wall_s,
        ops=sum(r.ops for r in results),
        hists=hists,
        errors=errors,
        counters=counters,
        cpu_s=sum(r.cpu_s for r in results),
        proc_core_fraction_max=frac,
        host_busy=max(r.host_busy for r in results),
        server_cpu_s=sum(r.server_cpu_s for r in results),
        timeline=timeline,
        start_ns=start,
        end_ns=end,
    )
