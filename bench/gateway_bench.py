"""The JSON gateway, ours and etcd's, side by side in one run: sequential calls on keep-alive connections.

    python -m bench.gateway_bench [--requests 2000] [--clients 4]

Each client thread holds one HTTP/1.1 connection and sends POST /v3/kv/put then /v3/kv/range
(one key each) in turn; the figure is completed calls per second over all clients, and the
median and p99 latency of each call, and the server's CPU per call (every process of it, from /proc:
the steadiest figure on a shared machine). Rounds alternate between the servers.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.runner import pids_cpu_s
from bench.servers import Server, start_etcd, start_kvstore

ROUNDS = 2


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def client(url: str, n: int, worker: int, latencies: list[float]) -> None:
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        for i in range(n):
            key = b64(b"/gw/%d/%d" % (worker, i % 100))
            path, body = (("/v3/kv/put", {"key": key, "value": b64(b"x" * 100)}) if i % 2 == 0
                          else ("/v3/kv/range", {"key": key}))
            start = time.perf_counter()
            conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{path}: HTTP {resp.status}")
            latencies.append(time.perf_counter() - start)
    finally:
        conn.close()


def run(server: Server, requests: int, clients: int) -> tuple[float, float, float, float]:
    latencies: list[float] = []
    per_client = requests // clients
    threads = [threading.Thread(target=client, args=(server.endpoints[0], per_client, w, latencies))
               for w in range(clients)]
    pids = server.pids()
    cpu_before = pids_cpu_s(pids)
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    cpu_us_per_call = (pids_cpu_s(pids) - cpu_before) / len(latencies) * 1e6
    latencies.sort()
    p50, p99 = statistics.median(latencies) * 1e3, latencies[int(len(latencies) * 0.99)] * 1e3
    return len(latencies) / elapsed, p50, p99, cpu_us_per_call


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=4)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        servers = {"etcd": start_etcd(Path(tmp), name="etcd"), "kvstore": start_kvstore(Path(tmp), name="kvstore")}
        try:
            for r in range(ROUNDS):
                for name, server in servers.items():
                    rate, p50, p99, cpu = run(server, args.requests, args.clients)
                    print(f"round {r + 1} {name:8s}: {rate:8.1f} calls/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                          f"server CPU {cpu:6.0f} us/call", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
