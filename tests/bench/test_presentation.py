"""What the load tool and the comparison show people: the rich report and the compare picture."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.compare import Run, render_report
from bench.report import render


def _run(target: str, workload: str, rnd: int, throughput: float, p50_us: int, p99_us: int) -> Run:
    return Run(target=target, workload=workload, round=rnd, throughput=throughput, p50_us=p50_us, p99_us=p99_us,
               errors=0, server_cpu_us_per_op=100.0, tool_cores=0.5, host_busy=0.5)  # fmt: skip


def _summary() -> dict[str, object]:
    lat = {"count": 1000, "p50": 1500, "p90": 2500, "p99": 9000, "p99.9": 12000, "max": 20000}
    return {
        "workload": "put", "ok": 1000, "wall_s": 2.0, "throughput_ops_s": 500.0, "endpoints": ["http://x:1"],
        "options": {"clients": 4, "conns": 1, "procs": 1, "rate": None},
        "by_op": {"put": {"throughput_ops_s": 500.0, "latency_us": lat}},
        "timeline": {"per_s_min": 400, "per_s_median": 500, "per_s_max": 600, "stall_ms_max": 100},
        "errors": {"UNAVAILABLE": 2}, "counters": {},
        "tool_cpu": {"cpu_s": 1.0, "cores_used": 0.5, "procs": 1, "busiest_proc_core_fraction": 0.5,
                     "host_busy": 0.5, "host_cores": 2, "saturated": False, "host_saturated": True},
        "server_cpu": {"pids": [], "cpu_s": 0.0, "cores_used": 0.0, "us_per_op": 0.0},
    }  # fmt: skip


def test_report_is_a_table_with_percentiles_in_ms() -> None:
    text = render(_summary())
    lines = text.splitlines()
    assert lines[0].startswith("put: 1000 ok ops in 2.00 s = 500.0 ops/s (4 clients")
    head = next(line for line in lines if "p99.9 ms" in line)
    assert head.split() == ["op", "count", "ops/s", "p50", "ms", "p90", "ms", "p99", "ms", "p99.9", "ms", "max", "ms"]
    row = next(line for line in lines if line.split()[:1] == ["put"])
    assert row.split() == ["put", "1000", "500.0", "1.50", "2.50", "9.00", "12.00", "20.00"]
    assert "errors: UNAVAILABLE=2" in text and "WARNING: the machine had no idle CPU" in text


def test_compare_plot_draws_every_workload_and_is_linked(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib import image

    from bench.plot import plot_comparison

    runs = [
        _run(t, w, rnd, tp * rnd, 1000 * rnd, 5000 * rnd)
        for rnd in (1, 2, 3)
        for w in ("put", "range-l")
        for t, tp in (("etcd-1", 1000.0), ("kvstore", 700.0))
    ]
    png = plot_comparison(runs, ["etcd-1", "kvstore"], ["put", "range-l", "watch"], tmp_path / "cmp.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = image.imread(png).shape[:2]
    assert width > 1000 and height > 500  # two workload rows drawn (watch has no run: no row)
    report = render_report(runs, [], ["put"], {}, {}, picture="cmp.png")
    assert "![throughput and latency percentiles per workload and target](cmp.png)" in report


def test_compare_plot_without_runs_says_so(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from bench.plot import plot_comparison

    with pytest.raises(RuntimeError, match="no run finished"):
        plot_comparison([], ["etcd-1"], ["put"], tmp_path / "none.png")
