"""LocalJournal: the single-node journal behind journal.api.Journal."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from journal.api import Entry, Journal, PositionMismatch, PositionTrimmed, Snapshot, Unavailable
from journal.local import LocalJournal


async def collect(j: LocalJournal, log: str, first: int, last: int, timeout_s: float = 5.0) -> list[Entry]:
    out: list[Entry] = []

    async def run() -> None:
        async for batch in j.read(log, first):
            out.extend(batch)
            if out[-1].position >= last:
                return

    await asyncio.wait_for(run(), timeout_s)
    return out


def seg_files(tmp: Path, log: str) -> list[Path]:
    return sorted((tmp / "logs" / log).glob("*.seg"))


async def test_implements_protocol(tmp_path: Path) -> None:
    j: Journal = LocalJournal(str(tmp_path))
    await j.close()


async def test_round_trip(tmp_path: Path) -> None:
    j = LocalJournal(str(tmp_path))
    a = await j.append("pods", [b"one", b"two"])
    assert [x.position for x in a] == [1, 2]
    assert a[0].timestamp_ms == a[1].timestamp_ms > 0
    b = await j.append("pods", [b"three"])
    assert b[0].position == 3
    assert await j.barrier("pods") == 3
    entries = await collect(j, "pods", 1, 3)
    assert [(e.position, e.data) for e in entries] == [(1, b"one"), (2, b"two"), (3, b"three")]
    # Logs are independent.
    assert (await j.append("leases", [b"x"]))[0].position == 1
    st = await j.status("pods")
    assert (st.committed, st.leader) == (3, "local")
    await j.close()
    j2 = LocalJournal(str(tmp_path))
    assert await j2.barrier("pods") == 3
    assert [e.data for e in await collect(j2, "pods", 2, 3)] == [b"two", b"three"]
    assert (await j2.status("pods")).epoch > st.epoch
    await j2.close()


async def test_group_commit_uses_far_fewer_fsyncs(tmp_path: Path) -> None:
    j = LocalJournal(str(tmp_path))
    await j.append("g", [b"warm"])
    before = j.fsync_count
    n = 400
    results = await asyncio.gather(*(j.append("g", [f"e{i}".encode()]) for i in range(n)))
    fsyncs = j.fsync_count - before
    assert 1 <= fsyncs <= n // 4, fsyncs
    positions = sorted(r[0].position for r in results)
    assert positions == list(range(2, n + 2))
    # Every acknowledged entry is where its ack says, with its data.
    entries = await collect(j, "g", 2, n + 1)
    by_pos = {e.position: e.data for e in entries}
    for i, r in enumerate(results):
        assert by_pos[r[0].position] == f"e{i}".encode()
    await j.close()


async def test_batch_policy_groups_and_never_does_not_fsync(tmp_path: Path) -> None:
    jb = LocalJournal(str(tmp_path / "b"), fsync="batch", fsync_interval_ms=20)
    await asyncio.gather(*(jb.append("l", [b"x"]) for _ in range(200)))
    assert jb.fsync_count <= 20
    assert await jb.barrier("l") == 200
    await jb.close()
    jn = LocalJournal(str(tmp_path / "n"), fsync="never")
    await asyncio.gather(*(jn.append("l", [b"x"]) for _ in range(50)))
    assert jn.fsync_count == 0
    await jn.close()
    with pytest.raises(ValueError):
        LocalJournal(str(tmp_path / "x"), fsync="maybe")  # type: ignore[arg-type]


async def test_torn_tail_after_crash(tmp_path: Path) -> None:
    j = LocalJournal(str(tmp_path))
    for i in range(10):
        await j.append("t", [f"v{i}".encode()])
    await j.close()
    seg = seg_files(tmp_path, "t")[-1]
    with open(seg, "ab") as f:
        f.write(b"\x30\x00\x00\x00garbage-half-record")
    j2 = LocalJournal(str(tmp_path))
    assert await j2.barrier("t") == 10
    a = await j2.append("t", [b"after"])
    assert a[0].position == 11
    got = await collect(j2, "t", 1, 11)
    assert [e.data for e in got] == [f"v{i}".encode() for i in range(10)] + [b"after"]
    await j2.close()


async def test_crc_corruption_in_tail_is_cut(tmp_path: Path) -> None:
    j = LocalJournal(str(tmp_path))
    await j.append("c", [b"a" * 100, b"b" * 100, b"c" * 100])
    await j.close()
    seg = seg_files(tmp_path, "c")[-1]
    data = bytearray(seg.read_bytes())
    data[-5] ^= 0xFF  # inside the payload of position 3
    seg.write_bytes(bytes(data))
    j2 = LocalJournal(str(tmp_path))
    assert await j2.barrier("c") == 2
    await j2.close()


async def test_conditional_append(tmp_path: Path) -> None:
    j = LocalJournal(str(tmp_path))
    assert (await j.append("c", [b"a"], expected_position=0))[0].position == 1
    assert (await j.append("c", [b"b", b"c"], expected_position=1))[-1].position == 3
    with pytest.raises(PositionMismatch) as e:
        await j.append("c", [b"x"], expected_position=1)
    assert e.value.tail == 3
    # Within one group, the second of two conditional appends at the same tail fails.
    r = await asyncio.gather(
        j.append("c", [b"p"], expected_position=3), j.append("c", [b"q"], expected_position=3), return_exceptions=True
    )
    assert sum(isinstance(x, PositionMismatch) for x in r) == 1
    assert await j.barrier("c") == 4
    await j.close()


async def test_read_follows_the_tail(tmp_path: Path) -> None:
    j = LocalJournal(str(tmp_path), tail_cache_entries_max=16)
    seen: list[Entry] = []
    done = asyncio.Event()

    async def reader() -> None:
        async for batch in j.read("f", 1):
            seen.extend(batch)
            if seen[-1].position >= 100:
                done.set()
                return

    task = asyncio.create_task(reader())
    assert j.disk_reads == 0
    for i in range(100):
        await j.append("f", [str(i).encode()])
        if i % 10 == 0:
            await asyncio.sleep(0)
    await asyncio.wait_for(done.wait(), 5)
    await task
    assert [e.position for e in seen] == list(range(1, 101))
    assert [e.data for e in seen] == [str(i).encode() for i in range(100)]
    assert j.disk_reads == 0, "a reader at the tail must be served from the cache"
    # Older entries (out of the 16-entry cache) come from disk.
    assert [e.data for e in await collect(j, "f", 5, 7)][:3] == [b"4", b"5", b"6"]
    assert j.disk_reads >= 1
    await j.close()


async def test_timestamps_monotonic_across_restart_with_clock_going_back(tmp_path: Path) -> None:
    clock = [1_000_000]
    j = LocalJournal(str(tmp_path), clock_ms=lambda: clock[0])
    a = await j.append("m", [b"1"])
    assert a[0].timestamp_ms == 1_000_000
    clock[0] = 5_000  # the wall clock jumps back
    b = await j.append("m", [b"2"])
    assert b[0].timestamp_ms == 1_000_000
    await j.close()
    j2 = LocalJournal(str(tmp_path), clock_ms=lambda: clock[0])
    c = await j2.append("m", [b"3"])
    assert c[0].timestamp_ms == 1_000_000
    clock[0] = 2_000_000
    d = await j2.append("m", [b"4"])
    assert d[0].timestamp_ms == 2_000_000
    ts = [e.timestamp_ms for e in await collect(j2, "m", 1, 4)]
    assert ts == sorted(ts)
    await j2.close()


async def test_trim(tmp_path: Path) -> None:
    j = LocalJournal(str(tmp_path), segment_bytes_max=2000, tail_cache_entries_max=4)
    for i in range(50):
        await j.append("tr", [bytes(100) + str(i).encode()])
    n = len(seg_files(tmp_path, "tr"))
    await j.trim("tr", 30)
    assert len(seg_files(tmp_path, "tr")) < n
    with pytest.raises(PositionTrimmed):
        await collect(j, "tr", 1, 2)
    got = await collect(j, "tr", 30, 50)
    assert [e.position for e in got] == list(range(30, 51))
    await j.close()
    j2 = LocalJournal(str(tmp_path), segment_bytes_max=2000)
    assert (await j2.append("tr", [b"z"]))[0].position == 51
    await j2.close()


async def test_snapshots(tmp_path: Path) -> None:
    j = LocalJournal(str(tmp_path))
    assert await j.snapshot_get("s") is None
    await j.append("s", [b"a"] * 10)
    await j.snapshot_put("s", Snapshot(5, b"state@5"))
    await j.snapshot_put("s", Snapshot(3, b"older"))  # ignored: never go back
    assert await j.snapshot_get("s") == Snapshot(5, b"state@5")
    with pytest.raises(ValueError):
        await j.snapshot_put("s", Snapshot(11, b"future"))
    await j.close()
    j2 = LocalJournal(str(tmp_path))
    assert await j2.snapshot_get("s") == Snapshot(5, b"state@5")
    assert not [p for p in os.listdir(tmp_path / "logs" / "s") if p.endswith(".tmp")]
    await j2.close()


async def test_backpressure_bounds_the_queue(tmp_path: Path) -> None:
    j = LocalJournal(str(tmp_path), queue_entries_max=8)
    lg_results = await asyncio.gather(*(j.append("b", [b"x"]) for _ in range(100)))
    assert len({r[0].position for r in lg_results}) == 100
    await j.close()


async def test_close_flushes_and_fails_later_calls(tmp_path: Path) -> None:
    j = LocalJournal(str(tmp_path))
    tasks = [asyncio.create_task(j.append("x", [b"q"])) for _ in range(20)]
    await asyncio.sleep(0)
    await j.close()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    with pytest.raises(Unavailable):
        await j.append("x", [b"late"])
    j2 = LocalJournal(str(tmp_path))
    assert await j2.barrier("x") == len(ok)
    await j2.close()


async def test_log_names_are_escaped(tmp_path: Path) -> None:
    j = LocalJournal(str(tmp_path))
    await j.append("../evil", [b"a"])
    await j.append("a/b", [b"b"])
    assert sorted(os.listdir(tmp_path / "logs")) == ["%2E%2E%2Fevil", "a%2Fb"]
    await j.close()


async def test_failed_fsync_is_fail_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = LocalJournal(str(tmp_path))
    await j.append("e", [b"ok"])
    from journal.segments import SegmentLog

    def broken_sync(self: SegmentLog) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(SegmentLog, "sync", broken_sync)
    with pytest.raises(Unavailable):
        await j.append("e", [b"lost"])
    monkeypatch.undo()
    # Even with the disk "back", the log refuses: after a failed fsync the page cache is not to be trusted.
    with pytest.raises(Unavailable):
        await j.append("e", [b"later"])
    assert await j.barrier("e") == 1
    await j.close()
