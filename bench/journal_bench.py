"""Journal benchmark: appends/s and commit latency on a 3-node cluster on loopback.

    python -m bench.journal_bench                       # the full matrix
    python -m bench.journal_bench --fsync always --sizes 256 --concurrency 1,16 --seconds 2

For each fsync policy the bench starts three `kvstore journal serve`
processes (AZs a, b, c) on free loopback ports with their data on disk
(--data-dir, default a fresh directory under /var/tmp), then for each entry
size and concurrency runs that many appenders, each appending one entry at a
time without pause through one JournalClient, for --seconds after a short
warm-up. Latency is measured per append, from the call to the acknowledgement
(the entry committed: durable on a quorum spanning two AZs).

The client runs in this process; on a small machine it shares the cores with
the three nodes, so the figures are for the whole system on that machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from journal.client import JournalClient
from tests.journal.procs import ProcCluster


@dataclass
class Result:
    fsync: str
    entry_bytes: int
    concurrency: int
    appends: int
    seconds: float
    appends_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


async def run_one(
    client: JournalClient, log: str, entry_bytes: int, concurrency: int, seconds: float, warmup_s: float
) -> tuple[int, float, list[float]]:
    payload = os.urandom(entry_bytes)
    latencies: list[float] = []
    count = 0
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warmup_s
    end = measure_from + seconds

    async def appender() -> None:
        nonlocal count
        while True:
            t0 = loop.time()
            if t0 >= end:
                return
            await client.append(log, [payload])
            t1 = loop.time()
            if t0 >= measure_from:
                latencies.append((t1 - t0) * 1000)
                count += 1

    await asyncio.gather(*(appender() for _ in range(concurrency)))
    return count, seconds, latencies


async def bench_policy(
    fsync: str, sizes: list[int], concurrencies: list[int], seconds: float, warmup_s: float, data_dir: Path
) -> list[Result]:
    base = Path(tempfile.mkdtemp(prefix=f"journal-bench-{fsync}-", dir=data_dir))
    cluster = ProcCluster(base, "abc", fsync=fsync, tick_ms=50)
    cluster.start()
    client = JournalClient(cluster.endpoints)
    results: list[Result] = []
    try:
        await client.append("warmup", [b"x"])  # waits for the first election
        for size in sizes:
            for conc in concurrencies:
                log = f"bench-{size}-{conc}"
                await client.append(log, [b"x"])  # elect this log's leader before measuring
                n, secs, lat = await run_one(client, log, size, conc, seconds, warmup_s)
                lat.sort()
                r = Result(fsync, size, conc, n, secs, n / secs, percentile(lat, 0.5), percentile(lat, 0.99),
                           lat[-1] if lat else float("nan"))  # fmt: skip
                results.append(r)
                print(
                    f"fsync={fsync:<6} entry={size:>5} B  appenders={conc:>3}  {r.appends_per_s:>8.0f} appends/s  "
                    f"p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:7.2f} ms  max {r.max_ms:7.2f} ms  "
                    f"(load avg {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
    finally:
        await client.close()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    return results


async def bench_failover(fsync: str, kills: int, appenders: int, data_dir: Path) -> list[float]:
    """kill -9 the leader under load, `kills` times; return each stall (longest gap between acks), in ms."""
    base = Path(tempfile.mkdtemp(prefix="journal-bench-failover-", dir=data_dir))
    cluster = ProcCluster(base, "abc", fsync=fsync, tick_ms=50)
    cluster.start()
    client = JournalClient(cluster.endpoints, rpc_timeout_ms=1000)
    loop = asyncio.get_running_loop()
    acks: list[float] = []
    stop = asyncio.Event()

    async def appender() -> None:
        while not stop.is_set():
            await client.append("failover", [b"x" * 256])
            acks.append(loop.time())

    stalls: list[float] = []
    tasks = []
    try:
        await client.append("failover", [b"x"])
        tasks = [asyncio.create_task(appender()) for _ in range(appenders)]
        for _ in range(kills):
            await asyncio.sleep(1.0)
            leader = await cluster.leader(client, "failover")
            killed_at = loop.time()
            leader.kill()
            n = len(acks)
            while len(acks) < n + 50:
                await asyncio.sleep(0.01)
            after = [t for t in acks if t >= killed_at]
            before = [t for t in acks if t < killed_at]
            gap = max(b - a for a, b in zip([*before[-1:], *after], after, strict=False)) if after else float("nan")
            stalls.append(gap * 1000)
            print(f"failover: kill -9 of leader {leader.node_id}: appends stalled {gap * 1000:.0f} ms "
                  f"(load avg {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
            leader.start()
            leader.wait_listening()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    return stalls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.journal_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--fsync", default="always,batch", help="policies, comma separated (always, batch, never)")
    p.add_argument("--sizes", default="256,4096", help="entry sizes in bytes, comma separated")
    p.add_argument("--concurrency", default="1,4,16,64,256", help="appender counts, comma separated")
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per point")
    p.add_argument("--warmup-s", type=float, default=0.5)
    p.add_argument("--data-dir", default="/var/tmp", help="where the nodes' data goes (use a real disk)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument(
        "--failover",
        type=int,
        default=0,
        metavar="N",
        help="instead: kill -9 the leader N times under load (16 appenders) and report the stalls",
    )
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    concs = [int(x) for x in args.concurrency.split(",")]
    started = time.time()
    if args.failover:
        stalls = asyncio.run(bench_failover(args.fsync.split(",")[0], args.failover, 16, Path(args.data_dir)))
        stalls.sort()
        print(f"failover stalls: median {stalls[len(stalls) // 2]:.0f} ms, max {stalls[-1]:.0f} ms over {len(stalls)}")
        return 0
    results: list[Result] = []
    for policy in args.fsync.split(","):
        results += asyncio.run(bench_policy(policy, sizes, concs, args.seconds, args.warmup_s, Path(args.data_dir)))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    print(f"done in {time.time() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
