"""Watch streams served by a front end (kvstore/workers/watches.py), with the member's guarantees.

Each test talks to the front end through its own gRPC socket (the one the client-URL multiplexer
pipes its connections to) and writes through the member's, so every event a front end delivers
was applied by another process; the front end reads its notifications late (a failpoint).
"""

from __future__ import annotations

import queue
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import lmdb
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from kvstore.mvcc.backend import STATE_FILE
from kvstore.server import grpc_socket_path
from kvstore.workers import member_socket_path
from kvstore.workers.supervisor import metrics_dir_for
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from proto.mvccpb import kv_pb2
from tests.servers import ServerProcess, start_kvstore
from tests.workers.test_workers import WAIT_S, children, front_ends_serving, wait_for

PREFIX = b"/w/"
PREFIX_END = b"/w0"


class Stream:
    """One Watch call: requests sent when asked, responses collected by a thread."""

    def __init__(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._requests: queue.Queue[Any] = queue.Queue()
        self.responses: queue.Queue[Any] = queue.Queue()
        self._call = rpc.WatchStub(channel).Watch(iter(self._requests.get, None), metadata=metadata)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for resp in self._call:
                self.responses.put(resp)
        except grpc.RpcError:
            pass

    def send(self, **request: Any) -> None:
        self._requests.put(pb.WatchRequest(**request))

    def create(self, **create: Any) -> Any:
        self.send(create_request=pb.WatchCreateRequest(**create))
        created = self.next()
        assert created.created, created
        return created

    def next(self) -> Any:
        return self.responses.get(timeout=WAIT_S)

    def events(self, n: int) -> list[Any]:
        """The next n events (of event responses, in order)."""
        out: list[Any] = []
        while len(out) < n:
            resp = self.next()
            assert not resp.canceled, resp
            out.extend(resp.events)
        assert len(out) == n, out
        return out

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()


def _unix(path: str) -> grpc.Channel:
    return grpc.insecure_channel(f"unix:{path}")


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    # The front end reads its notifications late (up to 50 ms): its feed lags the applier, and
    # what it answers must not show it.
    srv = start_kvstore("fewatch", {"workers": 2, "watch-progress-notify-interval": "100ms"},
                        env={"KVSTORE_FAILPOINTS": "front_end_lag"})  # fmt: skip
    wait_for(lambda: front_ends_serving(srv) == 1, "the front end to serve")
    yield srv
    srv.stop()


def _channels(srv: ServerProcess) -> tuple[grpc.Channel, grpc.Channel]:
    """(the front end's, the member's) gRPC sockets."""
    state = str(srv.work_dir / "state")
    front = member_socket_path(state, "grpc-1")
    wait_for(lambda: Path(front).exists(), "the front end's socket")
    return _unix(front), _unix(grpc_socket_path(state))


def _watch_streams(srv: ServerProcess) -> float:
    """etcd_debugging_mvcc_watch_stream_total in the member's /metrics: every process's streams."""
    with urllib.request.urlopen(f"{srv.client_url}/metrics", timeout=WAIT_S) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("etcd_debugging_mvcc_watch_stream_total "):
                return float(line.split()[1])
    raise AssertionError("no watch stream gauge")


def _front_end_watch_streams(srv: ServerProcess) -> float:
    """The streams the front end serves itself (its multiprocess gauge file)."""
    total = 0.0
    for family in MultiProcessCollector(None, path=metrics_dir_for(str(srv.work_dir / "state"))).collect():
        total += sum(s.value for s in family.samples if s.name == "etcd_debugging_mvcc_watch_stream_total")
    return total


def _served_by(srv: ServerProcess, front_end: float, total: float) -> None:
    wait_for(lambda: (_front_end_watch_streams(srv), _watch_streams(srv)) == (front_end, total),
             f"{front_end} of {total} watch streams in the front end")  # fmt: skip


def _summary(events: list[Any]) -> list[tuple[int, bytes, bytes, int, bytes]]:
    return [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision, e.prev_kv.value) for e in events]


def test_a_front_end_serves_watches_of_writes_made_through_any_process(server: ServerProcess) -> None:
    front, member = _channels(server)
    stream = Stream(front)
    try:
        created = stream.create(key=PREFIX, range_end=PREFIX_END, prev_kv=True)
        _served_by(server, front_end=1, total=1)  # not forwarded; counted once in /metrics
        writes = [(rpc.KVStub(member) if i % 2 else rpc.KVStub(front), b"/w/%d" % (i % 3), b"v%d" % i)
                  for i in range(30)]  # fmt: skip
        revisions = [kv.Put(pb.PutRequest(key=k, value=v), timeout=WAIT_S).header.revision for kv, k, v in writes]
        rpc.KVStub(member).DeleteRange(pb.DeleteRangeRequest(key=b"/w/0"), timeout=WAIT_S)
        got = stream.events(31)
        assert [e.kv.mod_revision for e in got] == [*revisions, revisions[-1] + 1]
        assert revisions == list(range(created.header.revision + 1, created.header.revision + 31))
        assert [(e.kv.key, e.kv.value) for e in got[:30]] == [(k, v) for _, k, v in writes]
        assert [e.prev_kv.value for e in got[3:30]] == [v for _, _, v in writes[:27]]  # the key's previous value
        assert got[30].type == kv_pb2.Event.DELETE
        assert got[30].prev_kv.value == writes[27][2]
    finally:
        stream.close()


def test_a_watch_from_an_old_revision_gets_what_the_member_sends(server: ServerProcess) -> None:
    front, member = _channels(server)
    kv = rpc.KVStub(member)
    first = kv.Put(pb.PutRequest(key=b"/w/a", value=b"0"), timeout=WAIT_S).header.revision
    for i in range(200):
        rpc.KVStub(front if i % 2 else member).Put(pb.PutRequest(key=b"/w/%d" % (i % 7), value=b"%d" % i),
                                                   timeout=WAIT_S)  # fmt: skip
    kv.DeleteRange(pb.DeleteRangeRequest(key=b"/w/", range_end=PREFIX_END), timeout=WAIT_S)
    streams = [Stream(front), Stream(member)]
    try:
        got = []
        for stream in streams:
            stream.create(key=PREFIX, range_end=PREFIX_END, start_revision=first + 1, prev_kv=True)
            got.append(_summary(stream.events(200 + 8)))
        assert got[0] == got[1]
        assert [rev for _, _, _, rev, _ in got[0]][:200] == list(range(first + 1, first + 201))
    finally:
        for stream in streams:
            stream.close()


def test_compaction_cancels_a_watch_from_before_it_and_not_a_live_one(server: ServerProcess) -> None:
    front, member = _channels(server)
    kv = rpc.KVStub(member)
    live = Stream(front)
    later = Stream(front)
    try:
        live.create(key=PREFIX, range_end=PREFIX_END)
        revisions = [kv.Put(pb.PutRequest(key=b"/w/k", value=b"%d" % i), timeout=WAIT_S).header.revision
                     for i in range(10)]  # fmt: skip
        compact = revisions[5]
        rpc.KVStub(member).Compact(pb.CompactionRequest(revision=compact, physical=True), timeout=WAIT_S)
        after = kv.Put(pb.PutRequest(key=b"/w/k", value=b"after"), timeout=WAIT_S).header.revision
        assert [e.kv.mod_revision for e in live.events(11)] == [*revisions, after]
        later.send(create_request=pb.WatchCreateRequest(key=PREFIX, range_end=PREFIX_END, start_revision=compact - 2))
        assert later.next().created
        canceled = later.next()
        assert canceled.canceled and canceled.compact_revision == compact, canceled
        later.create(key=PREFIX, range_end=PREFIX_END, start_revision=compact)
        assert [e.kv.mod_revision for e in later.events(6)] == [*revisions[5:], after]
    finally:
        live.close()
        later.close()


def test_progress_notifications_never_run_ahead_of_events(server: ServerProcess) -> None:
    """Periodic (every 100 ms) and requested progress, while another process writes: a progress
    response at revision R comes after every event at or below R, and no such event after it."""
    front, member = _channels(server)
    stream = Stream(front)
    kv = rpc.KVStub(member)
    revisions: list[int] = []
    done = threading.Event()

    def write() -> None:
        for i in range(400):
            revisions.append(kv.Put(pb.PutRequest(key=b"/w/%d" % (i % 5), value=b"x"), timeout=WAIT_S).header.revision)
            if i % 40 == 0:
                time.sleep(0.15)  # idle spells: periodic notifications go out
        done.set()

    try:
        created = stream.create(key=PREFIX, range_end=PREFIX_END, progress_notify=True)
        writer = threading.Thread(target=write)
        writer.start()
        seen: list[tuple[str, int]] = []
        while not done.is_set() or len([s for s in seen if s[0] == "event"]) < len(revisions):
            stream.send(progress_request=pb.WatchProgressRequest())
            resp = stream.next()
            assert not resp.canceled, resp
            if resp.events:
                seen.extend(("event", e.kv.mod_revision) for e in resp.events)
            else:
                seen.append(("progress", resp.header.revision))
        writer.join()
        events = [rev for kind, rev in seen if kind == "event"]
        assert events == revisions == list(range(created.header.revision + 1, created.header.revision + 401))
        progress = 0
        delivered = created.header.revision
        for kind, rev in seen:
            if kind == "event":
                assert rev > progress, f"event {rev} after a progress notification at {progress}"
                delivered = rev
            else:
                assert rev <= delivered, f"progress at {rev} before the event at {delivered + 1}"
                progress = max(progress, rev)
        assert progress > created.header.revision, "no progress notification at all"
    finally:
        stream.close()


def test_a_defragment_keeps_the_front_ends_streams_going(server: ServerProcess) -> None:
    front, member = _channels(server)
    kv = rpc.KVStub(member)
    stream = Stream(front)
    try:
        created = stream.create(key=PREFIX, range_end=PREFIX_END)
        for i in range(50):
            kv.Put(pb.PutRequest(key=b"/w/%d" % i, value=b"x" * 1000), timeout=WAIT_S)
        rpc.MaintenanceStub(member).Defragment(pb.DefragmentRequest(), timeout=WAIT_S)
        for i in range(50):
            kv.Put(pb.PutRequest(key=b"/w/%d" % i, value=b"y"), timeout=WAIT_S)
        start = created.header.revision + 1
        assert [e.kv.mod_revision for e in stream.events(100)] == list(range(start, start + 100))
        old = Stream(front)
        try:
            old.create(key=PREFIX, range_end=PREFIX_END, start_revision=start)
            assert [e.kv.mod_revision for e in old.events(100)] == list(range(start, start + 100))
        finally:
            old.close()
    finally:
        stream.close()


def test_a_watch_with_a_token_is_forwarded_to_the_member(server: ServerProcess) -> None:
    front, member = _channels(server)
    auth = rpc.AuthStub(member)
    auth.UserAdd(pb.AuthUserAddRequest(name="root", password="pw"), timeout=WAIT_S)
    auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=WAIT_S)
    auth.AuthEnable(pb.AuthEnableRequest(), timeout=WAIT_S)
    token = auth.Authenticate(pb.AuthenticateRequest(name="root", password="pw"), timeout=WAIT_S).token
    stream = Stream(front, metadata=(("token", token),))
    try:
        stream.create(key=PREFIX, range_end=PREFIX_END)
        _served_by(server, front_end=0, total=1)  # forwarded: the member's process serves it
        rpc.KVStub(member).Put(pb.PutRequest(key=b"/w/t", value=b"v"), metadata=(("token", token),), timeout=WAIT_S)
        assert [e.kv.key for e in stream.events(1)] == [b"/w/t"]
    finally:
        stream.close()
    # Without a token, auth on: the member refuses the watch, as it refuses its own.
    anonymous = Stream(front)
    try:
        anonymous.send(create_request=pb.WatchCreateRequest(key=PREFIX, range_end=PREFIX_END))
        refused = anonymous.next()
        assert refused.canceled and "permission denied" in refused.cancel_reason, refused
    finally:
        anonymous.close()


def test_a_watch_created_after_a_write_starts_after_it(server: ServerProcess) -> None:
    """A write acknowledged through the member's process, then a watch (no start revision) on the
    front end: the watch starts at or after that write (the feed catches up before the request)
    and gets every later event, as a watch on the member itself does."""
    front, member = _channels(server)
    kv = rpc.KVStub(member)
    stream = Stream(front)
    try:
        for i in range(50):
            put = kv.Put(pb.PutRequest(key=b"/w/%d" % i, value=b"before"), timeout=WAIT_S)
            created = stream.create(key=b"/w/%d" % i, watch_id=i + 1)
            assert created.header.revision >= put.header.revision, (created, put)
            after = kv.Put(pb.PutRequest(key=b"/w/%d" % i, value=b"after"), timeout=WAIT_S)
            [event] = stream.events(1)
            assert (event.kv.value, event.kv.mod_revision) == (b"after", after.header.revision)
    finally:
        stream.close()


def test_a_front_end_with_no_stream_serves_an_old_revision_from_the_records(server: ServerProcess) -> None:
    """With no stream open the feed reads no events back (it moves its counters and starts its
    cache at the new revision): a watch created later from an older revision catches up from the
    records, every event once and in order while writes go on, as the member answers it; one from
    before a compaction made while no stream was open is cancelled with the compact revision."""
    front, member = _channels(server)
    kv = rpc.KVStub(member)
    first = kv.Put(pb.PutRequest(key=b"/w/a", value=b"0"), timeout=WAIT_S).header.revision
    for i in range(300):  # no stream open on either process meanwhile
        rpc.KVStub(front if i % 2 else member).Put(pb.PutRequest(key=b"/w/%d" % (i % 11), value=b"%d" % i),
                                                   timeout=WAIT_S)  # fmt: skip
    compact = kv.DeleteRange(pb.DeleteRangeRequest(key=b"/w/1"), timeout=WAIT_S).header.revision
    done = threading.Event()

    def write_more() -> None:  # while the watch catches up: the live feed and the catch-up meet
        for i in range(100):
            rpc.KVStub(front if i % 2 else member).Put(pb.PutRequest(key=b"/w/%d" % (i % 5), value=b"m%d" % i),
                                                       timeout=WAIT_S)  # fmt: skip
        done.set()

    streams = [Stream(front), Stream(member)]
    writer = threading.Thread(target=write_more)
    try:
        streams[0].create(key=PREFIX, range_end=PREFIX_END, start_revision=first + 1, prev_kv=True)
        writer.start()
        streams[1].create(key=PREFIX, range_end=PREFIX_END, start_revision=first + 1, prev_kv=True)
        got = [_summary(stream.events(301 + 100)) for stream in streams]
        writer.join()
        assert done.is_set()
        assert [rev for _, _, _, rev, _ in got[0]] == list(range(first + 1, first + 402))
        assert got[0] == got[1]
    finally:
        for stream in streams:
            stream.close()
    # A physical compaction while no stream is open: a watch from before it is cancelled.
    rpc.KVStub(member).Compact(pb.CompactionRequest(revision=compact, physical=True), timeout=WAIT_S)
    kv.Put(pb.PutRequest(key=b"/w/after", value=b"x"), timeout=WAIT_S)
    later = Stream(front)
    try:
        later.send(create_request=pb.WatchCreateRequest(key=PREFIX, range_end=PREFIX_END, start_revision=compact - 1))
        assert later.next().created
        canceled = later.next()
        assert canceled.canceled and canceled.compact_revision == compact, canceled
        later.create(key=PREFIX, range_end=PREFIX_END, start_revision=compact + 1)
        assert [e.kv.mod_revision for e in later.events(101)] == list(range(compact + 1, compact + 102))
    finally:
        later.close()


def _active_readers(srv: ServerProcess, pid: int) -> list[str]:
    """The read transactions process pid has open on the state file (LMDB's reader table)."""
    env = lmdb.open(str(srv.work_dir / "state" / STATE_FILE), subdir=False, readonly=True, lock=True, max_dbs=32)
    try:
        rows = [line.split() for line in env.readers().splitlines()[1:]]
    finally:
        env.close()
    return [row[2] for row in rows if len(row) == 3 and row[0] == str(pid) and row[2] != "-"]


def test_a_front_end_holds_no_read_transaction_once_its_last_stream_closed() -> None:
    """A read transaction pins the pages the applier would reuse: the feed's ends with the next
    batch after the last stream closed (not at the next progress tick, 10 minutes by default),
    and the view holds none from its start until a first range."""
    server = start_kvstore("fereaders", {"workers": 2})  # etcd's default progress interval: 10 minutes
    try:
        _no_reader_after_the_last_stream(server)
    finally:
        server.stop()


def _no_reader_after_the_last_stream(server: ServerProcess) -> None:
    wait_for(lambda: front_ends_serving(server) == 1, "the front end to serve")
    front, member = _channels(server)
    assert server.proc is not None
    [front_end] = children(server.proc.pid)
    stream = Stream(front)
    try:
        stream.create(key=PREFIX, range_end=PREFIX_END)
        rpc.KVStub(member).Put(pb.PutRequest(key=b"/w/r", value=b"1"), timeout=WAIT_S)
        stream.events(1)
        assert _active_readers(server, front_end), "the feed reads through one transaction while a stream is open"
    finally:
        stream.close()
    _served_by(server, front_end=0, total=0)
    for i in range(5):
        rpc.KVStub(member).Put(pb.PutRequest(key=b"/w/r", value=b"%d" % i), timeout=WAIT_S)
    wait_for(lambda: not _active_readers(server, front_end), "the front end to end its read transaction")


@pytest.mark.parametrize("physical", [False, True])
def test_a_front_end_with_no_stream_sends_the_delete_at_the_compact_revision(server: ServerProcess,
                                                                             physical: bool) -> None:  # fmt: skip
    """etcd (>= 3.5.15) sends a watch from the compact revision the delete made there; the records
    no longer hold it (a compacted tombstone), so the feed keeps that revision's events before the
    compaction's records go, also with no stream open (no cache then)."""
    front, member = _channels(server)
    kv = rpc.KVStub(member)
    key = b"/w/c%d" % physical
    kv.Put(pb.PutRequest(key=key, value=b"1"), timeout=WAIT_S)
    kv.Put(pb.PutRequest(key=b"/w/j", value=b"1"), timeout=WAIT_S)
    compact = kv.DeleteRange(pb.DeleteRangeRequest(key=key), timeout=WAIT_S).header.revision
    kv.Compact(pb.CompactionRequest(revision=compact, physical=physical), timeout=WAIT_S)
    after = kv.Put(pb.PutRequest(key=key, value=b"2"), timeout=WAIT_S).header.revision
    stream = Stream(front)
    try:
        stream.create(key=key, start_revision=compact)
        got = stream.events(2)
        assert [(e.type, e.kv.mod_revision) for e in got] == [(kv_pb2.Event.DELETE, compact),
                                                              (kv_pb2.Event.PUT, after)]  # fmt: skip
    finally:
        stream.close()
