"""Drive the asyncio client library `aetcd` through put/get/prefix/delete/txn/lease/watch against one
server, and print the transcript as JSON.

    python -m tests.clients.drive_aetcd --endpoint 127.0.0.1:2379 --prefix /t/1/

Runs in its own process (see transcript.py). Every step records what the library returned and
checks what any etcd must answer; the test compares the transcripts of our server and a real etcd.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aetcd

from tests.clients.transcript import WAIT_S, Transcript

EVENTS_MAX = 64  # bound on events collected from one watch


def _kv(t: Transcript, kv: Any) -> dict[str, Any] | None:
    """An aetcd KeyValue / Get (or None) as a normalised dict."""
    if kv is None:
        return None
    return t.kv(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def _event(t: Transcript, ev: aetcd.Event, with_prev: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"type": str(ev.kind), "kv": _kv(t, ev.kv)}
    if with_prev:
        out["prev_value"] = t.text(ev.prev_kv.value) if ev.prev_kv is not None else None
    return out


async def _take(watch: Any, n: int) -> list[aetcd.Event]:
    """The next n events of a watch, waiting at most WAIT_S."""
    assert n <= EVENTS_MAX
    out: list[aetcd.Event] = []

    async def collect() -> None:
        async for ev in watch:
            out.append(ev)
            if len(out) == n:
                return

    await asyncio.wait_for(collect(), WAIT_S)
    return out


async def run(endpoint: str, prefix: str, t: Transcript) -> None:
    host, port = endpoint.rsplit(":", 1)
    p = prefix.encode()
    async with aetcd.Client(host=host, port=int(port), timeout=10) as c:
        tx = c.transactions

        # -- put / get ---------------------------------------------------------------------------
        t.base_revision = (await c.put(p + b"base", b"0")).header.revision
        revs = [t.rev((await c.put(p + k, v)).header.revision) for k, v in ((b"a", b"1"), (b"b", b"2"), (b"c", b"3"))]
        t.record("put a b c: revisions", revs)
        t.check("put", revs == [1, 2, 3], revs)

        a = t.record("get a", _kv(t, await c.get(p + b"a")))
        t.check("get a", a is not None and a["value"] == "1" and a["version"] == 1, a)
        t.record("get missing", _kv(t, await c.get(p + b"missing")))

        prev = await c.put(p + b"a", b"1b", prev_kv=True)
        t.record("put a prev_kv", {"rev": t.rev(prev.header.revision), "prev": _kv(t, prev.prev_kv)})
        t.check("put prev_kv", prev.prev_kv is not None and prev.prev_kv.value == b"1", prev)
        a = t.record("get a again", _kv(t, await c.get(p + b"a")))
        t.check("version", a is not None and a["version"] == 2 and a["create"] == 1 and a["mod"] == 4, a)
        t.record("get a serializable", _kv(t, await c.get(p + b"a", serializable=True)))

        # -- prefix / range ------------------------------------------------------------------------
        items = await c.get_prefix(p)
        rows = t.record("get_prefix", {"count": items.count, "more": items.more, "kvs": [_kv(t, kv) for kv in items]})
        t.check("get_prefix keys", [r["key"] for r in rows["kvs"]] == ["a", "b", "base", "c"], rows)
        desc = t.record("get_prefix descend", [t.key(kv.key) for kv in await c.get_prefix(p, sort_order="descend")])
        t.check("descend", desc == sorted(desc, reverse=True), desc)
        t.record(
            "get_prefix sort by version descend",
            [t.key(kv.key) for kv in await c.get_prefix(p, sort_order="descend", sort_target="version")][:1],
        )
        keys_only = t.record(
            "get_prefix keys_only", [[t.key(kv.key), t.text(kv.value)] for kv in await c.get_prefix(p, keys_only=True)]
        )
        t.check("keys_only", all(v == "" for _, v in keys_only), keys_only)
        t.record("get_range [a, c)", [t.key(kv.key) for kv in await c.get_range(p + b"a", p + b"c")])
        t.record("get_all has ours", sorted(t.key(kv.key) for kv in await c.get_all() if kv.key.startswith(p)))

        # -- delete ----------------------------------------------------------------------------------
        d = await c.delete(p + b"b")
        t.record("delete b", {"deleted": d.deleted if d else 0, "rev": t.rev(d.header.revision) if d else None})
        t.record("delete b again", await c.delete(p + b"b"))
        d = await c.delete(p + b"base", prev_kv=True)
        t.record("delete base prev_kv", {"deleted": d.deleted, "prev": _kv(t, d.prev_kv)})
        t.check("delete", d is not None and d.prev_kv is not None and d.prev_kv.value == b"0", d)
        await c.put(p + b"z/1", b"1")
        await c.put(p + b"z/2", b"2")
        dr = await c.delete_prefix(p + b"z/", prev_kv=True)
        t.record("delete_prefix", {"deleted": dr.deleted, "prev": [t.key(kv.key) for kv in dr]})

        # -- txn ---------------------------------------------------------------------------------------
        ok, resp = await c.transaction(
            compare=[tx.value(p + b"a") == b"1b", tx.version(p + b"a") > 1],
            success=[tx.put(p + b"c", b"txn"), tx.get(p + b"a")],
            failure=[tx.put(p + b"c", b"fail")],
        )
        t.record(
            "txn success",
            {"ok": ok, "put_rev": t.rev(resp[0].response_put.header.revision), "get": [_kv(t, g) for _, g in resp[1]]},
        )
        t.check("txn success", ok and resp[1][0][0] == b"1b", resp)
        ok, resp = await c.transaction(
            compare=[tx.mod(p + b"a") < 1],
            success=[tx.put(p + b"c", b"wrong")],
            failure=[tx.get(p + b"c"), tx.delete(p + b"nothing")],
        )
        t.record(
            "txn failure",
            {"ok": ok, "get": [_kv(t, g) for _, g in resp[0]], "deleted": resp[1].response_delete_range.deleted},
        )
        t.check("txn failure", not ok and resp[0][0][0] == b"txn", resp)
        ok, resp = await c.transaction(
            compare=[tx.create(p + b"a") > 0],
            success=[tx.txn(compare=[tx.value(p + b"c") == b"txn"], success=[tx.put(p + b"d", b"nested")], failure=[])],
            failure=[],
        )
        t.record("txn nested", {"ok": ok, "inner_ok": resp[0].response_txn.succeeded})
        t.record("get d", _kv(t, await c.get(p + b"d")))
        t.record("replace a 1b->1c", await c.replace(p + b"a", b"1b", b"1c"))
        t.record("replace a wrong->x", await c.replace(p + b"a", b"wrong", b"x"))
        t.record("get a after replace", _kv(t, await c.get(p + b"a")))

        # -- lease ---------------------------------------------------------------------------------------
        lease = await c.lease(60)
        t.record("lease grant", {"id": t.lease(lease.id), "ttl": lease.ttl})
        await c.put(p + b"l1", b"x", lease=lease)
        await c.put(p + b"l2", b"y", lease=lease.id)
        t.record("get l1", _kv(t, await c.get(p + b"l1")))
        t.record("lease keys", sorted(t.key(k) for k in await lease.keys()))
        remaining = await lease.remaining_ttl()
        t.check("remaining ttl", 50 <= remaining <= 60, remaining)
        t.record("lease granted ttl", await lease.granted_ttl())
        r = await lease.refresh()
        t.record("lease refresh", {"id": t.lease(r.ID), "ttl": r.TTL})
        await lease.revoke()
        t.record("get l1 after revoke", _kv(t, await c.get(p + b"l1")))
        t.record("lease info after revoke", (await c.get_lease_info(lease.id)).TTL)
        t.record("l* after revoke", [t.key(kv.key) for kv in await c.get_prefix(p + b"l")])

        # -- watch -----------------------------------------------------------------------------------
        live = await c.watch_prefix(p + b"w/", prev_kv=True)
        first = (await c.put(p + b"w/1", b"a")).header.revision
        await c.put(p + b"w/1", b"b")
        await c.delete(p + b"w/1")
        await c.transaction(compare=[], success=[tx.put(p + b"w/2", b"x"), tx.put(p + b"w/3", b"y")], failure=[])
        await c.put(p + b"other", b"not watched")
        await c.put(p + b"w/4", b"z")
        live_events = [_event(t, e, with_prev=True) for e in await _take(live, 6)]
        t.record("watch prefix live", live_events)
        t.check(
            "watch live", [e["type"] for e in live_events] == ["PUT", "PUT", "DELETE", "PUT", "PUT", "PUT"], live_events
        )
        await live.cancel()

        hist = await c.watch_prefix(p + b"w/", start_revision=first)
        hist_events = [_event(t, e, with_prev=False) for e in await _take(hist, 6)]
        t.record("watch prefix from revision", hist_events)
        t.check("history = live", [e["kv"] for e in hist_events] == [e["kv"] for e in live_events], hist_events)
        await hist.cancel()

        deletes = await c.watch_prefix(p + b"w/", start_revision=first, kind=aetcd.EventKind.DELETE)
        t.record("watch deletes only (NOPUT filter)", [_event(t, e, with_prev=False) for e in await _take(deletes, 1)])
        await deletes.cancel()

        one = await c.watch(p + b"w/1", start_revision=first)
        t.record("watch key from revision", [_event(t, e, with_prev=False) for e in await _take(one, 3)])
        await one.cancel()

        async def put_later() -> None:
            await asyncio.sleep(0.3)
            await c.put(p + b"w/5", b"once")

        later = asyncio.create_task(put_later())
        ev = await c.watch_once(p + b"w/5", timeout=WAIT_S)
        await later
        t.record("watch_once", _event(t, ev, with_prev=False))

        # -- compaction: a watch from below the compaction point fails with the library's error --------
        await c.put(p + b"k", b"v1")
        kept = (await c.put(p + b"k", b"v2")).header.revision
        await c.put(p + b"k", b"v3")
        await c.compact(kept, physical=True)
        below = await c.watch(p + b"k", start_revision=kept - 1)
        try:
            await _take(below, 1)
            t.record("watch below compaction", "no error")
        except aetcd.RevisionCompactedError as e:
            t.record("watch below compaction", {"error": type(e).__name__, "compacted": t.rev(e.compacted_revision)})
        at = await c.watch(p + b"k", start_revision=kept)
        t.record("watch at compaction", [t.text(e.kv.value) for e in await _take(at, 2)])
        await at.cancel()
        try:
            await c.compact(kept)
            t.record("compact again", "no error")
        except aetcd.ClientError as e:
            t.record("compact again", {"error": type(e).__name__})

        # -- lock (a lease + a create-revision txn + a watch for the holder's delete) ---------------
        name = p + b"lock"
        holder = c.lock(name, ttl=60)
        t.record("lock acquire", await holder.acquire(timeout=5))
        t.record("lock is_acquired", await holder.is_acquired())
        rival = c.lock(name, ttl=60)
        t.record("rival acquire while held", await rival.acquire(timeout=1))
        t.record("lock release", await holder.release())
        t.record("rival acquire after release", await rival.acquire(timeout=5))
        t.record("rival release", await rival.release())

        # -- status and members (values differ by design: version, ids, names; shapes must not) --------
        st = await c.status()
        t.record(
            "status",
            {
                "has_version": bool(st.version),
                "leader_found": st.leader is not None,
                "raft_index_positive": st.raft_index > 0,
            },
        )
        members = [m async for m in c.members()]
        t.record("members", [{"client_urls_given": bool(m.client_urls), "named": bool(m.name)} for m in members])

        # -- lease expiry: the key goes, with a DELETE event (last: its timing shifts no other revision)
        short = await c.lease(2)
        t.record("short lease granted ttl", short.ttl)
        await c.put(p + b"x/expiring", b"soon gone", lease=short)
        gone = await c.watch_prefix(p + b"x/")
        t.record("lease expiry event", [str(e.kind) for e in await _take(gone, 1)])
        await gone.cancel()
        t.record("expired key", _kv(t, await c.get(p + b"x/expiring")))
        t.record("expired lease ttl", (await c.get_lease_info(short.id)).TTL)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", choices=["aetcd"], default="aetcd")
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--prefix", required=True)
    args = ap.parse_args()
    t = Transcript(args.prefix)
    asyncio.run(run(args.endpoint, args.prefix, t))
    t.emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
