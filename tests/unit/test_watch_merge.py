"""Backlogged watch responses are coalesced without reordering or splitting anything."""

from __future__ import annotations

from kvstore.v3rpc.servicers import merge_event_responses
from proto.etcdserverpb import rpc_pb2 as pb
from proto.mvccpb import kv_pb2


def events(watch_id: int, rev: int) -> pb.WatchResponse:
    ev = kv_pb2.Event(kv=kv_pb2.KeyValue(key=b"k", mod_revision=rev, version=1))
    return pb.WatchResponse(header=pb.ResponseHeader(revision=rev), watch_id=watch_id, events=[ev])


def test_merges_consecutive_events_of_one_watcher_only() -> None:
    progress = pb.WatchResponse(header=pb.ResponseHeader(revision=4), watch_id=-1)
    out = merge_event_responses([events(0, 2), events(0, 3), events(1, 3), progress, events(0, 5)], 1 << 20)
    assert [(r.watch_id, [e.kv.mod_revision for e in r.events], r.header.revision) for r in out] == [
        (0, [2, 3], 3),
        (1, [3], 3),
        (-1, [], 4),
        (0, [5], 5),
    ]


def test_respects_the_size_limit_and_never_touches_created_or_cancel() -> None:
    created = pb.WatchResponse(watch_id=0, created=True)
    out = merge_event_responses([created, events(0, 2), events(0, 3)], 10)
    assert [len(r.events) for r in out] == [0, 1, 1]


def test_merges_each_watcher_of_a_backlog_across_the_others() -> None:
    # The hub queues revision by revision, every watcher in turn: a backlog of 3 revisions for
    # 2 watchers is 2 writes, each watcher's events in revision order; nothing crosses the progress.
    progress = pb.WatchResponse(header=pb.ResponseHeader(revision=4), watch_id=-1)
    backlog = [events(0, 2), events(1, 2), events(0, 3), events(1, 3), events(1, 4), progress, events(0, 5)]
    out = merge_event_responses(backlog, 1 << 20)
    assert [(r.watch_id, [e.kv.mod_revision for e in r.events], r.header.revision) for r in out] == [
        (0, [2, 3], 3),
        (1, [2, 3, 4], 4),
        (-1, [], 4),
        (0, [5], 5),
    ]


def test_a_watcher_split_by_the_size_limit_keeps_its_order() -> None:
    one = events(1, 2).ByteSize()  # watch_id 0 is not on the wire: the larger of the two
    backlog = [events(w, rev) for rev in (2, 3, 4) for w in (0, 1)]
    out = merge_event_responses(backlog, 2 * one + 1)  # two revisions fit, three do not
    assert [(r.watch_id, [e.kv.mod_revision for e in r.events]) for r in out] == [
        (0, [2, 3]),
        (0, [4]),
        (1, [2, 3]),
        (1, [4]),
    ]
