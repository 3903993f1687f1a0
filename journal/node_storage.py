"""A journal replica's durable state: the replication core's Raft log and hard state.

The log goes to a SegmentLog keyed by Raft index (record epoch = Raft term);
the hard state (term, vote) and the trimmed-prefix metadata go to one small
file written atomically. ``persist`` writes one Ready (journal.node's driver
calls it on the replica's own thread).
"""

from __future__ import annotations

import logging
import os
import zlib

import msgpack

from journal import replication as r
from journal.local import atomic_write
from journal.segments import FsyncPolicy, Record, SegmentLog
from journal.wire import decode_snapshot_meta, encode_snapshot_meta

log = logging.getLogger(__name__)

STATE_FILE = "raft_state"
RAFT_DIR = "raft"


def encode_entry_payload(e: r.LogEntry) -> bytes:
    data: bytes = msgpack.packb(
        [int(e.kind), e.position, e.data, e.client_id, e.request_seq, e.batch_index, e.batch_size],
        use_bin_type=True,
    )
    return data


def decode_record(rec: Record) -> r.LogEntry:
    kind, position, data, client_id, seq, batch_index, batch_size = msgpack.unpackb(rec.payload, raw=False)
    return r.LogEntry(
        rec.position, rec.epoch, position, rec.timestamp_ms, r.EntryKind(kind), data, client_id, seq,
        batch_index, batch_size,
    )  # fmt: skip


def write_state(path: str, hs: r.HardState, snap: r.SnapshotMeta) -> None:
    body: bytes = msgpack.packb([hs.term, hs.vote, encode_snapshot_meta(snap)], use_bin_type=True)
    atomic_write(path, zlib.crc32(body).to_bytes(4, "little") + body)


def read_state(path: str) -> tuple[r.HardState, r.SnapshotMeta]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return r.HardState(), r.SnapshotMeta()
    body = raw[4:]
    if len(raw) < 4 or zlib.crc32(body) != int.from_bytes(raw[:4], "little"):
        # Written atomically (tmp + fsync + rename), so this is real corruption.
        raise RuntimeError(f"{path}: corrupt raft state")
    term, vote, snap = msgpack.unpackb(body, raw=False)
    return r.HardState(term, vote), decode_snapshot_meta(snap)


class ReplicaStorage:
    """One replica's durable state. Only the driver's worker thread touches it after load."""

    def __init__(self, directory: str, fsync: FsyncPolicy, segment_bytes_max: int) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.state_path = os.path.join(directory, STATE_FILE)
        self.hard_state, self.snap = read_state(self.state_path)
        self.segments = SegmentLog(
            os.path.join(directory, RAFT_DIR),
            fsync=fsync,
            segment_bytes_max=segment_bytes_max,
            first_position=self.snap.index + 1,
        )
        self.fsync_count_state = 0

    def load(self) -> r.RestoredState:
        """Read the log back, dropping what does not chain onto the snapshot."""
        seg = self.segments
        snap = self.snap
        if seg.first_position > snap.index + 1 or seg.last_position < snap.index:
            # The log does not reach the snapshot (a crash during a snapshot
            # install, or entries never written here): start after it.
            log.warning("%s: log [%d, %d] does not reach snapshot %d; resetting",
                        self.directory, seg.first_position, seg.last_position, snap.index)  # fmt: skip
            seg.reset(snap.index + 1)
        elif snap.index >= seg.first_position and seg.read(snap.index, snap.index)[0].epoch != snap.term:
            # What follows the snapshot here is from another history (a crash
            # between writing an installed snapshot and resetting the log).
            log.warning("%s: entry %d disagrees with the snapshot; resetting", self.directory, snap.index)
            seg.reset(snap.index + 1)
        entries: list[r.LogEntry] = []
        prev_index, prev_term, prev_pos, prev_ts = snap.index, snap.term, snap.position, snap.timestamp_ms
        position = snap.index + 1
        bad_at: int | None = None
        while position <= seg.last_position and bad_at is None:
            for rec in seg.read(position, seg.last_position):
                e = decode_record(rec)
                step = 1 if e.kind is r.EntryKind.DATA else 0
                if (
                    e.index != prev_index + 1
                    or e.term < prev_term
                    or e.position != prev_pos + step
                    or (e.timestamp_ms < prev_ts)
                ):
                    bad_at = e.index
                    break
                entries.append(e)
                prev_index, prev_term, prev_pos, prev_ts = e.index, e.term, e.position, e.timestamp_ms
                position = e.index + 1
        if bad_at is not None:
            log.warning("%s: entries from index %d do not chain onto the log; dropping them", self.directory, bad_at)
            seg.truncate_suffix(bad_at)
        return r.RestoredState(self.hard_state, snap, tuple(entries))

    def persist(self, rd: r.Ready) -> None:
        seg = self.segments
        if rd.snapshot is not None:
            snap = rd.snapshot
            hs = rd.hard_state or self.hard_state
            write_state(self.state_path, hs, snap)  # first: the trimmed prefix is described before it goes
            self.hard_state, self.snap = hs, snap
            self.fsync_count_state += 1
            keeps_prefix = seg.first_position <= snap.index <= seg.last_position and (
                seg.read(snap.index, snap.index)[0].epoch == snap.term
            )
            if keeps_prefix or (seg.last_position == snap.index and seg.first_position == snap.index + 1):
                seg.trim(snap.index + 1)
            else:
                seg.reset(snap.index + 1)
        if rd.entries:
            first = rd.entries[0].index
            if first <= seg.last_position:
                seg.truncate_suffix(first)
            assert seg.last_position == first - 1, (seg.last_position, first)
            seg.append([Record(e.index, e.term, e.timestamp_ms, encode_entry_payload(e)) for e in rd.entries])
            seg.sync()
        if rd.hard_state is not None and rd.snapshot is None:
            write_state(self.state_path, rd.hard_state, self.snap)
            self.hard_state = rd.hard_state
            self.fsync_count_state += 1

    def close(self) -> None:
        self.segments.close()
