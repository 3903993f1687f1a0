"""The robustness runner: one scenario against a fresh cluster, then the checks and a report.

    python -m tests.robustness --scenario stop-leader-3s --seconds 30 --seed 1

Starts three journal nodes and three members (tests.robustness.cluster; the
netns layout for network faults, or with --netns yes), runs the recorder for
--seconds, injects the scenario's fault after a warm-up and again after each
recovery while time remains, then checks the history (linearizability,
revision order, watch rules, availability) and prints the report (and writes
report.json next to the history). Exit status 0 only for PASS.
Scenarios:"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.robustness import report as rep
from tests.robustness.cluster import Cluster, NetnsUnavailable
from tests.robustness.faults import KINDS
from tests.robustness.history import Fault, fault_line, load

WARMUP_S = 5.0
RECOVERY_S = 6.0  # after a fault ends, before the next one
COOLDOWN_S = 4.0  # after the last fault ends, before the recorder stops
READY_TIMEOUT_S = 120.0

__doc__ = (__doc__ or "").rstrip() + " " + ", ".join(KINDS)


def run(
    scenario: str,
    seconds: float,
    seed: int,
    work: Path,
    netns: str = "auto",
    code: Path | None = None,
    env: dict[str, str] | None = None,
    cpu_cores: float | None = None,
) -> rep.Report:
    kind = KINDS[scenario]
    use_netns = kind.netns or netns == "yes"
    rng = random.Random(seed)
    cluster = Cluster(work, use_netns, code, env, cpu_cores)
    cluster.needs_impair = kind.impairs
    history_path = work / "history.jsonl"
    faults: list[Fault] = []
    load_start = os.getloadavg()[0]
    try:
        cluster.start()
        ready, stop = work / "recorder.ready", work / "recorder.stop"
        recorder = cluster.recorder(history_path, seconds, seed, ready, stop)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.exists():
            if recorder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"recorder did not start: {(work / 'recorder.stderr').read_text()[-2000:]}")
            time.sleep(0.1)
        began = time.monotonic()
        time.sleep(WARMUP_S)
        while scenario != "none":
            f = kind.inject(cluster, rng)
            faults.append(f)
            with open(work / "faults.jsonl", "a") as out:
                out.write(fault_line(f) + "\n")
            took = (f.end - f.start) / 1e9
            if time.monotonic() - began + RECOVERY_S + took + COOLDOWN_S > seconds:
                break
            time.sleep(RECOVERY_S)
        recorder.wait(timeout=max(0.0, seconds - (time.monotonic() - began)) + 120)
    finally:
        cluster.stop()
    h = load(history_path)
    rep.merge_faults(h, faults)
    r = rep.build(h, scenario, seed, seconds, (load_start, os.getloadavg()[0]))
    # Paused nodes (stop-* faults) log late ticks too: that is the fault, not the machine.
    r.stalls = rep.machine_stalls([p.read_text(errors="replace") for p in sorted(work.glob("[abc].stderr"))])
    (work / "report.json").write_text(json.dumps(r.as_dict(), indent=1))
    # To line the history's monotonic times up with the processes' logs (wall clock).
    (work / "clock.json").write_text(json.dumps({"wall_minus_monotonic_s": time.time() - time.monotonic()}))
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tests.robustness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scenario", required=True, choices=sorted(KINDS))
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--netns", choices=("auto", "yes"), default="auto", help="auto: namespaces only for network faults; yes: always"
    )
    ap.add_argument("--code", type=Path, default=None, help="run nodes and members from this checkout")
    ap.add_argument("--work", type=Path, default=None, help="keep the run's files here (default: a temp dir)")
    ap.add_argument("--failpoints", default="", help="test-only failpoints for nodes and members (comma list)")
    ap.add_argument(
        "--cpu-cores",
        type=float,
        default=None,
        help="cap the nodes and members at this many CPUs together (a cgroup): a starved machine, reproducibly",
    )
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix=f"robustness-{args.scenario}-"))
    env = {"KVSTORE_FAILPOINTS": args.failpoints} if args.failpoints else {}
    try:
        r = run(args.scenario, args.seconds, args.seed, work, args.netns, args.code, env, args.cpu_cores)
    except NetnsUnavailable as e:
        print(f"scenario {args.scenario} needs network namespaces: {e}", file=sys.stderr)
        return 2
    print(json.dumps(r.as_dict(), indent=1) if args.json else r.text())
    print(f"  files: {work}")
    if r.verdict == "PASS" and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if r.verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
