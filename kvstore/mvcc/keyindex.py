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
  is one lookup, or a scan of the shorter side of the page's start. Inside a write batch the
  changes are pending in the backend's CountDeltas (written once per prefix at the batch's
  flush): a count read in the batch is the stored one plus the pending change.

Keys longer than LMDB's key limit: a key of more than `KEY_INLINE_BYTES_MAX`
bytes is stored as its first KEY_INLINE_BYTES_MAX bytes and a SHA-256 of the
whole key (`stored_key`); the whole key is in its records. Stored keys sort as
the keys do except among long keys sharing their first KEY_INLINE_BYTES_MAX
bytes (a key up to that long sorts before any longer key it starts, as its
stored form does): scans read such a run whole and sort it by the full keys.

All functions take the transaction (and the backend's databases) to work in;
none keeps state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from kvstore.mvcc import records
from kvstore.mvcc.backend import (
    DB_INDEX,
    DB_LIVE,
    DB_PREFIX_COUNTS,
    LMDB_KEY_BYTES_MAX,
    CountDeltas,
    from_u64,
    rev_bytes,
)

FLAG_PUT = b"\x00"
FLAG_TOMBSTONE = b"\x01"
ENTRY_BYTES = 17
KEY_HASH_BYTES = 32  # SHA-256
# A lease's attached keys are stored as lease id (8 bytes) + stored key: that too fits LMDB's limit.
LEASE_ID_BYTES = 8
KEY_INLINE_BYTES_MAX = LMDB_KEY_BYTES_MAX - LEASE_ID_BYTES - KEY_HASH_BYTES - 1


def stored_key(key: bytes) -> bytes:
    """The LMDB key that stands for key (itself unless it is longer than KEY_INLINE_BYTES_MAX)."""
    if len(key) <= KEY_INLINE_BYTES_MAX:
        return key
    return key[:KEY_INLINE_BYTES_MAX] + hashlib.sha256(key).digest()


def is_hashed(sk: bytes) -> bool:
    return len(sk) > KEY_INLINE_BYTES_MAX


def full_key(txn: Any, dbs: dict[bytes, Any], sk: bytes) -> bytes:
    """The key a stored key stands for (a hashed one: read from its first record)."""
    if not is_hashed(sk):
        return sk
    cur = txn.cursor(dbs[DB_INDEX])
    found = cur.set_key(sk)
    assert found, "a stored key without index entries"
    return records.record_key(records.get(txn, dbs, cur.value()[:16]))


def entry(rev: bytes, tombstone: bool) -> bytes:
    return rev + (FLAG_TOMBSTONE if tombstone else FLAG_PUT)


def is_tombstone(ent: bytes) -> bool:
    return ent[16:17] == FLAG_TOMBSTONE


def newest(txn: Any, dbs: dict[bytes, Any], key: bytes) -> bytes | None:
    """The key's newest index entry (live or tombstone), or None."""
    cur = txn.cursor(dbs[DB_INDEX])
    if not cur.set_key(stored_key(key)):
        return None
    cur.last_dup()
    ent: bytes = cur.value()
    return ent


def at(txn: Any, dbs: dict[bytes, Any], key: bytes, rev: int) -> bytes | None:
    """The key's newest index entry with main revision <= rev, or None."""
    sk = stored_key(key)
    cur = txn.cursor(dbs[DB_INDEX])
    if cur.set_range_dup(sk, rev_bytes(rev + 1, 0) + FLAG_PUT):
        if not cur.prev_dup():
            return None
        ent: bytes = cur.value()
        return ent
    if not cur.set_key(sk):
        return None
    cur.last_dup()
    ent = cur.value()
    return ent


def entries(txn: Any, dbs: dict[bytes, Any], key: bytes) -> list[bytes]:
    """Every index entry of key, oldest first."""
    cur = txn.cursor(dbs[DB_INDEX])
    if not cur.set_key(stored_key(key)):
        return []
    return list(cur.iternext_dup())


def write(txn: Any, dbs: dict[bytes, Any], counts: CountDeltas, key: bytes, rev: bytes, tombstone: bool) -> None:
    """A new record of key at rev: its index entry, its live revision and the prefix counts
    (`add`, `set_live`/`clear_live` and `add_live_count` in one call: the stored key once)."""
    sk = stored_key(key)
    if tombstone:
        txn.put(sk, rev + FLAG_TOMBSTONE, db=dbs[DB_INDEX], dupdata=True)
        txn.delete(sk, db=dbs[DB_LIVE])
        add_live_count(counts, key, -1)
        return
    txn.put(sk, rev + FLAG_PUT, db=dbs[DB_INDEX], dupdata=True)
    if txn.replace(sk, rev, db=dbs[DB_LIVE]) is None:
        add_live_count(counts, key, +1)  # it was not live: created


def live_rev(txn: Any, dbs: dict[bytes, Any], key: bytes) -> bytes | None:
    rev: bytes | None = txn.get(stored_key(key), db=dbs[DB_LIVE])
    return rev


def _exact_bound(bound: bytes) -> bool:
    """Whether comparing stored keys with bound gives the same answer as comparing the keys."""
    return len(bound) <= KEY_INLINE_BYTES_MAX


def iter_range(
    txn: Any, dbs: dict[bytes, Any], name: bytes, key: bytes, range_end: bytes, *, values: bool = True
) -> Iterator[Any]:
    """(key, value) pairs (or keys) of database `name` (index or live) in etcd's range
    [key, range_end), in key order; for the index, one per key (its first entry).

    range_end b"" means the single key, b"\\0" every key from key on.
    """
    db = dbs[name]
    cur = txn.cursor(db)
    if not range_end:
        sk = stored_key(key)
        if cur.set_key(sk):
            yield (key, cur.value()) if values else key
        return
    if range_end != b"\0" and range_end <= key:
        return
    if not cur.set_range(key[:KEY_INLINE_BYTES_MAX]):
        return
    unbounded = range_end == b"\0"
    exact = _exact_bound(key)
    items = cur.iternext_nodup(keys=True, values=True) if name == DB_INDEX else cur.iternext(keys=True, values=True)
    run: list[tuple[bytes, bytes]] = []  # hashed stored keys sharing their inline part
    for sk, v in items:
        if run and sk[:KEY_INLINE_BYTES_MAX] != run[0][0][:KEY_INLINE_BYTES_MAX]:
            yield from _run_in_range(txn, dbs, run, key, range_end, values)
            run = []
        if is_hashed(sk):
            if not unbounded and sk[:KEY_INLINE_BYTES_MAX] > range_end[:KEY_INLINE_BYTES_MAX]:
                break  # this key and every later one sort after range_end
            run.append((sk, v))
            continue
        if not unbounded and sk >= range_end:
            break
        if exact or sk >= key:
            yield (sk, v) if values else sk
    if run:
        yield from _run_in_range(txn, dbs, run, key, range_end, values)


def _run_in_range(
    txn: Any, dbs: dict[bytes, Any], run: list[tuple[bytes, bytes]], key: bytes, range_end: bytes, values: bool
) -> Iterator[Any]:
    """A run of hashed stored keys, by full key, those in the range."""
    full = sorted((full_key(txn, dbs, sk), v) for sk, v in run)
    for k, v in full:
        if in_range(k, key, range_end):
            yield (k, v) if values else k


def in_range(k: bytes, key: bytes, range_end: bytes) -> bool:
    """Whether k is in etcd's range [key, range_end) (b"": key alone, b"\\0": from key on)."""
    if not range_end:
        return k == key
    return k >= key and (range_end == b"\0" or k < range_end)


def count_range(txn: Any, dbs: dict[bytes, Any], key: bytes, range_end: bytes) -> int:
    """Live keys in [key, range_end), by a scan of `live`."""
    if range_end and (range_end == b"\0" or _exact_bound(range_end)) and _exact_bound(key):
        # Stored keys compare with these bounds as the keys do: count them in a tight loop.
        if range_end != b"\0" and range_end <= key:
            return 0
        cur = txn.cursor(dbs[DB_LIVE])
        if not cur.set_range(key):
            return 0
        if range_end == b"\0":
            return sum(1 for _ in cur.iternext(keys=True, values=False))
        n = 0
        for sk in cur.iternext(keys=True, values=False):
            if sk >= range_end:
                break
            n += 1
        return n
    return sum(1 for _ in iter_range(txn, dbs, DB_LIVE, key, range_end, values=False))


SLASH = 0x2F


# The stored prefixes of a key's last "/"-terminated prefix, for the ones seen last (keys written
# together share it: 100 puts of a txn, a kube resource's objects). Cleared when full.
_PREFIXES_CACHED_MAX = 4096
_prefixes: dict[bytes, tuple[bytes, ...]] = {}


def key_prefixes(key: bytes) -> tuple[bytes, ...]:
    """The stored forms of every "/"-terminated prefix of key (the key itself if it ends in "/")."""
    i = key.rfind(b"/")
    if i < 0:
        return ()
    last = key[: i + 1]
    found = _prefixes.get(last)
    if found is not None:
        return found
    out: list[bytes] = []
    start = 0
    while (i := last.find(b"/", start)) >= 0:
        out.append(stored_key(last[: i + 1]))
        start = i + 1
    if len(_prefixes) >= _PREFIXES_CACHED_MAX:
        _prefixes.clear()
    found = _prefixes[last] = tuple(out)
    return found


def add_live_count(counts: CountDeltas, key: bytes, delta: int) -> None:
    """A key became live (+1) or stopped being live (-1): count it under each of its prefixes
    (in the batch's pending changes: written at its flush)."""
    prefixes = key_prefixes(key)
    if prefixes:
        counts.add(prefixes, delta)


def prefix_count(txn: Any, dbs: dict[bytes, Any], counts: CountDeltas | None, prefix: bytes) -> int:
    """Live keys under a "/"-terminated prefix: the stored count plus the batch's pending change."""
    sp = stored_key(prefix)
    raw = txn.get(sp, db=dbs[DB_PREFIX_COUNTS])
    n = from_u64(raw) if raw else 0
    return n + counts.get(sp) if counts is not None else n


def counted_prefix(key: bytes, range_end: bytes) -> bytes | None:
    """The "/"-terminated prefix P whose range [P, P's end) ends where this range ends and
    holds its start, if there is one (kube's list pages: [P, P0) then [last key + 0, P0))."""
    if len(range_end) < 1 or range_end[-1:] != b"0":
        return None
    prefix = range_end[:-1] + b"/"
    return prefix if key.startswith(prefix) else None


def count_live(txn: Any, dbs: dict[bytes, Any], key: bytes, range_end: bytes, counts: CountDeltas | None = None) -> int:
    """Live keys in [key, range_end), using the prefix counts when the range ends a prefix
    (counts: the open batch's pending changes of them, when txn is the batch's)."""
    prefix = counted_prefix(key, range_end) if range_end not in (b"", b"\0") else None
    if prefix is None:
        return count_range(txn, dbs, key, range_end)
    total = prefix_count(txn, dbs, counts, prefix)
    if key == prefix:
        return total
    if not (_exact_bound(key) and _exact_bound(range_end)):
        after = iter_range(txn, dbs, DB_LIVE, key, range_end, values=False)
        before = iter_range(txn, dbs, DB_LIVE, prefix, key, values=False)
        return _shorter_side(after, before, total)
    # [key, end) directly, or the total less [prefix, key): step both, stop at the shorter.
    # Stored keys compare with these bounds as the keys do: plain cursors, no decoding.
    a, b = txn.cursor(dbs[DB_LIVE]), txn.cursor(dbs[DB_LIVE])
    if not a.set_range(key):
        return 0
    b.set_range(prefix)
    n = 0
    for ka, kb in zip(a.iternext(keys=True, values=False), b.iternext(keys=True, values=False), strict=False):
        if ka >= range_end:
            return n
        if kb >= key:
            return total - n
        n += 1
    return n  # `after` ran out: the end of the database


def _shorter_side(after: Iterator[bytes], before: Iterator[bytes], total: int) -> int:
    n_after = n_before = 0
    while True:
        if next(after, None) is None:
            return n_after
        n_after += 1
        if next(before, None) is None:
            return total - n_before
        n_before += 1
