"""The wire protocol: framing, limits, versions, and every replication message round trip."""

from __future__ import annotations

import pytest

from journal import replication as r
from journal.wire import (
    PROTOCOL_VERSION,
    FrameDecoder,
    ProtocolError,
    decode_message,
    encode_frame,
    encode_message,
)


def test_frames_split_anywhere() -> None:
    frames = [encode_frame("append", {"id": i, "entries": [b"x" * i]}) for i in range(50)]
    stream = b"".join(frames)
    for step in (1, 3, 7, 64, len(stream)):
        d = FrameDecoder()
        got = []
        for at in range(0, len(stream), step):
            d.feed(stream[at : at + step])
            got.extend(d.frames())
        assert [p["id"] for _, p in got] == list(range(50))
        assert got[7] == ("append", {"id": 7, "entries": [b"x" * 7]})
        assert d.buffered_bytes == 0


def test_frame_limit_both_ways() -> None:
    with pytest.raises(ProtocolError):
        encode_frame("append", {"entries": [b"x" * 2000]}, frame_bytes_max=1000)
    d = FrameDecoder(frame_bytes_max=1000)
    d.feed(encode_frame("append", {"entries": [b"x" * 2000]}))
    with pytest.raises(ProtocolError):
        d.next_frame()


def test_version_and_shape_checked() -> None:
    import msgpack

    body = msgpack.packb([PROTOCOL_VERSION + 1, "append", {}])
    d = FrameDecoder()
    d.feed(len(body).to_bytes(4, "big") + body)
    with pytest.raises(ProtocolError, match="version"):
        d.next_frame()
    body = msgpack.packb({"not": "a list"})
    d = FrameDecoder()
    d.feed(len(body).to_bytes(4, "big") + body)
    with pytest.raises(ProtocolError):
        d.next_frame()
    d = FrameDecoder()
    d.feed(b"\x00\x00\x00\x02\xc1\xc1")  # 0xc1 is never valid msgpack
    with pytest.raises(ProtocolError):
        d.next_frame()


def test_every_replication_message_round_trips() -> None:
    e1 = r.LogEntry(5, 2, 4, 1000, r.EntryKind.DATA, b"data", "client", 9, 0, 2)
    e2 = r.LogEntry(6, 2, 4, 1000, r.EntryKind.NOOP)
    snap = r.SnapshotMeta(10, 3, 8, 1234, (("c1", (r.DedupRecord(4, 7, 2, 1200),)),))
    messages: list[r.Message] = [
        r.RequestVote(3, "a", "b", 10, 2, True),
        r.VoteResponse(3, "b", "a", False, True),
        r.Append(3, "a", "b", 4, 2, (e1, e2), 5),
        r.Append(3, "a", "c", 0, 0, (), 0),
        r.AppendResponse(3, "b", "a", True, 6, 6),
        r.Heartbeat(3, "a", "b", 6, 17),
        r.HeartbeatResponse(3, "b", "a", 17, 6),
        r.InstallSnapshot(3, "a", "b", snap),
    ]
    import typing

    assert {type(m) for m in messages} == set(typing.get_args(r.Message))
    for m in messages:
        frame = encode_frame("raft", {"log": "pods", "m": encode_message(m)})
        d = FrameDecoder()
        d.feed(frame)
        got = d.next_frame()
        assert got is not None
        assert decode_message(got[1]["m"]) == m


def test_bad_replication_message() -> None:
    with pytest.raises(ProtocolError):
        decode_message([99, 1, 2])
    with pytest.raises(ProtocolError):
        decode_message([0, 1])
