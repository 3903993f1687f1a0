"""In-process watch fan-out: one applied put published to N live watchers, responses dequeued."""

from __future__ import annotations

from typing import Any

import pytest

from kvstore.statemachine import Kind, StateMachine, encode_entry
from kvstore.watch import WatchHub, WatchStream
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
