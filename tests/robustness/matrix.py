"""The full matrix: every scenario x several seeds, one run after another, and its table.

    python -m tests.robustness.matrix --out /tmp/matrix --seeds 1,2 [--scenarios a,b] [--code DIR]
    python -m tests.robustness.matrix --out /tmp/matrix --table     # the table of what has run

Each run's report is appended to OUT/results.jsonl as it finishes (so a cut
session keeps what ran; a rerun of the same command skips the runs already
there). The table has one row per scenario: runs, verdicts, the longest gap
around a fault per run (and per fault), operations and load. The same runs are
what `pytest -m slow tests/robustness` asserts safe.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests.robustness.__main__ import run
from tests.robustness.cluster import NetnsUnavailable
from tests.robustness.faults import KINDS
from tests.robustness.report import machine_stalls


def seconds_for(scenario: str) -> float:
    """Long enough for two or more faults with their recovery."""
    return 50.0 if scenario.endswith(("15s", "8s")) else 40.0


def table(results: list[dict[str, Any]]) -> str:
    rows = defaultdict(list)
    for r in results:
        if "stalls" not in r and Path(r.get("work", "/nonexistent")).is_dir():  # a run from before stalls were kept
            r["stalls"] = machine_stalls([p.read_text(errors="replace") for p in Path(r["work"]).glob("[abc].stderr")])
        rows[(r["scenario"], r.get("code", ""))].append(r)
    out = [
        "| scenario | code | runs | verdicts | longest gap around a fault, per run (each fault) | "
        "longest gap anywhere | ops per run (unknown) | load avg | slow fsyncs (longest), late ticks (longest) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (scenario, code), rs in sorted(rows.items()):
        rs.sort(key=lambda r: r["seed"])
        verdicts = "/".join(sorted({r["verdict"] for r in rs}))
        safe = all(r["verdict"] != "UNSAFE" for r in rs)
        per_run = "; ".join(
            f"{r['longest_fault_gap_s']:.2f} s ({', '.join(format(f['gap_s'], '.2f') for f in r['faults'])})"
            for r in rs
        )
        anywhere = "; ".join(f"{r['longest_gap_s']:.2f} s" for r in rs)
        ops = "; ".join(f"{r['ops']} ({r['ops_unknown']})" for r in rs)
        load = "; ".join(f"{r['load_avg'][0]:.0f}-{r['load_avg'][1]:.0f}" for r in rs)
        stalls = "; ".join(
            f"{s['slow_fsyncs']:g} ({s['slow_fsync_max_s']:.1f} s), {s['late_ticks']:g} ({s['late_tick_max_s']:.1f} s)"
            if (s := r.get("stalls"))
            else "-"
            for r in rs
        )
        out.append(
            f"| `{scenario}` | {code or 'this tree'} | {len(rs)} | {verdicts}{', all safe' if safe else ''} | "
            f"{per_run} | {anywhere} | {ops} | {load} | {stalls} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.robustness.matrix", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--out", type=Path, required=True, help="results.jsonl and the kept work dirs of failed runs")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--scenarios", default="", help="comma list (default: every scenario but none)")
    ap.add_argument("--code", type=Path, default=None, help="run nodes and members from this checkout")
    ap.add_argument("--cpu-cores", type=float, default=None, help="as for python -m tests.robustness")
    ap.add_argument("--table", action="store_true", help="only print the table of OUT/results.jsonl")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.jsonl"
    results = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.exists() else []
    if not args.table:
        scenarios = args.scenarios.split(",") if args.scenarios else sorted(k for k in KINDS if k != "none")
        code = str(args.code or "")
        done = {(r["scenario"], r["seed"], r.get("code", "")) for r in results}
        for seed in (int(s) for s in args.seeds.split(",")):
            for scenario in scenarios:
                if (scenario, seed, code) in done:
                    continue
                r = None
                for _attempt in range(2):  # a run that cannot start (a port taken meanwhile) is tried once more
                    work = Path(tempfile.mkdtemp(prefix=f"{scenario}-{seed}-", dir=args.out))
                    try:
                        r = run(scenario, seconds_for(scenario), seed, work, code=args.code, cpu_cores=args.cpu_cores)
                        break
                    except NetnsUnavailable as e:
                        print(f"{scenario}: skipped: {e}", file=sys.stderr)
                        break
                    except (RuntimeError, OSError, TimeoutError) as e:
                        print(f"{scenario} seed {seed}: the run failed to start or finish: {e!r}", file=sys.stderr)
                if r is None:
                    continue
                d = {**r.as_dict(), "code": code, "work": str(work)}
                with open(results_path, "a") as f:
                    f.write(json.dumps(d) + "\n")
                results.append(d)
                print(f"{scenario} seed {seed}: {r.verdict}, {r.longest_fault_gap_s:.2f} s", flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
