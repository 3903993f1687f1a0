"""An etcd snapshot (the bbolt file `etcdctl snapshot save` writes) as this store's state.

etcd's backend schema (server/storage/schema, the same in 3.4, 3.5 and 3.6):

- bucket `key`: one entry per revision of every key; the key is the revision,
  8-byte big-endian main revision, `_`, 8-byte big-endian sub revision, and a
  trailing `t` for a tombstone; the value is the mvccpb.KeyValue as written
  (a tombstone's holds only the key). Compaction leaves, per key, the newest
  revision at or below the compacted one (none if that is a tombstone) and
  everything after it: the same rule as our store's compaction.
- bucket `meta`: `finishedCompactRev` / `scheduledCompactRev` (revision keys
  as above), `consistent_index`, `term`, ...
- bucket `lease`: 8-byte big-endian lease id -> leasepb.Lease (ID, TTL).

`etcdctl snapshot save` appends the SHA-256 of the database; it is checked
when present. The current revision is the newest in `key`, or the compacted
revision if compaction removed everything after it, as etcd restores it.
Leases get their full TTL again from the import, as etcd gives them on restore.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from kvstore.migrate.bbolt import BoltDB, BoltError
from kvstore.mvcc.backend import rev_bytes
from kvstore.statemachine import StateMachine
from proto.leasepb import lease_pb2
from proto.mvccpb.kv_pb2 import KeyValue

SHA256_BYTES = 32
PAGE_BYTES_MIN = 512  # bbolt pages are a power of two, at least this
REVISION_BYTES = 17  # main(8) '_' sub(8)
TOMBSTONE_MARK = b"t"


class EtcdSnapshotError(ValueError):
    """The file is not an etcd snapshot this reader can load."""


@dataclass
class EtcdSnapshot:
    records: list[tuple[int, int, Any]] = field(default_factory=list)  # (main, sub, KeyValue), revision order
    compact_revision: int = -1  # -1: never compacted
    leases: list[tuple[int, int]] = field(default_factory=list)  # (id, granted TTL s)
    consistent_index: int = 0
    buckets: list[bytes] = field(default_factory=list)

    @property
    def revision(self) -> int:
        newest = self.records[-1][0] if self.records else 1
        return max(newest, self.compact_revision, 1)


def _revision(raw: bytes) -> tuple[int, int, bool]:
    if len(raw) not in (REVISION_BYTES, REVISION_BYTES + 1) or raw[8:9] != b"_":
        raise EtcdSnapshotError(f"not an etcd key bucket: {raw!r} is not a revision")
    tombstone = len(raw) == REVISION_BYTES + 1
    if tombstone and raw[REVISION_BYTES:] != TOMBSTONE_MARK:
        raise EtcdSnapshotError(f"not an etcd key bucket: {raw!r} has an unknown mark")
    return int.from_bytes(raw[:8], "big"), int.from_bytes(raw[9:17], "big"), tombstone


def strip_checksum(data: bytes) -> bytes:
    """The database inside an `etcdctl snapshot save` file, its SHA-256 trailer checked. A file
    without the trailer (a `db` copied from a data dir) is a whole number of pages; anything
    else is a snapshot cut short or damaged."""
    if len(data) > SHA256_BYTES and hashlib.sha256(data[:-SHA256_BYTES]).digest() == data[-SHA256_BYTES:]:
        return data[:-SHA256_BYTES]
    if not data or len(data) % PAGE_BYTES_MIN:
        raise EtcdSnapshotError(
            f"truncated or damaged snapshot: {len(data)} bytes, no valid SHA-256 trailer "
            "(as `etcdctl snapshot save` writes) and not a whole number of bbolt pages"
        )
    return data


def read_etcd_snapshot(data: bytes) -> EtcdSnapshot:
    db_bytes = strip_checksum(data)
    try:
        db = BoltDB(db_bytes)
        buckets = db.buckets()
        if b"key" not in buckets or b"meta" not in buckets:
            raise EtcdSnapshotError(
                f"a bbolt file, but not etcd's backend: no `key`/`meta` buckets (it has {sorted(buckets)})"
            )
        snap = EtcdSnapshot(buckets=buckets)
        for raw_rev, value in db.items(b"key"):
            main, sub, tombstone = _revision(raw_rev)
            kv = KeyValue.FromString(value)
            if tombstone:
                kv = KeyValue(key=kv.key, mod_revision=main)
            elif kv.mod_revision != main:
                raise EtcdSnapshotError(
                    f"damaged etcd key bucket: revision {main} holds mod_revision {kv.mod_revision}"
                )
            snap.records.append((main, sub, kv))
        meta = dict(db.items(b"meta"))
        compact = meta.get(b"finishedCompactRev")
        if compact is not None:
            snap.compact_revision = _revision(compact)[0]
        index = meta.get(b"consistent_index")
        if index is not None and len(index) == 8:
            snap.consistent_index = int.from_bytes(index, "big")
        if b"lease" in buckets:
            for _, value in db.items(b"lease"):
                lease = lease_pb2.Lease.FromString(value)
                snap.leases.append((lease.ID, lease.TTL))
        return snap
    except BoltError as err:
        raise EtcdSnapshotError(str(err)) from None
    except DecodeError as err:
        raise EtcdSnapshotError(f"damaged etcd snapshot: a value does not decode ({err})") from None


def to_state_machine(snap: EtcdSnapshot, now_ms: int) -> StateMachine:
    """The snapshot as a fresh state machine at journal position 0 (leases due at now_ms + TTL),
    in a temporary backend: etcd's records at their own revisions, its compaction, its leases."""
    latest: dict[bytes, KeyValue] = {}
    for _, _, kv in snap.records:
        latest[kv.key] = kv
    lease_keys: dict[int, list[bytes]] = defaultdict(list)
    for key, kv in sorted(latest.items()):
        if kv.version and kv.lease:
            lease_keys[kv.lease].append(key)
    leases = {lease_id: ttl for lease_id, ttl in snap.leases}
    missing = sorted(set(lease_keys) - set(leases))
    if missing:
        raise EtcdSnapshotError(f"damaged etcd snapshot: keys attached to leases it does not hold: {missing[:5]}")
    sm = StateMachine()
    store = sm.store
    try:
        with sm.backend.batch():
            # bbolt's key bucket is in revision order: the records append at the end of ours.
            for main, sub, kv in snap.records:
                store.write_record(kv, rev_bytes(main, sub), tombstone=kv.version == 0)
            store.revision = snap.revision
            store.compact_revision = snap.compact_revision
            store.live_keys = sum(1 for kv in latest.values() if kv.version)
            for lease_id, ttl in sorted(leases.items()):
                store.leases.grant(lease_id, ttl, now_ms)
                for key in lease_keys.get(lease_id, []):
                    store.leases.attach(lease_id, key)
            sm.flush()
    except BaseException:
        sm.close()
        raise
    return sm
