"""RangeStream's core: merged chunks equal the unary Range at the same revision, for every option."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from kvstore import errors
from kvstore.errors import EtcdError
from kvstore.mvcc.rangestream import RangeStreamer, next_chunk_keys
from kvstore.mvcc.store import MVCCStore
from kvstore.statemachine import Kind
from proto.etcdserverpb import rpc_pb2 as pb
from tests.unit.test_mvcc import Driver

KEYS = 120


def loaded() -> Driver:
    """Keys /k/000../k/119 with values of growing size, some updated, some deleted, some recreated."""
    d = Driver()
    for i in range(KEYS):
        d.put(b"/k/%03d" % i, b"v" * (i % 17 + 1))
    d.put(b"/other", b"x")
    for i in range(0, KEYS, 7):
        d.put(b"/k/%03d" % i, b"updated")
    for i in range(3, KEYS, 11):
        d.delete(b"/k/%03d" % i)
    for i in range(3, KEYS, 22):
        d.put(b"/k/%03d" % i, b"again")
    return d


def merged(store: MVCCStore, req: Any, keys_max: int | None) -> tuple[pb.RangeResponse, list[pb.RangeResponse]]:
    streamer = RangeStreamer(store, req)
    chunks = []
    keys = 10
    while not streamer.done:
        chunk = streamer.next_chunk(keys_max or keys)
        chunks.append(chunk)
        if keys_max is None:
            keys = next_chunk_keys(keys, chunk.ByteSize(), 600)
    out = pb.RangeResponse()
    for chunk in chunks:
        out.MergeFrom(chunk)
    return out, chunks


RANGES = [
    (b"/k/", b"/k0"),  # prefix
    (b"/k/050", b""),  # one key
    (b"/k/003", b""),  # one key, deleted then recreated
    (b"/k/014", b""),  # one key, deleted
    (b"\0", b"\0"),  # everything
    (b"/k/100", b"\0"),  # from a key on
    (b"/k/090", b"/k/020"),  # empty: end before start
]
OPTIONS: list[dict[str, Any]] = [
    {},
    {"limit": 1},
    {"limit": 7},
    {"limit": 10},
    {"limit": 11},
    {"limit": KEYS - 1},
    {"limit": 10_000},
    {"keys_only": True},
    {"count_only": True},
    {"count_only": True, "limit": 3},
    {"min_mod_revision": 60},
    {"max_mod_revision": 60},
    {"min_create_revision": 30, "max_create_revision": 90},
    {"min_mod_revision": 100, "limit": 5},
    {"sort_order": pb.RangeRequest.ASCEND},
    {"sort_order": pb.RangeRequest.ASCEND, "sort_target": pb.RangeRequest.KEY, "limit": 4},
    {"keys_only": True, "limit": 13, "max_create_revision": 100},
]


@pytest.mark.parametrize("revision", [0, 40, 125, 150])
@pytest.mark.parametrize("keys_max", [1, 3, 10, None])
def test_merged_chunks_equal_range_for_every_option(revision: int, keys_max: int | None) -> None:
    d = loaded()
    for (key, end), opts in itertools.product(RANGES, OPTIONS):
        req = pb.RangeRequest(key=key, range_end=end, revision=revision, **opts)
        want = d.store.range(req)
        got, chunks = merged(d.store, req, keys_max)
        assert got == want, (key, end, opts, revision, keys_max)
        # only the last chunk carries the header, count and more
        for chunk in chunks[:-1]:
            assert not chunk.HasField("header") and not chunk.count and not chunk.more
        if keys_max:
            assert all(len(c.kvs) <= keys_max for c in chunks)


def test_the_stream_stays_at_its_pinned_revision_while_writes_land() -> None:
    d = loaded()
    req = pb.RangeRequest(key=b"/k/", range_end=b"/k0")
    want = d.store.range(req)
    streamer = RangeStreamer(d.store, req)
    out = pb.RangeResponse()
    n = 0
    while not streamer.done:
        out.MergeFrom(streamer.next_chunk(5))
        n += 1
        d.put(b"/k/%03d" % (n * 3), b"written mid-stream")  # inside and ahead of the cursor
        d.delete(b"/k/%03d" % (n * 5 + 1))
        d.put(b"/k/new%03d" % n, b"new key")
    assert n > 5
    assert out == want


def test_compaction_of_the_pinned_revision_mid_stream_is_etcds_compacted_error() -> None:
    d = loaded()
    streamer = RangeStreamer(d.store, pb.RangeRequest(key=b"/k/", range_end=b"/k0"))
    streamer.next_chunk(5)
    pinned = d.store.revision
    d.put(b"/k/001", b"after")
    d.apply(Kind.COMPACT, pb.CompactionRequest(revision=pinned))  # compacting at the pinned revision keeps it readable
    streamer.next_chunk(5)
    d.put(b"/k/002", b"after")
    d.apply(Kind.COMPACT, pb.CompactionRequest(revision=d.store.revision))
    with pytest.raises(EtcdError) as e:
        streamer.next_chunk(5)
    assert e.value == errors.fail(errors.COMPACTED)


def test_a_compacted_or_future_start_revision_fails_as_range_does() -> None:
    d = loaded()
    d.apply(Kind.COMPACT, pb.CompactionRequest(revision=50))
    for rev, err in ((10, errors.COMPACTED), (10_000, errors.FUTURE_REV)):
        with pytest.raises(EtcdError) as e:
            RangeStreamer(d.store, pb.RangeRequest(key=b"/k/", range_end=b"/k0", revision=rev))
        assert e.value == errors.fail(err)


@pytest.mark.parametrize("order,target", [
    (pb.RangeRequest.DESCEND, pb.RangeRequest.KEY),
    (pb.RangeRequest.ASCEND, pb.RangeRequest.MOD),
    (pb.RangeRequest.NONE, pb.RangeRequest.VALUE),
])
def test_sorting_other_than_by_key_is_unimplemented(order: int, target: int) -> None:
    d = loaded()
    with pytest.raises(EtcdError) as e:
        RangeStreamer(d.store, pb.RangeRequest(key=b"/k/", range_end=b"/k0", sort_order=order, sort_target=target))
    assert e.value.code == errors.Code.UNIMPLEMENTED


def test_chunk_size_adapts_towards_the_target() -> None:
    assert next_chunk_keys(10, 100, 1000) == 20
    assert next_chunk_keys(10, 700, 1000) == 10
    assert next_chunk_keys(30, 2500, 1000) == 10
    assert next_chunk_keys(1, 10**9, 1000) == 1
