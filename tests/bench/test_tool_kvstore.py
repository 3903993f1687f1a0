"""The load tool against our `kvstore serve`: the same workloads and checks as against etcd.

Every checking counter (range-wrong-count, delete-missing, watch-missing-prev-kv, create-exists,
lease-expired, events missing) must stay at zero: the load tool doubles as a smoke test of the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.cli import main
from bench.servers import Server, start_kvstore

CHECKS = ("range-wrong-count", "delete-missing", "watch-missing-prev-kv", "create-exists", "lease-expired")


def _server_available() -> bool:
    try:
        import kvstore.server  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _server_available(), reason="kvstore.server does not exist yet")


@pytest.fixture(scope="module")
def kvstore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_kvstore(tmp_path_factory.mktemp("kvstore"))
    yield server
    server.stop()


def bench(server: Server, tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "result.json"
    rc = main([*args, "--endpoints", server.endpoints[0], "--json", str(out), "--quiet", "--prefix", "/t"])
    assert rc == 0
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["errors"] == {}, result["errors"]
    assert not {k: v for k, v in result["counters"].items() if k in CHECKS}, result["counters"]
    return result


@pytest.mark.parametrize(
    "args",
    [
        ["put", "--total", "300", "--clients", "8"],
        ["range", "--total", "200", "--key-space", "100"],
        ["range", "--total", "100", "--range-keys", "40", "--consistency", "s"],
        ["txn-put", "--total", "300", "--key-space", "20", "--clients", "8"],
        ["delete", "--total", "100", "--key-space", "100"],
        ["lease", "--total", "100", "--lease-mode", "keepalive", "--clients", "4"],
        ["lease", "--total", "100", "--lease-mode", "grant", "--clients", "4"],
    ],
    ids=lambda a: "-".join(a[:1] + [x for x in a[1:] if not x.startswith("--") and not x.isdigit()]),
)
def test_workload(kvstore: Server, tmp_path: Path, args: list[str]) -> None:
    r = bench(kvstore, tmp_path, *args)
    assert r["ok"] == int(args[args.index("--total") + 1])


def test_watch_delivers_every_event(kvstore: Server, tmp_path: Path) -> None:
    r = bench(kvstore, tmp_path, "watch", "--total", "200", "--watchers", "5", "--watch-streams", "2", "--clients", "2")
    assert r["watch"]["drained"] and r["watch"]["events_missing"] == 0 and r["watch"]["events"] == 1000
    # Every event of a put of this (only) process is also timed from the put's answer.
    assert r["by_op"]["watch-after-ack"]["latency_us"]["count"] == 1000
    assert 0 < r["counters"]["watch-responses"] <= 1000


def test_kube_profile(kvstore: Server, tmp_path: Path) -> None:
    r = bench(kvstore, tmp_path, "kube", "--total", "1000", "--kube-nodes", "20", "--kube-pods", "600")
    assert r["ok"] == 1000
    assert r["counters"]["watch-events"] > 0 and r["counters"]["list-pages"] >= 2
