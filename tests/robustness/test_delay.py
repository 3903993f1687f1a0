"""The delay line (tests/robustness/delay.py) really delays an AZ's (or one member's) packets, and its removal
leaves nothing behind.

A fault injector that silently did nothing would make every delay scenario
pass: these tests measure round trips to a TCP echo server in the delayed AZ
or member namespace (each must take at least the injected 2 x 100 ms; a
loaded machine only makes them longer), and check that removing the fault
removes the rules and the process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.journal.test_netns_partition import netns_unavailable
from tests.robustness.cluster import IPTABLES, NETNS_ADDR, NETNS_MEMBER_NET, Cluster, Impairment

ECHO = (
    "import socket\n"
    "l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "l.bind(('0.0.0.0', 9931)); l.listen(); print('up', flush=True)\n"
    "c, _ = l.accept()\n"
    "while (d := c.recv(1)): c.sendall(d)\n"
)
ROUND_TRIPS = (
    "import socket, sys, time\n"
    "s = socket.create_connection((sys.argv[1], 9931), timeout=10)\n"
    "s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
    "for _ in range(5):\n"
    "    t = time.perf_counter(); s.sendall(b'x'); s.recv(1); print((time.perf_counter() - t) * 1000)\n"
)


def round_trips_ms(c: Cluster, server_ns: str, server_addr: str, client_ns: str) -> list[float]:
    echo = subprocess.Popen([*c.exec_in(server_ns), sys.executable, "-c", ECHO], stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "up"
        out = subprocess.run(
            [*c.exec_in(client_ns), sys.executable, "-c", ROUND_TRIPS, server_addr],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
    finally:
        echo.kill()
        echo.wait()
    return [float(x) for x in out.split()]


def assert_removed(c: Cluster, ns: str) -> None:
    rules = subprocess.run(
        [*c.exec_in(ns), IPTABLES, "-S"], capture_output=True, text=True, timeout=10, check=True
    ).stdout  # fmt: skip
    assert "NFQUEUE" not in rules, rules
    assert not c._impairs


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    why = netns_unavailable()
    if why is not None:
        pytest.skip(f"needs network namespaces: {why}")
    c = Cluster(tmp_path, netns=True)
    why = c.impair_unavailable()
    if why is not None:
        pytest.skip(why)
    try:
        c._make_namespaces()
        yield c
    finally:
        c.stop()


def test_delay_line_delays_every_round_trip_with_the_az(cluster: Cluster) -> None:
    c = cluster
    c.impair("a", Impairment(delay_ms=100))
    rtts_ms = round_trips_ms(c, "a", NETNS_ADDR["a"], "b")
    assert len(rtts_ms) == 5 and min(rtts_ms) >= 195, rtts_ms  # 100 ms each way, less timer slack
    # The AZ's member reaches other AZs through the AZ's link: delayed too.
    rtts_ms = round_trips_ms(c, "ma", f"{NETNS_MEMBER_NET['a']}.2", "b")
    assert len(rtts_ms) == 5 and min(rtts_ms) >= 195, rtts_ms
    c.impair("a", None)
    assert_removed(c, "a")


def test_delay_line_on_one_member_delays_its_round_trips(cluster: Cluster) -> None:
    c = cluster
    c.impair("mb", Impairment(delay_ms=100))
    # From its clients' side and from its own AZ's node alike.
    for client_ns in ("cl", "b"):
        rtts_ms = round_trips_ms(c, "mb", f"{NETNS_MEMBER_NET['b']}.2", client_ns)
        assert len(rtts_ms) == 5 and min(rtts_ms) >= 195, (client_ns, rtts_ms)
    c.impair("mb", None)
    assert_removed(c, "mb")
