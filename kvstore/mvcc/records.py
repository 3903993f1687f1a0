"""The records: revision (main, sub) -> serialized mvccpb.KeyValue, as etcd's bbolt `key` bucket.

Every read and write of a record goes through here, so that how records are
laid out in the file is decided in one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kvstore.mvcc.backend import DB_RECORDS
from proto.mvccpb import kv_pb2


def record_key(raw: bytes) -> bytes:
    """The key of a serialized KeyValue without parsing it all (field 1 is written first)."""
    if raw[:1] != b"\x0a":
        return bytes(kv_pb2.KeyValue.FromString(raw).key)
    n, shift, i = 0, 0, 1
    while True:
        b = raw[i]
        n |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            break
        shift += 7
    return raw[i : i + n]


def get(txn: Any, dbs: dict[bytes, Any], rev: bytes) -> bytes:
    """The record at rev (which must exist)."""
    raw: bytes = txn.get(rev, db=dbs[DB_RECORDS])
    return raw


def get_many(txn: Any, dbs: dict[bytes, Any], revs: list[bytes]) -> list[bytes]:
    """The records at revs, in that order."""
    if not revs:
        return []
    return [raw for _, raw in txn.cursor(dbs[DB_RECORDS]).getmulti(revs)]


def put(txn: Any, dbs: dict[bytes, Any], rev: bytes, raw: bytes) -> None:
    """Append a record: revisions only grow, so records append at the end of the tree."""
    txn.put(rev, raw, db=dbs[DB_RECORDS], append=True)


def delete(txn: Any, dbs: dict[bytes, Any], revs: list[bytes]) -> None:
    db = dbs[DB_RECORDS]
    for rev in revs:
        txn.delete(rev, db=db)


def iter_from(txn: Any, dbs: dict[bytes, Any], start: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(revision, record) from revision start on, in revision order."""
    cur = txn.cursor(dbs[DB_RECORDS])
    if cur.set_range(start):
        yield from cur.iternext()


def count(txn: Any, dbs: dict[bytes, Any]) -> int:
    """Records on file (those compaction dropped from the index but not from here yet included)."""
    n: int = txn.stat(dbs[DB_RECORDS])["entries"]
    return n
