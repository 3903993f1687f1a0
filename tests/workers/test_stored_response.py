"""A front end passes the applier's response bytes on (kvstore/workers/writes.py StoredResponse):
what a client decodes is what decoding, completing the header and encoding again gave."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from kvstore.v3rpc.common import fill
from kvstore.workers.writes import StoredResponse
from proto.etcdserverpb import rpc_pb2 as pb
from proto.mvccpb import kv_pb2

KV = kv_pb2.KeyValue(key=b"k", value=b"v" * 40, create_revision=3, mod_revision=9, version=4)
RESPONSES = [
    pb.PutResponse(header=pb.ResponseHeader(revision=9), prev_kv=KV),
    pb.DeleteRangeResponse(header=pb.ResponseHeader(revision=12), deleted=2, prev_kvs=[KV, KV]),
    pb.TxnResponse(
        header=pb.ResponseHeader(revision=1),
        succeeded=True,
        responses=[
            pb.ResponseOp(response_put=pb.PutResponse(header=pb.ResponseHeader(revision=1))),
            pb.ResponseOp(response_range=pb.RangeResponse(header=pb.ResponseHeader(revision=1), kvs=[KV], count=1)),
        ],
    ),
]
MEMBERS = [
    SimpleNamespace(cluster_id=0xDEADBEEF, member_id=2**63 + 5, raft_term=7, store=SimpleNamespace(revision=99)),
    SimpleNamespace(cluster_id=1, member_id=2, raft_term=0, store=SimpleNamespace(revision=99)),
]


@pytest.mark.parametrize("resp", RESPONSES, ids=lambda r: type(r).__name__)
def test_the_stored_bytes_decode_as_the_completed_response(resp: Any) -> None:
    for member in MEMBERS:
        expected = type(resp).FromString(resp.SerializeToString())
        fill(member, expected.header)  # type: ignore[arg-type]
        stored = StoredResponse(resp.SerializeToString())
        fill(member, stored.header)  # type: ignore[arg-type]
        assert type(resp).FromString(stored.SerializeToString()) == expected
