"""Turns merged process results into the load tool's JSON result and its printed report."""

from __future__ import annotations

import io
from typing import Any

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from bench.options import Options
from bench.recorder import Merged, ProcessResult, merge, timeline_stats

# A load process near a full core cannot issue requests faster: its numbers measure the tool.
TOOL_CORE_FRACTION_WARN = 0.85
# A machine with no idle CPU: the tool and the server compete, and the result says so.
HOST_BUSY_WARN = 0.95
REPORT_WIDTH = 120  # columns of the plain-text report


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


def op_table(summary: dict[str, Any]) -> Table:
    """Per operation: count, throughput and latency percentiles (ms)."""
    table = Table(box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    table.add_column("op", style="bold")
    for name in ("count", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"):
        table.add_column(name, justify="right")
    for label, d in summary["by_op"].items():
        lat = d["latency_us"]
        table.add_row(
            label, str(lat["count"]), f"{d['throughput_ops_s']:,.1f}",
            *(_ms(lat[p]) for p in ("p50", "p90", "p99", "p99.9", "max")),
        )  # fmt: skip
    return table


def renderables(summary: dict[str, Any]) -> list[RenderableType]:
    """The printed report: a headline, the operations table, then what else the run measured."""
    o = summary["options"]
    load = f"{o['clients']} clients, {o['conns']} conns/proc, {o['procs']} procs"
    if o["rate"]:
        load += f", rate {o['rate']:g}/s"
    head = Text.assemble(
        (summary["workload"], "bold"), f": {summary['ok']} ok ops in {summary['wall_s']:.2f} s = ",
        (f"{summary['throughput_ops_s']:,.1f} ops/s", "bold green"), f" ({load}) -> {', '.join(summary['endpoints'])}",
    )  # fmt: skip
    lines: list[RenderableType] = [head, op_table(summary)]
    notes: list[str] = []
    if "watch" in summary:
        w = summary["watch"]
        notes.append(
            f"watch: {w['events']} events to {w['watchers']} watchers = {w['events_per_s']:,.1f} events/s; "
            f"expected {w['events_expected']}, missing {w['events_missing']}"
            + ("" if w["drained"] else " (drain timed out)")
        )
    tl = summary["timeline"]
    notes.append(
        f"ok ops per 1 s window: min {tl['per_s_min']:,.0f} / median {tl['per_s_median']:,.0f} / "
        f"max {tl['per_s_max']:,.0f}; "
        f"longest stall with no completion: {tl['stall_ms_max']:.0f} ms (100 ms resolution)"
    )
    errs = summary["errors"]
    notes.append("errors: " + (", ".join(f"{k}={v}" for k, v in errs.items()) if errs else "none"))
    if summary["counters"]:
        notes.append("counters: " + ", ".join(f"{k}={v}" for k, v in summary["counters"].items()))
    t = summary["tool_cpu"]
    notes.append(
        f"tool cpu: {t['cpu_s']:.2f} s = {t['cores_used']:.2f} cores over {t['procs']} procs "
        f"(busiest process {t['busiest_proc_core_fraction'] * 100:.0f}% of a core); "
        f"machine {t['host_busy'] * 100:.0f}% busy over {t['host_cores']} cores"
    )
    s = summary["server_cpu"]
    if s["pids"]:
        notes.append(
            f"server cpu (pids {','.join(map(str, s['pids']))}): {s['cpu_s']:.2f} s = {s['cores_used']:.2f} cores, "
            f"{s['us_per_op']:,.0f} µs per ok op"
        )
    lines += [Text(n) for n in notes]
    if t["saturated"]:
        lines.append(Text(
            "WARNING: a load process used nearly a full core; the tool may be the bottleneck "
            "(add --procs, if the machine has idle cores)", style="bold yellow",
        ))  # fmt: skip
    if t["host_saturated"]:
        lines.append(Text(
            "WARNING: the machine had no idle CPU during the run: the tool and the server competed for it, "
            "so this measures the pair, not the server alone", style="bold yellow",
        ))  # fmt: skip
    return lines


def print_report(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    for item in renderables(summary):
        console.print(item, soft_wrap=isinstance(item, Text))  # long lines stay whole for grep


def render(summary: dict[str, Any], width: int = REPORT_WIDTH) -> str:
    """The report as plain text (no colours), as print_report lays it out."""
    console = Console(width=width, file=io.StringIO(), color_system=None, force_terminal=False)
    print_report(summary, console)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    return "\n".join(line.rstrip() for line in str(out).splitlines())
