"""A member's catch-up rate: how fast it applies a backlog of the journal (issue 10's healed member).

Three journal nodes and two members on their log; member b's own process (its applier) is
stopped with SIGSTOP while member a writes N single-put entries, then continued; the time from
SIGCONT until b serves the last write's revision (serializable gets every POLL_S) is its catch-up
of the backlog, applied with b ready (as after a heal, requests between apply steps).

    python -m bench.catchup --entries 3000 --runs 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import time

import grpc

from proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from tests.servers import members_on_journal

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--profile", help="py-spy (collapsed stacks) of b's last catch-up into this file")
    ap.add_argument("--keep-log", help="copy member b's log to this file at the end")
    args = ap.parse_args()
    with members_on_journal("catchup-", {"a": {}, "b": {}}) as (_nodes, members):
        a, b = members["a"], members["b"]
        assert b.proc is not None
        for run in range(args.runs):
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
        if args.keep_log:
            shutil.copyfile(b.log_path, args.keep_log)


if __name__ == "__main__":
    main()
