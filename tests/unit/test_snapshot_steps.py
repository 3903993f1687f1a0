"""A snapshot stream is produced on the member's event loop in short steps: the walk marks its steps
(empty chunks) however much of it is skipped, and the member's stream gives the loop back between
slices, and makes the same state as the whole snapshot."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Generator
from pathlib import Path

from kvstore.member.snapshots import SNAPSHOT_SLICE_S, SNAPSHOT_WAITERS_PAUSE_S, on_loop
from kvstore.mvcc import records, snapshot
from kvstore.statemachine import Kind, StateMachine, encode_entry
from proto.etcdserverpb import rpc_pb2 as pb


def _apply(sm: StateMachine, kind: Kind, req: object) -> None:
    position = sm.applied_position + 1
    sm.apply(position, 1_000 + position, encode_entry(kind, 1, position, req.SerializeToString()))  # type: ignore[attr-defined]


def _fill(sm: StateMachine, txns: int, value_bytes: int = 1000) -> None:
    for i in range(txns):
        _apply(sm, Kind.TXN, pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"k%06d" % (j % 500), value=b"v" * value_bytes))
            for j in range(i * 100, i * 100 + 100)
        ]))  # fmt: skip


def test_steps_are_marked_even_where_everything_is_skipped() -> None:
    """After a logical compaction (records still on file, none of them carried) the walk still
    marks a step every STEP_PAIRS pairs: a caller never goes long without a chance to stop."""
    sm = StateMachine()
    try:
        _fill(sm, 40, value_bytes=10)  # 4,000 puts over 500 keys: 3,500 superseded records
        _apply(sm, Kind.COMPACT, pb.CompactionRequest(revision=sm.store.revision))
        assert sm.store.compaction_pending  # nothing dropped from the file yet
        chunks = list(sm.snapshot_chunks())
        assert b"".join(chunks) == sm.dumps()
        run, longest = 0, 0
        for c in chunks:
            run = 0 if not c else run + 1
            longest = max(longest, run)
        assert longest <= 2  # bytes come out only at the end of an item or a database
        walked = records.count(sm.backend.txn, sm.backend.dbs) + 4_000  # records on file, index entries
        assert chunks.count(b"") >= walked // snapshot.STEP_PAIRS - 2  # skipped pairs count as walked
        assert StateMachine.from_chunks(chunks).store.hash_kv(0) == sm.store.hash_kv(0)
    finally:
        sm.close()


async def test_the_member_stream_gives_the_loop_back_between_slices(tmp_path: Path) -> None:
    """A stream of several MB produced on the loop: a task beside it runs between slices; the loop
    thread's CPU time between two of its turns stays near SNAPSHOT_SLICE_S (CPU time: a loaded
    machine's preemption does not count), and the chunks make the same snapshot."""
    from journal.local import LocalJournal
    from kvstore.member import Member, MemberConfig

    config = MemberConfig(name="a", data_dir=str(tmp_path / "a"), state_dir=str(tmp_path / "a-state"))
    a = Member(config, LocalJournal(str(tmp_path / "a" / "journal")))
    try:
        _fill(a.sm, 200)  # about 20 MB of records: tens of slices even on a fast core
        _apply(a.sm, Kind.COMPACT, pb.CompactionRequest(revision=a.sm.store.revision // 2))
        original = a.sm.dumps()
        turns: list[float] = []
        done = asyncio.Event()

        async def beside() -> None:
            while not done.is_set():
                turns.append(time.thread_time())
                await asyncio.sleep(0)

        task = asyncio.get_running_loop().create_task(beside())
        chunks = [c async for c in a.snapshot_stream()]
        done.set()
        await task
        assert all(chunks)  # the walk's empty steps stay inside
        restored = StateMachine.from_chunks(chunks)
        assert restored.dumps() == original  # (the stream's items are smaller than dumps()'s)
        restored.close()
        held = max(b - t for t, b in itertools.pairwise(turns))
        assert len(turns) > 10 and held < 20 * SNAPSHOT_SLICE_S, (len(turns), held)
        assert not a._snapshot_readers  # the read transaction is done with
    finally:
        await a.journal.close()
        a.sm.close()


async def test_slices_wait_for_the_applier_while_requests_wait_for_it() -> None:
    """While waiters() says requests wait for the applier, each slice is followed by a pause of
    SNAPSHOT_WAITERS_PAUSE_S (the applier runs meanwhile)."""

    def slow_chunks() -> Generator[bytes, None, None]:
        for _ in range(10):
            end = time.perf_counter() + SNAPSHOT_SLICE_S * 1.5  # each chunk is a slice of its own
            while time.perf_counter() < end:
                pass
            yield b"x"

    closed: list[bool] = []
    started = time.perf_counter()
    got = [c async for c in on_loop(slow_chunks(), lambda: closed.append(True), lambda: True)]
    waited_s = time.perf_counter() - started
    assert got == [b"x"] * 10 and closed == [True]
    assert waited_s >= 10 * SNAPSHOT_WAITERS_PAUSE_S
    got = [c async for c in on_loop(slow_chunks(), lambda: None)]
    assert got == [b"x"] * 10
