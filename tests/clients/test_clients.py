"""Python etcd client libraries against a real etcd and against our server: same steps, same answers.

Each library runs its driver (drive_aetcd.py, drive_sync.py) in a child process, because every
library ships its own copy of etcd's .proto files under the same names as ours (`kv.proto`,
`auth.proto`, ...) and protobuf refuses two such copies in one descriptor pool. `etcd3` 0.12 also
needs PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python with protobuf >= 4. The three libraries
install side by side in one environment with grpcio 1.85 / protobuf 7, so no separate venv.

A driver checks what any etcd must answer as it goes (it exits non-zero otherwise) and prints a
transcript (transcript.py). The test passes on etcd when the driver passes; on our server when
the driver passes AND its transcript equals the one the same driver produced against etcd.
Each module gets fresh servers, so no lease or write from another test lands in a transcript.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import ServerProcess, kvstore_available, start_etcd, start_kvstore

ROOT = Path(__file__).resolve().parents[2]
DRIVER_TIMEOUT_S = 120.0

# pip package -> (importable module, driver module, --lib, extra environment)
LIBRARIES: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "aetcd": ("aetcd", "tests.clients.drive_aetcd", "aetcd", {}),
    "etcd-sdk-python": ("pyetcd", "tests.clients.drive_sync", "pyetcd", {}),
    "etcd3": ("etcd3", "tests.clients.drive_sync", "etcd3", {"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}),
}
SERVERS = ("etcd", "kvstore")  # etcd first: our server's run compares with its transcript

_prefix_ids = itertools.count(1)


class _Servers:
    """Servers started on first use, one of each kind per module; transcripts from etcd kept."""

    def __init__(self) -> None:
        self.running: dict[str, ServerProcess] = {}
        self.etcd_transcripts: dict[str, dict[str, Any]] = {}

    def get(self, kind: str) -> ServerProcess:
        if kind not in self.running:
            if kind == "kvstore" and not kvstore_available():
                pytest.skip("kvstore.server does not exist yet")
            self.running[kind] = start_etcd("clients-etcd") if kind == "etcd" else start_kvstore("clients-kvstore")
        return self.running[kind]

    def close(self) -> None:
        for srv in self.running.values():
            srv.stop()


@pytest.fixture(scope="module")
def servers() -> Iterator[_Servers]:
    s = _Servers()
    yield s
    s.close()


def run_driver(package: str, srv: ServerProcess) -> dict[str, Any]:
    module, driver, lib, extra_env = LIBRARIES[package]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{package} is not installed (pip install -e '.[test]')")
    env = {k: v for k, v in os.environ.items() if k != "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"}
    env.update(extra_env)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    prefix = f"/clients/{lib}/{srv.kind}/{next(_prefix_ids)}/"
    argv = [sys.executable, "-m", driver, "--lib", lib, "--endpoint", srv.endpoint, "--prefix", prefix]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=DRIVER_TIMEOUT_S)
    assert proc.returncode == 0, (
        f"{package} driver failed against {srv.kind} (exit {proc.returncode}):\n{proc.stderr[-4000:]}\n"
        f"{srv.stderr_tail() if srv.kind == 'kvstore' else ''}"
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{package} driver printed no transcript:\n{proc.stderr[-2000:]}"
    transcript: dict[str, Any] = json.loads(lines[-1])
    assert transcript["steps"], "empty transcript"
    return transcript


def _first_difference(expected: list[Any], actual: list[Any]) -> str:
    for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
        if e != a:
            return f"step {i} {e[0]!r}:\n  etcd:    {e[1]!r}\n  kvstore: {a[1]!r}"
    return f"etcd recorded {len(expected)} steps, kvstore {len(actual)}"


@pytest.mark.etcd
@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("package", list(LIBRARIES))
def test_client_library(package: str, server: str, servers: _Servers) -> None:
    transcript = run_driver(package, servers.get(server))
    if server == "etcd":
        servers.etcd_transcripts[package] = transcript
        return
    reference = servers.etcd_transcripts.get(package)
    if reference is None:  # run alone (-k): produce the reference now
        reference = run_driver(package, servers.get("etcd"))
        servers.etcd_transcripts[package] = reference
    assert transcript["steps"] == reference["steps"], _first_difference(reference["steps"], transcript["steps"])
