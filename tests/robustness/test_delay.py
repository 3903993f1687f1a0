"""The delay line (tests/robustness/delay.py) really delays an AZ's packets, and its removal leaves nothing behind.

A fault injector that silently did nothing would make every delay scenario
pass: this test measures round trips from another AZ to a TCP echo server in
the delayed AZ (each must take at least the injected 2 x 100 ms; a loaded
machine only makes them longer), and checks that removing the fault removes
the rules and the process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.journal.test_netns_partition import netns_unavailable
from tests.robustness.cluster import IPTABLES, NETNS_ADDR, Cluster, Impairment

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


def test_delay_line_delays_every_round_trip_with_the_az(tmp_path: Path) -> None:
    why = netns_unavailable()
    if why is not None:
        pytest.skip(f"needs network namespaces: {why}")
    c = Cluster(tmp_path, netns=True)
    why = c.impair_unavailable()
    if why is not None:
        pytest.skip(why)
    echo: subprocess.Popen[str] | None = None
    try:
        c._make_namespaces()
        echo = subprocess.Popen(
            [*c.exec_in("a"), sys.executable, "-c", ECHO], stdout=subprocess.PIPE, text=True
        )  # fmt: skip
        assert echo.stdout is not None and echo.stdout.readline().strip() == "up"
        c.impair("a", Impairment(delay_ms=100))
        out = subprocess.run(
            [*c.exec_in("b"), sys.executable, "-c", ROUND_TRIPS, NETNS_ADDR["a"]],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        rtts_ms = [float(x) for x in out.split()]
        assert len(rtts_ms) == 5 and min(rtts_ms) >= 195, rtts_ms  # 100 ms each way, less timer slack
        c.impair("a", None)
        rules = subprocess.run(
            [*c.exec_in("a"), IPTABLES, "-S"], capture_output=True, text=True, timeout=10, check=True
        ).stdout  # fmt: skip
        assert "NFQUEUE" not in rules, rules
        assert not c._impairs
    finally:
        if echo is not None:
            echo.kill()
            echo.wait()
        c.stop()
