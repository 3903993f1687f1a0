"""Snapshots of the backend: a stream of byte chunks out of one read transaction, and back in.

The stream is `MAGIC` then msgpack items: `["m", name, blob]` for each
replicated meta entry, `["d", db, [k1, v1, k2, v2, ...]]` for the pairs of
each database in key order (dupsort databases: one pair per duplicate; records:
one pair per record, in revision order, whether packed or not), and
`["e", items]` at the end. What compaction drops but is still on file is
left out, so two members with the same applied state produce the same bytes
whatever their physical compaction progress. The producer never holds more
than one chunk; the consumer writes into a fresh environment in bounded
write transactions, so a snapshot of any size costs one chunk of heap.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from typing import Any

import msgpack

from kvstore.mvcc import keyindex, records
from kvstore.mvcc.backend import (
    DATABASES,
    DB_INDEX,
    DB_LEASE_KEYS,
    DB_LIVE,
    DB_META,
    DB_PACKED,
    DB_PREFIX_COUNTS,
    DB_RECORDS,
    DUPSORT_DATABASES,
    META_LOCAL,
    Backend,
    rev_main,
)
from kvstore.mvcc.store import META_MVCC, KeyValue

MAGIC = b"KVSTORE-LMDB-SNAPSHOT-2\n"
# Version 1 stored every key as it is (keys were at most 503 bytes): installing one stores the
# keys that are longer than keyindex.KEY_INLINE_BYTES_MAX in their hashed form.
MAGIC_V1 = b"KVSTORE-LMDB-SNAPSHOT-1\n"
_KEYED_DATABASES = frozenset({DB_INDEX, DB_LIVE, DB_PREFIX_COUNTS})
CHUNK_BYTES = 1 << 20  # bytes per chunk handed out
# Pairs walked (kept or skipped) between two empty chunks: a producer driven on an event loop gives
# it back there (kvstore/member/snapshots.py); about 0.1-0.3 ms of the walk here.
STEP_PAIRS = 64
_STEP: Any = None  # _pairs' marker of a step (never a pair)
INSTALL_TXN_BYTES_MAX = 64 << 20  # bytes written per write transaction while installing


class SnapshotError(ValueError):
    pass


def produce(backend: Backend, chunk_bytes: int = CHUNK_BYTES) -> Generator[bytes, None, None]:
    """The backend's committed state now as chunks of about chunk_bytes.

    The read transaction starts in this call (not at the first chunk), so the
    stream is the state at the moment of the call, however late it is read;
    the chunks may be produced in another thread. Between chunks come empty ones,
    one every STEP_PAIRS pairs walked: a caller may stop there for a while (the
    bytes of the stream do not depend on them).
    """
    # The handles of the environment the transaction is of: a defragment or an install may swap
    # another one into the backend while the stream is read (the old one stays open until it ends).
    return _produce(backend.dbs, backend.snapshot_txn(), chunk_bytes)


def _produce(dbs: dict[bytes, Any], txn: Any, chunk_bytes: int) -> Generator[bytes, None, None]:
    try:
        compact_rev = -1
        raw = txn.get(META_MVCC, db=dbs[DB_META])
        if raw is not None:
            compact_rev = msgpack.unpackb(raw)[1]
        buf = bytearray(MAGIC)
        items = 0
        for name in DATABASES:
            if name == DB_PACKED:
                continue  # records are carried one by one under DB_RECORDS, whatever their layout
            pairs: list[bytes] = []
            size = 0
            for pair in _pairs(dbs, txn, name, compact_rev):
                if pair is _STEP:
                    yield b""
                    continue
                k, v = pair
                pairs += (k, v)
                size += len(k) + len(v)
                if size >= chunk_bytes:
                    buf += msgpack.packb(["d", name, pairs])
                    items += 1
                    pairs, size = [], 0
                    yield bytes(buf)
                    buf.clear()
            if pairs:
                buf += msgpack.packb(["d", name, pairs])
                items += 1
            if len(buf) >= chunk_bytes:
                yield bytes(buf)
                buf.clear()
        buf += msgpack.packb(["e", items])
        yield bytes(buf)
    finally:
        txn.abort()


def _pairs(dbs: dict[bytes, Any], txn: Any, name: bytes, compact_rev: int) -> Iterator[tuple[bytes, bytes]]:
    """The pairs of database name that a snapshot carries, with _STEP after every STEP_PAIRS walked."""
    for n, pair in enumerate(_walk(dbs, txn, name, compact_rev), 1):
        if n % STEP_PAIRS == 0:
            yield _STEP
        if pair is not _STEP:
            yield pair


def _walk(dbs: dict[bytes, Any], txn: Any, name: bytes, compact_rev: int) -> Iterator[tuple[bytes, bytes]]:
    """The pairs kept, and _STEP for each one walked over (a compacted record, a dropped index entry)."""
    db = dbs[name]
    cur = txn.cursor(db)
    if name == DB_META:
        for k, v in cur.iternext():
            yield (k, v) if k not in META_LOCAL else _STEP
        return
    if name == DB_INDEX:
        if not cur.first():
            return
        while True:
            key = cur.key()
            ents = list(cur.iternext_dup())
            newest_kept = _newest_at(ents, compact_rev)
            for ent in ents:
                yield (key, ent) if rev_main(ent) > compact_rev or ent == newest_kept else _STEP
            if not cur.next_nodup():
                return
    if name == DB_RECORDS:
        for rev, raw in records.iter_from(txn, dbs, bytes(records.REV_BYTES)):
            if rev_main(rev) <= compact_rev:
                kv = KeyValue.FromString(raw)
                if not kv.version or keyindex.at(txn, dbs, kv.key, compact_rev) != keyindex.entry(rev, False):
                    yield _STEP
                    continue
            yield rev, raw
        return
    yield from cur.iternext()


def _newest_at(ents: list[bytes], compact_rev: int) -> bytes | None:
    """The entry a compaction at compact_rev keeps among those at or below it (None: none)."""
    newest = None
    for ent in ents:
        if rev_main(ent) > compact_rev:
            break
        newest = ent
    return None if newest is None or keyindex.is_tombstone(newest) else newest


def install(backend: Backend, chunks: Iterable[bytes]) -> None:
    """Write a snapshot stream into an empty backend, in bounded write transactions."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=0)
    it = iter(chunks)
    first = b""
    for chunk in it:
        first += chunk
        if len(first) >= len(MAGIC):
            break
    legacy = first.startswith(MAGIC_V1)
    if not first.startswith(MAGIC) and not legacy:
        raise SnapshotError("not a kvstore snapshot (etcd's bbolt snapshots cannot be loaded)")
    unpacker.feed(first[len(MAGIC) :])
    items = 0
    written = 0
    done = False
    backend.begin_batch()
    try:
        for chunk in _then(unpacker, it):
            if chunk:
                unpacker.feed(chunk)
            for item in unpacker:
                kind = item[0]
                if kind == "e":
                    if item[1] != items:
                        raise SnapshotError(f"snapshot holds {items} items, its end says {item[1]}")
                    done = True
                    break
                if kind != "d":
                    raise SnapshotError(f"unknown snapshot item {kind!r}")
                _, name, pairs = item
                name = name.encode() if isinstance(name, str) else name
                if name not in backend.dbs:
                    raise SnapshotError(f"unknown database {name!r} in snapshot")
                db = backend.dbs[name]
                txn = backend.txn
                dupdata = name in DUPSORT_DATABASES
                for i in range(0, len(pairs), 2):
                    k, v = pairs[i], pairs[i + 1]
                    if name == DB_RECORDS:
                        records.put(txn, backend.dbs, k, v)  # in revision order: packed as they come
                    else:
                        if legacy and len(k) > keyindex.KEY_INLINE_BYTES_MAX:
                            k = _legacy_key(name, k)
                        txn.put(k, v, db=db, dupdata=dupdata)
                    written += len(k) + len(v)
                items += 1
                if written >= INSTALL_TXN_BYTES_MAX:
                    backend.commit_batch()
                    backend.begin_batch()
                    written = 0
            if done:
                break
        if not done:
            raise SnapshotError("snapshot cut short (no end marker)")
    except BaseException:
        backend.abort_batch()
        raise
    backend.commit_batch()


def _legacy_key(name: bytes, k: bytes) -> bytes:
    """A version-1 snapshot's key of database `name`, as this version stores it."""
    if name in _KEYED_DATABASES:
        return keyindex.stored_key(k)
    if name == DB_LEASE_KEYS:
        return k[: keyindex.LEASE_ID_BYTES] + keyindex.stored_key(k[keyindex.LEASE_ID_BYTES :])
    return k


def _then(unpacker: Any, it: Iterator[bytes]) -> Iterator[bytes]:
    yield b""  # what was fed already
    yield from it


def dumps(backend: Backend) -> bytes:
    return b"".join(produce(backend))
