"""KV.RangeStream (etcd 3.7) over gRPC on our server; etcd 3.5.1 answers UNIMPLEMENTED, which is
what makes kube-apiserver fall back to a plain Range.

Chunks are sized towards --max-request-bytes; merging them gives the unary Range at the same
revision; a compaction past the pinned revision mid-stream ends it with etcd's ErrCompacted."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc
from tests.servers import ServerProcess, start_kvstore

MAX_REQUEST_BYTES = 16 * 1024
KEYS = 3000
VALUE_BYTES = 300


@pytest.fixture(scope="module")
def ours() -> Iterator[ServerProcess]:
    srv = start_kvstore("rangestream", {"max-request-bytes": MAX_REQUEST_BYTES})
    kv = rpc_pb2_grpc.KVStub(srv.channel())
    for i in range(0, KEYS, 25):
        txn = pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"/rs/%05d" % j, value=b"%05d" % j + b"x" * VALUE_BYTES))
            for j in range(i, i + 25)
        ])
        kv.Txn(txn, timeout=30)
    yield srv
    srv.stop()


def _merge(chunks: list[pb.RangeStreamResponse]) -> pb.RangeResponse:
    out = pb.RangeResponse()
    for c in chunks:
        out.MergeFrom(c.range_response)
    return out


def test_rangestream_chunks_merge_to_the_range(ours: ServerProcess) -> None:
    kv = rpc_pb2_grpc.KVStub(ours.channel())
    for opts in ({}, {"limit": 1234}, {"keys_only": True}, {"count_only": True}, {"min_mod_revision": 10},
                 {"serializable": True, "limit": 5}):
        req = pb.RangeRequest(key=b"/rs/", range_end=b"/rs0", **opts)
        want = kv.Range(req, timeout=30)
        chunks = list(kv.RangeStream(req, timeout=30))
        assert _merge(chunks) == want, opts
        if not opts:
            assert len(chunks) > 10
            # chunks grow towards the target and stay within a few times it
            assert max(c.ByteSize() for c in chunks) <= 4 * MAX_REQUEST_BYTES
            assert max(len(c.range_response.kvs) for c in chunks) > 10


def test_rangestream_sorting_is_unimplemented(ours: ServerProcess) -> None:
    kv = rpc_pb2_grpc.KVStub(ours.channel())
    req = pb.RangeRequest(key=b"/rs/", range_end=b"/rs0", sort_order=pb.RangeRequest.DESCEND)
    with pytest.raises(grpc.RpcError) as e:
        list(kv.RangeStream(req, timeout=10))
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_compaction_mid_stream_gives_etcds_error(ours: ServerProcess) -> None:
    kv = rpc_pb2_grpc.KVStub(ours.channel())
    # a small receive window keeps the server from running far ahead of the reader
    ch = grpc.insecure_channel(ours.endpoint, options=[("grpc.http2.bdp_probe", 0),
                                                       ("grpc.http2.lookahead_bytes", 16 * 1024)])
    try:
        stream = rpc_pb2_grpc.KVStub(ch).RangeStream(pb.RangeRequest(key=b"/rs/", range_end=b"/rs0"), timeout=30)
        first = next(stream)
        assert first.range_response.kvs and not first.range_response.HasField("header")
        put = kv.Put(pb.PutRequest(key=b"/rs-other", value=b"v"), timeout=10)
        kv.Compact(pb.CompactionRequest(revision=put.header.revision), timeout=10)
        with pytest.raises(grpc.RpcError) as e:
            for _ in stream:
                pass
        assert (e.value.code(), e.value.details()) == (
            grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
    finally:
        ch.close()


def test_etcd_351_answers_unimplemented(etcd_server: ServerProcess) -> None:
    kv = rpc_pb2_grpc.KVStub(etcd_server.channel())
    with pytest.raises(grpc.RpcError) as e:
        list(kv.RangeStream(pb.RangeRequest(key=b"/rs/", range_end=b"/rs0"), timeout=10))
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
