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
CPU per append (user + system, from /proc, over the measured seconds) is the
least noisy figure there: the leader's, the three nodes' together, and the
client's. `--baseline-tree DIR` runs the same points on nodes started from
another source tree (e.g. `git worktree add /tmp/base main`) in the same run,
each point against the baseline's nodes first, then this tree's.

    kvstore bench journal-append        # fsync always, 256 B, 1/16/256 appenders, CPU per append
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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.journal_procs import ProcCluster
from bench.runner import pids_cpu_s
from journal.client import JournalClient


@dataclass
class Result:
    tree: str  # "this" or "baseline" (--baseline-tree)
    fsync: str
    entry_bytes: int
    concurrency: int
    appends: int
    seconds: float
    appends_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    leader_cpu_us: float  # CPU of the leader node per append
    nodes_cpu_us: float  # CPU of all three nodes per append
    client_cpu_us: float  # CPU of this process (the appenders' JournalClient) per append
    leader_syscalls: float  # read/write system calls of the leader per append (exact, unlike CPU)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def _self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _syscalls(pid: int) -> int:
    """read + write system calls of a process so far (/proc/PID/io: every socket and file I/O)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            fields = dict(line.split(": ") for line in f.read().splitlines())
    except OSError:
        return 0
    return int(fields["syscr"]) + int(fields["syscw"])


@dataclass
class CpuSample:
    leader: float
    nodes: float
    client: float
    leader_syscalls: int


def cpu_sample(cluster: ProcCluster, leader_pid: int) -> CpuSample:
    pids = [n.proc.pid for n in cluster.nodes.values() if n.proc is not None]
    return CpuSample(pids_cpu_s([leader_pid]), pids_cpu_s(pids), _self_cpu_s(), _syscalls(leader_pid))


async def run_one(
    client: JournalClient, log: str, entry_bytes: int, concurrency: int, seconds: float, warmup_s: float,
    on_measure: list[CpuSample] | None = None, sample: Callable[[], CpuSample] | None = None,
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

    async def sampler() -> None:
        if sample is None or on_measure is None:
            return
        await asyncio.sleep(max(0.0, measure_from - loop.time()))
        on_measure.append(sample())
        await asyncio.sleep(max(0.0, end - loop.time()))
        on_measure.append(sample())

    await asyncio.gather(sampler(), *(appender() for _ in range(concurrency)))
    return count, seconds, latencies


async def bench_policy(
    fsync: str, sizes: list[int], concurrencies: list[int], seconds: float, warmup_s: float, data_dir: Path,
    trees: dict[str, Path | None] | None = None,
) -> list[Result]:
    """Every point on each tree's cluster (one cluster per tree, started side by side)."""
    trees = trees or {"this": None}
    clusters: dict[str, tuple[ProcCluster, JournalClient, Path]] = {}
    results: list[Result] = []
    try:
        for name, tree in trees.items():
            base = Path(tempfile.mkdtemp(prefix=f"journal-bench-{fsync}-{name}-", dir=data_dir))
            cluster = ProcCluster(base, "abc", fsync=fsync, tick_ms=50)
            for node in cluster.nodes.values():
                node.cwd = tree  # `python -m journal.cli` runs that tree's code
            cluster.start()
            client = JournalClient(cluster.endpoints)
            clusters[name] = (cluster, client, base)
            await client.append("warmup", [b"x"])  # waits for the first election
        for size in sizes:
            for conc in concurrencies:
                for name, (cluster, client, _) in clusters.items():
                    log = f"bench-{size}-{conc}"
                    await client.append(log, [b"x"])  # elect this log's leader before measuring
                    leader = await cluster.leader(client, log)
                    assert leader.proc is not None
                    pid = leader.proc.pid
                    samples: list[CpuSample] = []
                    n, secs, lat = await run_one(client, log, size, conc, seconds, warmup_s, samples,
                                                 lambda c=cluster, p=pid: cpu_sample(c, p))  # type: ignore[misc]
                    lat.sort()
                    per = 1e6 / n if n else float("nan")
                    a, b = samples if len(samples) == 2 else (CpuSample(0, 0, 0, 0), CpuSample(0, 0, 0, 0))
                    r = Result(name, fsync, size, conc, n, secs, n / secs, percentile(lat, 0.5),
                               percentile(lat, 0.99), lat[-1] if lat else float("nan"),
                               (b.leader - a.leader) * per, (b.nodes - a.nodes) * per,
                               (b.client - a.client) * per,
                               (b.leader_syscalls - a.leader_syscalls) / max(n, 1))  # fmt: skip
                    results.append(r)
                    print(
                        f"{name:<8} fsync={fsync:<6} entry={size:>5} B  appenders={conc:>3}  "
                        f"{r.appends_per_s:>8.0f} appends/s  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:7.2f} ms  "
                        f"CPU µs/append: leader {r.leader_cpu_us:5.0f}, 3 nodes {r.nodes_cpu_us:5.0f}, "
                        f"client {r.client_cpu_us:5.0f}; leader syscalls/append {r.leader_syscalls:5.2f}  "
                        f"(load avg {os.getloadavg()[0]:.1f})",
                        flush=True,
                    )
    finally:
        for cluster, client, base in clusters.values():
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


JOURNAL_APPEND_DEFAULTS = ["--fsync", "always", "--sizes", "256", "--concurrency", "1,16,256"]


def journal_append_main(argv: list[str]) -> int:
    """`kvstore bench journal-append`: the append path's CPU at 1, 16 and 256 appenders (flags as below)."""
    return main([*JOURNAL_APPEND_DEFAULTS, *argv], prog="kvstore bench journal-append")


def main(argv: list[str] | None = None, prog: str = "python -m bench.journal_bench") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--fsync", default="always,batch", help="policies, comma separated (always, batch, never)")
    p.add_argument("--sizes", default="256,4096", help="entry sizes in bytes, comma separated")
    p.add_argument("--concurrency", default="1,4,16,64,256", help="appender counts, comma separated")
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per point")
    p.add_argument("--warmup-s", type=float, default=0.5)
    p.add_argument("--data-dir", default="/var/tmp", help="where the nodes' data goes (use a real disk)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--baseline-tree", type=Path, help="also run every point on nodes started from this source tree")
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
        trees: dict[str, Path | None] = {"this": None}
        if args.baseline_tree is not None:
            trees = {"baseline": args.baseline_tree.resolve(), "this": None}
        results += asyncio.run(
            bench_policy(policy, sizes, concs, args.seconds, args.warmup_s, Path(args.data_dir), trees)
        )
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    print(f"done in {time.time() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
