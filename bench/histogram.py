"""A mergeable latency histogram with bounded relative error (HDR-style log-linear buckets).

Values are integers (the load tool records microseconds). Values below 2**SUB_BITS get one
bucket each; above that, every power-of-two range is split into 2**(SUB_BITS-1) equal buckets,
so a bucket is never wider than 1/64 of its lower bound: percentiles are exact to within 1.6%.
Two histograms merge by adding bucket counts, which is what lets several load processes
report one latency distribution (averaging their percentiles would be wrong).

Pure data structure: no clock, no I/O.
"""

from __future__ import annotations

import math
from typing import Any

SUB_BITS = 7
SUB_COUNT = 1 << SUB_BITS  # 128 exact buckets for the smallest values
HALF_COUNT = SUB_COUNT >> 1  # 64 buckets per power of two above them
VALUE_MAX = (1 << 40) - 1  # ~12.7 days in microseconds; larger values are clamped
BUCKET_COUNT = SUB_COUNT + (VALUE_MAX.bit_length() - SUB_BITS) * HALF_COUNT


def bucket_of(value: int) -> int:
    """Index of the bucket holding `value` (0 <= value <= VALUE_MAX)."""
    if value < SUB_COUNT:
        return value
    shift = value.bit_length() - SUB_BITS
    return SUB_COUNT + (shift - 1) * HALF_COUNT + ((value >> shift) - HALF_COUNT)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The [lowest, highest] values that land in bucket `index` (inclusive)."""
    if index < SUB_COUNT:
        return index, index
    shift = (index - SUB_COUNT) // HALF_COUNT + 1
    low = (HALF_COUNT + (index - SUB_COUNT) % HALF_COUNT) << shift
    return low, low + (1 << shift) - 1


class Histogram:
    """Counts of integer values in log-linear buckets, plus exact count, sum, min and max."""

    __slots__ = ("count", "counts", "max", "min", "sum")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * BUCKET_COUNT
        self.count = 0
        self.sum = 0
        self.min = VALUE_MAX
        self.max = 0

    def record(self, value: int) -> None:
        if value < 0:
            value = 0  # a clock step backwards must not corrupt the index
        elif value > VALUE_MAX:
            value = VALUE_MAX
        self.counts[bucket_of(value)] += 1
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def merge(self, other: Histogram) -> None:
        counts = self.counts
        for i, c in enumerate(other.counts):
            if c:
                counts[i] += c
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        assert sum(self.counts) == self.count

    def percentile(self, q: float) -> int:
        """The smallest recorded-bucket value v with at least q (0..1] of values <= v.

        Returns the bucket's highest value, clamped to the exact min and max, so p100 is the true
        max and a reported percentile never understates latency by more than one bucket width.
        """
        assert 0.0 < q <= 1.0, q
        if self.count == 0:
            return 0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for i, c in enumerate(self.counts):
            if c:
                seen += c
                if seen >= rank:
                    return max(self.min, min(self.max, bucket_bounds(i)[1]))
        raise AssertionError("rank beyond count")  # counts and count disagree

    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def summary(self) -> dict[str, float]:
        return {
            "count": self.count,
            "min": self.min if self.count else 0,
            "mean": round(self.mean(), 1),
            "p50": self.percentile(0.50),
            "p90": self.percentile(0.90),
            "p99": self.percentile(0.99),
            "p99.9": self.percentile(0.999),
            "max": self.max,
        }

    def to_json(self) -> dict[str, Any]:
        """Sparse form: only non-empty buckets, keyed by index (JSON keys are strings)."""
        return {
            "count": self.count,
            "sum": self.sum,
            "min": self.min,
            "max": self.max,
            "buckets": {str(i): c for i, c in enumerate(self.counts) if c},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        h = cls()
        for i, c in data["buckets"].items():
            h.counts[int(i)] = int(c)
        h.count = int(data["count"])
        h.sum = int(data["sum"])
        h.min = int(data["min"])
        h.max = int(data["max"])
        if sum(h.counts) != h.count:
            raise ValueError("histogram buckets do not add up to its count")
        return h
