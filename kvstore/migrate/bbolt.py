"""A read-only reader of bbolt database files (the format of etcd's backend and its snapshots).

The format (go.etcd.io/bbolt, stable since boltdb 1.x, version 2):

- The file is a sequence of pages of `page_size` bytes. Every page starts with a
  16-byte header: id u64, flags u16, count u16, overflow u32 (little endian);
  a page with overflow n spans n + 1 pages.
- Pages 0 and 1 are meta pages: magic 0xED0CDAED, version 2, page size, flags,
  the root bucket (root page id u64, sequence u64), the freelist page id, the
  high-water page id, the transaction id and an FNV-1a 64 checksum of the meta
  bytes before it. The valid meta with the higher transaction id is current.
- A bucket is a B+tree: branch pages (flag 0x01) hold (pos u32, ksize u32,
  page id u64) elements pointing at children; leaf pages (flag 0x02) hold
  (flags u32, pos u32, ksize u32, vsize u32) elements, key and value at `pos`
  from the element. A leaf element with flag 0x01 is a sub-bucket: its value is
  the bucket header (root page id u64, sequence u64), and with root 0 an inline
  bucket whose single leaf page follows the header inside the value.

Every structural fact is checked as it is read: a truncated, foreign or
damaged file raises BoltError naming what is wrong, never garbage.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

MAGIC = 0xED0CDAED
VERSION = 2
PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
META = struct.Struct("<IIII QQ QQQ Q")  # magic, version, page size, flags, root (pgid, seq), freelist, pgid, txid, sum
BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, ksize, pgid
LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
BUCKET_HEADER = struct.Struct("<QQ")  # root pgid, sequence
BRANCH_PAGE, LEAF_PAGE, META_PAGE, FREELIST_PAGE = 0x01, 0x02, 0x04, 0x10
BUCKET_LEAF_FLAG = 0x01
DEPTH_MAX = 64  # a B+tree deeper than this is a cycle in a damaged file
FIRST_PAGE_SIZE_GUESS = 4096


class BoltError(ValueError):
    """The file is not a readable bbolt database."""


def _fnv64a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


@dataclass(frozen=True)
class Meta:
    page_size: int
    root: int
    freelist: int
    high_water: int
    txid: int


class BoltDB:
    """A bbolt file held in memory (an etcd snapshot is read once, whole)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.meta = self._current_meta()

    # -------------------------------------------------------------- meta

    def _read_meta(self, offset: int) -> Meta | None:
        start = offset + PAGE_HEADER.size
        raw = self.data[start : start + META.size]
        if len(raw) < META.size:
            return None
        _, flags, _, _ = PAGE_HEADER.unpack_from(self.data, offset)
        magic, version, page_size, _, root, _, freelist, pgid, txid, checksum = META.unpack(raw)
        if magic != MAGIC or not flags & META_PAGE:
            return None
        if version != VERSION:
            raise BoltError(f"bbolt version {version} is not supported (only {VERSION})")
        if _fnv64a(raw[: META.size - 8]) != checksum:
            return None
        if page_size < 512 or page_size & (page_size - 1):
            return None
        return Meta(page_size, root, freelist, pgid, txid)

    def _current_meta(self) -> Meta:
        if len(self.data) < 2 * PAGE_HEADER.size + META.size:
            raise BoltError("not a bbolt file: too short for its meta pages")
        first = self._read_meta(0)
        page_size = first.page_size if first is not None else FIRST_PAGE_SIZE_GUESS
        second = self._read_meta(page_size) if len(self.data) >= page_size + PAGE_HEADER.size + META.size else None
        metas = [m for m in (first, second) if m is not None]
        if not metas:
            raise BoltError("not a bbolt file: no valid meta page (bad magic or checksum)")
        meta = max(metas, key=lambda m: m.txid)
        if meta.high_water * meta.page_size > len(self.data):
            raise BoltError(
                f"truncated bbolt file: {len(self.data)} bytes, its meta page needs "
                f"{meta.high_water * meta.page_size}"
            )
        return meta

    # -------------------------------------------------------------- pages

    def _page(self, pgid: int) -> tuple[int, int, int, int]:
        """(offset, flags, count, end) of page pgid, checked."""
        if pgid < 2 or pgid >= self.meta.high_water:
            raise BoltError(f"damaged bbolt file: page {pgid} is outside the file's {self.meta.high_water} pages")
        offset = pgid * self.meta.page_size
        page_id, flags, count, overflow = PAGE_HEADER.unpack_from(self.data, offset)
        if page_id != pgid:
            raise BoltError(f"damaged bbolt file: page {pgid} says it is page {page_id}")
        end = offset + (overflow + 1) * self.meta.page_size
        if end > len(self.data):
            raise BoltError(f"truncated bbolt file: page {pgid} runs past the end")
        return offset, flags, count, end

    def _walk(self, data: bytes, offset: int, flags: int, count: int, page_end: int,
              depth: int) -> Iterator[tuple[bytes, bytes, int]]:
        """(key, value, element flags) of a page and its subtree, in key order."""
        if depth > DEPTH_MAX:
            raise BoltError("damaged bbolt file: the B+tree is deeper than any real one")
        base = offset + PAGE_HEADER.size
        element_size = LEAF_ELEMENT.size if flags & LEAF_PAGE else BRANCH_ELEMENT.size
        if base + count * element_size > page_end:
            raise BoltError("damaged bbolt file: a page's elements run past its end")
        if flags & LEAF_PAGE:
            for i in range(count):
                el = base + i * LEAF_ELEMENT.size
                eflags, pos, ksize, vsize = LEAF_ELEMENT.unpack_from(data, el)
                key = self._slice_in(data, el + pos, ksize, page_end)
                value = self._slice_in(data, el + pos + ksize, vsize, page_end)
                yield key, value, eflags
        elif flags & BRANCH_PAGE:
            for i in range(count):
                el = base + i * BRANCH_ELEMENT.size
                _, _, child = BRANCH_ELEMENT.unpack_from(data, el)
                child_offset, child_flags, child_count, child_end = self._page(child)
                yield from self._walk(self.data, child_offset, child_flags, child_count, child_end, depth + 1)
        else:
            raise BoltError(f"damaged bbolt file: a bucket page has flags {flags:#x}")

    @staticmethod
    def _slice_in(data: bytes, start: int, size: int, end: int) -> bytes:
        if start < 0 or start + size > end:
            raise BoltError("damaged bbolt file: an element points outside its page")
        return data[start : start + size]

    def _bucket_items(self, header: bytes, depth: int) -> Iterator[tuple[bytes, bytes, int]]:
        if len(header) < BUCKET_HEADER.size:
            raise BoltError("damaged bbolt file: a bucket header is short")
        root, _ = BUCKET_HEADER.unpack_from(header, 0)
        if root == 0:  # inline bucket: its leaf page follows the header
            inline = header[BUCKET_HEADER.size :]
            if len(inline) < PAGE_HEADER.size:
                raise BoltError("damaged bbolt file: an inline bucket is short")
            _, flags, count, _ = PAGE_HEADER.unpack_from(inline, 0)
            yield from self._walk(inline, 0, flags, count, len(inline), depth)
            return
        offset, flags, count, end = self._page(root)
        yield from self._walk(self.data, offset, flags, count, end, depth)

    # -------------------------------------------------------------- buckets

    def _root_header(self) -> bytes:
        return BUCKET_HEADER.pack(self.meta.root, 0)

    def buckets(self) -> list[bytes]:
        """Names of the top-level buckets."""
        return [k for k, _, f in self._bucket_items(self._root_header(), 0) if f & BUCKET_LEAF_FLAG]

    def items(self, bucket: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of a top-level bucket, in key order (nested buckets are skipped)."""
        for key, value, flags in self._bucket_items(self._root_header(), 0):
            if key == bucket:
                if not flags & BUCKET_LEAF_FLAG:
                    raise BoltError(f"bbolt key {bucket!r} is not a bucket")
                for k, v, f in self._bucket_items(value, 1):
                    if not f & BUCKET_LEAF_FLAG:
                        yield k, v
                return
        raise KeyError(bucket)
