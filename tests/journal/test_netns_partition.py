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
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.journal.procs import _STARTED, NodeProc

PREFIX = f"kvj{os.getpid() % 100000}"
AZS = ("a", "b", "c")
ADDR = {"a": "10.77.0.1", "b": "10.77.0.2", "c": "10.77.0.3", "cl": "10.77.0.9"}
PORT = 7400


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
            "--endpoints", ",".join(addrs.values()), "--log", "p", "--seconds", "90", "--progress", str(progress),
            "--stop-file", str(tmp_path / "stop"),
        ]  # fmt: skip
        client_err = tmp_path / "client.stderr"
        with open(client_err, "wb") as err:
            client = subprocess.Popen(cmd, stdout=err, stderr=err, cwd=Path(__file__).parents[2])
        _STARTED.add(client)
        wait_more(progress, 50, 20, "at start")
        victim = next(z for z in AZS if addrs[z] == latest_leader(progress)[0])
        cut(victim, up=False)
        wait_more(progress, 50, 15, f"with AZ {victim} (the leader's) cut off")
        time.sleep(1.0)
        cut(victim, up=True)
        wait_more(progress, 50, 15, "after healing")
        # Pre-vote: a follower cut off past its election timeout, then healed,
        # must not depose the healthy leader (no new epoch).
        time.sleep(1.0)
        before = latest_leader(progress)
        follower = next(z for z in AZS if addrs[z] != before[0])
        cut(follower, up=False)
        wait_more(progress, 50, 15, f"with follower AZ {follower} cut off")
        time.sleep(2.5)  # > 2x the longest election timeout (20 ticks of 50 ms)
        cut(follower, up=True)
        wait_more(progress, 50, 15, "after healing the follower")
        time.sleep(1.5)
        assert latest_leader(progress) == before, "a healed follower deposed the leader"
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
