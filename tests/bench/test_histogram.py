"""The latency histogram: bucket math, percentile accuracy, and merging across processes."""

from __future__ import annotations

import math
import random

import pytest

from bench.histogram import BUCKET_COUNT, VALUE_MAX, Histogram, bucket_bounds, bucket_of
from bench.recorder import ProcessResult, merge


def test_buckets_tile_the_value_range_without_gaps() -> None:
    prev_high = -1
    for i in range(BUCKET_COUNT):
        low, high = bucket_bounds(i)
        assert low == prev_high + 1, i
        assert bucket_of(low) == i and bucket_of(high) == i
        prev_high = high
    assert prev_high == VALUE_MAX


def test_bucket_width_is_within_relative_error_bound() -> None:
    for i in range(BUCKET_COUNT):
        low, high = bucket_bounds(i)
        assert (high - low) <= max(0, low / 64), (i, low, high)


def exact_percentile(values: list[int], q: float) -> int:
    s = sorted(values)
    return s[max(1, math.ceil(q * len(s))) - 1]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_match_exact_ones_within_bucket_error(seed: int) -> None:
    rng = random.Random(seed)
    values = [int(rng.lognormvariate(8, 1.5)) for _ in range(20_000)]
    h = Histogram()
    for v in values:
        h.record(v)
    for q in (0.5, 0.9, 0.99, 0.999, 1.0):
        exact = exact_percentile(values, q)
        got = h.percentile(q)
        assert exact <= got <= exact + exact / 64 + 1, (q, exact, got)
    assert h.percentile(1.0) == max(values)
    assert h.count == len(values) and h.sum == sum(values)
    assert h.min == min(values) and h.max == max(values)


def test_small_values_are_exact() -> None:
    h = Histogram()
    for v in range(1, 101):
        h.record(v)
    assert h.percentile(0.5) == 50
    assert h.percentile(0.99) == 99
    assert h.summary()["p50"] == 50


def test_out_of_range_values_are_clamped() -> None:
    h = Histogram()
    h.record(-5)
    h.record(VALUE_MAX * 4)
    assert h.min == 0 and h.max == VALUE_MAX and h.count == 2


def test_merge_equals_recording_everything_in_one() -> None:
    rng = random.Random(7)
    parts = [[rng.randrange(1, 5_000_000) for _ in range(3000)] for _ in range(4)]
    one = Histogram()
    merged = Histogram()
    for part in parts:
        h = Histogram()
        for v in part:
            h.record(v)
            one.record(v)
        merged.merge(Histogram.from_json(h.to_json()))  # through JSON, as across processes
    assert merged.counts == one.counts
    assert (merged.count, merged.sum, merged.min, merged.max) == (one.count, one.sum, one.min, one.max)
    # merged percentiles are not averages of per-part percentiles
    assert merged.percentile(0.99) == one.percentile(0.99)


def test_from_json_rejects_inconsistent_counts() -> None:
    h = Histogram()
    h.record(10)
    data = h.to_json()
    data["count"] = 2
    with pytest.raises(ValueError):
        Histogram.from_json(data)


def test_process_results_merge_spans_wall_time_and_adds_counts() -> None:
    def result(i: int, start: int, end: int, values: list[int], errors: dict[str, int]) -> ProcessResult:
        h = Histogram()
        for v in values:
            h.record(v)
        return ProcessResult(
            proc_index=i,
            start_ns=start,
            end_ns=end,
            ops=len(values) + sum(errors.values()),
            cpu_s=0.5,
            hists={"put": h.to_json()},
            errors=errors,
            counters={"conflicts": i + 1},
        )

    a = result(0, 1_000_000_000, 3_000_000_000, [100, 200, 300], {"UNAVAILABLE": 1})
    b = result(1, 1_500_000_000, 4_000_000_000, [400, 500], {"UNAVAILABLE": 2, "DEADLINE_EXCEEDED": 1})
    m = merge([a, b])
    assert m.wall_s == pytest.approx(3.0)
    assert m.ops == 9
    assert m.hists["put"].count == 5 and m.hists["put"].max == 500
    assert m.errors == {"UNAVAILABLE": 3, "DEADLINE_EXCEEDED": 1}
    assert m.counters == {"conflicts": 3}
    assert m.cpu_s == pytest.approx(1.0)
    assert m.proc_core_fraction_max == pytest.approx(0.25)


def test_timeline_finds_the_slowest_second_and_the_longest_stall() -> None:
    from collections import Counter

    from bench.recorder import TIMELINE_BUCKET_NS, timeline_stats

    b0 = 1000  # a run from bucket 1000 (partial) to 1031 (partial): 30 whole buckets = 3 seconds
    counts = [10] * 10 + [10, 10, 0, 0, 0, 10, 10, 10, 10, 10] + [20] * 10
    timeline = Counter({b0 + 1 + i: c for i, c in enumerate(counts) if c})
    timeline[b0] = 999  # partial buckets at both ends are ignored
    timeline[b0 + 31] = 999
    stats = timeline_stats(timeline, b0 * TIMELINE_BUCKET_NS + 5, (b0 + 31) * TIMELINE_BUCKET_NS + 5)
    assert stats == {"per_s_min": 70.0, "per_s_median": 100.0, "per_s_max": 200.0, "stall_ms_max": 300.0}
