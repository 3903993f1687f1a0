"""Watch fan-out with `kvstore serve --workers 1` and `--workers 2`: events delivered per second.

    python -m bench.watch_workers --rounds 3 [--base /path/to/another/checkout]

Each run starts a fresh member (local journal, state on tmpfs) and drives it with the load tool's
`watch` workload: 100 watchers over 8 streams on 8 connections (so SO_REUSEPORT spreads the
streams over the member's processes), 4 closed-loop clients putting under the watched prefix,
5 s. Rounds rotate the order of the targets. `--base` adds `--workers 2` run from another
checkout (e.g. one where front ends forward every watch to the member's process).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
READY_S = 60.0
LOAD = ["--watchers", "100", "--watch-streams", "8", "--conns", "8", "--clients", "4", "--duration", "5"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_once(code: Path, workers: int) -> dict[str, Any]:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="bench-watch-workers-", dir=base))
    url = f"http://127.0.0.1:{_free_port()}"
    err = work / "stderr.log"
    argv = [sys.executable, "-m", "kvstore", "serve", "--name=bench", f"--data-dir={work / 'data'}",
            f"--state-dir={work / 'state'}", f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
            f"--listen-metrics-urls=http://127.0.0.1:{_free_port()}", f"--workers={workers}"]  # fmt: skip
    with open(err, "wb") as log:
        srv = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(code)}, cwd=code,
                               stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
    try:
        deadline = time.monotonic() + READY_S
        while workers > 1 and b"front end 1 serving" not in err.read_bytes():
            if time.monotonic() > deadline or srv.poll() is not None:
                raise RuntimeError(f"the server did not start: {err.read_text()[-2000:]}")
            time.sleep(0.2)
        pids = [str(srv.pid), *Path(f"/proc/{srv.pid}/task/{srv.pid}/children").read_text().split()]
        out = work / "result.json"
        subprocess.run([sys.executable, "-m", "bench", "watch", "--endpoints", url, *LOAD,
                        "--server-pids", ",".join(pids), "--json", str(out), "--quiet", "--no-progress"],
                       env={**os.environ, "PYTHONPATH": str(HERE)}, cwd=HERE, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        result: dict[str, Any] = json.loads(out.read_text())
        return result
    finally:
        srv.terminate()
        srv.wait(30)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--base", type=Path, help="another checkout: its --workers 2 is run too")
    args = p.parse_args()
    targets: list[tuple[str, Path, int]] = [("workers-1", HERE, 1), ("workers-2", HERE, 2)]
    if args.base is not None:
        targets.append(("base-workers-2", args.base, 2))
    for rnd in range(args.rounds):
        shift = rnd % len(targets)
        for name, code, workers in targets[shift:] + targets[:shift]:
            r = run_once(code, workers)
            cpu = r.get("server_cpu", {})
            row = {"round": rnd + 1, "target": name, "events_per_s": r["watch"]["events_per_s"],
                   "missing": r["watch"]["events_missing"], "server_cores": cpu.get("cores_used"),
                   "host_busy": r.get("tool_cpu", {}).get("host_busy")}  # fmt: skip
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
