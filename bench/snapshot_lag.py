"""`python -m bench.snapshot_lag`: how long a journal snapshot holds up the member's event loop, in one process.

A member on a local journal (journal on disk, state on /dev/shm, as `kvstore serve` runs) is filled
with --keys keys of 1 KiB in Txns of 100 puts, applied directly (no gRPC), then its snapshot is put
into the journal as `--snapshot-count` does it (Member.save_journal_snapshot: the state streamed in
chunks out of one LMDB read transaction into the journal's snapshot file) while a probe on the loop
sleeps 1 ms at a time and records how late each wake-up is. Reported: the snapshot's seconds, the
longest wake-up delay, and the delays of 10 and 50 ms or more, also less the loop thread's run-queue
wait (`held`: the machine's other processes taken out); then the same probes with no snapshot, as the
floor of this machine at this moment (it is shared: compare in the same minute). A small append to the
journal every 10 ms is timed too (a put's durable write). With --busy, the loop also runs a serving
loop's work, in 0.5 ms steps, and the steps done per second say what share the snapshot left it.

    python -m bench.snapshot_lag --keys 300000 [--busy]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

from kvstore.statemachine import Kind, encode_entry
from proto.etcdserverpb import rpc_pb2 as pb

PROBE_PAUSE_S = 0.001
PUTS_PER_TXN = 100
VALUE_BYTES = 1024
IDLE_PROBE_S = 3.0
APPEND_PAUSE_S = 0.01
BUSY_STEP_S = 0.0005


def _runqueue_wait_s(stat: str) -> float:
    """Seconds this thread has waited on a run queue (runnable, another process on the CPU)."""
    with open(stat) as f:
        return int(f.read().split()[1]) / 1e9


async def _probe(stop: asyncio.Event, delays: list[float], held: list[float]) -> None:
    """delays: how late each wake-up was; held: the same less the loop thread's run-queue wait,
    i.e. the machine's other processes taken out (what the member's own work, the GIL
    included, kept the loop from)."""
    stat = f"/proc/self/task/{threading.get_native_id()}/schedstat"
    while not stop.is_set():
        t, w = time.perf_counter(), _runqueue_wait_s(stat)
        await asyncio.sleep(PROBE_PAUSE_S)
        late = time.perf_counter() - t - PROBE_PAUSE_S
        delays.append(late)
        held.append(max(0.0, late - (_runqueue_wait_s(stat) - w)))


async def _appends(stop: asyncio.Event, journal: Any, log: str, latencies: list[float]) -> None:
    """A put's durable write meanwhile: one small append (fsync'd) every APPEND_PAUSE_S."""
    while not stop.is_set():
        t = time.perf_counter()
        await journal.append(log, [b"probe"])
        latencies.append(time.perf_counter() - t)
        await asyncio.sleep(APPEND_PAUSE_S)


async def _busy(stop: asyncio.Event, done: list[int]) -> None:
    """A serving loop's own work: BUSY_STEP_S of Python at a time, then the loop's other tasks."""
    while not stop.is_set():
        end = time.perf_counter() + BUSY_STEP_S
        while time.perf_counter() < end:
            pass
        done[0] += 1
        await asyncio.sleep(0)


def _summary(delays: list[float]) -> dict[str, float]:
    ms = sorted(d * 1000 for d in delays)
    return {
        "ticks": len(ms),
        "max_ms": round(ms[-1], 1) if ms else 0.0,
        "p99_ms": round(ms[int(len(ms) * 0.99)], 1) if ms else 0.0,
        "ticks_10ms": sum(1 for d in ms if d >= 10),
        "ticks_50ms": sum(1 for d in ms if d >= 50),
    }


async def _run(keys: int, busy: bool) -> dict[str, object]:
    from journal.local import LocalJournal
    from kvstore.member import Member, MemberConfig

    work = tempfile.mkdtemp(prefix="snapshot-lag-", dir="/var/tmp")
    state = tempfile.mkdtemp(prefix="snapshot-lag-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    member = Member(MemberConfig(name="a", data_dir=work, state_dir=state), LocalJournal(os.path.join(work, "journal")))
    try:
        sm, value = member.sm, b"v" * VALUE_BYTES
        started = time.monotonic()
        for first in range(0, keys, PUTS_PER_TXN):
            req = pb.TxnRequest(success=[
                pb.RequestOp(request_put=pb.PutRequest(key=b"/scale/%09d" % i, value=value))
                for i in range(first, min(keys, first + PUTS_PER_TXN))
            ])  # fmt: skip
            position = sm.applied_position + 1
            sm.apply(position, 1_000 + position, encode_entry(Kind.TXN, 1, position, req.SerializeToString()))
        fill_s = time.monotonic() - started
        # The journal holds as many entries (small ones: only the snapshot's file is measured).
        for first in range(0, sm.applied_position, 1000):
            await member.journal.append(member.log_name, [b"x"] * min(1000, sm.applied_position - first))
        loop = asyncio.get_running_loop()
        stop, delays, held, appends = asyncio.Event(), [], [], []
        probes = [
            loop.create_task(_probe(stop, delays, held)),
            loop.create_task(_appends(stop, member.journal, member.log_name, appends)),
        ]
        steps = [0]
        if busy:
            probes.append(loop.create_task(_busy(stop, steps)))
        started = time.monotonic()
        await member.save_journal_snapshot()
        snapshot_s = time.monotonic() - started
        work_during = steps[0] / snapshot_s
        stop.set()
        await asyncio.gather(*probes)
        stop, idle, idle_held, idle_appends = asyncio.Event(), [], [], []
        probes = [
            loop.create_task(_probe(stop, idle, idle_held)),
            loop.create_task(_appends(stop, member.journal, member.log_name, idle_appends)),
        ]
        steps = [0]
        if busy:
            probes.append(loop.create_task(_busy(stop, steps)))
        await asyncio.sleep(IDLE_PROBE_S)
        stop.set()
        await asyncio.gather(*probes)
        reader = await member.journal.snapshot_open(member.log_name)
        assert reader is not None and reader.position == sm.applied_position
        snap_bytes = reader.size_bytes
        await reader.close()
        return {
            "keys": keys,
            "fill_s": round(fill_s, 2),
            "snapshot_s": round(snapshot_s, 2),
            "snapshot_bytes": snap_bytes,
            **({"busy_steps_per_s": [round(work_during), round(steps[0] / IDLE_PROBE_S)]} if busy else {}),
            "loop_during_snapshot": _summary(delays),
            "loop_held_during_snapshot": _summary(held),
            "loop_idle": _summary(idle),
            "loop_held_idle": _summary(idle_held),
            "append_during_snapshot": _summary(appends),
            "append_idle": _summary(idle_appends),
            "load_average": os.getloadavg(),
        }
    finally:
        await member.journal.close()
        member.sm.close()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.snapshot_lag", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--keys", type=int, default=300_000, help="keys of 1 KiB in the state (default 300K)")
    p.add_argument(
        "--busy",
        action="store_true",
        help=f"the loop also busy ({BUSY_STEP_S * 1000:g} ms steps of Python): "
        "busy_steps_per_s says how much of it the loop kept during the snapshot, and without it",
    )
    ns = p.parse_args(sys.argv[1:] if argv is None else argv)
    print(json.dumps(asyncio.run(_run(ns.keys, ns.busy))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
