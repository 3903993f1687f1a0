"""Runs a workload: one or several load processes, a start barrier, pacing, progress, merge.

Each load process runs one asyncio loop (uvloop) with `--conns` gRPC connections and its share
of `--clients` closed-loop clients. With `--rate`, clients start operations on a fixed schedule
and latency is measured from the scheduled start, so a stalled server shows up as latency
instead of silently lowering the offered load (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import queue
import resource
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from bench.options import Options
from bench.recorder import ProcessResult, Recorder
from bench.routing import Routes
from bench.workloads import WORKLOAD_CLASSES, Client, Conn, Exhausted, now_ns, share
from kvstore.partition.plan import DEFAULT_PARTITION

PROGRESS_INTERVAL_S = 0.2
BARRIER_TIMEOUT_S = 120.0
CHILD_START_TIMEOUT_S = 120.0


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def pids_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of the given live processes (Linux /proc); gone ones count 0."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14 and 15)
    return total / ticks


def host_cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat (Linux), (0, 0) elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


TCP_ESTABLISHED = "01"  # the state column of /proc/net/tcp


def client_connections(pids: list[int], port: int) -> list[int]:
    """Established TCP connections on local port held by each of pids, in pids' order (Linux /proc;
    zeros elsewhere): how the kernel split a load's connections over the processes of one server."""
    owner: dict[str, int] = {}  # socket inode -> index in pids
    for i, pid in enumerate(pids):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue  # closed meanwhile
            if link.startswith("socket:["):
                owner[link[len("socket:[") : -1]] = i
    counts = [0] * len(pids)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()  # sl, local address:port, remote, state, ..., inode (the 10th)
            if fields[3] == TCP_ESTABLISHED and int(fields[1].rsplit(":", 1)[1], 16) == port:
                index = owner.get(fields[9])
                if index is not None:
                    counts[index] += 1
    return counts


def _conns_for(opts: Options, proc_index: int) -> list[Conn]:
    eps = opts.endpoints
    tls = (opts.cacert, opts.cert, opts.key)
    return [Conn(eps[(proc_index * opts.conns + i) % len(eps)], tls) for i in range(opts.conns)]


def _partition_conns(opts: Options, proc_index: int, conns: list[Conn]) -> dict[str, list[Conn]]:
    """With --partitions: --conns connections to every partition (the default one's are conns)."""
    if not opts.partitions:
        return {}
    urls = Routes(opts).urls
    out = {DEFAULT_PARTITION: conns}
    for name, eps in urls.items():
        if name != DEFAULT_PARTITION:
            out[name] = [Conn(eps[(proc_index * opts.conns + i) % len(eps)]) for i in range(opts.conns)]
    return out


def _all_conns(conns: list[Conn], by_partition: dict[str, list[Conn]]) -> list[Conn]:
    return conns + [c for name, cs in by_partition.items() if name != DEFAULT_PARTITION for c in cs]


async def connect(conns: list[Conn], timeout_s: float) -> None:
    for c in conns:
        try:
            await asyncio.wait_for(c.channel.channel_ready(), timeout_s)
        except TimeoutError:
            raise ConnectionError(f"cannot connect to {c.endpoint} within {timeout_s:g} s") from None


async def populate(opts: Options) -> None:
    conns = _conns_for(opts, 0)
    by_partition = _partition_conns(opts, 0, conns)
    try:
        await connect(_all_conns(conns, by_partition), opts.timeout_s)
        wl = WORKLOAD_CLASSES[opts.workload](opts, 0, Recorder())
        wl.partition_conns = by_partition
        await wl.populate(conns)
    finally:
        for c in _all_conns(conns, by_partition):
            await c.close()


async def run_process(
    opts: Options,
    proc_index: int,
    report_done: Callable[[int], None],
    start_gate: Callable[[], Awaitable[None]],
) -> ProcessResult:
    rec = Recorder()
    wl = WORKLOAD_CLASSES[opts.workload](opts, proc_index, rec)
    conns = _conns_for(opts, proc_index)
    by_partition = _partition_conns(opts, proc_index, conns)
    wl.partition_conns = by_partition
    nclients = share(opts.clients, opts.procs, proc_index)
    first = sum(share(opts.clients, opts.procs, j) for j in range(proc_index))
    clients = [
        Client(
            first + i,
            conns[i % len(conns)],
            opts.seed,
            wl.routes,
            {n: cs[i % len(cs)] for n, cs in by_partition.items()},
        )
        for i in range(nclients)
    ]
    total = share(opts.total, opts.procs, proc_index) if opts.total is not None else None
    interval_ns = int(1e9 * opts.procs / opts.rate) if opts.rate else 0
    try:
        await connect(_all_conns(conns, by_partition), opts.timeout_s)
        await wl.prepare(conns, clients)
        await start_gate()
        cpu0 = _cpu_s()
        server0 = pids_cpu_s(opts.server_pids) if proc_index == 0 else 0.0
        host0 = host_cpu_ticks()
        start = now_ns()
        deadline = start + int(opts.duration_s * 1e9) if opts.duration_s is not None else None
        issued = 0

        async def client_loop(c: Client) -> None:
            nonlocal issued
            while True:
                if total is not None and issued >= total:
                    return
                seq = issued
                issued += 1
                if interval_ns:
                    t0 = start + seq * interval_ns
                    if deadline is not None and t0 >= deadline:
                        return
                    delay = t0 - now_ns()
                    if delay > 0:
                        await asyncio.sleep(delay / 1e9)
                else:
                    t0 = now_ns()
                    if deadline is not None and t0 >= deadline:
                        return
                try:
                    await wl.op(c, t0)
                except grpc.aio.AioRpcError as e:
                    rec.errors[e.code().name] += 1
                except TimeoutError:  # a stream read past --timeout
                    rec.errors["DEADLINE_EXCEEDED"] += 1
                except Exhausted:
                    return
                else:
                    rec.completed(now_ns())
                rec.done += 1

        async def progress() -> None:
            while True:
                report_done(rec.done)
                await asyncio.sleep(PROGRESS_INTERVAL_S)

        ticker = asyncio.create_task(progress())
        try:
            await asyncio.gather(*(client_loop(c) for c in clients))
            await wl.finish(conns)
        finally:
            ticker.cancel()
        end = now_ns()
        cpu_s = _cpu_s() - cpu0
        host1 = host_cpu_ticks()
        server_cpu_s = pids_cpu_s(opts.server_pids) - server0 if proc_index == 0 else 0.0
        host_busy = (host1[0] - host0[0]) / max(1, host1[1] - host0[1])
        report_done(rec.done)
        await wl.cleanup(conns)
    finally:
        for c in _all_conns(conns, by_partition):
            await c.close()
    return ProcessResult(
        proc_index=proc_index,
        start_ns=start,
        end_ns=end,
        ops=rec.done,
        cpu_s=cpu_s,
        host_busy=host_busy,
        server_cpu_s=server_cpu_s,
        hists={k: h.to_json() for k, h in rec.hists.items()},
        errors=dict(rec.errors),
        counters=dict(rec.counters),
        timeline={str(b): c for b, c in rec.timeline.items()},
    )


class ProgressBar:
    """The load's progress on stderr (rich): operations done of --total, or time of --duration,
    with the rate so far; silent when stderr is not a terminal."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.console = Console(stderr=True)
        self.enabled = opts.progress and self.console.is_terminal
        self.start: float | None = None  # time.monotonic() when the load began (after set-up)
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def begin(self, start: float) -> None:
        self.start = start

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                TextColumn("{task.fields[ops]}"), TimeElapsedColumn(),
                console=self.console, auto_refresh=False, transient=False,
            )  # fmt: skip
            self._progress.start()
            self._task = self._progress.add_task(f"setting up {self.opts.procs} load process(es)", total=None, ops="")
        assert self._task is not None
        if self.start is None:
            self._progress.refresh()
            return
        elapsed = time.monotonic() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        if self.opts.total is not None:
            completed, total = float(min(done, self.opts.total)), float(self.opts.total)
        else:
            assert self.opts.duration_s is not None
            completed, total = min(elapsed, self.opts.duration_s), self.opts.duration_s
        self._progress.update(self._task, description=self.opts.workload, completed=completed, total=total,
                              ops=f"{done:,} ops {rate:,.0f}/s", refresh=True)  # fmt: skip

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _install_uvloop() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        pass


async def _run_single(opts: Options, bar: ProgressBar) -> ProcessResult:
    await populate(opts)

    async def gate() -> None:
        bar.begin(time.monotonic())

    return await run_process(opts, 0, bar.update, gate)


def _child(opts: Options, proc_index: int, progress: Any, started: Any, barrier: Any, out: Any) -> None:
    """Entry point of a spawned load process: runs its share and sends back its result as JSON."""
    _install_uvloop()

    def report(done: int) -> None:
        progress[proc_index] = done

    async def gate() -> None:
        await asyncio.get_running_loop().run_in_executor(None, barrier.wait, BARRIER_TIMEOUT_S)
        if proc_index == 0:
            started.value = time.monotonic()  # CLOCK_MONOTONIC: the parent's clock too

    try:
        result = asyncio.run(run_process(opts, proc_index, report, gate))
        out.put(("ok", proc_index, result.to_json()))
    except BaseException:
        barrier.abort()  # release the siblings instead of leaving them at the barrier
        out.put(("error", proc_index, traceback.format_exc()))


def run(opts: Options) -> list[ProcessResult]:
    """Populate once, then run the load in `opts.procs` processes; one result per process."""
    opts.validate()
    _install_uvloop()
    bar = ProgressBar(opts)
    try:
        if opts.procs == 1:
            return [asyncio.run(_run_single(opts, bar))]
        asyncio.run(populate(opts))
        return _run_multi(opts, bar)
    finally:
        bar.close()


def _run_multi(opts: Options, bar: ProgressBar) -> list[ProcessResult]:
    ctx = mp.get_context("spawn")  # gRPC's core does not survive fork()
    progress = ctx.Array("q", opts.procs, lock=False)
    started = ctx.Value("d", 0.0, lock=False)
    barrier = ctx.Barrier(opts.procs, action=None)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_child, args=(opts, i, progress, started, barrier, out), daemon=True)
        for i in range(opts.procs)
    ]
    for p in procs:
        p.start()
    results: list[ProcessResult] = []
    errors: list[str] = []
    budget_s = CHILD_START_TIMEOUT_S + (opts.duration_s or 0) + opts.drain_timeout_s
    if opts.total is not None:
        budget_s += 3600  # bounded by --total; the hour is only a backstop against a hung server
    deadline = time.monotonic() + budget_s
    try:
        while len(results) + len(errors) < opts.procs:
            if time.monotonic() > deadline:
                raise RuntimeError("load processes did not finish in time")
            try:
                status, idx, payload = out.get(timeout=PROGRESS_INTERVAL_S)
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and out.empty():
                    raise RuntimeError("a load process died without a result") from None
                if started.value and bar.start is None:
                    bar.begin(started.value)
                bar.update(sum(progress))
                continue
            if status == "ok":
                results.append(ProcessResult.from_json(payload))
            else:
                errors.append(f"process {idx}:\n{payload}")
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    if errors:
        raise RuntimeError("load process failed: " + "\n".join(errors))
    return sorted(results, key=lambda r: r.proc_index)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
