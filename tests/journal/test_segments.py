"""Segment files: round trip, rolling, recovery of torn and corrupt tails, trim, truncate."""

from __future__ import annotations

import os
import struct

import pytest

from journal.api import PositionTrimmed
from journal.segments import (
    HEADER_BYTES,
    CorruptionError,
    Record,
    SegmentLog,
    encode_record,
)


def recs(first: int, n: int, size: int = 10, epoch: int = 1) -> list[Record]:
    return [Record(p, epoch, 1000 + p, bytes([p % 251]) * size) for p in range(first, first + n)]


def read_all(s: SegmentLog, first: int, last: int) -> list[Record]:
    """Read [first, last] however many segments it spans (read() stops at a segment's end)."""
    out: list[Record] = []
    pos = first
    for _ in range(10_000):
        batch = s.read(pos, last)
        if not batch:
            return out
        assert batch[0].position == pos
        out += batch
        pos = batch[-1].position + 1
    raise AssertionError("read_all did not finish")


def test_round_trip_and_reopen(tmp_path: str) -> None:
    d = str(tmp_path)
    s = SegmentLog(d)
    s.append(recs(1, 100))
    assert s.sync() == 100
    assert s.fsync_count == 1
    got = s.read(1, 100)
    assert got == recs(1, 100)
    assert s.read(50, 60) == recs(50, 11)
    assert s.read(101, 200) == []
    s.close()
    s2 = SegmentLog(d)
    assert (s2.first_position, s2.last_position, s2.last_timestamp_ms, s2.last_epoch) == (1, 100, 1100, 1)
    assert s2.read(1, 1000) == recs(1, 100)
    assert s2.truncated_bytes_on_open == 0


def test_rolls_segments_and_reads_across_them(tmp_path: str) -> None:
    d = str(tmp_path)
    s = SegmentLog(d, segment_bytes_max=1000)
    for first in range(1, 301, 30):
        s.append(recs(first, 30, size=50))
        s.sync()
    paths = s.segment_paths()
    assert len(paths) > 10
    # Each name is the first position in it.
    assert os.path.basename(paths[0]) == "00000000000000000001.seg"
    assert read_all(s, 1, 300) == recs(1, 300, size=50)
    s.close()
    s2 = SegmentLog(d, segment_bytes_max=1000)
    assert s2.last_position == 300
    assert s2.read(123, 123) == recs(123, 1, size=50)


def test_sparse_index_on_big_segment(tmp_path: str) -> None:
    s = SegmentLog(str(tmp_path))
    s.append(recs(1, 5000, size=100))  # ~660 KB: several index points
    s.sync()
    for p in (1, 777, 2500, 4999, 5000):
        assert s.read(p, p) == recs(p, 1, size=100)
    s.close()
    s2 = SegmentLog(str(tmp_path))
    assert s2.read(4321, 4322) == recs(4321, 2, size=100)


@pytest.mark.parametrize("garbage", [b"\x07", b"abc" * 5, "half"])
def test_torn_tail_truncated_on_open(tmp_path: str, garbage: object) -> None:
    d = str(tmp_path)
    s = SegmentLog(d)
    s.append(recs(1, 20))
    s.sync()
    s.close()
    path = os.path.join(d, "00000000000000000001.seg")
    size = os.path.getsize(path)
    tail = encode_record(Record(21, 1, 5, b"x" * 100))[:60] if garbage == "half" else garbage
    assert isinstance(tail, bytes)
    with open(path, "ab") as f:
        f.write(tail)
    s2 = SegmentLog(d)
    assert s2.last_position == 20
    assert s2.truncated_bytes_on_open == len(tail)
    assert os.path.getsize(path) == size
    # And the log keeps working after the cut.
    s2.append(recs(21, 5))
    s2.sync()
    s2.close()
    assert SegmentLog(d).read(1, 100) == recs(1, 25)


def test_corrupt_record_in_tail_drops_it_and_everything_after(tmp_path: str) -> None:
    d = str(tmp_path)
    s = SegmentLog(d)
    s.append(recs(1, 10))
    s.sync()
    s.close()
    path = os.path.join(d, "00000000000000000001.seg")
    rec_bytes = HEADER_BYTES + 10
    with open(path, "r+b") as f:
        f.seek(7 * rec_bytes + HEADER_BYTES + 3)  # a payload byte of position 8
        f.write(b"\xff")
    s2 = SegmentLog(d)
    assert s2.last_position == 7
    assert s2.read(1, 10) == recs(1, 7)


def test_corruption_in_sealed_segment_is_detected_on_read(tmp_path: str) -> None:
    d = str(tmp_path)
    s = SegmentLog(d, segment_bytes_max=500)
    s.append(recs(1, 50))
    s.sync()
    s.close()
    first = os.path.join(d, "00000000000000000001.seg")
    with open(first, "r+b") as f:
        f.seek(HEADER_BYTES + 2)
        f.write(b"\x00\x01")
    s2 = SegmentLog(d, segment_bytes_max=500)  # recovery only scans the last segment
    assert s2.last_position == 50
    with pytest.raises(CorruptionError):
        s2.read(1, 5)


def test_position_gap_is_corruption(tmp_path: str) -> None:
    d = str(tmp_path)
    s = SegmentLog(d)
    s.append(recs(1, 3))
    s.sync()
    s.close()
    with open(os.path.join(d, "00000000000000000001.seg"), "ab") as f:
        f.write(encode_record(Record(9, 1, 1, b"misplaced")))
    assert SegmentLog(d).last_position == 3


def test_trim_deletes_whole_segments_below(tmp_path: str) -> None:
    d = str(tmp_path)
    s = SegmentLog(d, segment_bytes_max=300)
    s.append(recs(1, 100))
    s.sync()
    n = len(s.segment_paths())
    first = s.trim(50)
    assert 1 < first <= 50
    assert len(s.segment_paths()) < n
    with pytest.raises(PositionTrimmed):
        s.read(1, 10)
    assert read_all(s, 50, 100) == recs(50, 51)
    # Trimming everything keeps the segment holding the last record.
    s.trim(10**9)
    assert s.read(100, 100) == recs(100, 1)
    s.close()
    s2 = SegmentLog(d, segment_bytes_max=300)
    assert (s2.last_position, s2.last_timestamp_ms) == (100, 1100)


def test_trim_keeps_last_record_when_tail_segment_is_empty(tmp_path: str) -> None:
    d = str(tmp_path)
    s = SegmentLog(d, segment_bytes_max=HEADER_BYTES + 10)
    s.append(recs(1, 3))  # one record per segment
    s.sync()
    s.close()
    # Simulate a crash right after rolling: an empty segment for position 4.
    open(os.path.join(d, "00000000000000000004.seg"), "wb").close()
    s2 = SegmentLog(d, segment_bytes_max=HEADER_BYTES + 10)
    assert s2.last_position == 3 and s2.last_timestamp_ms == 1003
    s2.trim(100)
    s2.close()
    s3 = SegmentLog(d, segment_bytes_max=HEADER_BYTES + 10)
    assert s3.last_timestamp_ms == 1003
    s3.append(recs(4, 1))
    assert read_all(s3, 3, 4) == recs(3, 2)


def test_truncate_suffix(tmp_path: str) -> None:
    d = str(tmp_path)
    s = SegmentLog(d, segment_bytes_max=200)
    s.append(recs(1, 40))
    s.sync()
    s.truncate_suffix(15)
    assert s.last_position == 14 and s.last_timestamp_ms == 1014
    s.append(recs(15, 3, epoch=2, size=7))
    s.sync()
    assert read_all(s, 1, 100)[:14] == recs(1, 14)
    s.close()
    s2 = SegmentLog(d, segment_bytes_max=200)
    assert s2.last_position == 17 and s2.last_epoch == 2
    assert read_all(s2, 1, 17) == recs(1, 14) + recs(15, 3, epoch=2, size=7)


def test_fsync_policies(tmp_path: str) -> None:
    never = SegmentLog(str(tmp_path / "n"), fsync="never")
    never.append(recs(1, 5))
    assert never.sync() == 5 and never.fsync_count == 0
    with pytest.raises(ValueError):
        SegmentLog(str(tmp_path / "x"), fsync="sometimes")  # type: ignore[arg-type]


def test_header_layout() -> None:
    raw = encode_record(Record(7, 2, 99, b"hello"))
    length, _crc, pos, epoch, ts = struct.unpack_from("<IIQQQ", raw)
    assert (length, pos, epoch, ts) == (5, 7, 2, 99)
    assert raw[HEADER_BYTES:] == b"hello"
