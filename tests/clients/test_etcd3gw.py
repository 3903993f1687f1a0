"""The `etcd3gw` client (OpenStack's, on etcd's JSON gateway) against a real etcd and against ours.

The same steps run on a fresh etcd and a fresh kvstore; each step's answer is recorded with the
values that name the server (ids, lease ids, the lock's uuid) left out, and the two transcripts
must be equal. Steps also check what any etcd must answer, so a transcript cannot be empty-equal.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.servers import ServerProcess, start_etcd, start_kvstore

etcd3gw = pytest.importorskip("etcd3gw")

WATCH_TIMEOUT_S = 10.0


def _kvs(items: list[tuple[bytes, dict[str, Any]]]) -> list[Any]:
    return [(v, {k: m[k] for k in ("key", "version", "create_revision", "mod_revision") if k in m})
            for v, m in items]


def scenario(url: str) -> list[Any]:
    host, port = url.split("//")[1].split(":")
    c = etcd3gw.client(host=host, port=int(port), timeout=10)
    out: list[Any] = []
    assert c.put("/gw3/a", "1") is True
    assert c.put("/gw3/b", "2") is True
    st = c.status()
    out.append(("status keys", sorted(set(st) & {"header", "version", "dbSize", "leader", "raftIndex", "raftTerm"})))
    out.append(("members", [sorted(set(m) - {"peerURLs"}) for m in c.members()]))
    out.append(("get", c.get("/gw3/a")))
    out.append(("get meta", _kvs(c.get("/gw3/a", metadata=True))))
    out.append(("get missing", c.get("/gw3/none")))
    out.append(("get_prefix", _kvs(c.get_prefix("/gw3/"))))
    out.append(("get_prefix sorted", [v for v, _ in c.get_prefix("/gw3/", sort_order="descend", sort_target="key")]))
    out.append(("get_all", sorted(v for v, _ in c.get_all())))
    out.append(("create new", c.create("/gw3/c", "3")))
    out.append(("create existing", c.create("/gw3/c", "3")))
    out.append(("replace ok", c.replace("/gw3/c", "3", "33")))
    out.append(("replace stale", c.replace("/gw3/c", "3", "333")))
    out.append(("get c", c.get("/gw3/c")))
    txn = c.transaction({
        "compare": [{"key": etcd3gw.utils._encode("/gw3/a"), "result": "EQUAL", "target": "VALUE",
                     "value": etcd3gw.utils._encode("1")}],
        "success": [{"request_put": {"key": etcd3gw.utils._encode("/gw3/t"), "value": etcd3gw.utils._encode("x")}}],
        "failure": [],
    })
    out.append(("txn", txn.get("succeeded"), [sorted(r) for r in txn.get("responses", [])]))
    lease = c.lease(ttl=60)
    assert lease.id > 0
    out.append(("lease ttl", 55 <= lease.ttl() <= 60))
    assert c.put("/gw3/leased", "v", lease=lease) is True
    out.append(("lease refresh", 55 <= lease.refresh() <= 60))
    out.append(("lease keys", lease.keys()))
    out.append(("lease revoke", lease.revoke()))
    out.append(("leased gone", c.get("/gw3/leased")))
    lock = c.lock("gw3-lock", ttl=30)
    out.append(("lock acquire", lock.acquire()))
    out.append(("lock held", lock.is_acquired()))
    out.append(("lock release", lock.release()))
    out.append(("lock held after", lock.is_acquired()))

    events: list[Any] = []

    def later() -> None:
        time.sleep(0.5)
        c.put("/gw3/w", "watched")

    writer = threading.Thread(target=later)
    writer.start()
    ev = c.watch_once("/gw3/w", timeout=WATCH_TIMEOUT_S)
    writer.join()
    events.append((ev.get("type", "PUT"), ev["kv"]["key"], ev["kv"]["value"]))
    it, cancel = c.watch_prefix("/gw3/", start_revision=2)
    for event in it:
        events.append((event.get("type", "PUT"), event["kv"]["key"], event["kv"].get("value")))
        if len(events) >= 4:
            break
    cancel()
    assert len(events) >= 4, events
    out.append(("watch", events))
    out.append(("delete", c.delete("/gw3/a")))
    out.append(("delete missing", c.delete("/gw3/a")))
    out.append(("delete_prefix", c.delete_prefix("/gw3/")))
    out.append(("get_prefix after", _kvs(c.get_prefix("/gw3/"))))
    return out


@pytest.fixture(scope="module")
def servers() -> Iterator[list[ServerProcess]]:
    started = [start_etcd("gw3-etcd"), start_kvstore("gw3-kvstore")]
    yield started
    for s in started:
        s.stop()


def test_etcd3gw_operations_answer_as_on_etcd(servers: list[ServerProcess]) -> None:
    etcd, ours = servers
    reference = scenario(etcd.client_url)
    got = scenario(ours.client_url)
    diffs = [(a, b) for a, b in zip(reference, got, strict=True) if a != b]
    assert not diffs, diffs
