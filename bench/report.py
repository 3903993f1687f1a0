"""Turns merged process results into the load tool's JSON result and its printed report."""

from __future__ import annotations

from typing import Any

from bench.options import Options
from bench.recorder import Merged, ProcessResult, merge, timeline_stats

# A load process near a full core cannot issue requests faster: its numbers measure the tool.
TOOL_CORE_FRACTION_WARN = 0.85
# A machine with no idle CPU: the tool and the server compete, and the result says so.
HOST_BUSY_WARN = 0.95


def summarize(opts: Options, results: list[ProcessResult], host_cores: int) -> dict[str, Any]:
    m: Merged = merge(results)
    errors_total = sum(m.errors.values())
    by_op: dict[str, Any] = {}
    for label in sorted(m.hists):
        h = m.hists[label]
        by_op[label] = {"throughput_ops_s": round(h.count / m.wall_s, 1), "latency_us": h.summary()}
    ok = m.ops - errors_total
    out: dict[str, Any] = {
        "workload": opts.workload,
        "endpoints": opts.endpoints,
        "options": opts.to_json(),
        "wall_s": round(m.wall_s, 3),
        "ops": m.ops,
        "ok": ok,
        "errors_total": errors_total,
        "errors": dict(sorted(m.errors.items())),
        "throughput_ops_s": round(ok / m.wall_s, 1),
        "by_op": by_op,
        "timeline": timeline_stats(m.timeline, m.start_ns, m.end_ns),
        "counters": dict(sorted(m.counters.items())),
        "tool_cpu": {
            "procs": opts.procs,
            "host_cores": host_cores,
            "cpu_s": round(m.cpu_s, 3),
            "cores_used": round(m.cpu_s / m.wall_s, 3),
            "busiest_proc_core_fraction": round(m.proc_core_fraction_max, 3),
            "saturated": m.proc_core_fraction_max >= TOOL_CORE_FRACTION_WARN,
            "host_busy": round(m.host_busy, 3),
            "host_saturated": m.host_busy >= HOST_BUSY_WARN,
        },
        "server_cpu": {
            "pids": opts.server_pids,
            "cpu_s": round(m.server_cpu_s, 3),
            "cores_used": round(m.server_cpu_s / m.wall_s, 3),
            "us_per_op": round(m.server_cpu_s * 1e6 / ok, 1) if ok else 0.0,
        },
        "histograms": {label: h.to_json() for label, h in sorted(m.hists.items())},
    }
    if opts.workload == "watch":
        puts = m.hists["put"].count if "put" in m.hists else 0
        events = m.counters.get("watch-events", 0)
        out["watch"] = {
            "watchers": opts.watchers,
            "events": events,
            "events_expected": puts * opts.watchers,
            "events_missing": puts * opts.watchers - events,
            "events_per_s": round(events / m.wall_s, 1),
            "drained": m.counters.get("watch-drain-timeout", 0) == 0,
        }
    return out


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def render(summary: dict[str, Any]) -> str:
    o = summary["options"]
    lines = []
    load = f"{o['clients']} clients, {o['conns']} conns/proc, {o['procs']} procs"
    if o["rate"]:
        load += f", rate {o['rate']:g}/s"
    lines.append(
        f"{summary['workload']}: {summary['ok']} ok ops in {summary['wall_s']:.2f} s = "
        f"{summary['throughput_ops_s']:,.1f} ops/s ({load}) -> {', '.join(summary['endpoints'])}"
    )
    lines.append(f"{'op':<22}{'count':>9}{'ops/s':>11}{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>9}  (ms)")
    for label, d in summary["by_op"].items():
        lat = d["latency_us"]
        lines.append(
            f"{label:<22}{lat['count']:>9}{d['throughput_ops_s']:>11,.1f}{_ms(lat['p50']):>9}{_ms(lat['p90']):>9}"
            f"{_ms(lat['p99']):>9}{_ms(lat['p99.9']):>9}{_ms(lat['max']):>9}"
        )
    if "watch" in summary:
        w = summary["watch"]
        lines.append(
            f"watch: {w['events']} events to {w['watchers']} watchers = {w['events_per_s']:,.1f} events/s; "
            f"expected {w['events_expected']}, missing {w['events_missing']}"
            + ("" if w["drained"] else " (drain timed out)")
        )
    tl = summary["timeline"]
    lines.append(
        f"ok ops per 1 s window: min {tl['per_s_min']:,.0f} / median {tl['per_s_median']:,.0f} / "
        f"max {tl['per_s_max']:,.0f}; "
        f"longest stall with no completion: {tl['stall_ms_max']:.0f} ms (100 ms resolution)"
    )
    errs = summary["errors"]
    lines.append("errors: " + (", ".join(f"{k}={v}" for k, v in errs.items()) if errs else "none"))
    if summary["counters"]:
        lines.append("counters: " + ", ".join(f"{k}={v}" for k, v in summary["counters"].items()))
    t = summary["tool_cpu"]
    lines.append(
        f"tool cpu: {t['cpu_s']:.2f} s = {t['cores_used']:.2f} cores over {t['procs']} procs "
        f"(busiest process {t['busiest_proc_core_fraction'] * 100:.0f}% of a core); "
        f"machine {t['host_busy'] * 100:.0f}% busy over {t['host_cores']} cores"
    )
    s = summary["server_cpu"]
    if s["pids"]:
        lines.append(
            f"server cpu (pids {','.join(map(str, s['pids']))}): {s['cpu_s']:.2f} s = {s['cores_used']:.2f} cores, "
            f"{s['us_per_op']:,.0f} µs per ok op"
        )
    if t["saturated"]:
        lines.append(
            "WARNING: a load process used nearly a full core; the tool may be the bottleneck "
            "(add --procs, if the machine has idle cores)"
        )
    if t["host_saturated"]:
        lines.append(
            "WARNING: the machine had no idle CPU during the run: the tool and the server competed for it, "
            "so this measures the pair, not the server alone"
        )
    return "\n".join(lines)
