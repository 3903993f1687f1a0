"""The harness itself: normalisation keeps what must compare and the runner reports differences."""

from __future__ import annotations

from typing import Any

from bench.workloads import prefix_end
from proto.etcdserverpb import rpc_pb2
from proto.mvccpb import kv_pb2
from tests.differential.harness import run_steps
from tests.differential.normalize import Approx, LeaseNames, canonical_sorted_range, to_dict
from tests.differential.session import Session
from tests.differential.steps import Step


def test_prefix_end() -> None:
    assert prefix_end(b"a") == b"b"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


def test_header_ids_dropped_revision_kept() -> None:
    h = rpc_pb2.ResponseHeader(cluster_id=1, member_id=2, revision=7, raft_term=3)
    assert to_dict(rpc_pb2.PutResponse(header=h)) == {"header": {"revision": 7}}
    # a present-but-empty message differs from an absent one (wire presence is compared)
    assert to_dict(rpc_pb2.PutResponse(header=h, prev_kv=kv_pb2.KeyValue())) == {"header": {"revision": 7},
                                                                                  "prev_kv": {}}


def test_lease_ids_named_by_first_appearance() -> None:
    a, b = LeaseNames(), LeaseNames()
    ra = to_dict(rpc_pb2.LeaseGrantResponse(ID=0x1234, TTL=5), a)
    rb = to_dict(rpc_pb2.LeaseGrantResponse(ID=0x9999, TTL=5), b)
    assert ra == rb == {"ID": "lease#0", "TTL": 5}
    assert to_dict(kv_pb2.KeyValue(key=b"k", lease=0x1234), a) != to_dict(kv_pb2.KeyValue(key=b"k", lease=0x1), b)


def test_remaining_ttl_tolerance() -> None:
    assert Approx(60) == Approx(59)
    assert Approx(60) != Approx(50)
    assert Approx(-1) != Approx(1)


def test_sorted_range_ties_compare_as_sets_but_order_of_groups_counts() -> None:
    req = rpc_pb2.RangeRequest(key=b"a", sort_target=rpc_pb2.RangeRequest.VERSION)
    x = {"kvs": [{"key": "b", "version": 1}, {"key": "a", "version": 1}, {"key": "c", "version": 2}]}
    y = {"kvs": [{"key": "a", "version": 1}, {"key": "b", "version": 1}, {"key": "c", "version": 2}]}
    z = {"kvs": [{"key": "c", "version": 2}, {"key": "a", "version": 1}, {"key": "b", "version": 1}]}
    assert canonical_sorted_range(x, req) == canonical_sorted_range(y, req)
    assert canonical_sorted_range(x, req) != canonical_sorted_range(z, req)


class _Fake(Session):
    def __init__(self, label: str) -> None:  # no channel: steps below never touch the network
        self.label = label


def test_runner_reports_a_difference() -> None:
    def answer(s: Session) -> Any:
        return {"header": {"revision": 5 if s.label == "etcd" else 6}}

    steps = [Step("same", lambda s: {"ok": 1}), Step("differs", answer)]
    mismatches = run_steps(steps, _Fake("etcd"), _Fake("kvstore"))
    assert [m.label for m in mismatches] == ["differs"]
    assert "revision': 5" in mismatches[0].render("etcd", "kvstore")
