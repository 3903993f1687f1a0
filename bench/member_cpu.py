"""`kvstore bench member-cpu`: CPU per request of our own code, without gRPC, in one process.

On a shared 2-core machine, end-to-end runs (`kvstore bench floor`) move by 20-50 % between runs with
the neighbours' load; a change of a few percent of our own cost per request is lost in that. This
bench calls the KV servicer's handlers directly (validation, auth, quota, proposal, the local
journal's writer and fsync thread, the applier, response) from --clients concurrent coroutines on
uvloop and reads the process's own CPU time (every thread, user + system) per request: what our code
costs above gRPC. It cannot measure gRPC, the multiplexer pipe or the load tool: the floor does.

    kvstore bench member-cpu                               # put, range-l, range-s; 64 clients
    kvstore bench member-cpu --baseline-tree /tmp/parent   # the same in a tree of another commit, alternating

With --baseline-tree each round runs the workload in a child process of each tree (PYTHONPATH set to
it), alternating, and the table gives the medians and baseline / this.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORKLOADS = ["put", "range-l", "range-s"]
KEY_BYTES = 32  # the load tool's defaults
VALUE_BYTES = 256
KEY_SPACE = 10_000


class _Context:
    """The part of grpc.aio.ServicerContext the KV handlers use on success."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    async def abort(self, code: Any, message: str) -> None:
        raise RuntimeError(f"{code}: {message}")


def _cpu_s() -> float:
    return time.process_time()  # every thread of the process, user + system, finer than os.times()


async def _measure(workload: str, clients: int, requests: int, data_dir: str, fsync: str) -> dict[str, float]:
    from journal.local import LocalJournal
    from kvstore.member import Member, MemberConfig
    from kvstore.v3rpc.auth import Authenticator
    from kvstore.v3rpc.servicers import KV
    from proto.etcdserverpb import rpc_pb2 as pb

    config = MemberConfig(data_dir=data_dir, state_dir=os.path.join(data_dir, "state"))
    member = Member(config, LocalJournal(os.path.join(data_dir, "journal"), fsync=fsync))  # type: ignore[arg-type]
    await member.start()
    kv = KV(member, Authenticator(member, None, False))
    ctx = _Context()
    keys = [f"/bench/{i:08d}".ljust(KEY_BYTES, "0").encode() for i in range(KEY_SPACE)]
    value = b"v" * VALUE_BYTES
    for i in range(0, KEY_SPACE, 500):  # the range workloads read populated keys
        await asyncio.gather(*(kv.Put(pb.PutRequest(key=k, value=value), ctx) for k in keys[i : i + 500]))
    serializable = workload == "range-s"

    async def one(i: int) -> None:
        key = keys[(i * 7919) % KEY_SPACE]
        if workload == "put":
            await kv.Put(pb.PutRequest(key=key, value=value), ctx)
        else:
            await kv.Range(pb.RangeRequest(key=key, serializable=serializable), ctx)

    async def client(n: int, start: int) -> None:
        for i in range(start, start + n):
            await one(i)

    per_client = requests // clients
    await asyncio.gather(*(client(200 // clients + 1, c * 1000) for c in range(clients)))  # warm-up
    cpu0, wall0 = _cpu_s(), time.perf_counter()
    await asyncio.gather(*(client(per_client, c * per_client) for c in range(clients)))
    cpu, wall = _cpu_s() - cpu0, time.perf_counter() - wall0
    await member.stop()
    await member.journal.close()
    done = per_client * clients
    return {"cpu_us_per_op": cpu / done * 1e6, "ops_per_s": done / wall}


def _child(ns: argparse.Namespace) -> int:
    import uvloop

    try:
        from journal.gc_policy import tune_for_serving  # what `kvstore serve` does at start (if the tree has it)
    except ImportError:
        pass
    else:
        tune_for_serving()

    data_dir = tempfile.mkdtemp(prefix="kvstore-member-cpu-", dir=ns.data_dir)
    try:
        result = uvloop.run(_measure(ns.workload, ns.clients, ns.requests, data_dir, ns.fsync))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps(result))
    return 0


def _run_tree(tree: Path, ns: argparse.Namespace, workload: str) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    # This file runs as a script (the baseline tree may not have it); kvstore comes from the tree.
    cmd = [sys.executable, __file__, "--child", "--workload", workload, "--clients", str(ns.clients),
           "--requests", str(ns.requests), "--fsync", ns.fsync, "--data-dir", ns.data_dir]  # fmt: skip
    out = subprocess.run(cmd, env=env, cwd=tree, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kvstore bench member-cpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"from {WORKLOADS}")
    p.add_argument("--clients", type=int, default=64, help="concurrent requests")
    p.add_argument("--requests", type=int, default=20_000, help="measured requests per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--fsync", default="always", help="the local journal's fsync policy")
    p.add_argument("--data-dir", default="/var/tmp", help="where the journal goes (a real disk)")
    p.add_argument("--baseline-tree", type=Path, help="also run every round in this source tree")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workload", default="put", help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.child:
        return _child(ns)
    this = Path(__file__).resolve().parent.parent
    trees = {"this": this}
    if ns.baseline_tree is not None:
        trees = {"baseline": ns.baseline_tree.resolve(), "this": this}
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    print(f"# member-cpu: {ns.clients} clients, {ns.requests} requests per run, fsync {ns.fsync}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    for rnd in range(ns.rounds):
        order = list(trees) if rnd % 2 == 0 else list(reversed(trees))
        for workload in ns.workloads.split(","):
            for name in order:
                r = _run_tree(trees[name], ns, workload)
                results.setdefault((workload, name), []).append(r)
                print(f"round {rnd + 1} {workload:<8} {name:<8} {r['cpu_us_per_op']:7.1f} µs/op  "
                      f"{r['ops_per_s']:8.0f} ops/s", flush=True)  # fmt: skip
    print("\n| workload | tree | CPU µs/op (median, min .. max) | ops/s (median) |\n|---|---|---|---|")
    for (workload, name), rs in results.items():
        cpus = [r["cpu_us_per_op"] for r in rs]
        print(f"| {workload} | {name} | {statistics.median(cpus):.1f} ({min(cpus):.1f} .. {max(cpus):.1f}) | "
              f"{statistics.median(r['ops_per_s'] for r in rs):,.0f} |")
    if ns.baseline_tree is not None:
        for workload in ns.workloads.split(","):
            a = statistics.median(r["cpu_us_per_op"] for r in results[(workload, "this")])
            b = statistics.median(r["cpu_us_per_op"] for r in results[(workload, "baseline")])
            print(f"{workload}: CPU per op this / baseline = {a / b:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
