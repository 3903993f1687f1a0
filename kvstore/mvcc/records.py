"""The records: revision (main, sub) -> serialized mvccpb.KeyValue, as etcd's bbolt `key` bucket.

Every read and write of a record goes through here, so that how records are
laid out in the file is decided in one place. Two databases hold them:

- `records`: the newest records, one LMDB value each, appended in revision order.
- `packed`:  older records, packed in revision order into groups of about
  `GROUP_PAGES` pages: first revision of the group -> group (see `_pack_group`).

Why packing: LMDB's pages are the OS's 4 KiB and a record is one node of a
leaf page, so records of 1 KiB fill three to a page (80 %) and those of 2-4 KiB
take a page of their own. A group is one value on consecutive overflow pages,
filled but for its last page. Every packed revision is below every unpacked
one (packing takes the oldest), so a scan in revision order reads the groups,
then `records`.

Packing runs inside a write once `records` is big enough (`put`, which looks
at one record in PACK_CHECK_RECORDS, by revision), so it is part of applying
the journal: the same entries give the same layout on every member. Snapshots
carry records one by one, whatever their layout.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from kvstore.mvcc.backend import DB_PACKED, DB_RECORDS
from proto.mvccpb import kv_pb2

PAGE_BYTES = 4096  # LMDB's page: the OS page
OVERFLOW_PAGE_HEADER_BYTES = 16
GROUP_PAGES = 16
# A group fills GROUP_PAGES overflow pages at most (their first 16 bytes are LMDB's header).
GROUP_BYTES_MAX = GROUP_PAGES * PAGE_BYTES - OVERFLOW_PAGE_HEADER_BYTES
# `records` is packed once its pages reach this many: then every group's worth of its oldest
# records is packed, leaving the newest (less than a group: at most about 2 x GROUP_PAGES
# pages, whatever the records' sizes) as they are.
PACK_TRIGGER_PAGES = 3 * GROUP_PAGES
# The trigger is read (an LMDB stat: ~2.5 µs, a tenth of a put's own writes) at one record in
# this many, chosen by revision (main + sub), so every member still packs at the same records.
PACK_CHECK_RECORDS = 8
REV_BYTES = 16
_COUNT = struct.Struct(">I")
_MAIN = struct.Struct(">Q")  # a revision's first 8 bytes
_END = struct.Struct(">I")
_GROUP_ENTRY_BYTES = REV_BYTES + _END.size  # per record: its revision and where it ends


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


# ------------------------------------------------------------------ groups


def _pack_group(items: list[tuple[bytes, bytes]]) -> bytes:
    """A group: count (4 bytes), the revisions (16 bytes each, ascending), where each record
    ends in the data (4 bytes each), then the records' bytes."""
    ends: list[int] = []
    pos = 0
    for _, raw in items:
        pos += len(raw)
        ends.append(pos)
    n = len(items)
    return b"".join(
        [_COUNT.pack(n), *(rev for rev, _ in items), struct.pack(f">{n}I", *ends), *(raw for _, raw in items)]
    )


def _group_bytes(n: int, data_bytes: int) -> int:
    return _COUNT.size + n * _GROUP_ENTRY_BYTES + data_bytes


def _group_count(group: bytes) -> int:
    n: int = _COUNT.unpack_from(group)[0]
    return n


def _group_record(group: bytes, n: int, i: int) -> bytes:
    ends_at = _COUNT.size + n * REV_BYTES
    data_at = ends_at + n * _END.size
    start = _END.unpack_from(group, ends_at + (i - 1) * _END.size)[0] if i else 0
    end = _END.unpack_from(group, ends_at + i * _END.size)[0]
    return group[data_at + start : data_at + end]


def _group_find(group: bytes, rev: bytes) -> bytes | None:
    """The record at rev in group, or None.

    First where rev would be if the group's main revisions were evenly spread (they are, one
    record per revision, for single puts with nothing compacted between), then a binary search
    of the revisions (ascending in a group): ~1.4 µs for ~200 records, where `bytes.find` on
    them (mostly zero bytes, its slow case) took 3-8 µs; the guess takes ~1 µs. Records a txn
    wrote share their main revision, so the guess misses them.
    """
    n = _group_count(group)
    head, end = _COUNT.size, _COUNT.size + n * REV_BYTES
    first, last = _MAIN.unpack_from(group, head)[0], _MAIN.unpack_from(group, end - REV_BYTES)[0]
    main = _MAIN.unpack_from(rev)[0]
    if not first <= main <= last:
        return None
    guess = (main - first) * (n - 1) // (last - first) if last > first else 0
    at = head + guess * REV_BYTES
    if group[at : at + REV_BYTES] == rev:
        return _group_record(group, n, guess)
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) >> 1
        at = head + mid * REV_BYTES
        if group[at : at + REV_BYTES] < rev:
            lo = mid + 1
        else:
            hi = mid
    at = head + lo * REV_BYTES
    return _group_record(group, n, lo) if lo < n and group[at : at + REV_BYTES] == rev else None


def _group_items(group: bytes) -> list[tuple[bytes, bytes]]:
    n = _group_count(group)
    head = _COUNT.size
    data_at = head + n * _GROUP_ENTRY_BYTES
    revs = [group[i : i + REV_BYTES] for i in range(head, head + n * REV_BYTES, REV_BYTES)]
    ends = struct.unpack_from(f">{n}I", group, head + n * REV_BYTES)
    starts = (0, *ends[:-1])
    return [(rev, group[data_at + a : data_at + b]) for rev, a, b in zip(revs, starts, ends, strict=True)]


def _group_of(cur: Any, rev: bytes) -> tuple[bytes, bytes] | None:
    """(first revision, group) of the group that would hold rev, or None."""
    if cur.set_range(rev):
        if cur.key() == rev:
            return cur.key(), cur.value()
        if not cur.prev():
            return None
    elif not cur.last():
        return None
    return cur.key(), cur.value()


# ------------------------------------------------------------------- reads


class LastGroup:
    """The group a lookup read last, kept for the next ones (overwrites and reads of keys
    written together hit the same group). A revision's record never changes, so a group
    read once answers for every revision it holds, whatever was packed or compacted since:
    a revision not in it is looked up in the file."""

    __slots__ = ("first", "group", "last")

    def __init__(self) -> None:
        self.first = self.last = b""
        self.group = b""


def get(txn: Any, dbs: dict[bytes, Any], rev: bytes, last: LastGroup | None = None) -> bytes:
    """The record at rev (which must exist)."""
    raw: bytes | None = txn.get(rev, db=dbs[DB_RECORDS])
    if raw is not None:
        return raw
    if last is not None and last.first <= rev <= last.last:
        raw = _group_find(last.group, rev)
        if raw is not None:
            return raw
    found = _group_of(txn.cursor(dbs[DB_PACKED]), rev)
    raw = _group_find(found[1], rev) if found is not None else None
    assert found is not None and raw is not None, "a revision with no record"
    if last is not None:
        group = found[1]
        last.first, last.group = found[0], group
        at = _COUNT.size + (_group_count(group) - 1) * REV_BYTES
        last.last = group[at : at + REV_BYTES]
    return raw


def get_many(txn: Any, dbs: dict[bytes, Any], revs: list[bytes]) -> list[bytes]:
    """The records at revs (which must exist), in that order."""
    if not revs:
        return []
    found = dict(txn.cursor(dbs[DB_RECORDS]).getmulti(revs))
    if len(found) == len(revs):
        return [found[r] for r in revs]
    cur = txn.cursor(dbs[DB_PACKED])
    unpacked: dict[bytes, bytes] = {}  # the records of the groups read more than once so far
    # The last group read: its first record is found by a search (a one-key range reads one
    # record of a group of ~100: unpacking them all cost it ~50 us); a second hit unpacks it.
    last_group = b""
    out: list[bytes] = []
    for rev in revs:
        raw = found.get(rev) or unpacked.get(rev)
        if raw is None:
            if last_group:
                raw = _group_find(last_group, rev)
                if raw is not None:
                    unpacked.update(_group_items(last_group))
                    last_group = b""
        if raw is None:
            hit = _group_of(cur, rev)
            assert hit is not None, "a revision with no record"
            raw = _group_find(hit[1], rev)
            assert raw is not None, "a revision with no record"
            last_group = hit[1]
        out.append(raw)
    return out


def iter_from(txn: Any, dbs: dict[bytes, Any], start: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(revision, record) from revision start on, in revision order: the groups, then `records`."""
    cur = txn.cursor(dbs[DB_PACKED])
    hit = _group_of(cur, start)
    if cur.set_key(hit[0]) if hit is not None else cur.first():
        for _, group in cur.iternext():
            for rev, raw in _group_items(group):
                if rev >= start:
                    yield rev, raw
    cur = txn.cursor(dbs[DB_RECORDS])
    if cur.set_range(start):
        yield from cur.iternext()


def count(txn: Any, dbs: dict[bytes, Any]) -> int:
    """Records on file (those compaction dropped from the index but not from here yet included)."""
    n: int = txn.stat(dbs[DB_RECORDS])["entries"]
    for group in txn.cursor(dbs[DB_PACKED]).iternext(keys=False, values=True):
        n += _group_count(group)
    return n


# ------------------------------------------------------------------ writes


def put(txn: Any, dbs: dict[bytes, Any], rev: bytes, raw: bytes) -> None:
    """Append a record (revisions only grow, so it goes at the end of `records`); pack the
    oldest ones once `records` is big enough."""
    db = dbs[DB_RECORDS]
    txn.put(rev, raw, db=db, append=True)
    if (rev[7] + rev[15]) % PACK_CHECK_RECORDS:  # the low bytes of main and sub: 256 % 8 == 0
        return
    st = txn.stat(db)
    if st["leaf_pages"] + st["overflow_pages"] >= PACK_TRIGGER_PAGES:
        _pack(txn, dbs)


def _pack(txn: Any, dbs: dict[bytes, Any]) -> None:
    """Move the oldest records of `records` into full groups; the newest, less than one
    group's worth, stay (a record bigger than a group is a group of its own)."""
    db, packed = dbs[DB_RECORDS], dbs[DB_PACKED]
    group: list[tuple[bytes, bytes]] = []
    # The group's size as _group_bytes counts it, kept as records are added (no call a record).
    size = _group_bytes(0, 0)
    moved: list[bytes] = []
    for item in txn.cursor(db).iternext():
        grown = size + _GROUP_ENTRY_BYTES + len(item[1])
        if grown > GROUP_BYTES_MAX and group:
            txn.put(group[0][0], _pack_group(group), db=packed)
            moved += (r for r, _ in group)
            group = []
            grown = _group_bytes(1, len(item[1]))
        group.append(item)
        size = grown
    if group and size > GROUP_BYTES_MAX:  # one record bigger than a group
        txn.put(group[0][0], _pack_group(group), db=packed)
        moved += (r for r, _ in group)
    for rev in moved:
        txn.delete(rev, db=db)


def delete(txn: Any, dbs: dict[bytes, Any], revs: list[bytes]) -> None:
    """Remove the records at revs (compaction); each group touched is rewritten once."""
    db = dbs[DB_RECORDS]
    from_groups: dict[bytes, list[bytes]] = {}  # group's first revision -> revisions to drop
    cur = None
    for rev in revs:
        if txn.delete(rev, db=db):
            continue
        if cur is None:
            cur = txn.cursor(dbs[DB_PACKED])
        hit = _group_of(cur, rev)
        assert hit is not None, "a revision with no record"
        from_groups.setdefault(hit[0], []).append(rev)
    packed = dbs[DB_PACKED]
    for first, drop in from_groups.items():
        gone = set(drop)
        kept = [item for item in _group_items(txn.get(first, db=packed)) if item[0] not in gone]
        if kept:
            # The group keeps its first revision as its key even if that record is gone: it is
            # still below every revision the group holds, and above the previous group's.
            txn.put(first, _pack_group(kept), db=packed)
        else:
            txn.delete(first, db=packed)
