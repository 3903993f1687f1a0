"""`kvstore serve --partitions ...` as a real process tree, for the partition tests.

Only processes started here are signalled, by pid: the supervisor, and (kill -9 tests) one of
its children, found through /proc. Everything is stopped at exit even if a test fails half way.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from bench.servers import free_port_block
from kvstore.partition.plan import Plan, assign_urls, load_plan
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from tests.servers import make_temp_dir, suite_workers_args

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
_STARTED: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for p in list(_STARTED):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Partitioned:
    """One `kvstore serve --partitions SPEC` supervisor and its member processes."""

    def __init__(self, spec: str, extra_args: tuple[str, ...] = (), name: str = "pt") -> None:
        self.spec = spec
        self.work = make_temp_dir(f"kvstore-{name}-")
        self.base_port = free_port_block(len(load_plan(spec).partitions))
        self.listen = f"http://127.0.0.1:{self.base_port}"
        self.args = [
            "--partitions", spec, "--data-dir", str(self.work / "data"), "--state-dir", str(self.work / "state"),
            "--listen-client-urls", self.listen, *extra_args,
        ]  # fmt: skip
        self.args += suite_workers_args(self.args)
        self.plan: Plan = assign_urls(load_plan(spec), [self.listen])
        self.log_path = self.work / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._channels: dict[str, grpc.Channel] = {}

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(ROOT)}

    def start(self) -> Partitioned:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kvstore", "serve", *self.args, "--log-level", "warn"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=self.env(), cwd=ROOT,
            )  # fmt: skip
        _STARTED.add(self.proc)
        self.wait_ready()
        return self

    def run_cli(self, *command: str) -> subprocess.CompletedProcess[str]:
        """`kvstore <command> <the same options as serve>`."""
        return subprocess.run(
            [sys.executable, "-m", "kvstore", *command, *self.args],
            capture_output=True, text=True, env=self.env(), cwd=ROOT, timeout=60,
        )  # fmt: skip

    def url(self, partition: str) -> str:
        return self.plan.get(partition).client_urls[0]

    def target(self, partition: str) -> str:
        return self.url(partition).split("://", 1)[1]

    def channel(self, partition: str) -> grpc.Channel:
        if partition not in self._channels:
            self._channels[partition] = grpc.insecure_channel(self.target(partition))
        return self._channels[partition]

    def kv(self, partition: str) -> rpc.KVStub:
        return rpc.KVStub(self.channel(partition))

    def wait_ready(self, partitions: list[str] | None = None, timeout_s: float = READY_TIMEOUT_S) -> None:
        pending = list(partitions or [p.name for p in self.plan.partitions])
        deadline = time.monotonic() + timeout_s
        while pending:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"supervisor exited with {self.proc.returncode}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"partitions {pending} not ready after {timeout_s} s\n{self.log_tail()}")
            for name in list(pending):
                with grpc.insecure_channel(self.target(name)) as ch:
                    try:
                        rpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=1.0)
                        pending.remove(name)
                    except grpc.RpcError:
                        pass
            time.sleep(0.1)

    def member_pid(self, partition: str) -> int:
        assert self.proc is not None
        for pid in children_of(self.proc.pid):
            if f"--journal-log={self.plan.get(partition).log_name} " in cmdline(pid) + " ":
                return pid
        raise LookupError(f"no member process for {partition}")

    def member_pids(self) -> list[int]:
        assert self.proc is not None
        return children_of(self.proc.pid)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except FileNotFoundError:
            return ""

    def close_channels(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()

    def stop(self, cleanup: bool = True) -> int | None:
        """SIGTERM to the supervisor; returns its exit code."""
        self.close_channels()
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            code = self.proc.returncode
            _STARTED.discard(self.proc)
        if cleanup:
            shutil.rmtree(self.work, ignore_errors=True)
        return code
