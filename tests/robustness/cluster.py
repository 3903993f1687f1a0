"""The system under test: three journal nodes (AZs a, b, c) and one member per AZ, real processes.

Two layouts:
- loopback: everything on 127.0.0.1 (process faults only);
- netns: one network namespace per AZ holding that AZ's journal node, one for
  the recorder, bridged in a hub namespace, as in
  tests/journal/test_netns_partition.py, and behind each AZ (routed by it) one
  namespace for that AZ's member: a member reaches everything through its AZ,
  its own AZ's node without leaving the AZ. Network faults act on the AZ's link
  (cut: the hub side down, no TCP reset, node and member alike; delay and loss:
  every packet in or out of the AZ's eth0 goes through a userspace delay line,
  tests.robustness.delay, by iptables' NFQUEUE: this kernel has no sch_netem),
  or on the member's link alone (``impair("ma", ...)``). Nothing is added to
  the runner's own namespace.

``code`` runs the nodes and members from another checkout (for measuring a
base commit); the recorder and the checkers always run from this tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.journal_procs import _STARTED, FaultableProc, NodeProc
from tests.journal.cluster import free_ports
from tests.journal.test_netns_partition import ip, netns_unavailable
from tests.servers import suite_workers_args

AZS = ("a", "b", "c")
ROOT = Path(__file__).resolve().parents[2]
LOG = "default"  # the journal log the members serve
NETNS_ADDR = {"a": "10.78.0.1", "b": "10.78.0.2", "c": "10.78.0.3", "cl": "10.78.0.9"}
# Each AZ's member network (its namespace "m" + AZ), routed through the AZ's namespace.
NETNS_MEMBER_NET = {"a": "10.79.1", "b": "10.79.2", "c": "10.79.3"}  # .1 the AZ's side, .2 the member
NETNS_JOURNAL_PORT = 7500
NETNS_MEMBER_PORT = 2379
NETNS_METRICS_PORT = 2381
# The delay line's rules (NFQUEUE): the legacy backend, as this kernel has the xt target but not nft's queue.
IPTABLES = "iptables-legacy" if shutil.which("iptables-legacy") else "iptables"


@dataclass(frozen=True)
class Impairment:
    """What the delay line does to each packet in or out of an AZ (each way)."""

    delay_ms: float = 0.0
    loss_pct: float = 0.0


class MemberProc(FaultableProc):
    """`kvstore serve` on the journal, optionally inside a namespace."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        metrics_port: int,
        journal: str,
        base: Path,
        prefix: list[str],
        code: Path,
    ) -> None:
        self.name, self.host, self.port = name, host, port
        self.addr = f"{host}:{port}"
        self.metrics_port = metrics_port
        self.journal = journal
        self.data_dir = base / f"member-{name}"
        shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else base
        self.state_dir = shm / f"kvrobust-{os.getpid()}-{base.name}" / name  # tmpfs: the "lost tmpfs state" fault
        self.log_path = base / f"member-{name}.stderr"
        self.prefix, self.code = prefix, code
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    def start(self) -> None:
        cmd = [
            *self.prefix,
            sys.executable,
            "-m",
            "kvstore",
            "serve",
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--state-dir={self.state_dir}",
            f"--listen-client-urls=http://{self.addr}",
            f"--advertise-client-urls=http://{self.addr}",
            f"--listen-metrics-urls=http://{self.host}:{self.metrics_port}",
            f"--journal-endpoints={self.journal}",
            "--log-level=info",  # the run's record: journal reconnects, leader changes
        ]
        cmd += suite_workers_args(cmd)
        env = {**os.environ, "PYTHONPATH": str(self.code)}
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=self.code, env=env)
        _STARTED.add(self.proc)
        self.paused = False


class CpuLimit:
    """A CPU cgroup (v2 or v1) capping the cluster's nodes and members at ``cores`` CPUs.

    Emulates a starved machine (what the other engineers' load does to a run)
    without taking CPU from anyone: only the cluster's own processes are
    throttled. Processes join through a ``sh`` prefix (before ``ip netns exec``,
    which mounts a sysfs of its own), so restarts join too.
    """

    PERIOD_US = 100_000

    def __init__(self, name: str, cores: float) -> None:
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        if v2.exists():
            self.path = Path("/sys/fs/cgroup") / name
            self.path.mkdir()
            (self.path / "cpu.max").write_text(f"{int(cores * self.PERIOD_US)} {self.PERIOD_US}")
        else:
            self.path = Path("/sys/fs/cgroup/cpu") / name
            self.path.mkdir()
            (self.path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(int(cores * self.PERIOD_US)))

    def prefix(self) -> list[str]:
        return ["sh", "-c", f'echo $$ > {self.path}/cgroup.procs && exec "$@"', "sh"]

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:  # processes still leaving
                time.sleep(0.1)


class Cluster:
    def __init__(
        self,
        base: Path,
        netns: bool,
        code: Path | None = None,
        env: dict[str, str] | None = None,
        cpu_cores: float | None = None,
    ) -> None:
        self.base = base
        self.netns = netns
        self.code = code or ROOT
        self.env = env or {}  # extra environment for nodes and members (failpoints)
        self.needs_impair = False  # set by the runner for delay and loss scenarios
        self._impairs: dict[str, subprocess.Popen[bytes]] = {}  # AZ -> its delay line
        self.ns_prefix = f"kvr{os.getpid() % 100000}"
        self._made: list[str] = []
        # --cpu-cores: nodes and members share this many CPUs (None: no limit).
        self.cpu = CpuLimit(self.ns_prefix, cpu_cores) if cpu_cores else None
        if netns:
            hosts = {z: NETNS_ADDR[z] for z in AZS}
            member_hosts = {z: f"{NETNS_MEMBER_NET[z]}.2" for z in AZS}
            jports = {z: NETNS_JOURNAL_PORT for z in AZS}
            mports = {z: (NETNS_MEMBER_PORT, NETNS_METRICS_PORT) for z in AZS}
        else:
            hosts = {z: "127.0.0.1" for z in AZS}
            member_hosts = hosts
            ports = free_ports(3 * len(AZS))
            jports = {z: ports[i] for i, z in enumerate(AZS)}
            mports = {z: (ports[3 + 2 * i], ports[4 + 2 * i]) for i, z in enumerate(AZS)}
        jaddr = {z: f"{hosts[z]}:{jports[z]}" for z in AZS}
        self.journal_endpoints = ",".join(jaddr.values())
        self.nodes = {
            z: NodeProc(
                z,
                hosts[z],
                jports[z],
                {o: jaddr[o] for o in AZS if o != z},
                base / f"journal-{z}",
                prefix=(self.cpu.prefix() if self.cpu else []) + self.exec_in(z),
                cwd=self.code,
                extra_args=["--log-level", "INFO"],  # leader changes, peer reconnects
            )
            for z in AZS
        }
        self.members = {
            z: MemberProc(
                f"m{z}",
                member_hosts[z],
                mports[z][0],
                mports[z][1],
                self.journal_endpoints,
                base,
                (self.cpu.prefix() if self.cpu else []) + self.exec_in(f"m{z}"),
                self.code,
            )
            for z in AZS
        }

    def ns(self, name: str) -> str:
        return f"{self.ns_prefix}-{name}"

    def exec_in(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(name)] if self.netns else []

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        if self.netns:
            self._make_namespaces()
            if self.needs_impair:
                why = self.impair_unavailable()
                if why is not None:
                    self.stop()
                    raise NetnsUnavailable(why)
        saved = dict(os.environ)
        os.environ.update(self.env)
        os.environ["PYTHONPATH"] = str(self.code)
        try:
            for n in self.nodes.values():
                n.start()
            for n in self.nodes.values():
                n.wait_listening()
            for m in self.members.values():
                m.start()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def stop(self) -> None:
        for az in list(self._impairs):
            self.impair(az, None)
        for m in self.members.values():
            m.stop()
        for n in self.nodes.values():
            n.stop()
        for m in self.members.values():
            shutil.rmtree(m.state_dir, ignore_errors=True)
        for name in reversed(self._made):
            ip("netns", "del", name, check=False)
        self._made.clear()
        if self.cpu is not None:
            self.cpu.remove()

    def restart_member(self, z: str) -> None:
        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            self.members[z].start()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def wait_member_ready(self, z: str, timeout_s: float = 60.0) -> None:
        """Until the member answers a serializable range (asked from the recorder's side)."""
        probe = (
            "import sys,time,grpc\n"
            "from proto.etcdserverpb import rpc_pb2 as pb, rpc_pb2_grpc as rpc\n"
            f"deadline = time.monotonic() + {timeout_s}\n"
            "while True:\n"
            f"    ch = grpc.insecure_channel('{self.members[z].addr}')\n"
            "    try:\n"
            "        rpc.KVStub(ch).Range(pb.RangeRequest(key=b'/probe', serializable=True), timeout=1); break\n"
            "    except grpc.RpcError:\n"
            "        if time.monotonic() > deadline: sys.exit(1)\n"
            "        time.sleep(0.1)\n"
            "    finally:\n"
            "        ch.close()\n"
        )
        subprocess.run(
            [*self.exec_in("cl"), sys.executable, "-c", probe],
            cwd=ROOT,
            timeout=timeout_s + 30,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=True,
        )

    def restart_node(self, z: str) -> None:
        saved = dict(os.environ)
        os.environ.update(self.env)
        os.environ["PYTHONPATH"] = str(self.code)
        try:
            self.nodes[z].start()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def _make_namespaces(self) -> None:
        why = netns_unavailable()
        if why is not None:
            raise NetnsUnavailable(why)
        for n in ("hub", *AZS, "cl"):
            ip("netns", "add", self.ns(n))
            self._made.append(self.ns(n))
            ip("-n", self.ns(n), "link", "set", "lo", "up")
        ip("-n", self.ns("hub"), "link", "add", "br0", "type", "bridge")
        ip("-n", self.ns("hub"), "link", "set", "br0", "up")
        for n in (*AZS, "cl"):
            ip(
                "-n",
                self.ns(n),
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                f"h{n}",
                "netns",
                self.ns("hub"),
            )
            ip("-n", self.ns(n), "addr", "add", f"{NETNS_ADDR[n]}/24", "dev", "eth0")
            ip("-n", self.ns(n), "link", "set", "eth0", "up")
            ip("-n", self.ns("hub"), "link", "set", f"h{n}", "master", "br0")
            ip("-n", self.ns("hub"), "link", "set", f"h{n}", "up")
        # Permanent neighbour (ARP) entries across the hub: a cut models the link between AZs
        # failing, not each host's own cable, so a heal does not wait for the kernel to
        # resolve the address again (up to its 1 s retransmission timer: seen in the runs).
        macs = {n: json.loads(ip("-j", "-n", self.ns(n), "link", "show", "eth0").stdout)[0]["address"]
                for n in (*AZS, "cl")}  # fmt: skip
        for n in (*AZS, "cl"):
            for o in (*AZS, "cl"):
                if o != n:
                    ip("-n", self.ns(n), "neigh", "replace", NETNS_ADDR[o], "lladdr", macs[o], "dev", "eth0",
                       "nud", "permanent")  # fmt: skip
        for z in AZS:
            # The member's namespace hangs off its AZ's, which routes for it.
            m, net = self.ns(f"m{z}"), NETNS_MEMBER_NET[z]
            ip("netns", "add", m)
            self._made.append(m)
            ip("-n", m, "link", "set", "lo", "up")
            ip("-n", m, "link", "add", "eth0", "type", "veth", "peer", "name", "m0", "netns", self.ns(z))
            ip("-n", m, "addr", "add", f"{net}.2/24", "dev", "eth0")
            ip("-n", m, "link", "set", "eth0", "up")
            ip("-n", m, "route", "add", "default", "via", f"{net}.1")
            ip("-n", self.ns(z), "addr", "add", f"{net}.1/24", "dev", "m0")
            ip("-n", self.ns(z), "link", "set", "m0", "up")
            subprocess.run([*self.exec_in(z), "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True, timeout=10)
            for n in (*AZS, "cl"):
                if n != z:
                    ip("-n", self.ns(n), "route", "add", f"{net}.0/24", "via", NETNS_ADDR[z])

    # ------------------------------------------------------------- network

    def cut(self, az: str, up: bool) -> None:
        ip("-n", self.ns("hub"), "link", "set", f"h{az}", "up" if up else "down")

    def impair_unavailable(self) -> str | None:
        """Why the delay line cannot work here (None if it can): a probe namespace with the rule."""
        try:
            import netfilterqueue  # noqa: F401
        except ImportError:
            return "the delay line needs the netfilterqueue package (pip; libnetfilter-queue-dev from apt)"
        if shutil.which(IPTABLES) is None:
            return f"the delay line needs {IPTABLES} (apt: iptables)"
        probe = self.ns("impair-probe")
        r = ip("netns", "add", probe, check=False)
        if r.returncode != 0:
            return f"cannot create a network namespace: {r.stderr.strip()}"
        try:
            rule = ["OUTPUT", "-o", "lo", "-j", "NFQUEUE", "--queue-num", "1", "--queue-bypass"]
            t = subprocess.run(
                ["ip", "netns", "exec", probe, IPTABLES, "-I", *rule], capture_output=True, text=True, timeout=10
            )
            if t.returncode != 0:
                return f"`{IPTABLES} ... -j NFQUEUE` fails: {t.stderr.strip()}"
            return None
        finally:
            ip("netns", "del", probe, check=False)

    def impair(self, az: str, spec: Impairment | None) -> None:
        """Every packet in or out of the AZ's eth0 through a delay line (None: remove it).

        Both directions: ``delay_ms`` each way adds twice that to every round trip
        with the AZ (node and member alike: the member's packets to other AZs are
        forwarded through that eth0); traffic inside the AZ is untouched. With a
        member's namespace ("ma") instead of an AZ: that member's packets alone,
        to its clients and to every journal node.
        """
        member = az.startswith("m")
        queue = 10 + (10 if member else 0) + AZS.index(az[-1])
        chains = [("OUTPUT", "-o"), ("INPUT", "-i")]
        if not member:
            chains += [("FORWARD", "-o"), ("FORWARD", "-i")]  # the member's, through its AZ
        rules = [[c, d, "eth0", "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"] for c, d in chains]
        run = ["ip", "netns", "exec", self.ns(az)]
        if spec is None:
            for rule in rules:
                subprocess.run([*run, IPTABLES, "-D", *rule], capture_output=True, timeout=10)
            p = self._impairs.pop(az, None)
            if p is not None:
                p.terminate()
                p.wait(timeout=10)
            return
        # Real-time priority: the "network" must not be starved by the machine's load (netem is in the kernel).
        rt = ["chrt", "-f", "10"] if shutil.which("chrt") and os.geteuid() == 0 else []
        cmd = [*run, *rt, sys.executable, "-m", "tests.robustness.delay", "--queue", str(queue)]
        cmd += ["--delay-ms", str(spec.delay_ms), "--loss-pct", str(spec.loss_pct)]
        err_path = self.base / f"delay-{az}.stderr"
        with open(err_path, "ab") as err:
            p = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
            )
        _STARTED.add(p)
        self._impairs[az] = p
        assert p.stdout is not None
        if p.stdout.readline().strip() != b"ready":  # bound before any packet is queued to it
            raise RuntimeError(
                f"delay line for az {az} did not start: {(self.base / f'delay-{az}.stderr').read_text()}"
            )
        for rule in rules:
            subprocess.run([*run, IPTABLES, "-I", *rule], check=True, capture_output=True, timeout=10)

    # ------------------------------------------------------------ queries

    def journal_leader(self, timeout_s: float = 20.0) -> str:
        """The AZ whose node leads the members' log, asked from the recorder's side."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = subprocess.run(
                [
                    *self.exec_in("cl"),
                    sys.executable,
                    "-m",
                    "journal.cli",
                    "status",
                    "--endpoints",
                    self.journal_endpoints,
                    "--log",
                    LOG,
                ],
                capture_output=True,
                text=True,
                timeout=30,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            ).stdout
            for line in out.splitlines():
                parts = line.split()
                if len(parts) > 3 and parts[3] == "leader" and parts[1] == "node":
                    return parts[2]
            time.sleep(0.2)
        raise TimeoutError("no journal leader")

    def recorder(self, out: Path, seconds: float, seed: int, ready: Path, stop: Path) -> subprocess.Popen[bytes]:
        members = ",".join(f"{m.name}={m.addr}" for m in self.members.values())
        cmd = [
            *self.exec_in("cl"),
            sys.executable,
            "-m",
            "tests.robustness.recorder",
            "--members",
            members,
            "--seconds",
            str(seconds),
            "--seed",
            str(seed),
            "--out",
            str(out),
            "--ready-file",
            str(ready),
            "--stop-file",
            str(stop),
        ]
        with open(self.base / "recorder.stderr", "ab") as err:
            p = subprocess.Popen(cmd, stdout=err, stderr=err, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        _STARTED.add(p)
        return p


class NetnsUnavailable(Exception):
    pass
