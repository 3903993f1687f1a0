"""etcd's range permission cache: a user's permissions, merged over its roles, as key intervals.

Keys compare as etcd's adt.BytesAffineComparable: byte order, except that the
empty key is the largest element (an open end). A permission with an empty
range_end is the single key; range_end b"\\0" is open-ended ("from key"). A
request for [key, range_end) is allowed when the permitted intervals it
overlaps cover it without a gap (adt.IntervalTree.Contains); a single-key
request when some permitted interval holds the key (Intersects). The
overlap rule is adt.Interval.Compare's, so odd requests (inverted ranges)
are answered exactly as etcd answers them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

READ = 0
WRITE = 1
READWRITE = 2

OPEN_END = b"\0"


def compare(a: bytes, b: bytes) -> int:
    """adt.BytesAffineComparable.Compare: the empty key is +infinity."""
    if not a:
        return 0 if not b else 1
    if not b:
        return -1
    return -1 if a < b else (1 if a > b else 0)


def point(key: bytes) -> tuple[bytes, bytes]:
    return key, key + b"\0"


def interval(key: bytes, range_end: bytes) -> tuple[bytes, bytes]:
    """The interval a permission or request denotes (range_end b"\\0" -> open-ended)."""
    return key, b"" if range_end == OPEN_END else range_end


def _overlaps(ivl: tuple[bytes, bytes], node: tuple[bytes, bytes]) -> bool:
    """adt.Interval.Compare(ivl, node) == 0."""
    if compare(ivl[0], node[0]) < 0 and compare(ivl[1], node[0]) <= 0:
        return False
    return compare(ivl[0], node[1]) < 0


@dataclass(slots=True)
class Intervals:
    items: list[tuple[bytes, bytes]] = field(default_factory=list)

    def insert(self, ivl: tuple[bytes, bytes]) -> None:
        self.items.append(ivl)

    def freeze(self) -> None:
        # In-order visit of etcd's tree: by begin, then end.
        self.items.sort(key=lambda iv: (_Key(iv[0]), _Key(iv[1])))

    def contains(self, ivl: tuple[bytes, bytes]) -> bool:
        min_begin: bytes | None = None
        max_end = b""
        for node in self.items:
            if not _overlaps(ivl, node):
                continue
            if min_begin is None:
                min_begin, max_end = node
                continue
            if compare(max_end, node[0]) < 0:
                return False
            if compare(node[1], max_end) > 0:
                max_end = node[1]
        return min_begin is not None and compare(max_end, ivl[1]) >= 0 and compare(min_begin, ivl[0]) <= 0

    def intersects(self, ivl: tuple[bytes, bytes]) -> bool:
        return any(_overlaps(ivl, node) for node in self.items)


class _Key:
    """Sort key for BytesAffineComparable order."""

    __slots__ = ("b",)

    def __init__(self, b: bytes) -> None:
        self.b = b

    def __lt__(self, other: _Key) -> bool:
        return compare(self.b, other.b) < 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Key) and self.b == other.b

    def __hash__(self) -> int:
        return hash(self.b)


@dataclass(slots=True)
class UnifiedPermissions:
    read: Intervals = field(default_factory=Intervals)
    write: Intervals = field(default_factory=Intervals)

    @classmethod
    def merge(cls, perms: list[tuple[int, bytes, bytes]]) -> UnifiedPermissions:
        out = cls()
        for perm_type, key, range_end in perms:
            ivl = interval(key, range_end) if range_end else point(key)
            if perm_type in (READ, READWRITE):
                out.read.insert(ivl)
            if perm_type in (WRITE, READWRITE):
                out.write.insert(ivl)
        out.read.freeze()
        out.write.freeze()
        return out

    def permits(self, key: bytes, range_end: bytes, perm_type: int) -> bool:
        tree = self.read if perm_type == READ else self.write
        if not range_end:
            return tree.intersects(point(key))
        return tree.contains(interval(key, range_end))


def valid_permission_range(key: bytes, range_end: bytes) -> bool:
    """etcd's isValidPermissionRange."""
    if not key:
        return False
    if not range_end:
        return True
    if compare(key, range_end) == -1:
        return True
    return range_end == OPEN_END
