"""A member's catch-up rate: how fast it applies a backlog of the journal (issue 10's healed member).

Three journal nodes and two members on their log; member b's own process (its applier) is
stopped with SIGSTOP while member a writes N single-put entries, then continued; the time from
SIGCONT until b serves the last write's revision (serializable gets every POLL_S) is its catch-up
of the backlog, applied with b ready (requests between apply steps). Its stream's frames were
queued in its socket meanwhile, one small batch per commit.

With --mode restart, b is stopped (SIGTERM) instead, and started again after the writes: its
stream then comes in the nodes' full read batches (up to 1024 entries, as after a heal, when the
stream reconnects), and the catch-up is timed from b's own log, from "opened state file" to
"ready" (the replay before it serves).

    python -m bench.catchup --entries 3000 --runs 2 [--mode restart]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from datetime import datetime

import grpc

from proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from tests.servers import ServerProcess, members_on_journal

POLL_S = 0.005
PUTS_INFLIGHT = 32
VALUE_BYTES = 64
CATCH_UP_TIMEOUT_S = 60.0


async def _write(target: str, entries: int, prefix: str) -> int:
    async with grpc.aio.insecure_channel(target) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        keys = iter(range(entries))
        revision = 0

        async def one_writer() -> None:
            nonlocal revision
            for i in keys:
                r = await kv.Put(rpc_pb2.PutRequest(key=f"{prefix}{i:06d}".encode(), value=b"x" * VALUE_BYTES))
                revision = max(revision, r.header.revision)

        await asyncio.gather(*(one_writer() for _ in range(PUTS_INFLIGHT)))
        return revision


def _caught_up_after(target: str, revision: int) -> float:
    """Seconds until target serves revision (from now); polls with serializable gets."""
    started = time.monotonic()
    with grpc.insecure_channel(target) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        while time.monotonic() - started < CATCH_UP_TIMEOUT_S:
            try:
                r = kv.Range(rpc_pb2.RangeRequest(key=b"none", serializable=True), timeout=1.0)
                if r.header.revision >= revision:
                    return time.monotonic() - started
            except grpc.RpcError:
                pass
            time.sleep(POLL_S)
    raise TimeoutError(f"not caught up to revision {revision} in {CATCH_UP_TIMEOUT_S} s")


def _watch(target: str, stop: threading.Event) -> None:
    """One watch stream on every key (as the robustness recorder's watcher), read until stop."""
    with grpc.insecure_channel(target) as ch:
        create = rpc_pb2.WatchCreateRequest(key=b"\0", range_end=b"\0", prev_kv=True)
        call = rpc_pb2_grpc.WatchStub(ch).Watch(iter([rpc_pb2.WatchRequest(create_request=create)]))
        with contextlib.suppress(grpc.RpcError):
            for _ in call:
                if stop.is_set():
                    call.cancel()


def _read(target: str, stop: threading.Event) -> None:
    with grpc.insecure_channel(target) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        while not stop.is_set():
            with contextlib.suppress(grpc.RpcError):
                kv.Range(rpc_pb2.RangeRequest(key=b"run0/000001", serializable=True), timeout=1.0)


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?(opened state file|ready:)")


def _restart_run(entries: int, run: int, a: ServerProcess, b: ServerProcess) -> None:
    b.stop(cleanup=False)
    revision = asyncio.run(_write(f"127.0.0.1:{a.port}", entries, f"run{run}/"))
    skip = len(b.log_path.read_bytes())
    b.start()
    took = _caught_up_after(f"127.0.0.1:{b.port}", revision)
    times = {}
    for line in b.log_path.read_bytes()[skip:].decode(errors="replace").splitlines():
        if m := _LOG_TIME.match(line):
            times[m.group(2)] = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
    replay_s = (times["ready:"] - times["opened state file"]).total_seconds()
    print(f"run {run}: {entries} entries replayed by b in {replay_s:.2f} s: {entries / replay_s:.0f} entries/s "
          f"(served the last write {took:.2f} s after its start returned); load {os.getloadavg()[0]:.2f}",
          flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--mode", choices=("pause", "restart"), default="pause")
    ap.add_argument("--watchers", type=int, default=0, help="watch streams on b's whole key space meanwhile")
    ap.add_argument("--readers", type=int, default=0, help="threads of serializable gets on b meanwhile")
    ap.add_argument("--profile", help="py-spy (collapsed stacks) of b's last catch-up into this file")
    ap.add_argument("--keep-log", help="copy member b's log to this file at the end")
    args = ap.parse_args()
    with members_on_journal("catchup-", {"a": {}, "b": {}}) as (_nodes, members):
        a, b = members["a"], members["b"]
        assert b.proc is not None
        stop = threading.Event()
        load = [threading.Thread(target=_watch, args=(f"127.0.0.1:{b.port}", stop), daemon=True)
                for _ in range(args.watchers)]  # fmt: skip
        load += [threading.Thread(target=_read, args=(f"127.0.0.1:{b.port}", stop), daemon=True)
                 for _ in range(args.readers)]  # fmt: skip
        for t in load:
            t.start()
        for run in range(args.runs):
            if args.mode == "restart":
                _restart_run(args.entries, run, a, b)
                continue
            os.kill(b.proc.pid, signal.SIGSTOP)
            try:
                wrote = time.monotonic()
                revision = asyncio.run(_write(f"127.0.0.1:{a.port}", args.entries, f"run{run}/"))
                wrote = time.monotonic() - wrote
            finally:
                os.kill(b.proc.pid, signal.SIGCONT)
            spy = None
            if args.profile and run == args.runs - 1:
                spy = subprocess.Popen(["py-spy", "record", "--nonblocking", "-r", "500", "-f", "raw", "-o",
                                        args.profile, "-p", str(b.proc.pid)], stdout=subprocess.DEVNULL)  # fmt: skip
            took = _caught_up_after(f"127.0.0.1:{b.port}", revision)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            print(f"run {run}: {args.entries} entries (written in {wrote:.1f} s) applied by b in {took:.2f} s: "
                  f"{args.entries / took:.0f} entries/s; load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
        stop.set()
        if args.keep_log:
            shutil.copyfile(b.log_path, args.keep_log)


if __name__ == "__main__":
    main()
