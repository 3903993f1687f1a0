"""Write load, watchers and the checks of the crash tests.

Writers are threads with their own gRPC channel and KV stub (the generated etcd stubs), each putting
keys under PREFIX, and now and then deleting one of the hot keys. Every put has a value no other put
has (`writer:cycle:seq`), so any value read back names the attempt that wrote it. A write that
answered is *acknowledged* (key, value or deletion, revision); a write that raised (the server died
under it) is *in doubt*: it may or may not have been committed, and both outcomes are correct.

The only writes to the server are these puts and single-key deletes, one revision and one event
each (a delete that found nothing makes neither), so the store's history under PREFIX is exactly one
event per revision from 2 to the current revision: a watch that resumes from revision R must deliver
R, R+1, R+2, ... with no gap and no duplicate.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from proto.mvccpb import kv_pb2

PREFIX = b"/crash/"
PREFIX_END = b"/crash0"  # PREFIX with its last byte incremented
HOT_KEYS = 8  # keys that every writer overwrites, so the latest acknowledged value is what must survive
HOT_EVERY = 4  # one write in this many goes to a hot key
DELETE_EVERY = 2  # one pass over the hot keys in this many deletes them
COUNTER_KEY = PREFIX + b"counter"
COUNTERS = 2  # compare-and-swap incrementers per load
PUT_TIMEOUT_S = 10.0
JOIN_TIMEOUT_S = 20.0
WAIT_S = 20.0
WRITER_OPS_MAX = 100_000  # bound on one writer's loop
WATCH_QUEUE_MAX = 1_000_000


@dataclass(frozen=True, slots=True)
class Ack:
    key: bytes
    value: bytes  # b"" for a delete
    revision: int
    deleted: bool = False


# what an unacknowledged write may have done: (key, value) for a put, (key, None) for a delete
Doubt = tuple[bytes, bytes | None]


@dataclass(frozen=True, slots=True)
class Event:
    revision: int
    key: bytes
    value: bytes
    deleted: bool


def _channel(endpoint: str) -> grpc.Channel:
    return grpc.insecure_channel(
        endpoint,
        options=[("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 64 << 20)],
    )


@dataclass
class History:
    """Everything the clients learned, across all crashes of one server."""

    acks: list[Ack] = field(default_factory=list)
    in_doubt: set[Doubt] = field(default_factory=set)
    events: list[Event] = field(default_factory=list)  # the watch log: one event per revision, from 2
    max_seen_revision: int = 0  # the highest revision any answer carried

    def see(self, revision: int) -> None:
        self.max_seen_revision = max(self.max_seen_revision, revision)

    def add_acks(self, acks: list[Ack]) -> None:
        self.acks.extend(acks)
        for a in acks:
            self.see(a.revision)

    @property
    def last_event_revision(self) -> int:
        return self.events[-1].revision if self.events else 1

    def ack_by_revision(self) -> dict[int, Ack]:
        out: dict[int, Ack] = {}
        for a in self.acks:
            assert a.revision not in out, f"two acknowledged writes at revision {a.revision}: {out[a.revision]} and {a}"
            out[a.revision] = a
        return out

    def extend_events(self, events: list[Event], what: str) -> None:
        """Append watch events: the next revisions in order, each the write the clients made there."""
        acks = self.ack_by_revision()
        expected = self.last_event_revision + 1
        for ev in events:
            assert ev.revision == expected, (
                f"{what}: event at revision {ev.revision} where {expected} was expected "
                f"({'duplicate' if ev.revision < expected else 'gap'})"
            )
            ack = acks.get(ev.revision)
            if ack is not None:
                assert (ev.key, ev.value, ev.deleted) == (ack.key, ack.value, ack.deleted), (
                    f"{what}: event {ev} but the write there was {ack}"
                )
            else:
                doubt = (ev.key, None if ev.deleted else ev.value)
                assert doubt in self.in_doubt, f"{what}: event {ev} matches no write any client made"
            expected += 1
        self.events.extend(events)
        if events:
            self.see(events[-1].revision)


class Writer(threading.Thread):
    """Puts until stopped, until the server fails it, or until ops_max; records acks and the put in doubt.
    Odd writers put through a Txn (an always-true compare, one put), so both write paths face the kill."""

    def __init__(self, endpoint: str, writer_id: int, cycle: int, stop: threading.Event, ops_max: int) -> None:
        super().__init__(name=f"writer-{writer_id}", daemon=True)
        assert 0 < ops_max <= WRITER_OPS_MAX
        self.endpoint = endpoint
        self.writer_id = writer_id
        self.cycle = cycle
        self.stop_event = stop
        self.ops_max = ops_max
        self.acks: list[Ack] = []
        self.in_doubt: list[Doubt] = []
        self.error: grpc.RpcError | None = None  # the server went away: expected at the kill
        self.failure: BaseException | None = None  # anything else: reported by run_load_until_killed

    def run(self) -> None:
        try:
            self.load()
        except BaseException as e:
            self.failure = e

    def _key(self, seq: int) -> tuple[bytes, bool]:
        """The key of write `seq`, and whether the write deletes it: one write in HOT_EVERY goes to
        the hot keys in turn, and every DELETE_EVERY-th pass over them deletes instead of putting."""
        if seq % HOT_EVERY != HOT_EVERY - 1:
            return PREFIX + b"w%d/c%d/%d" % (self.writer_id, self.cycle, seq), False
        hot = seq // HOT_EVERY
        passes = hot // HOT_KEYS + self.writer_id  # writers out of phase: one deletes what another put
        return PREFIX + b"hot/%d" % (hot % HOT_KEYS), passes % DELETE_EVERY == DELETE_EVERY - 1

    def _put(self, stub: rpc_pb2_grpc.KVStub, key: bytes, value: bytes) -> int:
        """One put; its revision."""
        if self.writer_id % 2 == 0:
            return int(stub.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=PUT_TIMEOUT_S).header.revision)
        op = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))
        return int(self._txn(stub, key, op).header.revision)

    def _delete_key(self, stub: rpc_pb2_grpc.KVStub, key: bytes) -> tuple[int, int]:
        """One single-key delete; (keys deleted, revision)."""
        if self.writer_id % 2 == 0:
            resp = stub.DeleteRange(rpc_pb2.DeleteRangeRequest(key=key), timeout=PUT_TIMEOUT_S)
            return int(resp.deleted), int(resp.header.revision)
        op = rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))
        txn = self._txn(stub, key, op)
        return int(txn.responses[0].response_delete_range.deleted), int(txn.header.revision)

    @staticmethod
    def _txn(stub: rpc_pb2_grpc.KVStub, key: bytes, op: rpc_pb2.RequestOp) -> rpc_pb2.TxnResponse:
        always = rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.LESS, mod_revision=1 << 62)
        resp = stub.Txn(rpc_pb2.TxnRequest(compare=[always], success=[op]), timeout=PUT_TIMEOUT_S)
        assert resp.succeeded, f"always-true compare failed: {resp}"
        return resp

    def load(self) -> None:
        ch = _channel(self.endpoint)
        stub = rpc_pb2_grpc.KVStub(ch)
        try:
            for seq in range(self.ops_max):
                if self.stop_event.is_set():
                    return
                key, delete = self._key(seq)
                value = b"" if delete else b"%d:%d:%d" % (self.writer_id, self.cycle, seq)
                try:
                    if delete:
                        deleted, revision = self._delete_key(stub, key)
                    else:
                        deleted, revision = 0, self._put(stub, key, value)
                except grpc.RpcError as e:
                    self.in_doubt.append((key, None if delete else value))
                    self.error = e
                    return
                if delete and deleted == 0:
                    continue  # nothing there: no revision, no event
                assert deleted <= 1, f"a single-key delete removed {deleted} keys"
                self.acks.append(Ack(key, value, revision, deleted=delete))
        finally:
            ch.close()


class CounterWriter(Writer):
    """Increments COUNTER_KEY by compare-and-swap (read, then Txn on its mod_revision), contending with
    the other counter writers. Every committed increment builds on the one before, so the counter's
    values in the watch log must be 1, 2, 3, ... across every crash (see counter_problems)."""

    def load(self) -> None:
        ch = _channel(self.endpoint)
        stub = rpc_pb2_grpc.KVStub(ch)
        try:
            for _ in range(self.ops_max):
                if self.stop_event.is_set():
                    return
                try:
                    got = stub.Range(rpc_pb2.RangeRequest(key=COUNTER_KEY), timeout=PUT_TIMEOUT_S)
                except grpc.RpcError as e:
                    self.error = e  # a read: nothing in doubt
                    return
                current = int(got.kvs[0].value) if got.kvs else 0
                mod = got.kvs[0].mod_revision if got.kvs else 0
                value = b"%d" % (current + 1)
                cas = rpc_pb2.Compare(
                    key=COUNTER_KEY, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL, mod_revision=mod
                )
                op = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=COUNTER_KEY, value=value))
                try:
                    resp = stub.Txn(rpc_pb2.TxnRequest(compare=[cas], success=[op]), timeout=PUT_TIMEOUT_S)
                except grpc.RpcError as e:
                    self.in_doubt.append((COUNTER_KEY, value))
                    self.error = e
                    return
                if resp.succeeded:
                    self.acks.append(Ack(COUNTER_KEY, value, int(resp.header.revision)))
        finally:
            ch.close()


def counter_problems(history: History) -> list[str]:
    """The counter's committed values, in revision order, must be exactly 1, 2, 3, ...: no increment
    lost (a gap), none applied twice or on a stale read (a repeat)."""
    values = [int(ev.value) for ev in history.events if ev.key == COUNTER_KEY]
    expected = list(range(1, len(values) + 1))
    if values == expected:
        return []
    at = next(i for i, (v, e) in enumerate(zip(values, expected, strict=True)) if v != e)
    return [
        f"counter value #{at + 1} is {values[at]}, expected {expected[at]} (values {values[max(0, at - 3) : at + 3]})"
    ]


class Watcher:
    """One Watch stream on PREFIX from a start revision, read by a thread into a queue."""

    def __init__(self, endpoint: str, start_revision: int) -> None:
        self._channel = _channel(endpoint)
        self._done = threading.Event()
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=WATCH_QUEUE_MAX)
        self.created = threading.Event()
        self.error: grpc.RpcError | None = None
        self.canceled_reason: str | None = None
        create = rpc_pb2.WatchCreateRequest(key=PREFIX, range_end=PREFIX_END, start_revision=start_revision)
        self._call = rpc_pb2_grpc.WatchStub(self._channel).Watch(
            self._requests(rpc_pb2.WatchRequest(create_request=create))
        )
        self._thread = threading.Thread(target=self._read, name="watcher", daemon=True)
        self._thread.start()
        assert self.created.wait(WAIT_S) or self.error is not None, "watch not created"
        assert self.error is None, f"watch failed: {self.error!r}"

    def _requests(self, create: rpc_pb2.WatchRequest) -> Iterator[rpc_pb2.WatchRequest]:
        yield create
        self._done.wait()  # keep the request side open until close()

    def _read(self) -> None:
        try:
            for resp in self._call:
                if resp.created:
                    self.created.set()
                if resp.canceled:
                    self.canceled_reason = resp.cancel_reason or f"compact_revision={resp.compact_revision}"
                    return
                for ev in resp.events:
                    self._queue.put(
                        Event(ev.kv.mod_revision, ev.kv.key, ev.kv.value, ev.type == kv_pb2.Event.DELETE),
                        timeout=WAIT_S,
                    )
        except grpc.RpcError as e:
            if not self._done.is_set():
                self.error = e
        finally:
            self.created.set()

    def drain(self) -> list[Event]:
        """Every event received so far."""
        out: list[Event] = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def take_until(self, revision: int) -> list[Event]:
        """Events up to and including `revision`; fails after WAIT_S."""
        out: list[Event] = []
        deadline = time.monotonic() + WAIT_S
        while not out or out[-1].revision < revision:
            remaining = deadline - time.monotonic()
            try:
                out.append(self._queue.get(timeout=max(0.01, remaining)))
            except queue.Empty:
                raise AssertionError(
                    f"watch stopped at {out[-1].revision if out else None} waiting for revision {revision} "
                    f"(error {self.error!r}, canceled {self.canceled_reason!r})"
                ) from None
        return out

    def close(self) -> None:
        self._done.set()
        self._call.cancel()
        self._thread.join(JOIN_TIMEOUT_S)
        self._channel.close()


def run_load_until_killed(
    endpoint: str, writers: int, cycle: int, kill_after_s: float, kill: object, ops_max: int, min_acks: int
) -> tuple[list[Ack], set[Doubt], int]:
    """Start `writers` writers and COUNTERS counter writers, wait until kill_after_s has passed and
    min_acks puts were acknowledged, call kill() while they run, and collect what they saw.
    Returns (acks, in doubt, threads alive at the kill) and asserts they all stopped."""
    assert callable(kill)
    stop = threading.Event()
    threads = [Writer(endpoint, i, cycle, stop, ops_max) for i in range(writers)]
    threads += [CounterWriter(endpoint, writers + i, cycle, stop, ops_max) for i in range(COUNTERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + WAIT_S
    time.sleep(kill_after_s)
    while sum(len(t.acks) for t in threads) < min_acks and time.monotonic() < deadline:
        time.sleep(0.01)
    alive = sum(t.is_alive() for t in threads)
    kill()
    stop.set()
    for t in threads:
        t.join(JOIN_TIMEOUT_S)
        assert not t.is_alive(), f"{t.name} still running after the kill"
        assert t.failure is None, f"{t.name} failed: {t.failure!r}"
    acks = [a for t in threads for a in t.acks]
    in_doubt = {kv for t in threads for kv in t.in_doubt}
    return acks, in_doubt, alive


def current_revision(endpoint: str) -> int:
    ch = _channel(endpoint)
    try:
        return int(
            rpc_pb2_grpc.KVStub(ch)
            .Range(rpc_pb2.RangeRequest(key=b"\0", count_only=True), timeout=WAIT_S)
            .header.revision
        )
    finally:
        ch.close()


def read_all(endpoint: str) -> tuple[int, dict[bytes, kv_pb2.KeyValue]]:
    ch = _channel(endpoint)
    try:
        resp = rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=PREFIX, range_end=PREFIX_END), timeout=WAIT_S)
    finally:
        ch.close()
    assert not resp.more
    return int(resp.header.revision), {kv.key: kv for kv in resp.kvs}


def put(endpoint: str, key: bytes, value: bytes) -> Ack:
    ch = _channel(endpoint)
    try:
        resp = rpc_pb2_grpc.KVStub(ch).Put(rpc_pb2.PutRequest(key=key, value=value), timeout=PUT_TIMEOUT_S)
    finally:
        ch.close()
    return Ack(key, value, int(resp.header.revision))


def store_problems(revision: int, kvs: dict[bytes, kv_pb2.KeyValue], history: History) -> list[str]:
    """What is wrong with a store read at `revision` given what the clients were told (empty: nothing).

    Every acknowledged write is there: a key holds its latest acknowledged put, with that put's
    revision as mod_revision, or a write in doubt made after it; a key whose latest acknowledged
    write is a delete is absent unless a put in doubt came after. Nothing else is in the store, and
    the revision is not below any revision a client saw."""
    problems: list[str] = []
    if revision < history.max_seen_revision:
        problems.append(f"revision went down: the server says {revision}, clients saw {history.max_seen_revision}")
    latest: dict[bytes, Ack] = {}
    for a in history.acks:
        if a.key not in latest or a.revision > latest[a.key].revision:
            latest[a.key] = a
    for key, a in latest.items():
        kv = kvs.get(key)
        if a.deleted:
            if kv is not None and not (kv.mod_revision > a.revision and (key, kv.value) in history.in_doubt):
                problems.append(f"resurrected: {a}, the store has {kv.value!r} at mod_revision {kv.mod_revision}")
        elif kv is None:
            if (key, None) not in history.in_doubt:
                problems.append(f"lost: {a} (key missing)")
        elif kv.mod_revision < a.revision:
            problems.append(f"lost: {a}, the store has {kv.value!r} at mod_revision {kv.mod_revision}")
        elif kv.mod_revision == a.revision and kv.value != a.value:
            problems.append(f"wrong value: {a}, the store has {kv.value!r}")
        elif kv.mod_revision > a.revision and (key, kv.value) not in history.in_doubt:
            problems.append(f"{a} overwritten at {kv.mod_revision} by {kv.value!r}, which no client wrote")
    for key, kv in kvs.items():
        if key not in latest and (key, kv.value) not in history.in_doubt:
            problems.append(f"unexpected key {key!r}={kv.value!r} at {kv.mod_revision}")
    return problems


def check_store(endpoint: str, history: History) -> tuple[int, dict[bytes, kv_pb2.KeyValue]]:
    """Read the whole prefix and assert store_problems() finds nothing."""
    revision, kvs = read_all(endpoint)
    problems = store_problems(revision, kvs, history)
    assert not problems, f"{len(problems)} problems, first ones:\n" + "\n".join(problems[:10])
    return revision, kvs
