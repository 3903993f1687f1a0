"""Drive one of the synchronous client libraries (`etcd3`, or `pyetcd` from etcd-sdk-python) through
put/get/prefix/delete/txn/lease/watch/compaction/lock/status against one server, and print the transcript as JSON.

    python -m tests.clients.drive_sync --lib etcd3 --endpoint 127.0.0.1:2379 --prefix /t/1/

Runs in its own process (see transcript.py). `etcd3` 0.12 needs
PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python with protobuf >= 4; the test sets it.
Both libraries share etcd3's API (etcd-sdk-python is its maintained fork), so one driver serves both.
Every step records what the library returned and checks what any etcd must answer; the test then
compares the transcripts of our server and of a real etcd.
"""

from __future__ import annotations

import argparse
import importlib
import queue
import threading
import time
from typing import Any

from tests.clients.transcript import WAIT_S, Transcript

EVENTS_MAX = 64  # bound on events collected from one watch


def _meta(t: Transcript, value: Any, meta: Any) -> dict[str, Any] | None:
    if meta is None:
        assert value is None
        return None
    return t.kv(meta.key, value, meta.create_revision, meta.mod_revision, meta.version, meta.lease_id)


def _event(t: Transcript, ev: Any, with_prev: bool) -> dict[str, Any]:
    kind = type(ev).__name__  # PutEvent / DeleteEvent: the library's own classification
    out: dict[str, Any] = {
        "type": {"PutEvent": "PUT", "DeleteEvent": "DELETE"}[kind],
        "kv": t.kv(ev.key, ev.value, ev.create_revision, ev.mod_revision, ev.version, ev.lease),
    }
    if with_prev:
        out["prev_value"] = t.text(ev.prev_value) if ev.prev_mod_revision else None
    return out


class _Collector:
    """A watch callback that queues responses; take() waits (bounded) for n events."""

    def __init__(self) -> None:
        self.q: queue.Queue[Any] = queue.Queue(maxsize=EVENTS_MAX)
        self.responses = 0

    def __call__(self, response: Any) -> None:
        self.q.put(response)

    def take(self, n: int) -> list[Any]:
        assert n <= EVENTS_MAX
        out: list[Any] = []
        deadline = time.monotonic() + WAIT_S
        while len(out) < n:
            item = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(item, Exception):
                raise item
            self.responses += 1
            out.extend(item.events)
        return out


def run(lib: Any, host: str, port: int, p: str, t: Transcript) -> None:
    c = lib.client(host=host, port=port, timeout=10)
    tx = c.transactions

    # -- put / get -------------------------------------------------------------------------------
    t.base_revision = c.put(p + "base", "0").header.revision
    revs = [t.rev(c.put(p + k, v).header.revision) for k, v in (("a", "1"), ("b", "2"), ("c", "3"))]
    t.record("put a b c: revisions", revs)
    t.check("put", revs == [1, 2, 3], revs)

    a = t.record("get a", _meta(t, *c.get(p + "a")))
    t.check("get a", a is not None and a["value"] == "1" and a["version"] == 1, a)
    t.record("get missing", _meta(t, *c.get(p + "missing")))

    prev = c.put(p + "a", "1b", prev_kv=True)
    t.record("put a prev_kv", {"rev": t.rev(prev.header.revision), "prev": t.pb_kv(prev.prev_kv)})
    t.check("put prev_kv", prev.prev_kv.value == b"1", prev.prev_kv)
    a = t.record("get a again", _meta(t, *c.get(p + "a")))
    t.check("version", a is not None and a["version"] == 2 and a["create"] == 1 and a["mod"] == 4, a)
    t.record("get a serializable", _meta(t, *c.get(p + "a", serializable=True)))

    # -- prefix / range ----------------------------------------------------------------------------
    items = t.record("get_prefix", [_meta(t, v, m) for v, m in c.get_prefix(p)])
    t.check("get_prefix keys", [i["key"] for i in items] == ["a", "b", "base", "c"], items)
    desc = t.record("get_prefix descend", [t.key(m.key) for _, m in c.get_prefix(p, sort_order="descend")])
    t.check("descend", desc == sorted(desc, reverse=True), desc)
    t.record(
        "get_prefix sort by mod ascend",
        [t.key(m.key) for _, m in c.get_prefix(p, sort_order="ascend", sort_target="mod")],
    )
    keys_only = t.record(
        "get_prefix keys_only", [[t.key(m.key), t.text(v)] for v, m in c.get_prefix(p, keys_only=True)]
    )
    t.check("keys_only", all(v == "" for _, v in keys_only), keys_only)
    limited = c.get_prefix_response(p, limit=2)
    t.record(
        "get_prefix limit 2",
        {"keys": [t.key(kv.key) for kv in limited.kvs], "more": limited.more, "count": limited.count},
    )
    if lib.__name__ != "etcd3":  # etcd3 0.12 drops `limit` when it builds the request (a library bug)
        t.check("limit", len(limited.kvs) == 2 and limited.more and limited.count == 4, limited)
    t.record("get_range [a, c)", [t.key(m.key) for _, m in c.get_range(p + "a", p + "c")])
    t.record("get_all has ours", sorted(t.key(m.key) for _, m in c.get_all() if m.key.decode().startswith(p)))

    # -- delete --------------------------------------------------------------------------------------
    t.record("delete b", c.delete(p + "b"))
    t.record("delete b again", c.delete(p + "b"))
    d = c.delete(p + "base", prev_kv=True, return_response=True)
    t.record(
        "delete base prev_kv",
        {"deleted": d.deleted, "prev": [t.pb_kv(kv) for kv in d.prev_kvs], "rev": t.rev(d.header.revision)},
    )
    t.check("delete", d.deleted == 1 and d.prev_kvs[0].value == b"0", d)

    # -- txn ----------------------------------------------------------------------------------------
    ok, resp = c.transaction(
        compare=[tx.value(p + "a") == "1b", tx.version(p + "a") > 1],
        success=[tx.put(p + "c", "txn"), tx.get(p + "a")],
        failure=[tx.put(p + "c", "fail")],
    )
    t.record(
        "txn success",
        {"ok": ok, "put_rev": t.rev(resp[0].response_put.header.revision), "get": [_meta(t, v, m) for v, m in resp[1]]},
    )
    t.check("txn success", ok and resp[1][0][0] == b"1b", resp)
    ok, resp = c.transaction(
        compare=[tx.mod(p + "a") < 1],
        success=[tx.put(p + "c", "wrong")],
        failure=[tx.get(p + "c"), tx.delete(p + "nothing")],
    )
    t.record(
        "txn failure",
        {"ok": ok, "get": [_meta(t, v, m) for v, m in resp[0]], "deleted": resp[1].response_delete_range.deleted},
    )
    t.check("txn failure", not ok and resp[0][0][0] == b"txn", resp)
    ok, resp = c.transaction(
        compare=[tx.create(p + "a") > 0],
        success=[tx.txn(compare=[tx.value(p + "c") == "txn"], success=[tx.put(p + "d", "nested")], failure=[])],
        failure=[],
    )
    t.record("txn nested", {"ok": ok, "inner_ok": resp[0].response_txn.succeeded})
    t.record("get d", _meta(t, *c.get(p + "d")))
    t.record("replace a 1b->1c", c.replace(p + "a", "1b", "1c"))
    t.record("replace a wrong->x", c.replace(p + "a", "wrong", "x"))
    t.record("get a after replace", _meta(t, *c.get(p + "a")))

    # -- lease ----------------------------------------------------------------------------------------
    lease = c.lease(60)
    t.record("lease grant", {"id": t.lease(lease.id), "ttl": lease.ttl})
    c.put(p + "l1", "x", lease=lease)
    c.put(p + "l2", "y", lease=lease.id)
    t.record("get l1", _meta(t, *c.get(p + "l1")))
    t.record("lease keys", sorted(t.key(k) for k in lease.keys))
    remaining = lease.remaining_ttl
    t.check("remaining ttl", 50 <= remaining <= 60, remaining)
    t.record("lease granted ttl", lease.granted_ttl)
    refreshed = lease.refresh()
    t.record("lease refresh", [{"id": t.lease(r.ID), "ttl": r.TTL} for r in refreshed])
    lease.revoke()
    t.record("get l1 after revoke", _meta(t, *c.get(p + "l1")))
    t.record("lease info after revoke", c.get_lease_info(lease.id).TTL)
    t.record("l* after revoke", [t.key(m.key) for _, m in c.get_prefix(p + "l")])

    # -- watch --------------------------------------------------------------------------------------
    live = _Collector()
    wid = c.add_watch_prefix_callback(p + "w/", live, prev_kv=True)
    first = c.put(p + "w/1", "a").header.revision
    c.put(p + "w/1", "b")
    c.delete(p + "w/1")
    c.transaction(compare=[], success=[tx.put(p + "w/2", "x"), tx.put(p + "w/3", "y")], failure=[])
    c.put(p + "other", "not watched")
    c.put(p + "w/4", "z")
    live_events = [_event(t, e, with_prev=True) for e in live.take(6)]
    t.record("watch prefix live", live_events)
    t.check(
        "watch live", [e["type"] for e in live_events] == ["PUT", "PUT", "DELETE", "PUT", "PUT", "PUT"], live_events
    )
    c.cancel_watch(wid)

    hist = _Collector()
    wid = c.add_watch_prefix_callback(p + "w/", hist, start_revision=first)
    hist_events = [_event(t, e, with_prev=False) for e in hist.take(6)]
    t.record("watch prefix from revision", hist_events)
    t.check("history = live", [e["kv"] for e in hist_events] == [e["kv"] for e in live_events], hist_events)
    c.cancel_watch(wid)

    one = _Collector()
    wid = c.add_watch_callback(p + "w/1", one, start_revision=first)
    t.record("watch key from revision", [_event(t, e, with_prev=False) for e in one.take(3)])
    c.cancel_watch(wid)

    # watch_once blocks until an event: a timer thread supplies it
    timer = threading.Timer(0.3, lambda: c.put(p + "w/5", "once"))
    timer.start()
    ev = c.watch_once(p + "w/5", timeout=WAIT_S)
    timer.join()
    t.record("watch_once", _event(t, ev, with_prev=False))

    # after cancel no more events reach the callback
    c.put(p + "w/6", "after cancel")
    time.sleep(0.2)
    t.check("cancelled", live.q.empty() and hist.q.empty(), "events after cancel")

    # -- compaction: a watch from below the compaction point fails with the library's error ----------
    c.put(p + "k", "v1")
    kept = c.put(p + "k", "v2").header.revision
    c.put(p + "k", "v3")
    c.compact(kept, physical=True)
    compacted = _Collector()
    c.add_watch_callback(p + "k", compacted, start_revision=kept - 1)
    try:
        compacted.take(1)
        t.record("watch below compaction", "no error")
    except lib.exceptions.RevisionCompactedError as e:
        t.record("watch below compaction", {"error": type(e).__name__, "compacted": t.rev(e.compacted_revision)})
    at = _Collector()
    wid = c.add_watch_callback(p + "k", at, start_revision=kept)
    t.record("watch at compaction", [_event(t, e, with_prev=False)["kv"]["value"] for e in at.take(2)])
    c.cancel_watch(wid)
    try:
        c.compact(kept)
        t.record("compact again", "no error")
    except Exception as e:  # etcd3 passes OUT_OF_RANGE through as the grpc error
        t.record("compact again", {"error": type(e).__name__, "details": getattr(e, "details", lambda: "")()})

    # -- lock (a lease + a create-revision txn + a watch for the holder's delete) --------------------
    name = p.strip("/").replace("/", "-")
    holder = c.lock(name, ttl=60)
    t.record("lock acquire", holder.acquire(timeout=5))
    t.record("lock is_acquired", holder.is_acquired())
    rival = c.lock(name, ttl=60)
    if lib.__name__ != "etcd3":  # etcd3 0.12 retries a held lock with a tenacity API that tenacity 9 removed
        t.record("rival acquire while held", rival.acquire(timeout=1))
    t.record("lock release", holder.release())
    t.record("rival acquire after release", rival.acquire(timeout=5))
    t.record("rival release", rival.release())

    # -- status and members (values differ by design: version, ids, names; shapes must not) -----------
    st = c.status()
    t.record(
        "status",
        {
            "has_version": bool(st.version),
            "leader_found": st.leader is not None,
            "raft_index_positive": st.raft_index > 0,
        },
    )
    members = list(c.members)
    t.record("members", [{"client_urls_given": bool(m.client_urls), "named": bool(m.name)} for m in members])

    # -- lease expiry: the key goes, with a DELETE event (last: its timing shifts no other revision) --
    short = c.lease(2)
    t.record("short lease granted ttl", short.ttl)
    c.put(p + "x/expiring", "soon gone", lease=short)
    gone = _Collector()
    wid = c.add_watch_prefix_callback(p + "x/", gone)
    t.record("lease expiry event", [_event(t, e, with_prev=False)["type"] for e in gone.take(1)])
    c.cancel_watch(wid)
    t.record("expired key", _meta(t, *c.get(p + "x/expiring")))
    t.record("expired lease ttl", c.get_lease_info(short.id).TTL)
    c.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", choices=["etcd3", "pyetcd"], required=True)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--prefix", required=True)
    args = ap.parse_args()
    host, port = args.endpoint.rsplit(":", 1)
    t = Transcript(args.prefix)
    run(importlib.import_module(args.lib), host, int(port), args.prefix, t)
    t.emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
