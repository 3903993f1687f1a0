"""In-process watch fan-out: one applied put published to N live watchers, responses dequeued."""

from __future__ import annotations

from typing import Any

import pytest

from kvstore.statemachine import Kind, StateMachine, encode_entry
from kvstore.watch import WatchCache, WatchHub, WatchStream
from proto.etcdserverpb import rpc_pb2 as pb

PREFIX = b"/registry/pods/"
VALUE = b"v" * 256


@pytest.mark.parametrize("watchers", [1, 100, 1000])
def test_publish_fan_out(benchmark: Any, watchers: int) -> None:
    sm = StateMachine()
    hub = WatchHub(sm.store, header=lambda rev: pb.ResponseHeader(revision=rev))
    streams = []
    for _ in range(watchers):
        s = WatchStream(hub)
        s.handle(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=PREFIX, range_end=b"/registry/pods0")))
        created = s.queue.get_nowait()
        assert created.created and not created.canceled
        streams.append(s)
    position = 0
    entries = [
        encode_entry(Kind.PUT, 1, i, pb.PutRequest(key=PREFIX + b"p%04d" % i, value=VALUE).SerializeToString())
        for i in range(1000)
    ]

    def step() -> None:
        nonlocal position
        position += 1
        out = sm.apply(position, position, entries[position % 1000])
        for rev_events in out.events:
            hub.publish(rev_events)
        for s in streams:
            resp = s.queue.get_nowait()
            assert len(resp.events) == 1

    benchmark(step)


def test_feed_read_back(benchmark: Any) -> None:
    """A front end's watch feed per applied put (kvstore/workers/watches.py): the revision's events read
    back from the records over every key (prev_kv included) and added to the watch cache."""
    sm = StateMachine()
    for i in range(10_000):
        req = pb.PutRequest(key=PREFIX + b"p%04d" % (i % 1000), value=VALUE)
        sm.apply(i + 1, i + 1, encode_entry(Kind.PUT, 1, i, req.SerializeToString()))
    store = sm.store
    cache = WatchCache()
    revision = [1]

    def step() -> None:
        revision[0] = revision[0] % (store.revision - 1) + 1
        rev = revision[0] + 1
        [rev_events] = store.events_between(rev, b"\0", b"\0", rev)[0]
        cache.add(rev_events)

    benchmark(step)
