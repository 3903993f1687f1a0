"""The journal's codecs (frames, replication messages, segment records) and its replication core."""

from __future__ import annotations

import random
from typing import Any

import pytest

from journal import replication as r
from journal import segments, wire

PAYLOAD = b"p" * 256


def log_entries(n: int) -> tuple[r.LogEntry, ...]:
    return tuple(
        r.LogEntry(i, 3, i, 1_700_000_000_000, r.EntryKind.DATA, PAYLOAD, "member-1", i, 0, 1) for i in range(1, n + 1)
    )


@pytest.mark.parametrize("entries", [1, 64])
def test_wire_append_encode(benchmark: Any, entries: int) -> None:
    m = r.Append(3, "n0", "n1", 10, 3, log_entries(entries), 9)
    benchmark(lambda: wire.encode_frame("raft", {"log": "pods", "m": wire.encode_message(m)}))


@pytest.mark.parametrize("entries", [1, 64])
def test_wire_append_decode(benchmark: Any, entries: int) -> None:
    m = r.Append(3, "n0", "n1", 10, 3, log_entries(entries), 9)
    frame = wire.encode_frame("raft", {"log": "pods", "m": wire.encode_message(m)})
    dec = wire.FrameDecoder()

    def step() -> None:
        dec.feed(frame)
        got = dec.next_frame()
        assert got is not None
        assert wire.decode_message(got[1]["m"]) == m

    benchmark(step)


def test_wire_client_append_roundtrip_64(benchmark: Any) -> None:
    """A member's append request of 64 entries: encode, then decode on the node."""
    payload = {"id": 1, "log": "pods", "client": "member-1", "seq": 1, "entries": [PAYLOAD] * 64, "expected": None}
    dec = wire.FrameDecoder()

    def step() -> None:
        dec.feed(wire.encode_frame("append", payload))
        assert dec.next_frame() is not None

    benchmark(step)


def test_segment_record_encode_64(benchmark: Any) -> None:
    records = [segments.Record(i, 3, 1_700_000_000_000, PAYLOAD) for i in range(1, 65)]
    benchmark(lambda: b"".join(segments.encode_record(rec) for rec in records))


def test_segment_record_parse_64(benchmark: Any) -> None:
    """Checksum-verified parse of 64 records (recovery and reads do this)."""
    data = b"".join(segments.encode_record(segments.Record(i, 3, 1_700_000_000_000, PAYLOAD)) for i in range(1, 65))

    def step() -> None:
        out, used, reason = segments._parse_records(data, 0, 1)
        assert len(out) == 64 and used == len(data) and reason is None

    benchmark(step)


class Cluster:
    """Three replication cores wired in memory: messages delivered at once, fsync instant."""

    STEPS_MAX = 10_000

    def __init__(self) -> None:
        peers = tuple(r.Peer(f"n{i}", f"az{i}") for i in range(3))
        self.cores = {
            p.node_id: r.ReplicationCore(r.Config(p.node_id, peers), random.Random(i)) for i, p in enumerate(peers)
        }
        self.results: list[r.AppendResult] = []
        self.barriers: list[r.BarrierResult] = []

    def pump(self) -> None:
        for _ in range(self.STEPS_MAX):
            busy = False
            for core in self.cores.values():
                if not core.has_ready():
                    continue
                busy = True
                rd = core.ready()
                msgs = list(rd.messages)
                core.advance(rd)
                msgs.extend(rd.messages_after_persist)
                self.results.extend(rd.append_results)
                self.barriers.extend(rd.barrier_results)
                for m in msgs:
                    self.cores[m.dst].step(m)
            if not busy:
                return
        raise AssertionError("cluster did not quiesce")

    def elect(self) -> r.ReplicationCore:
        for _ in range(1000):
            for core in self.cores.values():
                core.tick()
            self.pump()
            leaders = [c for c in self.cores.values() if c.status().role is r.Role.LEADER]
            if leaders:
                return leaders[0]
        raise AssertionError("no leader elected")


@pytest.mark.parametrize("batch", [1, 64])
def test_replication_commit_round_trip(benchmark: Any, batch: int) -> None:
    """propose -> leader append -> followers append and ack -> commit -> result, through the cores only."""
    cluster = Cluster()
    leader = cluster.elect()
    datas = [PAYLOAD] * batch
    seq = iter(range(1, 10**9))
    trim_every = 4096

    def step() -> None:
        s = next(seq)
        leader.propose("bench", s, datas, 1_700_000_000_000 + s)
        cluster.pump()
        res = cluster.results.pop()
        assert res.error is None and len(res.appended) == batch, res
        if s % trim_every == 0:  # keep the in-memory log bounded over long runs
            for core in cluster.cores.values():
                core.trim(core.status().commit_position)
            cluster.pump()

    benchmark(step)


def test_replication_barrier_round_trip(benchmark: Any) -> None:
    """A read barrier (read index): leader heartbeat round to a majority, answered without a tick."""
    cluster = Cluster()
    leader = cluster.elect()
    leader.propose("bench", 1, [PAYLOAD], 1_700_000_000_000)
    cluster.pump()
    rid = iter(range(1, 10**9))

    def step() -> None:
        i = next(rid)
        leader.barrier(i)
        cluster.pump()
        got = cluster.barriers.pop()
        assert got.request_id == i and got.error is None and not cluster.barriers, got

    benchmark(step)
