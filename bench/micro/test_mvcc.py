"""MVCC apply through the member's state machine: put, GuaranteedUpdate-shaped txn, ranges.

Each benchmark applies pre-encoded journal entries (decode + apply: what every member pays per
committed request) to a store pre-filled with KEYS keys of VALUE_BYTES bytes.
"""

from __future__ import annotations

from typing import Any

import pytest

from kvstore.mvcc.store import MVCCStore
from kvstore.statemachine import Kind, StateMachine, encode_entry
from proto.etcdserverpb import rpc_pb2 as pb

KEYS = 10_000
VALUE_BYTES = 256
VALUE = b"v" * VALUE_BYTES


def key(i: int) -> bytes:
    return b"/registry/pods/default/pod-%06d" % i


class Applier:
    """A state machine with a dense journal position counter (positions must be consecutive)."""

    def __init__(self) -> None:
        self.sm = StateMachine()
        self.position = 0

    def apply(self, kind: Kind, req: Any) -> Any:
        return self.apply_encoded(encode_entry(kind, 1, self.position, req.SerializeToString()))

    def apply_encoded(self, data: bytes) -> Any:
        self.position += 1
        out = self.sm.apply(self.position, 1_000_000 + self.position, data)
        assert not isinstance(out.result, Exception), out.result
        return out.result


@pytest.fixture
def filled() -> Applier:
    """A fresh store per benchmark, so that one benchmark's writes do not slow the next one's reads."""
    a = Applier()
    for start in range(0, KEYS, 100):
        ops = [pb.RequestOp(request_put=pb.PutRequest(key=key(i), value=VALUE)) for i in range(start, start + 100)]
        a.apply(Kind.TXN, pb.TxnRequest(success=ops))
    return a


def test_apply_put(benchmark: Any, filled: Applier) -> None:
    entries = [
        encode_entry(Kind.PUT, 1, i, pb.PutRequest(key=key(i), value=VALUE).SerializeToString()) for i in range(KEYS)
    ]
    n = iter(range(10**9))

    def step() -> None:
        filled.apply_encoded(entries[next(n) % KEYS])

    benchmark(step)


def test_apply_txn_guaranteed_update(benchmark: Any, filled: Applier) -> None:
    """Txn(compare MOD == rev, put; else range): kube-apiserver's update of one object."""
    store: MVCCStore = filled.sm.store
    n = iter(range(10**9))

    def step() -> None:
        k = key(next(n) % KEYS)
        kv = store.get(k)
        assert kv is not None
        req = pb.TxnRequest(
            compare=[pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.MOD, key=k, mod_revision=kv.mod_revision)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=VALUE))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=k))],
        )
        resp = filled.apply(Kind.TXN, req)
        assert resp.succeeded

    benchmark(step)


def test_range_single_key(benchmark: Any, filled: Applier) -> None:
    store = filled.sm.store
    n = iter(range(10**9))

    def step() -> None:
        resp = store.range(pb.RangeRequest(key=key(next(n) % KEYS)))
        assert len(resp.kvs) == 1

    benchmark(step)


@pytest.mark.parametrize("limit", [100, 500])
def test_range_prefix_page(benchmark: Any, filled: Applier, limit: int) -> None:
    """One page of a paginated list over the whole prefix (count covers every key, as etcd's does)."""
    store = filled.sm.store
    req = pb.RangeRequest(key=b"/registry/pods/", range_end=b"/registry/pods0", limit=limit)

    def step() -> None:
        resp = store.range(req)
        assert len(resp.kvs) == limit and resp.more

    benchmark(step)


def test_range_count_only(benchmark: Any, filled: Applier) -> None:
    store = filled.sm.store
    req = pb.RangeRequest(key=b"/registry/pods/", range_end=b"/registry/pods0", count_only=True)
    benchmark(lambda: store.range(req))


def test_snapshot_produce(benchmark: Any, filled: Applier) -> None:
    """Stream the state (10,000 keys with history) out of one read transaction: a journal
    snapshot or `etcdctl snapshot save`."""
    data = benchmark(filled.sm.dumps)
    benchmark.extra_info["snapshot_bytes"] = len(data)


def test_snapshot_install(benchmark: Any, filled: Applier) -> None:
    """Install that stream into a fresh environment: what a member behind the journal's trim pays."""
    data = filled.sm.dumps()

    def install() -> StateMachine:
        sm = StateMachine.loads(data)
        sm.close()
        return sm

    sm = benchmark(install)
    assert sm.store.revision == filled.sm.store.revision
