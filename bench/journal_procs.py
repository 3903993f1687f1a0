"""Journal node processes for the fault tests and `kvstore bench journal-append`: start, kill -9,
SIGSTOP/SIGCONT, restart.

Only processes started here are ever signalled (by pid), and they are all
killed at exit even if a test fails half way.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.servers import free_ports
from journal.client import JournalClient

_STARTED: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for p in list(_STARTED):
        if p.poll() is None:
            p.kill()
            p.wait()


class FaultableProc:
    """A test process the fault injectors act on: kill -9, SIGSTOP/SIGCONT, SIGTERM, its stderr.

    Subclasses set `proc` (started with _STARTED.add), `paused` and `log_path`."""

    proc: subprocess.Popen[bytes] | None
    paused: bool
    log_path: Path

    def stderr_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """kill -9: no flush, no goodbye."""
        assert self.proc is not None
        if self.paused:
            self.cont()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        _STARTED.discard(self.proc)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def cont(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.paused:
            self.cont()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        _STARTED.discard(self.proc)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class NodeProc(FaultableProc):
    def __init__(
        self,
        node_id: str,
        host: str,
        port: int,
        peers: dict[str, str],
        data_dir: Path,
        fsync: str = "always",
        tick_ms: int = 50,
        prefix: Sequence[str] = (),
        cwd: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.node_id = node_id
        self.cwd = cwd  # where `python -m journal.cli` runs: its code wins (tests of another checkout)
        self.host = host
        self.port = port
        self.addr = f"{host}:{port}"
        self.peers = peers
        self.data_dir = data_dir
        self.fsync = fsync
        self.tick_ms = tick_ms
        self.prefix = list(prefix)
        self.extra_args = list(extra_args)  # e.g. the --peer-* TLS flags
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{node_id}.stderr"
        self.paused = False
        self._log_offset = 0

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        peers = ",".join(f"{i}={a}" for i, a in self.peers.items())
        cmd = [
            *self.prefix, sys.executable, "-m", "journal.cli", "serve", "--id", self.node_id,
            "--listen", self.addr, "--peers", peers, "--data-dir", str(self.data_dir),
            "--fsync", self.fsync, "--tick-ms", str(self.tick_ms), "--log-level", "WARNING",
            "--loop", os.environ.get("JOURNAL_TEST_LOOP", "uvloop"), *self.extra_args,
        ]  # fmt: skip
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        err = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=self.cwd)
        err.close()
        _STARTED.add(self.proc)
        self.paused = False

    def wait_listening(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.node_id} exited: {self.stderr_tail()}")
            if not self.prefix:
                try:
                    with socket.create_connection((self.host, self.port), timeout=0.2):
                        return
                except OSError:
                    pass
            elif b"listening on" in self.log_path.read_bytes()[self._log_offset :]:
                return
            time.sleep(0.05)
        raise TimeoutError(f"node {self.node_id} did not start: {self.stderr_tail()}")

class ProcCluster:
    def __init__(
        self, base: Path, ids: str = "abc", fsync: str = "always", tick_ms: int = 50, extra_args: Sequence[str] = ()
    ) -> None:
        ports = dict(zip(ids, free_ports(len(ids)), strict=True))
        addrs = {i: f"127.0.0.1:{p}" for i, p in ports.items()}
        self.nodes = {
            i: NodeProc(
                i, "127.0.0.1", ports[i], {j: a for j, a in addrs.items() if j != i}, base / i, fsync, tick_ms,
                extra_args=extra_args,
            )
            for i in ids
        }  # fmt: skip

    @property
    def endpoints(self) -> list[str]:
        return [n.addr for n in self.nodes.values()]

    def start(self) -> None:
        for n in self.nodes.values():
            n.start()
        for n in self.nodes.values():
            n.wait_listening()

    def stop(self) -> None:
        for n in self.nodes.values():
            n.stop()

    def by_addr(self, addr: str) -> NodeProc:
        return next(n for n in self.nodes.values() if n.addr == addr)

    async def leader(self, client: JournalClient, log: str, timeout_s: float = 20.0) -> NodeProc:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            for n in self.nodes.values():
                if not n.running() or n.paused:
                    continue
                one = JournalClient([n.addr], request_timeout_ms=1000, rpc_timeout_ms=500)
                try:
                    st = await one.status(log)
                    if st.leader:
                        return self.by_addr(st.leader)
                except Exception:  # a node in trouble: ask the next
                    continue
                finally:
                    await one.close()
            await asyncio.sleep(0.1)
        raise TimeoutError("no leader")
