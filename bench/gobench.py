"""`kvstore bench go put|range|lease-keepalive ...`: the Go load driver (bench/go/benchmark), compiled on first use.

It uses etcd's Go client the way etcd's tools/benchmark does, and takes a fraction of the Python load
tool's CPU per request, so on a small machine it measures the server rather than the driver.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.gobuild import cached_build, go_missing

DRIVER_SRC = Path(__file__).resolve().parent / "go" / "benchmark"

USAGE = """usage: kvstore bench go put|range|lease-keepalive [--endpoints URLS] [--conns N] [--clients N]
              [--total N | --seconds S] [--key-size B] [--val-size B] [--key-space N]
              [--consistency l|s] [--json] ...
       kvstore bench go --build      (compile the driver into the cache and print its path)
       kvstore bench go put --help   (every flag)

The driver is compiled from bench/go/benchmark with Debian's golang-go and golang-etcd-server-dev
(offline) into ~/.cache/kvstore/go/ on first use."""


def driver() -> Path:
    """The compiled driver (built on first use)."""
    missing = go_missing()
    if missing:
        raise RuntimeError(f"cannot build the Go driver: {missing}")
    return cached_build(DRIVER_SRC, "benchmark")


def run_json(args: list[str], timeout_s: float | None = None) -> dict[str, Any]:
    """One driver run (args: workload and flags); its JSON result."""
    proc = subprocess.run([str(driver()), *args, "--json"], capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"Go driver {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    try:
        path = driver()
    except (RuntimeError, subprocess.SubprocessError) as e:
        print(f"kvstore bench go: {e}", file=sys.stderr)
        return 1
    if argv == ["--build"]:
        print(path)
        return 0
    sys.stdout.flush()
    os.execv(path, [str(path), *argv])
