"""Put and range throughput with and without client TLS, ours and etcd's, in one run.

    python -m bench.tls_bench --duration 10 --clients 32 --conns 4

Starts four servers on free loopback ports (etcd and `kvstore serve`, each plain
and with https:// client URLs and a certificate made for the run), drives each
with the load tool (`put`, then linearizable single-key `range`), one server at
a time, repeats that for --rounds rounds (a busy machine drifts: rounds
alternate the servers in time) and prints the median of each cell. A benchmark,
not a test: figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.servers import etcd_binary, free_ports
from kvstore.transport.tls import self_signed

READY_TIMEOUT_S = 60.0


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"port {port} not listening")


def start(kind: str, tls: bool, base: Path, cert: str, key: str) -> tuple[subprocess.Popen[bytes], str]:
    port, peer, metrics = free_ports(3)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    tls_flags = [f"--cert-file={cert}", f"--key-file={key}"] if tls else []
    data = base / f"{kind}-{'tls' if tls else 'plain'}"
    if kind == "etcd":
        cmd = [
            etcd_binary(), f"--data-dir={data}", f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}", "--log-level=error", *tls_flags,
        ]  # fmt: skip
    else:
        cmd = [
            sys.executable, "-m", "kvstore", "serve", f"--data-dir={data}", f"--state-dir={data}-state",
            f"--listen-client-urls={url}", f"--listen-metrics-urls=http://127.0.0.1:{metrics}",
            "--log-level=error", *tls_flags,
        ]  # fmt: skip
    log = open(base / f"{data.name}.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
    log.close()
    _wait_port(port, proc)
    time.sleep(2.0)  # etcd elects itself; ours finishes start-up
    return proc, url


def load(workload: str, url: str, ca: str, args: argparse.Namespace, base: Path) -> float:
    out = base / "result.json"
    cmd = [
        sys.executable, "-m", "bench", workload, f"--endpoints={url}", f"--clients={args.clients}",
        f"--conns={args.conns}", f"--duration={args.duration}", f"--json={out}", "--quiet", f"--cacert={ca}",
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    throughput: float = json.loads(out.read_text())["throughput_ops_s"]
    return throughput


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tls_bench")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per workload and server")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--conns", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="tls-bench-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    cert, key = self_signed(str(base / "cert"), ["127.0.0.1"])
    cells: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for round_no in range(args.rounds):
            for kind in ("etcd", "kvstore"):
                for tls in (False, True):
                    mode = "TLS" if tls else "plain"
                    proc, url = start(kind, tls, base, cert, key)
                    try:
                        put = load("put", url, cert, args, base)
                        rng = load("range", url, cert, args, base)
                    finally:
                        os.killpg(proc.pid, signal.SIGTERM)
                        proc.wait(20)
                        shutil.rmtree(base / f"{kind}-{mode.lower()}", ignore_errors=True)
                        shutil.rmtree(base / f"{kind}-{mode.lower()}-state", ignore_errors=True)
                    cells.setdefault((kind, mode), []).append((put, rng))
                    print(f"round {round_no + 1}: {kind:8} {mode:6} put {put:>9,.1f} ops/s   "
                          f"range {rng:>9,.1f} ops/s", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nmedian of {args.rounds} rounds, {args.duration:g} s each, {args.clients} clients, {args.conns} conns")
    print("| server | client URL | put ops/s | range (linearizable) ops/s |\n|---|---|---|---|")
    for (kind, mode), runs in cells.items():
        put = statistics.median(r[0] for r in runs)
        rng = statistics.median(r[1] for r in runs)
        print(f"| {kind} | {mode} | {put:,.0f} | {rng:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
