"""Linearizable reads on a member's own journal, and the lock that keeps that journal its own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from journal.local import LocalJournal
from kvstore.member import Member, MemberConfig
from kvstore.statemachine import Kind
from proto.etcdserverpb import rpc_pb2 as pb


async def _read_beside_an_unapplied_write(tmp_path: Path, *, exclusive: bool) -> tuple[bool, bool, bool]:
    """(the read barrier passed while a committed write waited for the applier, that read saw the
    write, a read after the write's acknowledgement saw it)."""
    config = MemberConfig(
        name="a", data_dir=str(tmp_path / "a"), state_dir=str(tmp_path / "a-state"), journal_exclusive=exclusive
    )
    journal = LocalJournal(str(tmp_path / "a" / "journal"))
    m = Member(config, journal)
    await m.start()
    try:
        async with m._write_lock:  # the applier waits here: what the journal commits is not applied
            write = asyncio.create_task(m.propose(Kind.PUT, pb.PutRequest(key=b"k", value=b"v")))
            while (await journal.status(config.log_name)).committed <= m.sm.applied_position:
                await asyncio.sleep(0.01)
            assert not write.done()  # committed, not acknowledged
            try:
                await asyncio.wait_for(m.linearizable_barrier(), 0.5)
                passed = True
            except TimeoutError:
                passed = False
            seen_before = bool(m.store.range(pb.RangeRequest(key=b"k")).kvs) if passed else False
        await write  # the applier runs again: acknowledged once applied
        await asyncio.wait_for(m.linearizable_barrier(), 5)
        seen_after = bool(m.store.range(pb.RangeRequest(key=b"k")).kvs)
    finally:
        await m.stop()
        await journal.close()
    return passed, seen_before, seen_after


async def test_on_its_own_journal_a_read_does_not_wait_for_writes_acknowledged_to_nobody(tmp_path: Path) -> None:
    # Acknowledgements follow the member's apply, so what is applied covers every acknowledged write:
    # the read orders itself before the concurrent write and does not wait for the applier.
    assert await _read_beside_an_unapplied_write(tmp_path, exclusive=True) == (True, False, True)


async def test_on_a_shared_journal_a_read_waits_for_everything_committed(tmp_path: Path) -> None:
    # Another member may have acknowledged a committed write: the read waits until it is applied here.
    assert await _read_beside_an_unapplied_write(tmp_path, exclusive=False) == (False, False, True)


def test_a_second_process_on_a_data_dir_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    import os

    from kvstore.server import lock_data_dir

    fd = lock_data_dir(str(tmp_path / "d"))  # another open of the lock file conflicts as a process would
    try:
        with pytest.raises(SystemExit, match=f"is in use by another process \\(pid {os.getpid()} holds "):
            lock_data_dir(str(tmp_path / "d"))
    finally:
        os.close(fd)
    os.close(lock_data_dir(str(tmp_path / "d")))  # free again once the holder is gone
