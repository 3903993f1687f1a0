"""The watch protocol against the real state machine and hub, without gRPC."""

from __future__ import annotations

import asyncio
from typing import Any

from kvstore.statemachine import Kind, StateMachine, encode_entry
from kvstore.watch import WatchHub, WatchStream
from proto.etcdserverpb import rpc_pb2 as pb


class Node:
    def __init__(self, cache_revisions: int = 1000) -> None:
        self.sm = StateMachine()
        self.hub = WatchHub(
            self.sm.store, lambda rev: pb.ResponseHeader(revision=rev), cache_revisions_max=cache_revisions
        )
        self.position = 0

    def apply(self, kind: Kind, req: Any) -> Any:
        self.position += 1
        out = self.sm.apply(self.position, 0, encode_entry(kind, 1, self.position, req.SerializeToString()))
        for rev_events in out.events:
            self.hub.publish(rev_events)
        if out.compacted_to is not None:
            self.hub.compacted(out.compacted_to)
        return out.result

    def put(self, key: bytes, value: bytes = b"v") -> None:
        self.apply(Kind.PUT, pb.PutRequest(key=key, value=value))


def create(stream: WatchStream, key: bytes, **kw: Any) -> None:
    stream.handle(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, **kw)))


def drained(stream: WatchStream) -> list[Any]:
    out = []
    while not stream.queue.empty():
        out.append(stream.queue.get_nowait())
    return out


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_created_first_ids_in_order_and_live_events() -> None:
    n = Node()
    s = WatchStream(n.hub)
    create(s, b"a")
    create(s, b"b", prev_kv=True)
    n.put(b"b", b"1")
    n.put(b"b", b"2")
    got = drained(s)
    assert [(r.watch_id, r.created) for r in got[:2]] == [(0, True), (1, True)]
    assert [(r.watch_id, r.header.revision, r.events[0].kv.value) for r in got[2:]] == [(1, 2, b"1"), (1, 3, b"2")]
    assert not got[2].events[0].HasField("prev_kv") and got[3].events[0].prev_kv.value == b"1"


async def test_catch_up_from_cache_and_from_store_agree() -> None:
    for cache_revisions in (1000, 2):  # 2: the start is older than the cache, so the store serves it
        n = Node(cache_revisions)
        for i in range(6):
            n.put(b"k%d" % (i % 2), b"%d" % i)
        s = WatchStream(n.hub)
        create(s, b"k", range_end=b"l", start_revision=2, prev_kv=True)
        await settle()
        got = drained(s)
        assert got[0].created
        events = [ev for r in got[1:] for ev in r.events]
        assert [ev.kv.mod_revision for ev in events] == [2, 3, 4, 5, 6, 7]
        assert got[1].header.revision == 7  # a catch-up batch carries the store revision
        assert events[2].prev_kv.value == b"0" and not events[0].HasField("prev_kv")
        n.put(b"k0", b"live")
        assert drained(s)[0].events[0].kv.mod_revision == 8


async def test_progress_request_waits_for_every_watcher_and_never_runs_ahead() -> None:
    n = Node()
    for i in range(3):
        n.put(b"x", b"%d" % i)
    s = WatchStream(n.hub)
    create(s, b"x", start_revision=2)  # catching up
    s.handle(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
    got = drained(s)
    assert [r.watch_id for r in got] == [0]  # only `created`: the progress request was dropped
    await settle()
    drained(s)
    s.handle(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
    (progress,) = drained(s)
    assert (progress.watch_id, progress.header.revision, len(progress.events)) == (-1, 4, 0)


async def test_future_start_revision_gets_nothing_until_reached() -> None:
    n = Node()
    s = WatchStream(n.hub)
    create(s, b"f", start_revision=4, progress_notify=True)
    drained(s)
    n.put(b"f")  # rev 2
    s.handle(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
    n.hub.progress_tick()
    assert drained(s) == []
    n.put(b"f")  # rev 3: the watcher's next revision is the store's next, but its start is not reached
    s.handle(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
    n.hub.progress_tick()
    assert drained(s) == []
    n.put(b"f")  # rev 4
    (resp,) = drained(s)
    assert resp.events[0].kv.mod_revision == 4
    n.hub.progress_tick()  # an event went out since the last tick
    n.hub.progress_tick()
    (progress,) = drained(s)
    assert (progress.watch_id, progress.header.revision) == (0, 4)


async def test_compacted_start_is_cancelled_with_compact_revision() -> None:
    n = Node()
    for _ in range(4):
        n.put(b"c")
    n.apply(Kind.COMPACT, pb.CompactionRequest(revision=4))
    s = WatchStream(n.hub)
    create(s, b"c", start_revision=3)
    created, cancelled = drained(s)
    assert created.created and cancelled.canceled and cancelled.compact_revision == 4
    assert cancelled.header.revision == 0
    create(s, b"c", start_revision=4)  # exactly the compact revision is still served
    await settle()
    got = drained(s)
    assert [ev.kv.mod_revision for r in got[1:] for ev in r.events] == [4, 5]


async def test_invalid_creates_and_cancel() -> None:
    n = Node()
    s = WatchStream(n.hub)
    create(s, b"b", range_end=b"a")
    create(s, b"a", watch_id=7)
    create(s, b"a", watch_id=7)
    s.handle(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=7)))
    s.handle(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=99)))  # unknown: ignored
    empty, ok, dup, cancel = drained(s)
    assert (empty.watch_id, empty.canceled, empty.cancel_reason) == (-1, True, "mvcc: watcher range is empty")
    assert ok.watch_id == 7 and dup.cancel_reason == "mvcc: duplicate watch ID provided on the WatchStream"
    assert (cancel.watch_id, cancel.canceled) == (7, True)


async def test_txn_events_arrive_in_one_response_in_op_order() -> None:
    n = Node()
    s = WatchStream(n.hub)
    create(s, b"\0", range_end=b"\0")
    ops = [pb.RequestOp(request_put=pb.PutRequest(key=k)) for k in (b"z", b"a", b"m")]
    n.apply(Kind.TXN, pb.TxnRequest(success=ops))
    _, resp = drained(s)
    assert [ev.kv.key for ev in resp.events] == [b"z", b"a", b"m"]


async def test_filters() -> None:
    n = Node()
    s = WatchStream(n.hub)
    create(s, b"k", filters=[pb.WatchCreateRequest.NOPUT])
    n.put(b"k")
    n.apply(Kind.DELETE_RANGE, pb.DeleteRangeRequest(key=b"k"))
    _, resp = drained(s)
    assert [ev.type for ev in resp.events] == [1]
