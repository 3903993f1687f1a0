"""A partition between AZs, with each AZ in its own network namespace.

Namespaces: one per AZ (a, b, c), one for the client, and a hub holding a
bridge that connects them (veth pairs). Nothing is added to the test
runner's own namespace. Cutting an AZ off = taking its veth end in the hub
down. The client runs inside its namespace as a process
(tests.journal.appender) that appends without pause and checks the history
at the end; the test cuts the leader's AZ off, checks that appends continue
on the other two, heals, checks that they continue; then cuts a follower's
AZ off past its election timeout and heals it, and checks the leader and its
epoch did not change (pre-vote); finally it requires the history check to
pass. Skipped, saying why, where namespaces cannot be made.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.journal_procs import _STARTED, NodeProc

PREFIX = f"kvj{os.getpid() % 100000}"
AZS = ("a", "b", "c")
ADDR = {"a": "10.77.0.1", "b": "10.77.0.2", "c": "10.77.0.3", "cl": "10.77.0.9"}
PORT = 7400
ROOT = Path(__file__).parents[2]
# How long a step may take on a loaded machine (an upper bound to wait for a condition, not a timing).
WAIT_S = 60.0


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def ns(name: str) -> str:
    return f"{PREFIX}-{name}"


def netns_unavailable() -> str | None:
    if shutil.which("ip") is None:
        return "the `ip` command is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = ns("probe")
    r = ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


@pytest.fixture
def namespaces() -> Iterator[None]:
    why = netns_unavailable()
    if why is not None:
        pytest.skip(f"netns partition test skipped: {why}")
    made: list[str] = []
    try:
        for n in ("hub", *AZS, "cl"):
            ip("netns", "add", ns(n))
            made.append(ns(n))
            ip("-n", ns(n), "link", "set", "lo", "up")
        ip("-n", ns("hub"), "link", "add", "br0", "type", "bridge")
        ip("-n", ns("hub"), "link", "set", "br0", "up")
        for n in (*AZS, "cl"):
            ip("-n", ns(n), "link", "add", "eth0", "type", "veth", "peer", "name", f"h{n}", "netns", ns("hub"))
            ip("-n", ns(n), "addr", "add", f"{ADDR[n]}/24", "dev", "eth0")
            ip("-n", ns(n), "link", "set", "eth0", "up")
            ip("-n", ns("hub"), "link", "set", f"h{n}", "master", "br0")
            ip("-n", ns("hub"), "link", "set", f"h{n}", "up")
        yield
    finally:
        for name in reversed(made):
            ip("netns", "del", name, check=False)


def cut(az: str, up: bool) -> None:
    ip("-n", ns("hub"), "link", "set", f"h{az}", "up" if up else "down")


def acked_now(progress: Path) -> int:
    lines = [ln for ln in progress.read_text().splitlines() if ln[:1].isdigit()]
    return int(lines[-1].split()[1]) if lines else 0


def wait_more(progress: Path, n: int, timeout_s: float, what: str) -> None:
    start = acked_now(progress)
    deadline = time.monotonic() + timeout_s
    while acked_now(progress) < start + n:
        if time.monotonic() > deadline:
            raise AssertionError(f"appends did not flow within {timeout_s}s {what}")
        time.sleep(0.1)


def latest_leader(progress: Path) -> tuple[str, int]:
    lines = [ln.split() for ln in progress.read_text().splitlines() if ln.startswith("leader ")]
    assert lines, "the client never learnt a leader"
    return lines[-1][1], int(lines[-1][2])


@dataclass(frozen=True)
class NodeView:
    role: str
    epoch: int
    leader: str


_STATUS_LINE = re.compile(r"node \S+ (\S+) epoch (\d+) .* leader (\S+)")


def node_view(az: str) -> NodeView | None:
    """The node's own view of the log (`kvstore journal status`, run in the node's namespace, so a
    node that is cut off still answers); None if it did not answer."""
    r = subprocess.run(
        ["ip", "netns", "exec", ns(az), sys.executable, "-m", "kvstore", "journal", "status",
         "--endpoints", f"{ADDR[az]}:{PORT}", "--log", "p"],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    m = _STATUS_LINE.search(r.stdout)
    if m is None:
        return None
    return NodeView(m[1], int(m[2]), "" if m[3] == "-" else m[3])


def wait_view(az: str, ok: Callable[[NodeView], bool], what: str) -> NodeView:
    deadline = time.monotonic() + WAIT_S
    view = node_view(az)
    while view is None or not ok(view):
        if time.monotonic() > deadline:
            raise AssertionError(f"node {az} did not {what} within {WAIT_S}s: {view}")
        time.sleep(0.1)
        view = node_view(az)
    return view


def settled(addrs: dict[str, str]) -> tuple[str, int]:
    """Wait until every node follows one leader in one epoch; that leader and epoch."""
    deadline = time.monotonic() + WAIT_S
    while True:
        views = {addrs[z]: node_view(z) for z in AZS}
        agreed = {(v.leader, v.epoch) for v in views.values() if v is not None}
        if None not in views.values() and len(agreed) == 1:
            leader, epoch = agreed.pop()
            lead = views.get(leader)
            if lead is not None and lead.role == "leader":
                return leader, epoch
        if time.monotonic() > deadline:
            raise AssertionError(f"the nodes did not agree on one leader within {WAIT_S}s: {views}")
        time.sleep(0.1)


def test_partition_one_az(namespaces: None, tmp_path: Path) -> None:
    addrs = {z: f"{ADDR[z]}:{PORT}" for z in AZS}
    nodes = {
        z: NodeProc(
            z, ADDR[z], PORT, {o: addrs[o] for o in AZS if o != z}, tmp_path / z, prefix=["ip", "netns", "exec", ns(z)]
        )
        for z in AZS
    }
    progress = tmp_path / "progress"
    progress.touch()
    client: subprocess.Popen[bytes] | None = None
    try:
        for n in nodes.values():
            n.start()
        for n in nodes.values():
            n.wait_listening()
        cmd = [
            "ip", "netns", "exec", ns("cl"), sys.executable, "-m", "tests.journal.appender",
            "--endpoints", ",".join(addrs.values()), "--log", "p", "--seconds", "600", "--progress", str(progress),
            "--stop-file", str(tmp_path / "stop"),
        ]  # fmt: skip
        client_err = tmp_path / "client.stderr"
        with open(client_err, "wb") as err:
            client = subprocess.Popen(cmd, stdout=err, stderr=err, cwd=ROOT)
        _STARTED.add(client)
        wait_more(progress, 50, WAIT_S, "at start")
        victim = next(z for z in AZS if addrs[z] == latest_leader(progress)[0])
        cut(victim, up=False)
        wait_more(progress, 50, WAIT_S, f"with AZ {victim} (the leader's) cut off")
        cut(victim, up=True)
        wait_more(progress, 50, WAIT_S, "after healing")
        # Pre-vote: a follower cut off past its election timeout, then healed, must not depose
        # the healthy leader (no new epoch). Each step waits for what the nodes themselves report.
        before = settled(addrs)
        follower = next(z for z in AZS if addrs[z] != before[0])
        cut(follower, up=False)
        wait_more(progress, 50, WAIT_S, f"with follower AZ {follower} cut off")
        # Past its election timeout it campaigns: with pre-vote it asks first and keeps its epoch
        # (without, it would be a candidate in the next epoch, and depose the leader once healed).
        cut_off = wait_view(follower, lambda v: v.role != "follower", "campaign while cut off")
        assert (cut_off.role, cut_off.epoch) == ("pre_candidate", before[1]), cut_off
        cut(follower, up=True)
        wait_view(follower, lambda v: v.role == "follower" and bool(v.leader), "rejoin a leader after healing")
        wait_more(progress, 50, WAIT_S, "after healing the follower")
        after = {z: node_view(z) for z in AZS}
        assert all(v is not None and (v.leader, v.epoch) == before for v in after.values()), (
            f"a healed follower deposed the leader: {before} -> {after}\n{late_ticks(nodes)}"
        )
        assert latest_leader(progress) == before, "the client saw another leader"
        (tmp_path / "stop").touch()
        rc = client.wait(timeout=90)
        _STARTED.discard(client)
        assert rc == 0, client_err.read_text()[-3000:]
        assert "ok " in progress.read_text()
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        for n in nodes.values():
            n.stop()


def late_ticks(nodes: dict[str, NodeProc]) -> str:
    """The nodes' warnings about ticks they ran late (CPU starvation can cause a real election)."""
    return "\n".join(f"{z}: {ln}" for z, n in nodes.items() for ln in n.stderr_tail().splitlines() if "late" in ln)
