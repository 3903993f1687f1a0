"""The MVCC core: revisions, key history, ranges, transactions and compaction.

A deterministic object with no I/O: the same sequence of calls gives the same
state and the same answers on every member. The vocabulary is etcd's
(server/storage/mvcc): every change gets a revision `main` (the store
revision it creates) and an implicit `sub` (its order inside that revision);
a key's history is the list of its records in revision order; a delete writes
a tombstone that ends the key's generation.

Records are stored as `mvccpb.KeyValue` messages, so reads hand them out
without conversion. A tombstone is the KeyValue that etcd puts in a DELETE
event: only `key` and `mod_revision` set, `version == 0`.
"""

from __future__ import annotations

import zlib
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import msgpack
from sortedcontainers import SortedList

from kvstore import errors
from kvstore.errors import fail
from kvstore.lease import LeaseTable
from proto.etcdserverpb import rpc_pb2 as pb
from proto.mvccpb import kv_pb2

KeyValue = kv_pb2.KeyValue
Event = kv_pb2.Event
EVENT_PUT = kv_pb2.Event.PUT
EVENT_DELETE = kv_pb2.Event.DELETE

# Bytes charged per record on top of key and value, standing in for the
# index and page overhead a real backend pays; used for quota and dbSize.
RECORD_OVERHEAD_BYTES = 64

_SORT_TARGET_FIELD = {
    pb.RangeRequest.KEY: "key",
    pb.RangeRequest.VERSION: "version",
    pb.RangeRequest.CREATE: "create_revision",
    pb.RangeRequest.MOD: "mod_revision",
    pb.RangeRequest.VALUE: "value",
}

_COMPARE_FIELD = {
    pb.Compare.VERSION: "version",
    pb.Compare.CREATE: "create_revision",
    pb.Compare.MOD: "mod_revision",
    pb.Compare.VALUE: "value",
    pb.Compare.LEASE: "lease",
}

# Compare.target_union member that carries the operand for each target.
_COMPARE_OPERAND = {
    pb.Compare.VERSION: "version",
    pb.Compare.CREATE: "create_revision",
    pb.Compare.MOD: "mod_revision",
    pb.Compare.VALUE: "value",
    pb.Compare.LEASE: "lease",
}

_EMPTY_KV = KeyValue()


def _mod_revision(kv: Any) -> int:
    return int(kv.mod_revision)


def is_live(kv: Any) -> bool:
    return bool(kv.version)


def record_bytes(kv: Any) -> int:
    return len(kv.key) + len(kv.value) + RECORD_OVERHEAD_BYTES


@dataclass(slots=True)
class RevisionEvents:
    """All events of one revision, in sub-revision (execution) order."""

    revision: int
    events: list[Any]  # mvccpb.Event, prev_kv filled whenever the key had a live previous record


@dataclass(slots=True)
class WriteResult:
    """What a write request did: its response and the events it produced."""

    response: Any
    events: list[Any] = field(default_factory=list)


class MVCCStore:
    """Keys, their revision history, leases attached to keys, and compaction."""

    def __init__(self) -> None:
        self.revision = 1  # a fresh etcd store starts at revision 1
        self.compact_revision = -1  # etcd allows compacting revision 0 once
        self.leases = LeaseTable()
        self.bytes_in_use = 0
        self._history: dict[bytes, list[Any]] = {}
        self._keys: SortedList = SortedList()
        # Keys whose newest record is live: current reads page and count with bisects.
        self._live: SortedList = SortedList()
        # Keys whose history holds something compaction may drop.
        self._compactable: set[bytes] = set()
        # Revisions that changed more than one key, with the keys in sub order:
        # needed to rebuild events in execution order from the history.
        self._multi: dict[int, list[bytes]] = {}

    # ------------------------------------------------------------------ reads

    def _at(self, key: bytes, rev: int | None) -> Any | None:
        """The key's record visible at rev (None: the newest, own txn writes included)."""
        hist = self._history.get(key)
        if hist is None:
            return None
        last = hist[-1]
        if rev is None or last.mod_revision <= rev:
            return last
        i = bisect_right(hist, rev, key=_mod_revision)
        return hist[i - 1] if i else None

    def get(self, key: bytes, rev: int | None = None) -> Any | None:
        """The live KeyValue of key at rev, or None."""
        kv = self._at(key, rev)
        return kv if kv is not None and kv.version else None

    def iter_keys(self, key: bytes, range_end: bytes) -> Iterable[bytes]:
        """Keys with history in etcd's range [key, range_end) (see the range_end rules)."""
        if not range_end:
            return (key,) if key in self._history else ()
        if range_end == b"\0":
            keys: Iterable[bytes] = self._keys.irange(minimum=key)
            return keys
        if range_end <= key:
            return ()
        keys = self._keys.irange(key, range_end, inclusive=(True, False))
        return keys

    def _iter_live_keys(self, key: bytes, range_end: bytes) -> Iterator[bytes]:
        """Keys live now in etcd's range [key, range_end)."""
        if not range_end:
            return iter((key,) if key in self._live else ())
        if range_end == b"\0":
            keys: Iterator[bytes] = self._live.irange(minimum=key)
            return keys
        if range_end <= key:
            return iter(())
        keys = self._live.irange(key, range_end, inclusive=(True, False))
        return keys

    def _count_live(self, key: bytes, range_end: bytes) -> int:
        live = self._live
        if not range_end:
            return int(key in live)
        start: int = live.bisect_left(key)
        if range_end == b"\0":
            return len(live) - start
        if range_end <= key:
            return 0
        n: int = live.bisect_left(range_end) - start
        return n

    def iter_live(self, key: bytes, range_end: bytes, rev: int | None = None) -> Iterator[Any]:
        for k in self.iter_keys(key, range_end):
            kv = self._at(k, rev)
            if kv is not None and kv.version:
                yield kv

    def check_revision(self, rev: int) -> None:
        """etcd's errors for reading at rev (0 means the current revision)."""
        if rev > self.revision:
            raise fail(errors.FUTURE_REV)
        if 0 < rev < self.compact_revision:
            raise fail(errors.COMPACTED)

    def range(self, req: Any, *, txn: WriteTxn | None = None) -> Any:
        """A RangeRequest, answered as etcd's applier answers it.

        header.revision is the revision of the view read: the current revision
        (for historical reads too), or inside a write txn the txn's revision
        once it has changed something.
        """
        rev = req.revision
        self.check_revision(rev)
        view_rev = self.revision if txn is None or not txn.changed else txn.revision
        read_at = rev if rev > 0 else None
        resp = pb.RangeResponse()
        resp.header.revision = view_rev
        filtered = bool(
            req.min_mod_revision or req.max_mod_revision or req.min_create_revision or req.max_create_revision
        )
        sort_order = req.sort_order
        if req.sort_target != pb.RangeRequest.KEY and sort_order == pb.RangeRequest.NONE:
            sort_order = pb.RangeRequest.ASCEND  # a sort target without an order means ascending
        elif req.sort_target == pb.RangeRequest.KEY and sort_order == pb.RangeRequest.ASCEND:
            sort_order = pb.RangeRequest.NONE  # already in key order

        # Without sorting or filters only limit+1 records are needed (the +1 tells `more`);
        # every key is still counted. Like etcd, this looks at the *requested* order: a sort
        # target with order NONE sorts only the first limit+1 keys.
        keep = req.limit + 1 if req.limit > 0 and req.sort_order == pb.RangeRequest.NONE and not filtered else 0
        kvs: list[Any] = []
        if read_at is None:
            count = self._count_live(req.key, req.range_end)
            if req.count_only:
                resp.count = count
                return resp
            keys = self._iter_live_keys(req.key, req.range_end)
            history = self._history
            kvs = [history[k][-1] for k in (islice(keys, keep) if keep else keys)]
        else:
            count = 0
            for kv in self.iter_live(req.key, req.range_end, read_at):
                count += 1
                if not req.count_only and (not keep or len(kvs) < keep):
                    kvs.append(kv)
            if req.count_only:
                resp.count = count
                return resp
        if filtered:
            kvs = [kv for kv in kvs if _passes_filters(req, kv)]
        if sort_order != pb.RangeRequest.NONE:
            attr = _SORT_TARGET_FIELD[req.sort_target]
            kvs.sort(key=lambda kv: getattr(kv, attr), reverse=sort_order == pb.RangeRequest.DESCEND)
        if req.limit > 0 and len(kvs) > req.limit:
            del kvs[req.limit :]
            resp.more = True
        resp.count = count
        resp.kvs.extend(kvs)
        if req.keys_only:
            for kv in resp.kvs:
                kv.ClearField("value")
        return resp

    def compare(self, c: Any) -> bool:
        """One txn Compare against the newest state (etcd's applyCompare)."""
        kvs = list(self.iter_live(c.key, c.range_end))
        if not kvs:
            if c.target == pb.Compare.VALUE:
                return False  # a value compare on a missing key always fails
            kvs = [_EMPTY_KV]
        attr = _COMPARE_FIELD[c.target]
        operand_field = _COMPARE_OPERAND[c.target]
        if c.WhichOneof("target_union") == operand_field:
            operand = getattr(c, operand_field)
        else:
            operand = b"" if c.target == pb.Compare.VALUE else 0
        result = c.result
        for kv in kvs:
            value = getattr(kv, attr)
            if result == pb.Compare.EQUAL:
                ok = value == operand
            elif result == pb.Compare.NOT_EQUAL:
                ok = value != operand
            elif result == pb.Compare.GREATER:
                ok = value > operand
            elif result == pb.Compare.LESS:
                ok = value < operand
            else:
                ok = True
            if not ok:
                return False
        return True

    # ----------------------------------------------------------------- writes

    def begin(self) -> WriteTxn:
        return WriteTxn(self)

    def _append(self, key: bytes, kv: Any) -> None:
        hist = self._history.get(key)
        was_live = hist is not None and bool(hist[-1].version)
        if hist is None:
            self._history[key] = [kv]
            self._keys.add(key)
            if not kv.version:
                self._compactable.add(key)
        else:
            hist.append(kv)
            self._compactable.add(key)
        self._set_live(key, was_live, bool(kv.version))
        self.bytes_in_use += record_bytes(kv)

    def _set_live(self, key: bytes, was_live: bool, is_live: bool) -> None:
        if is_live and not was_live:
            self._live.add(key)
        elif was_live and not is_live:
            self._live.remove(key)

    @property
    def live_keys(self) -> int:
        """Keys whose newest record is not a tombstone."""
        return len(self._live)

    def _drop_last(self, key: bytes) -> None:
        """Undo the newest record of key (a write txn that must not land)."""
        hist = self._history[key]
        kv = hist.pop()
        self.bytes_in_use -= record_bytes(kv)
        self._set_live(key, bool(kv.version), bool(hist) and bool(hist[-1].version))
        if not hist:
            del self._history[key]
            self._keys.remove(key)
            self._compactable.discard(key)

    def compact(self, rev: int) -> None:
        """Forget history below rev; every key keeps its newest record at or below rev."""
        if rev <= self.compact_revision:
            raise fail(errors.COMPACTED)
        if rev > self.revision:
            raise fail(errors.FUTURE_REV)
        self.compact_revision = rev
        for key in sorted(self._compactable):
            hist = self._history[key]
            i = bisect_right(hist, rev, key=_mod_revision) - 1
            if i < 0:
                continue
            drop = i if hist[i].version else i + 1
            for kv in hist[:drop]:
                self.bytes_in_use -= record_bytes(kv)
            del hist[:drop]
            if not hist:
                del self._history[key]
                self._keys.remove(key)
                self._compactable.discard(key)
            elif len(hist) == 1 and hist[0].version:
                self._compactable.discard(key)
        for r in [r for r in self._multi if r < rev]:
            del self._multi[r]

    # ------------------------------------------------------------ watch feed

    def events_since(
        self, start_rev: int, key: bytes, range_end: bytes, end_rev: int | None = None
    ) -> list[RevisionEvents]:
        """Events with start_rev <= revision (<= end_rev) on [key, range_end), from the history.

        Used to catch up watchers whose start lies before the watch cache.
        start_rev must be >= compact_revision (the caller checks).
        """
        by_rev: dict[int, list[tuple[bytes, Any]]] = {}
        for k in self.iter_keys(key, range_end):
            hist = self._history[k]
            i = bisect_right(hist, start_rev - 1, key=_mod_revision)
            for j in range(i, len(hist)):
                kv = hist[j]
                if end_rev is not None and kv.mod_revision > end_rev:
                    break
                ev = self.watch_event(EVENT_PUT if kv.version else EVENT_DELETE, kv)
                by_rev.setdefault(kv.mod_revision, []).append((k, ev))
        out = []
        for rev in sorted(by_rev):
            pairs = by_rev[rev]
            order = self._multi.get(rev)
            if order is not None and len(pairs) > 1:
                position = {k: n for n, k in enumerate(order)}
                pairs.sort(key=lambda p: position.get(p[0], 0))
            out.append(RevisionEvents(rev, [ev for _, ev in pairs]))
        return out

    def watch_event(self, event_type: Any, kv: Any) -> Any:
        """The event for a change, with prev_kv as etcd's watch attaches it.

        etcd reads prev_kv at mod_revision - 1 (the state before the whole txn, not an
        earlier op of it) and never for a create (create_revision == mod_revision).
        """
        ev = Event(type=event_type, kv=kv)
        if event_type == EVENT_DELETE or kv.create_revision != kv.mod_revision:
            before = self.get(kv.key, kv.mod_revision - 1)
            if before is not None:
                ev.prev_kv.CopyFrom(before)
        return ev

    # --------------------------------------------------- hashing and snapshot

    def hash_kv(self, rev: int) -> int:
        """A stable CRC32 of every record at or below rev (etcd's HashKV shape)."""
        h = 0
        for key in self._keys:
            for kv in self._history[key]:
                if kv.mod_revision > rev:
                    break
                h = zlib.crc32(kv.SerializeToString(deterministic=True), h)
        return h

    def to_state(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "compact_revision": self.compact_revision,
            "history": [[k, [kv.SerializeToString() for kv in self._history[k]]] for k in self._keys],
            "multi": [[r, ks] for r, ks in sorted(self._multi.items())],
            "leases": self.leases.to_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MVCCStore:
        store = cls()
        store.revision = state["revision"]
        store.compact_revision = state["compact_revision"]
        for key, records in state["history"]:
            for raw in records:
                store._append(key, KeyValue.FromString(raw))
        store._compactable = {k for k, hist in store._history.items() if len(hist) > 1 or not hist[-1].version}
        store._multi = {r: list(ks) for r, ks in state["multi"]}
        store.leases = LeaseTable.from_state(state["leases"])
        return store

    def dumps(self) -> bytes:
        data: bytes = msgpack.packb(self.to_state(), use_bin_type=True)
        return data

    @classmethod
    def loads(cls, data: bytes) -> MVCCStore:
        return cls.from_state(msgpack.unpackb(data, raw=False, strict_map_key=False))


def _passes_filters(req: Any, kv: Any) -> bool:
    if req.min_mod_revision and kv.mod_revision < req.min_mod_revision:
        return False
    if req.max_mod_revision and kv.mod_revision > req.max_mod_revision:
        return False
    if req.min_create_revision and kv.create_revision < req.min_create_revision:
        return False
    return not (req.max_create_revision and kv.create_revision > req.max_create_revision)


class WriteTxn:
    """One write request in progress: every change it makes gets revision store.revision + 1.

    Changes are written to the history at once (so later ops of the same txn
    read them) and undone by `abort` if the request must not land. `end`
    publishes the revision if anything changed.
    """

    def __init__(self, store: MVCCStore) -> None:
        self.store = store
        self.revision = store.revision + 1
        self.events: list[Any] = []
        self._changed_keys: list[bytes] = []
        self._lease_undo: list[tuple[bytes, int, int]] = []  # (key, old lease, new lease)

    @property
    def changed(self) -> bool:
        return bool(self._changed_keys)

    def put(self, key: bytes, value: bytes, lease: int, *, ignore_value: bool, ignore_lease: bool) -> Any | None:
        """Write key; return its previous live KeyValue. Checks were done by the caller."""
        store = self.store
        prev = store.get(key)
        if ignore_value or ignore_lease:
            if prev is None:
                # Checked before the txn ran, but an earlier op of the same txn can delete the key
                # (a from-key delete escapes the duplicate-key rule). etcd 3.5 panics here.
                raise fail(errors.KEY_NOT_FOUND)
            if ignore_value:
                value = prev.value
            if ignore_lease:
                lease = prev.lease
        if prev is not None:
            kv = KeyValue(
                key=key,
                value=value,
                create_revision=prev.create_revision,
                mod_revision=self.revision,
                version=prev.version + 1,
                lease=lease,
            )
        else:
            kv = KeyValue(
                key=key, value=value, create_revision=self.revision, mod_revision=self.revision, version=1, lease=lease
            )
        store._append(key, kv)
        self._changed_keys.append(key)
        old_lease = prev.lease if prev is not None else 0
        if old_lease or lease:
            store.leases.detach(old_lease, key)
            store.leases.attach(lease, key)
            self._lease_undo.append((key, old_lease, lease))
        self._add_event(EVENT_PUT, kv)
        return prev

    def delete_range(self, key: bytes, range_end: bytes) -> list[Any]:
        """Tombstone every live key in the range, in key order; return their previous KeyValues."""
        store = self.store
        prevs = list(store.iter_live(key, range_end))
        for prev in prevs:
            tomb = KeyValue(key=prev.key, mod_revision=self.revision)
            store._append(prev.key, tomb)
            self._changed_keys.append(prev.key)
            if prev.lease:
                store.leases.detach(prev.lease, prev.key)
                self._lease_undo.append((prev.key, prev.lease, 0))
            self._add_event(EVENT_DELETE, tomb)
        return prevs

    def _add_event(self, event_type: Any, kv: Any) -> None:
        self.events.append(self.store.watch_event(event_type, kv))

    def abort(self) -> None:
        store = self.store
        for key in reversed(self._changed_keys):
            store._drop_last(key)
        for key, old_lease, new_lease in reversed(self._lease_undo):
            store.leases.detach(new_lease, key)
            store.leases.attach(old_lease, key)
        self._changed_keys.clear()
        self._lease_undo.clear()
        self.events.clear()

    def end(self) -> int:
        """Publish the txn; return the store revision after it."""
        if self._changed_keys:
            store = self.store
            store.revision = self.revision
            if len(self._changed_keys) > 1:
                store._multi[self.revision] = list(self._changed_keys)
        return self.store.revision


def txn_path(store: MVCCStore, req: Any) -> list[bool]:
    """Evaluate the compares of a txn and of every nested txn on the chosen path, before any write.

    etcd decides the whole path up front (compareToPath), against the state
    before the txn.
    """
    path: list[bool] = []

    def walk(t: Any) -> None:
        ok = all(store.compare(c) for c in t.compare)
        path.append(ok)
        for op in t.success if ok else t.failure:
            if op.WhichOneof("request") == "request_txn":
                walk(op.request_txn)

    walk(req)
    return path


def check_txn_ops(store: MVCCStore, req: Any, path: Sequence[bool]) -> None:
    """etcd's apply-time checks on the chosen branches, in its order: every put (lease,
    ignore_* target) first, then every range revision."""

    def walk(t: Any, index: int, check: Any) -> int:
        ok = path[index]
        index += 1
        for op in t.success if ok else t.failure:
            kind = op.WhichOneof("request")
            if kind == "request_txn":
                index = walk(op.request_txn, index, check)
            else:
                check(kind, op)
        return index

    def check_puts(kind: str, op: Any) -> None:
        if kind == "request_put":
            check_put(store, op.request_put)

    def check_ranges(kind: str, op: Any) -> None:
        if kind == "request_range" and op.request_range.revision > 0:
            store.check_revision(op.request_range.revision)

    walk(req, 0, check_puts)
    walk(req, 0, check_ranges)


def check_put(store: MVCCStore, req: Any) -> None:
    if (req.ignore_value or req.ignore_lease) and store.get(req.key) is None:
        raise fail(errors.KEY_NOT_FOUND)
    if req.lease and req.lease not in store.leases:
        raise fail(errors.LEASE_NOT_FOUND)


def txn_has_writes(req: Any) -> bool:
    """True unless every op in both branches is a Range (etcd's isTxnReadonly)."""
    return any(op.WhichOneof("request") != "request_range" for op in (*req.success, *req.failure))


def execute_txn(store: MVCCStore, req: Any, txn: WriteTxn) -> Any:
    """Run a validated TxnRequest inside txn; return the TxnResponse (header revision set by caller)."""
    path = txn_path(store, req)
    check_txn_ops(store, req, path)
    index = 0

    def run(t: Any, nested: bool) -> Any:
        nonlocal index
        ok = path[index]
        index += 1
        resp = pb.TxnResponse(succeeded=ok)
        for op in t.success if ok else t.failure:
            kind = op.WhichOneof("request")
            out = resp.responses.add()
            if kind == "request_range":
                out.response_range.CopyFrom(store.range(op.request_range, txn=txn))
            elif kind == "request_put":
                r = op.request_put
                prev = txn.put(r.key, r.value, r.lease, ignore_value=r.ignore_value, ignore_lease=r.ignore_lease)
                out.response_put.header.revision = txn.revision
                if r.prev_kv and prev is not None:
                    out.response_put.prev_kv.CopyFrom(prev)
            elif kind == "request_delete_range":
                r = op.request_delete_range
                prevs = txn.delete_range(r.key, r.range_end)
                d = out.response_delete_range
                d.header.revision = txn.revision if txn.changed else store.revision
                d.deleted = len(prevs)
                if r.prev_kv:
                    d.prev_kvs.extend(prevs)
            elif kind == "request_txn":
                out.response_txn.CopyFrom(run(op.request_txn, nested=True))
        if nested:
            resp.header.SetInParent()  # etcd leaves a nested txn's header empty
        else:
            resp.header.revision = txn.revision if txn.changed else store.revision
        return resp

    return run(req, nested=False)
