"""Append-only segment files holding one log.

A log is a directory of segment files, each named by the position of its
first record (``00000000000000000001.seg``). Records are appended to the last
segment; once it grows past ``segment_bytes_max`` a new one is started.

Record layout (little endian)::

    u32 payload_len | u32 crc32 | u64 position | u64 epoch | u64 timestamp_ms | payload

The CRC (zlib.crc32) covers everything after itself: position, epoch,
timestamp and payload, so a record that was torn or bit-flipped is detected
and a record that landed at the wrong place (position mismatch) too.

Recovery on open scans the last segment only (earlier ones were complete when
the next one was created) and truncates it at the first record that is short,
fails its CRC or breaks the position sequence. A record that was fully written
and fsynced is never dropped: a torn write can only affect bytes after the
last fsync, and every record before that point checks out.

This class does blocking file I/O and is meant to be driven from one writer
thread at a time (appends, sync, truncate, trim); reads may run concurrently
from other threads, guarded by a lock around the in-memory metadata.
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from journal.api import PositionTrimmed

log = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "batch", "never"]
FSYNC_POLICIES: tuple[str, ...] = ("always", "batch", "never")

HEADER = struct.Struct("<IIQQQ")
HEADER_BYTES = HEADER.size  # 32
CRC_OFFSET = 8  # the CRC covers bytes [CRC_OFFSET:] of header + payload
RECORD_PAYLOAD_BYTES_MAX = 64 * 1024 * 1024
SEGMENT_BYTES_MAX_DEFAULT = 64 * 1024 * 1024
INDEX_STRIDE_BYTES = 64 * 1024  # one sparse index point per this many bytes
SCAN_CHUNK_BYTES = 1024 * 1024
SEGMENT_SUFFIX = ".seg"
POSITION_DIGITS = 20


class CorruptionError(Exception):
    """A record before the tail of the log failed its checks."""


@dataclass(frozen=True, slots=True)
class Record:
    position: int
    epoch: int
    timestamp_ms: int
    payload: bytes


def encode_record(record: Record) -> bytes:
    payload_len = len(record.payload)
    assert payload_len <= RECORD_PAYLOAD_BYTES_MAX, payload_len
    assert record.position >= 1
    body = struct.pack("<QQQ", record.position, record.epoch, record.timestamp_ms)
    crc = zlib.crc32(record.payload, zlib.crc32(body))
    return struct.pack("<II", payload_len, crc) + body + record.payload


def segment_name(first_position: int) -> str:
    return f"{first_position:0{POSITION_DIGITS}d}{SEGMENT_SUFFIX}"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse_records(
    buf: bytes | memoryview, base_offset: int, expected_position: int
) -> tuple[list[tuple[int, Record]], int, str | None]:
    """Parse consecutive records from buf.

    Returns (offset-tagged records, bytes consumed, reason parsing stopped or
    None if it stopped only because buf ran out in a clean place or mid-record).
    A short record at the end of buf is not an error (more may be read); the
    caller decides whether the end of buf is the end of the file.
    """
    out: list[tuple[int, Record]] = []
    view = memoryview(buf)
    at = 0
    end = len(view)
    position = expected_position
    while end - at >= HEADER_BYTES:
        payload_len, crc, pos, epoch, ts = HEADER.unpack_from(view, at)
        if payload_len > RECORD_PAYLOAD_BYTES_MAX:
            return out, at, f"record length {payload_len} over the limit"
        if end - at < HEADER_BYTES + payload_len:
            break
        rec_end = at + HEADER_BYTES + payload_len
        if zlib.crc32(view[at + CRC_OFFSET : rec_end]) != crc:
            return out, at, "crc mismatch"
        if pos != position:
            return out, at, f"position {pos} where {position} was expected"
        out.append((base_offset + at, Record(pos, epoch, ts, bytes(view[at + HEADER_BYTES : rec_end]))))
        position += 1
        at = rec_end
    return out, at, None


@dataclass(slots=True)
class _Segment:
    first_position: int
    path: str
    size_bytes: int = 0
    # Sparse index: parallel lists of positions and their byte offsets; the
    # first point is always (first_position, 0). None until built (older
    # segments are indexed lazily, on their first read).
    index_positions: list[int] | None = None
    index_offsets: list[int] = field(default_factory=list)
    last_indexed_offset: int = 0


class SegmentLog:
    """One log's segment files in one directory."""

    def __init__(
        self,
        directory: str,
        *,
        fsync: FsyncPolicy = "always",
        segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT,
        first_position: int = 1,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy must be one of {FSYNC_POLICIES}, not {fsync!r}")
        assert segment_bytes_max >= HEADER_BYTES
        self.directory = directory
        self.fsync_policy: FsyncPolicy = fsync
        self.segment_bytes_max = segment_bytes_max
        self.fsync_count = 0  # number of data fsyncs issued (tests count group commit with it)
        self.truncated_bytes_on_open = 0
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._write_fd: int | None = None
        self._dirty = False  # bytes written since the last sync
        self.last_position = first_position - 1
        self.last_epoch = 0
        self.last_timestamp_ms = 0
        self.synced_position = first_position - 1  # durable per the fsync policy
        os.makedirs(directory, exist_ok=True)
        self._recover(first_position)

    # ----------------------------------------------------------------- open

    def _recover(self, first_position: int) -> None:
        names = sorted(n for n in os.listdir(self.directory) if n.endswith(SEGMENT_SUFFIX))
        for name in os.listdir(self.directory):
            if name.endswith(".tmp"):
                os.unlink(os.path.join(self.directory, name))
        for name in names:
            first = int(name[: -len(SEGMENT_SUFFIX)])
            path = os.path.join(self.directory, name)
            self._segments.append(_Segment(first, path, os.path.getsize(path)))
        if not self._segments:
            self._create_segment(first_position)
            return
        for a, b in zip(self._segments, self._segments[1:], strict=False):
            assert a.first_position < b.first_position
        # Earlier segments were sealed (fsynced) before the next was created,
        # so only the last one can hold a torn tail.
        last = self._segments[-1]
        self._scan_last(last)
        # Find the last record's epoch and timestamp: if the last segment is
        # empty, look back into the previous one (kept by trim for this).
        for seg in reversed(self._segments):
            if seg.size_bytes > 0:
                rec = self._last_record(seg)
                self.last_epoch = rec.epoch
                self.last_timestamp_ms = rec.timestamp_ms
                break
        self.synced_position = self.last_position
        self._write_fd = os.open(last.path, os.O_WRONLY | os.O_APPEND)

    def _scan_last(self, seg: _Segment) -> None:
        seg.index_positions = [seg.first_position]
        seg.index_offsets = [0]
        seg.last_indexed_offset = 0
        position = seg.first_position
        offset = 0
        reason: str | None = None
        with open(seg.path, "rb") as f:
            carry = b""
            while True:
                chunk = f.read(SCAN_CHUNK_BYTES)
                if not chunk:
                    if carry:
                        reason = f"{len(carry)} bytes of a torn record"
                    break
                buf = carry + chunk
                records, used, reason = _parse_records(buf, offset, position)
                for rec_offset, rec in records:
                    self._maybe_index(seg, rec.position, rec_offset)
                position += len(records)
                offset += used
                carry = buf[used:]
                if reason is not None:
                    break
        if reason is not None or offset != seg.size_bytes:
            dropped = seg.size_bytes - offset
            log.warning(
                "log %s: truncating segment %s at byte %d (%d bytes dropped): %s",
                self.directory,
                os.path.basename(seg.path),
                offset,
                dropped,
                reason,
            )
            with open(seg.path, "r+b") as f:
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())
            self.truncated_bytes_on_open += dropped
            seg.size_bytes = offset
        self.last_position = position - 1

    def _last_record(self, seg: _Segment) -> Record:
        self._ensure_index(seg)
        assert seg.index_positions is not None
        offset = seg.index_offsets[-1]
        with open(seg.path, "rb") as f:
            f.seek(offset)
            buf = f.read(seg.size_bytes - offset)
        records, _, reason = _parse_records(buf, offset, seg.index_positions[-1])
        if reason is not None or not records:
            raise CorruptionError(f"segment {seg.path} at byte {offset}: {reason}")
        return records[-1][1]

    def _maybe_index(self, seg: _Segment, position: int, offset: int) -> None:
        assert seg.index_positions is not None
        if offset - seg.last_indexed_offset >= INDEX_STRIDE_BYTES:
            seg.index_positions.append(position)
            seg.index_offsets.append(offset)
            seg.last_indexed_offset = offset

    def _ensure_index(self, seg: _Segment) -> None:
        """Build the sparse index of a sealed segment by scanning it once."""
        if seg.index_positions is not None:
            return
        seg.index_positions = [seg.first_position]
        seg.index_offsets = [0]
        seg.last_indexed_offset = 0
        position = seg.first_position
        offset = 0
        with open(seg.path, "rb") as f:
            carry = b""
            while offset < seg.size_bytes:
                chunk = f.read(SCAN_CHUNK_BYTES)
                if not chunk:
                    break
                buf = carry + chunk
                records, used, reason = _parse_records(buf, offset, position)
                if reason is not None:
                    raise CorruptionError(f"segment {seg.path} at byte {offset + used}: {reason}")
                for rec_offset, rec in records:
                    self._maybe_index(seg, rec.position, rec_offset)
                position += len(records)
                offset += used
                carry = buf[used:]
        if offset != seg.size_bytes:
            raise CorruptionError(f"segment {seg.path}: torn record at byte {offset} of a sealed segment")

    def _create_segment(self, first_position: int) -> None:
        path = os.path.join(self.directory, segment_name(first_position))
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        # The new name must survive a crash before any record in it is acknowledged.
        if self.fsync_policy != "never":
            fsync_dir(self.directory)
        seg = _Segment(first_position, path, 0, [first_position], [0], 0)
        with self._lock:
            self._segments.append(seg)
        if self._write_fd is not None:
            os.close(self._write_fd)
        self._write_fd = fd

    # ---------------------------------------------------------------- write

    @property
    def first_position(self) -> int:
        return self._segments[0].first_position

    def append(self, records: Sequence[Record]) -> None:
        """Write records at the tail (not yet durable: call sync())."""
        if not records:
            return
        assert self._write_fd is not None, "log is closed"
        chunks: list[bytes] = []
        seg = self._segments[-1]
        pending_bytes = 0
        position = self.last_position
        for rec in records:
            assert rec.position == position + 1, (rec.position, position)
            encoded = encode_record(rec)
            if seg.size_bytes + pending_bytes > 0 and seg.size_bytes + pending_bytes + len(encoded) > (
                self.segment_bytes_max
            ):
                self._write_all(b"".join(chunks))
                chunks = []
                pending_bytes = 0
                self._roll(rec.position)
                seg = self._segments[-1]
            with self._lock:
                self._maybe_index(seg, rec.position, seg.size_bytes + pending_bytes)
            chunks.append(encoded)
            pending_bytes += len(encoded)
            position = rec.position
        self._write_all(b"".join(chunks))
        last = records[-1]
        self.last_position = last.position
        self.last_epoch = last.epoch
        self.last_timestamp_ms = last.timestamp_ms

    def _write_all(self, data: bytes) -> None:
        if not data:
            return
        assert self._write_fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._write_fd, view)
            view = view[n:]
        seg = self._segments[-1]
        with self._lock:
            seg.size_bytes += len(data)
        self._dirty = True

    def _roll(self, first_position: int) -> None:
        # Seal the old segment durably before starting the next, so that
        # recovery only ever needs to scan the last one.
        self._sync_fd()
        self._create_segment(first_position)

    def _sync_fd(self) -> None:
        if self._dirty and self.fsync_policy != "never":
            assert self._write_fd is not None
            os.fdatasync(self._write_fd)
            self.fsync_count += 1
        self._dirty = False

    def sync(self) -> int:
        """Make everything appended durable (per the policy); return the synced position."""
        self._sync_fd()
        self.synced_position = self.last_position
        return self.synced_position

    def truncate_suffix(self, from_position: int) -> None:
        """Remove records at and above from_position (a replica dropping a divergent suffix)."""
        if from_position > self.last_position:
            return
        assert from_position >= self.first_position, (from_position, self.first_position)
        while len(self._segments) > 1 and self._segments[-1].first_position >= from_position:
            with self._lock:
                seg = self._segments.pop()
            os.close(self._write_fd_checked())
            self._write_fd = None
            os.unlink(seg.path)
            self._write_fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
        seg = self._segments[-1]
        cut = 0 if from_position <= seg.first_position else self._offset_of(seg, from_position)
        self.last_position = max(from_position, seg.first_position) - 1
        os.ftruncate(self._write_fd_checked(), cut)
        with self._lock:
            seg.size_bytes = cut
            assert seg.index_positions is not None
            keep = max(1, bisect.bisect_left(seg.index_offsets, cut))
            del seg.index_positions[keep:]
            del seg.index_offsets[keep:]
            seg.last_indexed_offset = seg.index_offsets[-1]
        if self.fsync_policy != "never":
            os.fsync(self._write_fd_checked())
            fsync_dir(self.directory)
        self._dirty = False
        self.synced_position = min(self.synced_position, self.last_position)
        self.last_epoch = 0
        self.last_timestamp_ms = 0
        for s in reversed(self._segments):
            if s.size_bytes > 0:
                rec = self._last_record(s)
                self.last_epoch = rec.epoch
                self.last_timestamp_ms = rec.timestamp_ms
                break

    def reset(self, first_position: int) -> None:
        """Drop every record and restart the log, empty, at first_position.

        A replica does this when it installs a snapshot its log does not
        reach. A crash half way leaves no segment at all, and reopening with
        the same first_position recreates the empty log.
        """
        assert first_position >= 1
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None
        with self._lock:
            old, self._segments = self._segments, []
        for seg in old:
            os.unlink(seg.path)
        self._dirty = False
        self._create_segment(first_position)
        self.last_position = self.synced_position = first_position - 1
        self.last_epoch = 0
        self.last_timestamp_ms = 0

    def _write_fd_checked(self) -> int:
        assert self._write_fd is not None
        return self._write_fd

    def trim(self, below: int) -> int:
        """Delete whole segments whose records are all below `below`. Returns the new first position.

        The segment holding the last record is always kept (the log's last
        timestamp and epoch live in it).
        """
        removed: list[_Segment] = []
        with self._lock:
            while len(self._segments) >= 2:
                nxt = self._segments[1]
                if nxt.first_position <= below and nxt.first_position <= self.last_position:
                    removed.append(self._segments.pop(0))
                else:
                    break
        for seg in removed:
            os.unlink(seg.path)
        if removed and self.fsync_policy != "never":
            fsync_dir(self.directory)
        return self.first_position

    def close(self) -> None:
        if self._write_fd is not None:
            self.sync()
            os.close(self._write_fd)
            self._write_fd = None

    # ----------------------------------------------------------------- read

    def _offset_of(self, seg: _Segment, position: int) -> int:
        """Byte offset of the record at position inside seg (which must hold it)."""
        self._ensure_index(seg)
        with self._lock:
            assert seg.index_positions is not None
            i = bisect.bisect_right(seg.index_positions, position) - 1
            start_pos = seg.index_positions[i]
            offset = seg.index_offsets[i]
            size = seg.size_bytes
        with open(seg.path, "rb") as f:
            f.seek(offset)
            while start_pos < position:
                header = f.read(HEADER_BYTES)
                if len(header) < HEADER_BYTES:
                    raise CorruptionError(f"{seg.path}: position {position} not found")
                payload_len = HEADER.unpack(header)[0]
                offset += HEADER_BYTES + payload_len
                f.seek(offset)
                start_pos += 1
        assert offset <= size
        return offset

    def read(self, from_position: int, upto_position: int, bytes_max: int = 4 * 1024 * 1024) -> list[Record]:
        """Records from from_position to at most upto_position (inclusive), about bytes_max in all.

        Returns at least one record when from_position <= upto_position.
        """
        upto_position = min(upto_position, self.last_position)
        if from_position > upto_position:
            return []
        with self._lock:
            segments = list(self._segments)
        if from_position < segments[0].first_position:
            raise PositionTrimmed(from_position, segments[0].first_position)
        i = bisect.bisect_right([s.first_position for s in segments], from_position) - 1
        seg = segments[i]
        try:
            offset = self._offset_of(seg, from_position)
            out: list[Record] = []
            total = 0
            position = from_position
            with open(seg.path, "rb") as f:
                f.seek(offset)
                while position <= upto_position and total < bytes_max:
                    want = min(max(bytes_max - total, HEADER_BYTES), SCAN_CHUNK_BYTES)
                    buf = f.read(want)
                    if not buf:
                        break
                    records, used, reason = _parse_records(buf, offset, position)
                    if not records and reason is None:
                        # One record larger than the chunk: read exactly it.
                        if len(buf) < HEADER_BYTES:
                            raise CorruptionError(f"{seg.path}: short header at byte {offset}")
                        payload_len = HEADER.unpack_from(buf)[0]
                        f.seek(offset)
                        buf = f.read(HEADER_BYTES + payload_len)
                        records, used, reason = _parse_records(buf, offset, position)
                        if not records and reason is None:
                            break  # the file ends here (e.g. truncated concurrently)
                    for _, rec in records:
                        if rec.position > upto_position:
                            break
                        out.append(rec)
                        total += HEADER_BYTES + len(rec.payload)
                        position += 1
                    offset += used
                    f.seek(offset)
                    if reason is not None and position <= upto_position:
                        raise CorruptionError(f"{seg.path} at byte {offset}: {reason}")
            return out
        except FileNotFoundError:
            # Trimmed under our feet.
            raise PositionTrimmed(from_position, self.first_position) from None

    def segment_paths(self) -> list[str]:
        with self._lock:
            return [s.path for s in self._segments]


def now_ms() -> int:
    return time.time_ns() // 1_000_000
