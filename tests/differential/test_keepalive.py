"""gRPC keepalive: kube-apiserver pings every 30 s (timeout 10 s) on connections holding idle watch
streams. etcd enforces MinTime 5 s; grpc-python's server default (5 min without data) would answer
GOAWAY too_many_pings. Pings every 6 s over an idle watch must keep the connection on both servers."""

from __future__ import annotations

import time

import grpc
import pytest

from proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from tests.differential.harness import PairPool
from tests.differential.session import Stream

PING_EVERY_MS = 6000
IDLE_S = 20.0


def _idle_watch_survives(endpoint: str, key: bytes) -> dict[str, object]:
    options = [
        ("grpc.keepalive_time_ms", PING_EVERY_MS),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    ch = grpc.insecure_channel(endpoint, options=options)
    try:
        stream = Stream(rpc_pb2_grpc.WatchStub(ch).Watch)
        stream.send(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=key)))
        created = stream.recv(10)
        time.sleep(IDLE_S)  # the watch is idle: only pings cross the connection
        rpc_pb2_grpc.KVStub(ch).Put(rpc_pb2.PutRequest(key=key, value=b"after-idle"), timeout=10)
        ev = stream.recv(10)
        stream.close()
        return {
            "created": bool(created is not None and not isinstance(created, tuple) and created.created),
            "event_after_idle": (ev.events[0].kv.value if ev is not None and not isinstance(ev, tuple)
                                 and ev.events else repr(ev)),
        }
    finally:
        ch.close()


@pytest.mark.slow
def test_keepalive_pings_on_idle_watch(diff_pool: PairPool) -> None:
    pair = diff_pool.shared()
    key = f"/keepalive/{time.monotonic_ns()}".encode()
    got = [_idle_watch_survives(s.endpoint, key) for s in (pair.a, pair.b)]
    assert got[0] == got[1] == {"created": True, "event_after_idle": b"after-idle"}, got
