"""`kvstore bench`: drive an etcd v3 endpoint (ours or the real etcd) and report what it sustained."""

from __future__ import annotations

import argparse
import json
import sys
import time

import grpc

from bench.options import WORKLOADS, Options
from bench.report import print_report, summarize
from bench.runner import cpu_count, run

EPILOG = """workloads:
  put        Put random keys of the key space
  range      Range: one random key (default) or a prefix of --range-keys keys; --consistency l|s
  txn-put    kube's GuaranteedUpdate: Txn(compare mod_revision == cached, put; else range); counts conflicts
  delete     DeleteRange of distinct populated keys (at most --key-space ops)
  watch      --watchers on a prefix, clients put under it: delivery latency and event fan-out
  lease      LeaseGrant (--lease-mode grant) or LeaseKeepAlive round trips (--lease-mode keepalive)
  kube       mixed profile of kube-apiserver traffic (see docs/benchmarks.md); with --partitions kube
             each operation goes to its partition, as kube-apiserver with `kvstore kube-flags` sends it
  compare    start etcd (1 and 3 members) and kvstore serve, run workloads A B A B, write a table
  floor      a do-nothing grpc.aio KV server, ours and etcd: the same put/range loads, ours / floor
  member-cpu  our handlers' CPU per request without gRPC (put, range-l, range-s), against a baseline tree
  journal-append  a 3-node journal on loopback: appends/s and CPU per append at 1, 16, 256 appenders
  scale      load N keys of 1 KiB into ours, then into etcd: memory, restart, lists, compaction, gaps
  go         the Go load driver (etcd's Go client, as etcd's tools/benchmark): go put|range ...;
             compiled on first use (needs golang-go and golang-etcd-server-dev)

examples:
  kvstore bench put --endpoints http://127.0.0.1:2379 --clients 32 --conns 4 --duration 10
  kvstore bench range --consistency s --range-keys 100 --total 20000 --json out.json
  kvstore bench watch --watchers 100 --clients 4 --rate 500 --duration 10
  kvstore bench compare --quick
  kvstore bench floor --quick
  kvstore bench scale --keys 1000000 --targets kvstore,etcd
  kvstore bench go put --endpoints http://127.0.0.1:2379 --conns 8 --clients 64 --seconds 10
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvstore bench",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = Options(workload="put")
    p.add_argument("workload", choices=WORKLOADS)
    p.add_argument("--endpoints", default=",".join(d.endpoints), help="comma-separated client URLs")
    p.add_argument("--conns", type=int, default=d.conns, help="gRPC connections per process")
    p.add_argument("--clients", type=int, default=d.clients, help="concurrent clients over all processes")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--total", type=int, help="operations over all clients (default 10000)")
    stop.add_argument("--duration", type=float, help="seconds to run")
    p.add_argument("--rate", type=float, help="offered operations per second over all clients (default: closed loop)")
    p.add_argument("--key-size", type=int, default=d.key_size, help="bytes per key")
    p.add_argument("--val-size", type=int, default=d.val_size, help="bytes per value (>= 8)")
    p.add_argument("--key-space", type=int, default=d.key_space, help="number of distinct keys")
    p.add_argument("--seq-keys", action="store_true", help="keys in sequence instead of uniformly at random")
    p.add_argument("--procs", type=int, default=d.procs, help="load processes (clients spread over them)")
    p.add_argument("--json", metavar="FILE", help="write the full result (with histograms) as JSON")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds per RPC")
    p.add_argument("--prefix", default=d.prefix, help="key prefix of the benchmark's keys")
    p.add_argument("--consistency", choices=("l", "s"), default=d.consistency, help="range: linearizable|serializable")
    p.add_argument("--range-keys", type=int, default=d.range_keys, help="range: keys per range (1 = single key)")
    p.add_argument(
        "--txn-read",
        choices=("cached", "always"),
        default=d.txn_read,
        help="txn-put: use cached mod_revisions (kube's watch cache) or Range the key before every txn",
    )
    p.add_argument("--watchers", type=int, default=d.watchers, help="watch: watchers over all processes")
    p.add_argument("--watch-streams", type=int, default=d.watch_streams, help="watch: streams per process")
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout_s, help="watch: seconds to wait for events")
    p.add_argument("--lease-mode", choices=("grant", "keepalive"), default=d.lease_mode)
    p.add_argument("--lease-ttl", type=int, default=d.lease_ttl_s, help="lease: TTL in seconds")
    p.add_argument("--kube-nodes", type=int, default=d.kube_nodes, help="kube: node leases renewed")
    p.add_argument("--kube-pods", type=int, default=d.kube_pods, help="kube: pre-created pods listed")
    p.add_argument("--page-limit", type=int, default=d.page_limit, help="kube: list page size")
    p.add_argument(
        "--partitions",
        default=d.partitions,
        metavar="PLAN",
        help="route every key to its partition of PLAN (kube or a TOML plan file) as kube-apiserver would; "
        "--endpoints are the default partition's URLs, the others follow the plan as in kvstore serve",
    )
    p.add_argument("--server-pids", default="", help="comma-separated pids whose CPU use to report (the server's)")
    p.add_argument("--cacert", default="", help="https:// endpoints: verify the server with this CA bundle")
    p.add_argument("--cert", default="", help="https:// endpoints: client certificate")
    p.add_argument("--key", default="", help="https:// endpoints: client key")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors (use with --json)")
    return p


def options_from(ns: argparse.Namespace) -> Options:
    return Options(
        workload=ns.workload,
        endpoints=[e.strip() for e in ns.endpoints.split(",") if e.strip()],
        conns=ns.conns,
        clients=ns.clients,
        total=ns.total if ns.total is not None or ns.duration is not None else 10_000,
        duration_s=ns.duration,
        rate=ns.rate,
        key_size=ns.key_size,
        val_size=ns.val_size,
        key_space=ns.key_space,
        seq_keys=ns.seq_keys,
        procs=ns.procs,
        seed=ns.seed,
        prefix=ns.prefix,
        run_id=f"{int(time.time() * 1000):x}",
        timeout_s=ns.timeout,
        consistency=ns.consistency,
        range_keys=ns.range_keys,
        txn_read=ns.txn_read,
        watchers=ns.watchers,
        watch_streams=ns.watch_streams,
        drain_timeout_s=ns.drain_timeout,
        lease_mode=ns.lease_mode,
        lease_ttl_s=ns.lease_ttl,
        kube_nodes=ns.kube_nodes,
        kube_pods=ns.kube_pods,
        page_limit=ns.page_limit,
        partitions=ns.partitions,
        progress=not (ns.no_progress or ns.quiet),
        server_pids=[int(p) for p in ns.server_pids.split(",") if p.strip()],
        cacert=ns.cacert,
        cert=ns.cert,
        key=ns.key,
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "compare":
        from bench.compare import main as compare_main

        return compare_main(args[1:])
    if args and args[0] == "floor":
        from bench.floor import main as floor_main

        return floor_main(args[1:])
    if args and args[0] == "go":
        from bench.gobench import main as go_main

        return go_main(args[1:])
    if args and args[0] == "member-cpu":
        from bench.member_cpu import main as member_cpu_main

        return member_cpu_main(args[1:])
    if args and args[0] == "journal-append":
        from bench.journal_bench import journal_append_main

        return journal_append_main(args[1:])
    if args and args[0] == "scale":
        from bench.scale import main as scale_main

        return scale_main(args[1:])
    ns = parser().parse_args(args)
    opts = options_from(ns)
    try:
        opts.validate()
    except ValueError as e:
        print(f"kvstore bench: {e}", file=sys.stderr)
        return 2
    try:
        results = run(opts)
    except (ConnectionError, RuntimeError, grpc.aio.AioRpcError) as e:
        print(f"kvstore bench: {e}", file=sys.stderr)
        return 1
    summary = summarize(opts, results, cpu_count())
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")
    if not ns.quiet:
        try:
            print_report(summary)
            sys.stdout.flush()
        except BrokenPipeError:  # `kvstore bench ... | head`: the reader left, the result is still in --json
            sys.stdout = None  # no second error when Python flushes stdout at exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
