"""The journal's wire protocol, for clients and peers alike.

A connection carries frames in both directions::

    u32 body_length (big endian) | body: msgpack [version, kind, payload]

``version`` is PROTOCOL_VERSION; a frame with another version is a protocol
error and the connection is closed (so a mixed-version cluster fails loudly,
not subtly). ``kind`` is a short string, ``payload`` a msgpack map. Frames are
limited to ``frame_bytes_max`` in both directions.

Client requests carry an ``id`` chosen by the client; every response (and
every batch of a read stream) echoes it. Kinds:

========================  ====================================================
request (client -> node)  payload
========================  ====================================================
``append``                id, log, client, seq, entries: [bytes], expected: int|None
``read``                  id, log, from: int, leader_only: bool (a stream of ``entries``)
``cancel``                id (stop a read stream)
``barrier``               id, log
``status``                id, log
``trim``                  id, log, below
``snap_begin``            id, log, position, size, crc32, store_only
``snap_chunk``            id, log, upload, offset, data
``snap_commit``           id, log, upload
``snap_open``             id, log
``snap_read``             id, log, position, offset, length, here
``snap_info``             id, log
========================  ====================================================

Answers: ``ok`` {id, ...result fields} or ``error`` {id, code, message,
leader, tail}. ``leader`` is the client address of the node believed to
lead (empty if unknown) so that clients can follow redirects; ``tail`` is
set for ``position_mismatch``. A read stream sends ``entries`` {id,
entries: [[position, timestamp_ms, data], ...]} frames until cancelled or
the connection closes; flow control is TCP's (the node awaits drain).

Peers use the same connection format with kinds ``hello`` {node} (first
frame of a peer connection), ``raft`` {log, m} (a replication-core message,
encoded by encode_message), ``trim_local``, and the snapshot requests above
(member snapshot replication, in chunks: journal/snapshot_node.py).

FrameDecoder is a pure object in the h11 style: bytes in, frames out, no
socket in sight; the asyncio code around it only moves bytes.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from typing import Any

import msgpack

from journal import replication as r

PROTOCOL_VERSION = 1
FRAME_BYTES_MAX_DEFAULT = 64 * 1024 * 1024
LENGTH = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer broke the protocol; the connection must be closed."""


def encode_frame(kind: str, payload: dict[str, Any], frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT) -> bytes:
    body: bytes = msgpack.packb([PROTOCOL_VERSION, kind, payload], use_bin_type=True)
    if len(body) > frame_bytes_max:
        raise ProtocolError(f"frame of {len(body)} bytes is over the limit of {frame_bytes_max}")
    return LENGTH.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder: feed() bytes, then iterate frames() for (kind, payload)."""

    def __init__(self, frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT) -> None:
        assert frame_bytes_max > 0
        self.frame_bytes_max = frame_bytes_max
        self._buf = bytearray()
        self._start = 0  # parsed prefix of _buf, compacted lazily

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf) - self._start

    def feed(self, data: bytes) -> None:
        if self._start and self._start * 2 >= len(self._buf):
            del self._buf[: self._start]
            self._start = 0
        self._buf += data

    def next_frame(self) -> tuple[str, dict[str, Any]] | None:
        """The next complete frame, or None if more bytes are needed."""
        if len(self._buf) - self._start < LENGTH.size:
            return None
        (length,) = LENGTH.unpack_from(self._buf, self._start)
        if length > self.frame_bytes_max:
            raise ProtocolError(f"frame of {length} bytes is over the limit of {self.frame_bytes_max}")
        end = self._start + LENGTH.size + length
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[self._start + LENGTH.size : end])
        self._start = end
        try:
            obj = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as e:
            raise ProtocolError(f"undecodable frame: {e}") from None
        if not isinstance(obj, list) or len(obj) != 3:
            raise ProtocolError("a frame must be [version, kind, payload]")
        version, kind, payload = obj
        if version != PROTOCOL_VERSION:
            raise ProtocolError(f"protocol version {version!r}, this node speaks {PROTOCOL_VERSION}")
        if not isinstance(kind, str) or not isinstance(payload, dict):
            raise ProtocolError("bad frame kind or payload")
        return kind, payload

    def frames(self) -> Iterator[tuple[str, dict[str, Any]]]:
        while (frame := self.next_frame()) is not None:
            yield frame


# ----------------------------------------------------- replication messages
#
# Messages of journal.replication are frozen dataclasses of scalars, except
# Append.entries (LogEntry tuples) and InstallSnapshot.snapshot
# (SnapshotMeta). They are encoded positionally as [tag, field, ...]; the
# field lists come from the dataclasses themselves, and test_wire round-trips
# every type so that a change in the core cannot silently break the wire.

_MESSAGE_TYPES: tuple[type[Any], ...] = (
    r.RequestVote,
    r.VoteResponse,
    r.Append,
    r.AppendResponse,
    r.Heartbeat,
    r.HeartbeatResponse,
    r.InstallSnapshot,
)
_TAG_OF = {cls: i for i, cls in enumerate(_MESSAGE_TYPES)}
_FIELDS = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in _MESSAGE_TYPES}


def encode_entry(e: r.LogEntry) -> list[Any]:
    return [
        e.index, e.term, e.position, e.timestamp_ms, int(e.kind), e.data,
        e.client_id, e.request_seq, e.batch_index, e.batch_size,
    ]  # fmt: skip


def decode_entry(v: list[Any]) -> r.LogEntry:
    index, term, position, ts, kind, data, client_id, seq, batch_index, batch_size = v
    return r.LogEntry(index, term, position, ts, r.EntryKind(kind), data, client_id, seq, batch_index, batch_size)


def encode_snapshot_meta(s: r.SnapshotMeta) -> list[Any]:
    dedup = [[cid, [[d.request_seq, d.first_position, d.count, d.timestamp_ms] for d in recs]] for cid, recs in s.dedup]
    return [s.index, s.term, s.position, s.timestamp_ms, dedup]


def decode_snapshot_meta(v: list[Any]) -> r.SnapshotMeta:
    index, term, position, ts, dedup = v
    return r.SnapshotMeta(
        index, term, position, ts, tuple((cid, tuple(r.DedupRecord(*d) for d in recs)) for cid, recs in dedup)
    )


def encode_message(m: r.Message) -> list[Any]:
    cls = type(m)
    out: list[Any] = [_TAG_OF[cls]]
    for name in _FIELDS[cls]:
        value = getattr(m, name)
        if name == "entries":
            value = [encode_entry(e) for e in value]
        elif name == "snapshot":
            value = encode_snapshot_meta(value)
        out.append(value)
    return out


def decode_message(v: Any) -> r.Message:
    if not isinstance(v, list) or not v or not isinstance(v[0], int) or not 0 <= v[0] < len(_MESSAGE_TYPES):
        raise ProtocolError("bad replication message")
    cls = _MESSAGE_TYPES[v[0]]
    names = _FIELDS[cls]
    if len(v) != len(names) + 1:
        raise ProtocolError(f"{cls.__name__}: {len(v) - 1} fields, expected {len(names)}")
    kwargs: dict[str, Any] = {}
    try:
        for name, value in zip(names, v[1:], strict=True):
            if name == "entries":
                value = tuple(decode_entry(e) for e in value)
            elif name == "snapshot":
                value = decode_snapshot_meta(value)
            kwargs[name] = value
        msg: r.Message = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"{cls.__name__}: {e}") from None
    return msg
