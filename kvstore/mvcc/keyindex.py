"""The key index, persisted: key -> its revisions, and the live keys.

etcd keeps this index (treeIndex: key -> generations of revisions) on the heap
and rebuilds it from bbolt at every start. Here it is two LMDB databases in
the same environment as the records, so a start rebuilds nothing:

- `index` (dupsort): key -> 17-byte entries `main(8) sub(8) flag(1)`, sorted by
  revision; flag 1 marks a tombstone (the end of a generation).
- `live`: key -> the 16-byte revision of its newest record, for keys whose
  newest record is not a tombstone. Current reads, counts and list pages
  are cursor scans of it: a page costs O(limit), not O(keys in the range).

- `prefix_counts`: every "/"-terminated prefix of a live key (the key itself
  too if it ends in "/") -> how many live keys it has. A count over a prefix
  range, as kube-apiserver asks for every list page and for its object counts,
  is one lookup, or a scan of the shorter side of the page's start.

All functions take the transaction to work in; none keeps state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kvstore.mvcc.backend import LMDB_KEY_BYTES_MAX, from_u64, rev_bytes, u64

FLAG_PUT = b"\x00"
FLAG_TOMBSTONE = b"\x01"
ENTRY_BYTES = 17


def entry(rev: bytes, tombstone: bool) -> bytes:
    return rev + (FLAG_TOMBSTONE if tombstone else FLAG_PUT)


def is_tombstone(ent: bytes) -> bool:
    return ent[16:17] == FLAG_TOMBSTONE


def _seek_key(key: bytes) -> bytes:
    # Stored keys are never longer than the limit, so the first stored key >= key[:limit] is the
    # first one > key when key is longer (see kvstore/mvcc/store.py KEY_BYTES_MAX).
    return key[:LMDB_KEY_BYTES_MAX]


def newest(txn: Any, index_db: Any, key: bytes) -> bytes | None:
    """The key's newest index entry (live or tombstone), or None."""
    if len(key) > LMDB_KEY_BYTES_MAX:
        return None
    cur = txn.cursor(index_db)
    if not cur.set_key(key):
        return None
    cur.last_dup()
    ent: bytes = cur.value()
    return ent


def at(txn: Any, index_db: Any, key: bytes, rev: int) -> bytes | None:
    """The key's newest index entry with main revision <= rev, or None."""
    if len(key) > LMDB_KEY_BYTES_MAX:
        return None
    cur = txn.cursor(index_db)
    if cur.set_range_dup(key, rev_bytes(rev + 1, 0) + FLAG_PUT):
        if not cur.prev_dup():
            return None
        ent: bytes = cur.value()
        return ent
    if not cur.set_key(key):
        return None
    cur.last_dup()
    ent = cur.value()
    return ent


def entries(txn: Any, index_db: Any, key: bytes) -> list[bytes]:
    """Every index entry of key, oldest first."""
    if len(key) > LMDB_KEY_BYTES_MAX:
        return []
    cur = txn.cursor(index_db)
    if not cur.set_key(key):
        return []
    return list(cur.iternext_dup())


def add(txn: Any, index_db: Any, key: bytes, ent: bytes) -> None:
    txn.put(key, ent, db=index_db, dupdata=True)


def live_rev(txn: Any, live_db: Any, key: bytes) -> bytes | None:
    if len(key) > LMDB_KEY_BYTES_MAX:
        return None
    rev: bytes | None = txn.get(key, db=live_db)
    return rev


def iter_range(
    txn: Any, db: Any, key: bytes, range_end: bytes, *, values: bool = True, dupsort: bool = False
) -> Iterator[Any]:
    """(key, value) pairs (or keys) of db in etcd's range [key, range_end).

    range_end b"" means the single key, b"\\0" every key from key on.
    """
    cur = txn.cursor(db)
    if not range_end:
        if len(key) <= LMDB_KEY_BYTES_MAX and cur.set_key(key):
            yield (key, cur.value()) if values else key
        return
    if range_end != b"\0" and range_end <= key:
        return
    if not cur.set_range(_seek_key(key)):
        return
    unbounded = range_end == b"\0"
    items = cur.iternext_nodup(keys=True, values=values) if dupsort else cur.iternext(keys=True, values=values)
    for item in items:
        k = item[0] if values else item
        if not unbounded and k >= range_end:
            return
        yield item


def count_range(txn: Any, live_db: Any, key: bytes, range_end: bytes) -> int:
    n = 0
    for _ in iter_range(txn, live_db, key, range_end, values=False):
        n += 1
    return n


SLASH = 0x2F


def add_live_count(txn: Any, counts_db: Any, key: bytes, delta: int) -> None:
    """A key became live (+1) or stopped being live (-1): count it under each of its prefixes."""
    start = 0
    while True:
        i = key.find(b"/", start)
        if i < 0:
            return
        prefix = key[: i + 1]
        raw = txn.get(prefix, db=counts_db)
        n = (from_u64(raw) if raw else 0) + delta
        if n:
            txn.put(prefix, u64(n), db=counts_db)
        else:
            txn.delete(prefix, db=counts_db)
        start = i + 1


def counted_prefix(key: bytes, range_end: bytes) -> bytes | None:
    """The "/"-terminated prefix P whose range [P, P's end) ends where this range ends and
    holds its start, if there is one (kube's list pages: [P, P0) then [last key + 0, P0))."""
    if len(range_end) < 1 or range_end[-1:] != b"0":
        return None
    prefix = range_end[:-1] + b"/"
    return prefix if key.startswith(prefix) else None


def count_live(txn: Any, live_db: Any, counts_db: Any, key: bytes, range_end: bytes) -> int:
    """Live keys in [key, range_end), using the prefix counts when the range ends a prefix."""
    prefix = counted_prefix(key, range_end) if range_end not in (b"", b"\0") else None
    if prefix is None:
        return count_range(txn, live_db, key, range_end)
    raw = txn.get(prefix, db=counts_db)
    total = from_u64(raw) if raw else 0
    if key == prefix:
        return total
    # [key, end) directly, or the total less [prefix, key): step both, stop at the shorter.
    after = iter_range(txn, live_db, key, range_end, values=False)
    before = iter_range(txn, live_db, prefix, key, values=False)
    n_after = n_before = 0
    while True:
        if next(after, None) is None:
            return n_after
        n_after += 1
        if next(before, None) is None:
            return total - n_before
        n_before += 1
