"""`python -m bench.restart`: time `kvstore serve` from exec to the first successful get after kill -9.

The restart of `kvstore bench scale` (the same kill -9, relaunch and first get, bench/scale.py) on a
small data set: a restart does no work that grows with the data, so what is measured is the
process start (interpreter, imports, opening the state file, listening). With several --tree, each
tree's server takes its turn in every round (A B A B ...), so that a shared machine's load falls on
all of them alike; the median of --repeats is reported per tree, --bytecode and --workers.

Each tree's packages are copied and started from the copy, in two ways (--bytecode): `source`, no
bytecode, every start compiles the sources (an editable install under PYTHONDONTWRITEBYTECODE=1, as
on the development machines), and `compiled`, bytecode made beforehand (as `pip install` makes it,
the container image's case).

    python -m bench.restart --repeats 5                                  # ~1 minute
    python -m bench.restart --tree /tmp/before --tree . --workers 1,2    # before/after, interleaved
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.scale import RESTART_TIMEOUT_S, _first_get, _write_keys, key_of
from bench.servers import Server, start_kvstore

KEYS = 1000  # the restart does not read them: enough to check the get answers from the data
VALUE_BYTES = 1024
LOAD_CONNS = 2
PACKAGES = ("kvstore", "journal", "proto")  # what `kvstore serve` imports from a tree
BYTECODE_MODES = ("source", "compiled")
FRONT_ENDS_UP_TIMEOUT_S = 60.0
FRONT_END_SERVING = "front end {} serving"  # kvstore/workers/frontend.py's log line once it listens
MEMBER_SERVING = " INFO kvstore: serving etcd v3 on "  # kvstore/server.py's, once the member listens
LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"  # the console log's asctime


def copy_tree(tree: str, dest: Path, bytecode: str) -> Path:
    """tree's packages copied to dest without their bytecode; with bytecode `compiled`, compiled there."""
    for package in PACKAGES:
        shutil.copytree(Path(tree) / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    if bytecode == "compiled":
        subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(dest / p) for p in PACKAGES)], check=True)
    return dest


def _with_tree(tree: Path) -> None:
    """Servers started from now on import kvstore from tree (the child inherits the environment) and
    write no bytecode (a `source` tree stays without)."""
    os.environ["PYTHONPATH"] = str(tree)
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"


def wait_front_ends(server: Server, workers: int, starts: int) -> None:
    """Until the log says every front end of the server's starts-th start serves: a restart kills a
    server that runs (as bench.scale's does), not one whose front ends are still importing."""
    deadline = time.monotonic() + FRONT_ENDS_UP_TIMEOUT_S
    while time.monotonic() < deadline:
        text = server.logs[0].read_text(errors="replace")
        if all(text.count(FRONT_END_SERVING.format(i)) >= starts for i in range(1, workers)):
            return
        time.sleep(0.05)
    raise TimeoutError(f"front ends not serving after {FRONT_ENDS_UP_TIMEOUT_S:.0f} s\n{server.log_tail()}")


def serving_since(server: Server, since: float) -> float:
    """Seconds from the wall-clock time since to the member's last "serving" log line (ms resolution)."""
    lines = [line for line in server.logs[0].read_text(errors="replace").splitlines() if MEMBER_SERVING in line]
    if not lines:
        return float("nan")
    stamp = lines[-1].split(MEMBER_SERVING)[0]
    return dt.datetime.strptime(stamp, LOG_TIME_FORMAT).timestamp() - since


def restart_once(server: Server, keys: int, value: bytes) -> tuple[float, float]:
    """kill -9 every process of server and start it again: seconds until a get of the last key
    answers, and until the member logged that it serves (where the start ends and the get begins)."""
    server.kill9()
    t0, wall0 = time.monotonic(), time.time()
    server.relaunch()
    asyncio.run(_first_get(server.endpoints[0], key_of(keys - 1), value, t0 + RESTART_TIMEOUT_S))
    return time.monotonic() - t0, serving_since(server, wall0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.restart", description=__doc__.split("\n")[0])
    p.add_argument("--tree", action="append", default=[], help="source tree to start kvstore from (repeatable)")
    p.add_argument("--workers", default="1,2", help="comma-separated --workers values (default 1,2)")
    p.add_argument(
        "--bytecode", default=",".join(BYTECODE_MODES), help="comma-separated: source, compiled (default both)"
    )
    p.add_argument("--repeats", type=int, default=5, help="restarts per tree and --workers (median reported)")
    p.add_argument("--keys", type=int, default=KEYS, help=f"keys loaded before the restarts (default {KEYS})")
    ns = p.parse_args(argv)
    sources = ns.tree or [os.environ.get("PYTHONPATH", ".").split(os.pathsep)[0] or "."]
    modes = ns.bytecode.split(",")
    if not set(modes) <= set(BYTECODE_MODES):
        p.error(f"--bytecode: {ns.bytecode!r}: source and/or compiled")
    value = b"r" * VALUE_BYTES
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="kvstore-bench-restart-") as base:
        copies = {(src, mode): copy_tree(src, Path(base) / f"tree{i}-{mode}", mode)
                  for i, src in enumerate(sources) for mode in modes}  # fmt: skip
        labels = [f"{src} ({mode})" for src, mode in copies]
        trees = list(copies.values())
        os.chdir(base)  # `python -m` puts the working directory first on the path: the copies' only
        for workers in (int(w) for w in ns.workers.split(",")):
            servers = []
            try:
                for i, tree in enumerate(trees):
                    _with_tree(tree)
                    d = Path(base) / f"w{workers}-t{i}"
                    d.mkdir()
                    server = start_kvstore(d, name=f"restart-w{workers}-t{i}", extra_args=[f"--workers={workers}"])
                    servers.append(server)
                    _write_keys(server.endpoints[0], ns.keys, value, LOAD_CONNS)
                times: list[list[float]] = [[] for _ in trees]
                serving: list[list[float]] = [[] for _ in trees]
                for r in range(ns.repeats):
                    for i, (tree, server) in enumerate(zip(trees, servers, strict=True)):
                        _with_tree(tree)
                        wait_front_ends(server, workers, r + 1)
                        took, served = restart_once(server, ns.keys, value)
                        times[i].append(took)
                        serving[i].append(served)
                for label, ts, ss in zip(labels, times, serving, strict=True):
                    each = ", ".join(f"{t:.2f}" for t in ts)
                    print(f"--workers {workers}  {label}: first get median {statistics.median(ts):.2f} s ({each}); "
                          f"serving logged at {statistics.median(ss):.2f} s", flush=True)  # fmt: skip
            finally:
                for server in servers:
                    server.stop()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
