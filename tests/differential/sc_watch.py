"""Watch scenarios: deterministic sequences only (writes while the watch is synced, or before it exists)."""

from __future__ import annotations

from tests.differential.harness import scenario
from tests.differential.normalize import FROM_KEY, LID, PREFIX_END, R
from tests.differential.steps import (
    compact,
    delete,
    expect36,
    grant,
    op_del,
    op_put,
    put,
    revoke,
    stream_close,
    txn,
    watch_cancel,
    watch_create,
    watch_open,
    watch_progress,
    watch_quiet,
    watch_recv,
)


def _synced(**spec: object) -> list:
    """Open stream w, create one watch, receive its created response."""
    return [watch_open(), watch_create(**spec), watch_recv(n=1)]


@scenario()
def sc_watch_single_key_put_delete() -> list:
    return [*_synced(key="k"), put("k", "1"), watch_recv(), put("other", "x"), put("k", "2"), watch_recv(),
            delete("k"), watch_recv(), watch_quiet()]


@scenario()
def sc_watch_created_header_revision() -> list:
    return [put("a"), put("b"), *_synced(key="a"), put("a", "2"), watch_recv()]


@scenario()
def sc_watch_ids_per_stream_from_zero() -> list:
    return [watch_open(), watch_create(key="a"), watch_create(key="b"), watch_create(key="c"), watch_recv(n=3),
            put("b", "1"), watch_recv(), put("c", "1"), watch_recv(), put("a", "1"), watch_recv()]


@scenario()
def sc_watch_ids_independent_per_stream() -> list:
    return [watch_open("s1"), watch_open("s2"), watch_create("s1", key="a"), watch_recv("s1"),
            watch_create("s2", key="a"), watch_recv("s2"), watch_create("s2", key="a"), watch_recv("s2"),
            put("a", "1"), watch_recv("s1"), watch_recv("s2", n=2, unordered=True)]


@scenario()
def sc_watch_prefix() -> list:
    return [*_synced(key="p/", range_end=PREFIX_END), put("p/1"), watch_recv(), put("p0"), put("q"),
            put("p/2/x", "y"), watch_recv(), delete("p/", range_end=PREFIX_END), watch_recv(), watch_quiet()]


@scenario()
def sc_watch_range() -> list:
    return [*_synced(key="b", range_end="d"), put("a"), put("b"), watch_recv(), put("c"), watch_recv(), put("d"),
            put("cz"), watch_recv(), watch_quiet()]


@scenario(fresh=True)
def sc_watch_from_key() -> list:
    return [*_synced(key="m", range_end=FROM_KEY), put("a"), put("m"), watch_recv(), put("zzz"), watch_recv()]


@scenario(fresh=True)
def sc_watch_all_keys() -> list:
    return [*_synced(key=b"\0", range_end=b"\0"), put("a"), watch_recv(), put(b"\x00\x01"), watch_recv(),
            put(b"\xff"), watch_recv()]


@scenario(fresh=True)
def sc_watch_empty_key() -> list:
    return [watch_open(), watch_create(key=b""), watch_recv(), put(b"\x00", "nul"), put("a"), watch_quiet(),
            watch_create(key=b"", range_end=b"\0"), watch_recv(), put("b"), watch_recv()]


@scenario()
def sc_watch_wrong_range() -> list:
    return [watch_open(), watch_create(key="c", range_end="a"), watch_recv(), watch_create(key="c", range_end="c"),
            watch_recv(), watch_create(key="k"), watch_recv(), put("k"), watch_recv()]


@scenario()
def sc_watch_start_revision_history() -> list:
    return [put("k", "1"), put("k", "2"), delete("k"), put("k", "3"),
            *_synced(key="k", start_revision=R(1)), watch_recv(), put("k", "4"), watch_recv()]


@scenario()
def sc_watch_start_revision_middle() -> list:
    return [put("k", "1"), put("j", "x"), put("k", "2"), put("k", "3"),
            *_synced(key="k", start_revision=R(3), prev_kv=True), watch_recv()]


@scenario()
def sc_watch_start_revision_current_plus_one() -> list:
    return [put("k", "1"), *_synced(key="k", start_revision=R(2)), watch_quiet(), put("k", "2"), watch_recv()]


@scenario()
def sc_watch_start_revision_future() -> list:
    return [put("k", "0"), *_synced(key="k", start_revision=R(4)), put("k", "1"), put("k", "2"), put("k", "3"),
            watch_recv(), put("k", "4"), watch_recv(), watch_quiet()]


@scenario()
def sc_watch_compacted_start() -> list:
    return [put("k", "1"), put("k", "2"), put("k", "3"), compact(R(3)), watch_open(),
            watch_create(key="k", start_revision=R(1)), watch_recv(n=2), put("k", "4"), watch_quiet()]


@scenario(note="etcd < 3.5.15 may lose a delete at the compaction revision (#18089/#19179)")
def sc_watch_start_at_compact_revision() -> list:
    return [put("k", "1"), put("j", "1"), delete("k"), compact(R(3)),
            *_synced(key="k", start_revision=R(3)),
            expect36(watch_recv(), lambda s: [{"header": {"revision": s.base_rev + 3}, "events": [
                {"type": "DELETE", "kv": {"key": s.key("k").decode(), "mod_revision": s.base_rev + 3}}]}],
                "etcd 3.5.1 races here: it sometimes drops the DELETE at the compaction revision (#18089)"),
            watch_create(key="j", start_revision=R(3), prev_kv=True), watch_recv(n=1)]


@scenario(note="etcd 3.5.1 creates the watch, then cancels it with compact_revision=-1 and an empty header; "
               "3.6 refuses it at creation (watch_id -1, cancel_reason 'required revision has been compacted')")
def sc_watch_negative_start_revision() -> list:
    note = "3.6 refuses a negative start_revision at creation"
    return [put("k"), watch_open(), watch_create(key="k", start_revision=-5),
            expect36(watch_recv(), lambda s: [{"header": {"revision": s.base_rev + 1}, "watch_id": -1, "created": True,
                                               "canceled": True, "cancel_reason":
                                               "etcdserver: mvcc: required revision has been compacted"}], note),
            expect36(watch_quiet(), [], note),
            watch_open("w2"), watch_create("w2", key="k"), watch_recv("w2"), put("k", "2"), watch_recv("w2")]


@scenario()
def sc_watch_filter_noput() -> list:
    return [*_synced(key="k", filters=["NOPUT"]), put("k", "1"), put("k", "2"), delete("k"), watch_recv(),
            watch_quiet()]


@scenario()
def sc_watch_filter_nodelete() -> list:
    return [*_synced(key="k", filters=["NODELETE"]), put("k", "1"), watch_recv(), delete("k"), put("k", "2"),
            watch_recv(), watch_quiet()]


@scenario()
def sc_watch_filter_both() -> list:
    return [*_synced(key="k", filters=["NOPUT", "NODELETE"]), put("k", "1"), delete("k"), watch_quiet()]


@scenario()
def sc_watch_filter_mixed_txn() -> list:
    return [put("p/a"), *_synced(key="p/", range_end=PREFIX_END, filters=["NODELETE"]),
            txn([], [op_del("p/a"), op_put("p/b", "1"), op_put("p/c", "1")]), watch_recv(),
            txn([], [op_del("p/b")]), watch_quiet()]


@scenario()
def sc_watch_prev_kv() -> list:
    return [*_synced(key="k", prev_kv=True), put("k", "1"), watch_recv(), put("k", "2"), watch_recv(),
            delete("k"), watch_recv(), put("k", "3"), watch_recv()]


@scenario()
def sc_watch_prev_kv_history() -> list:
    return [put("k", "1"), put("k", "2"), delete("k"), put("k", "3"),
            *_synced(key="k", start_revision=R(1), prev_kv=True), watch_recv()]


@scenario()
def sc_watch_cancel() -> list:
    return [*_synced(key="k"), put("k", "1"), watch_recv(), watch_cancel(watch_id=0), watch_recv(), put("k", "2"),
            watch_quiet()]


@scenario()
def sc_watch_cancel_unknown_id() -> list:
    return [*_synced(key="k"), watch_cancel(watch_id=42), watch_quiet(), put("k", "1"), watch_recv()]


@scenario()
def sc_watch_cancel_then_create_next_id() -> list:
    return [*_synced(key="k"), watch_cancel(watch_id=0), watch_recv(), watch_create(key="k"), watch_recv(),
            put("k", "1"), watch_recv()]


@scenario()
def sc_watch_client_watch_id() -> list:
    return [watch_open(), watch_create(key="a", watch_id=7), watch_recv(), watch_create(key="b"), watch_recv(),
            watch_create(key="c", watch_id=7), watch_recv(), put("a", "1"), watch_recv(), put("b", "1"),
            watch_recv()]


@scenario()
def sc_watch_auto_id_skips_client_id() -> list:
    return [watch_open(), watch_create(key="a", watch_id=1), watch_recv(), watch_create(key="b"),
            watch_create(key="c"), watch_recv(n=2), put("c", "1"), watch_recv()]


@scenario()
def sc_watch_progress_request_synced() -> list:
    return [put("k", "1"), *_synced(key="k"), watch_progress(), watch_recv(), put("x", "1"), watch_progress(),
            watch_recv(), watch_quiet()]


@scenario(note="etcd 3.5.1 answers a progress request on a stream with no watcher; 3.6 sends nothing")
def sc_watch_progress_request_no_watchers() -> list:
    return [put("k", "1"), watch_open(), watch_progress(),
            expect36(watch_quiet(), [], "3.6 (progressIfSync) sends nothing when the stream has no watcher")]


@scenario()
def sc_watch_progress_request_many_watchers() -> list:
    return [watch_open(), watch_create(key="a"), watch_create(key="b", prev_kv=True), watch_recv(n=2),
            put("a", "1"), watch_recv(), watch_progress(), watch_recv(), watch_quiet()]


@scenario()
def sc_watch_txn_events_one_response() -> list:
    return [put("p/z", "old"), *_synced(key="p/", range_end=PREFIX_END, prev_kv=True),
            txn([], [op_put("p/b", "1"), op_put("p/a", "2"), op_del("p/z"), op_put("p/c", "3")]), watch_recv(),
            watch_quiet()]


@scenario()
def sc_watch_delete_range_events_sorted() -> list:
    return [put("p/c"), put("p/a"), put("p/b"), *_synced(key="p/", range_end=PREFIX_END),
            delete("p/", range_end=PREFIX_END), watch_recv(), watch_quiet()]


@scenario()
def sc_watch_lease_revoke_events() -> list:
    return [grant(60, LID(1)), put("p/b", "1", lease=LID(1)), put("p/a", "2", lease=LID(1)), put("p/c", "3"),
            *_synced(key="p/", range_end=PREFIX_END, prev_kv=True), revoke(LID(1)), watch_recv(), watch_quiet()]


@scenario()
def sc_watch_multiple_watchers_same_key() -> list:
    return [watch_open(), watch_create(key="k"), watch_create(key="k", prev_kv=True), watch_create(key="j"),
            watch_recv(n=3), put("k", "1"), watch_recv(n=2, unordered=True), put("k", "2"),
            watch_recv(n=2, unordered=True), put("j", "1"), watch_recv()]


@scenario()
def sc_watch_overlapping_ranges() -> list:
    return [watch_open(), watch_create(key="a", range_end="m"), watch_create(key="f", range_end="z"),
            watch_recv(n=2), put("b"), watch_recv(), put("g"), watch_recv(n=2, unordered=True), put("x"),
            watch_recv()]


@scenario()
def sc_watch_many_revisions_history_one_batch() -> list:
    steps = [put(f"h/{i:02d}", str(i)) for i in range(30)]
    return [*steps, *_synced(key="h/", range_end=PREFIX_END, start_revision=R(1)), watch_recv(), watch_quiet()]


@scenario()
def sc_watch_history_then_live() -> list:
    return [put("k", "1"), put("k", "2"), *_synced(key="k", start_revision=R(1)), watch_recv(), put("k", "3"),
            watch_recv(), delete("k"), watch_recv()]


@scenario()
def sc_watch_two_streams() -> list:
    return [watch_open("s1"), watch_open("s2"), watch_create("s1", key="k"), watch_recv("s1"),
            watch_create("s2", key="k", prev_kv=True), watch_recv("s2"), put("k", "1"), watch_recv("s1"),
            watch_recv("s2"), stream_close("s1"), put("k", "2"), watch_recv("s2")]


@scenario()
def sc_watch_close_stream_then_new() -> list:
    return [*_synced(key="k"), stream_close(), put("k", "1"), watch_open("n"), watch_create("n", key="k",
                                                                                           start_revision=R(1)),
            watch_recv("n", n=2)]


@scenario()
def sc_watch_compact_while_watching() -> list:
    return [put("k", "1"), *_synced(key="k"), put("k", "2"), watch_recv(), compact(R(2)), put("k", "3"),
            watch_recv(), watch_quiet()]


@scenario()
def sc_watch_create_with_history_and_progress() -> list:
    return [put("k", "1"), put("k", "2"), *_synced(key="k", start_revision=R(1)), watch_recv(), watch_progress(),
            watch_recv()]


@scenario()
def sc_watch_put_same_value_event() -> list:
    return [put("k", "v"), *_synced(key="k"), put("k", "v"), watch_recv(), put("k", "v"), watch_recv()]


@scenario()
def sc_watch_ignore_value_event() -> list:
    return [grant(60, LID(1)), put("k", "v"), *_synced(key="k", prev_kv=True), put("k", ignore_value=True,
                                                                                 lease=LID(1)),
            watch_recv()]


# Ends at the first notification: a put after it races the next tick (under load a second notification
# at the old revision may come before the put's event, on either server).
@scenario(flags={"experimental-watch-progress-notify-interval": "1s"})
def sc_watch_progress_notify_interval() -> list:
    return [put("k", "1"), *_synced(key="k", progress_notify=True), watch_recv(timeout_s=4.0)]


# etcd fragments a watch response once it reaches max-request-bytes + 512 KiB (grpcOverheadBytes)
@scenario(flags={"max-request-bytes": 256 * 1024})
def sc_watch_fragment() -> list:
    values = [put(f"f/{i}", "v" * 200_000) for i in range(5)]
    return [*values, watch_open(), watch_create(key="f/", range_end=PREFIX_END, prev_kv=True, fragment=True),
            watch_create(key="f/", range_end=PREFIX_END, prev_kv=True), watch_recv(n=2),
            delete("f/", range_end=PREFIX_END), watch_recv(n=3, unordered=True), watch_quiet()]


@scenario(fresh=True, note="found by the random generator (seed 1): prev_kv of a DELETE is the key at "
                           "mod_revision-1, so a key put and deleted in one txn has no prev_kv (a from-key delete "
                           "range escapes etcd's duplicate-key check, which compares range_end bytewise)")
def sc_watch_prev_kv_put_then_delete_same_txn() -> list:
    return [put("b", "old"), *_synced(key="a", range_end="z", prev_kv=True),
            txn([], [op_put("a", "1"), op_del("a", range_end=FROM_KEY, prev_kv=True)]), watch_recv()]


@scenario(note="prev_kv is read at mod_revision-1; once that revision is compacted it is omitted")
def sc_watch_prev_kv_compacted() -> list:
    return [put("k", "v1"), put("k", "v2"), put("j", "x"), compact(R(2)),
            *_synced(key="k", start_revision=R(2), prev_kv=True), watch_recv(),
            put("k", "v3"), watch_recv()]


def _many_puts(n: int) -> object:
    from typing import Any

    from proto.etcdserverpb import rpc_pb2
    from tests.differential.session import Session
    from tests.differential.steps import custom

    def run(s: Session) -> Any:
        last = 0
        for i in range(n):
            last = s.kv.Put(rpc_pb2.PutRequest(key=s.key(f"m/{i % 7}"), value=b"%d" % i), timeout=10).header.revision
        return {"last_revision": last}

    return custom(f"{n} puts", run)


@scenario(slow=True, note="a catch-up of more than 1000 revisions goes out in batches of at most 1000 revisions "
                          "(watchBatchMaxRevs), a revision never split")
def sc_watch_catch_up_batches_of_1000_revisions() -> list:
    return [_many_puts(1150), *_synced(key="m/", range_end=PREFIX_END, start_revision=R(1)),
            watch_recv(n=2, timeout_s=10), watch_quiet(seconds=1.0)]


@scenario(note="etcd 3.6 (#20221) sends nothing, not even progress, to a watch waiting for a future revision; "
               "a progress request on its stream is not answered while it waits")
def sc_watch_future_start_progress_request() -> list:
    note = "3.6: no progress for a stream whose watcher waits for a future revision"
    return [put("k", "1"), *_synced(key="k", start_revision=R(5)), watch_progress(),
            expect36(watch_quiet(), [], note),
            put("k", "2"), put("k", "3"), put("k", "4"), put("k", "5"), watch_recv(), watch_progress(),
            watch_recv()]


@scenario(flags={"experimental-watch-progress-notify-interval": "1s"},
          note="periodic progress notifications skip a watch waiting for a future revision (3.6, #20221)")
def sc_watch_future_start_no_periodic_progress() -> list:
    note = "3.6: no periodic progress for a watch waiting for a future revision"
    return [put("k", "1"), *_synced(key="k", start_revision=R(4), progress_notify=True),
            expect36(watch_quiet(seconds=2.5), [], note),
            put("k", "2"), put("k", "3"), put("k", "4"),
            # 3.5.1 keeps interleaving progress notifications here, so the event is checked against 3.6
            expect36(watch_recv(), lambda s: [{"header": {"revision": s.base_rev + 4}, "events": [
                {"kv": {"key": s.key("k").decode(), "create_revision": s.base_rev + 1, "mod_revision": s.base_rev + 4,
                        "version": 4, "value": "4"}}]}], note)]
