"""The system under test: three journal nodes (AZs a, b, c) and one member per AZ, real processes.

Two layouts:
- loopback: everything on 127.0.0.1 (process faults only);
- netns: one network namespace per AZ holding that AZ's journal node and
  member, one for the recorder, bridged in a hub namespace, as in
  tests/journal/test_netns_partition.py; network faults act on the AZ's link
  (cut: the hub side down, no TCP reset; delay and loss: `tc netem` on both
  ends of the AZ's veth). Nothing is added to the runner's own namespace.

``code`` runs the nodes and members from another checkout (for measuring a
base commit); the recorder and the checkers always run from this tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.journal.cluster import free_ports
from tests.journal.procs import _STARTED, FaultableProc, NodeProc
from tests.journal.test_netns_partition import ip, netns_unavailable

AZS = ("a", "b", "c")
ROOT = Path(__file__).resolve().parents[2]
LOG = "default"  # the journal log the members serve
NETNS_ADDR = {"a": "10.78.0.1", "b": "10.78.0.2", "c": "10.78.0.3", "cl": "10.78.0.9"}
NETNS_JOURNAL_PORT = 7500
NETNS_MEMBER_PORT = 2379
NETNS_METRICS_PORT = 2381


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
            "--log-level=warn",
        ]
        env = {**os.environ, "PYTHONPATH": str(self.code)}
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=self.code, env=env)
        _STARTED.add(self.proc)
        self.paused = False



class Cluster:
    def __init__(self, base: Path, netns: bool, code: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.base = base
        self.netns = netns
        self.code = code or ROOT
        self.env = env or {}  # extra environment for nodes and members (failpoints)
        self.needs_netem = False  # set by the runner for delay and loss scenarios
        self.ns_prefix = f"kvr{os.getpid() % 100000}"
        self._made: list[str] = []
        if netns:
            hosts = {z: NETNS_ADDR[z] for z in AZS}
            jports = {z: NETNS_JOURNAL_PORT for z in AZS}
            mports = {z: (NETNS_MEMBER_PORT, NETNS_METRICS_PORT) for z in AZS}
        else:
            hosts = {z: "127.0.0.1" for z in AZS}
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
                prefix=self.exec_in(z),
                cwd=self.code,
            )
            for z in AZS
        }
        self.members = {
            z: MemberProc(
                f"m{z}", hosts[z], mports[z][0], mports[z][1], self.journal_endpoints, base, self.exec_in(z), self.code
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
            if self.needs_netem:
                why = self.netem_unavailable()
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
        for m in self.members.values():
            m.stop()
        for n in self.nodes.values():
            n.stop()
        for m in self.members.values():
            shutil.rmtree(m.state_dir, ignore_errors=True)
        for name in reversed(self._made):
            ip("netns", "del", name, check=False)
        self._made.clear()

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

    # ------------------------------------------------------------- network

    def cut(self, az: str, up: bool) -> None:
        ip("-n", self.ns("hub"), "link", "set", f"h{az}", "up" if up else "down")

    def netem_unavailable(self) -> str | None:
        """Why `tc netem` cannot be used here (None if it can): a probe on a throwaway veth."""
        probe = self.ns("netem-probe")
        r = ip("netns", "add", probe, check=False)
        if r.returncode != 0:
            return f"cannot create a network namespace: {r.stderr.strip()}"
        try:
            ip("-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
            t = subprocess.run(
                ["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "p0", "root", "netem", "delay", "1ms"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if t.returncode != 0:
                return f"`tc qdisc add ... netem` fails: {t.stderr.strip()} (a kernel without sch_netem?)"
            return None
        finally:
            ip("netns", "del", probe, check=False)

    def netem(self, az: str, spec: list[str] | None) -> None:
        """`tc netem` on both ends of the AZ's link (None: remove). spec e.g. ["delay", "100ms"]."""
        for nsname, dev in ((self.ns(az), "eth0"), (self.ns("hub"), f"h{az}")):
            if spec is None:
                subprocess.run(
                    ["ip", "netns", "exec", nsname, "tc", "qdisc", "del", "dev", dev, "root"],
                    capture_output=True,
                    timeout=10,
                )
            else:
                subprocess.run(
                    ["ip", "netns", "exec", nsname, "tc", "qdisc", "replace", "dev", dev, "root", "netem", *spec],
                    check=True,
                    capture_output=True,
                    timeout=10,
                )

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
