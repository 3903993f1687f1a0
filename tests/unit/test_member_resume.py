"""The member's record of a read stream that comes back (what a heal is read against)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from journal.api import Entry, Unavailable
from journal.local import LocalJournal
from kvstore.statemachine import Kind
from proto.etcdserverpb import rpc_pb2 as pb


class _LosesFirstRead(LocalJournal):
    """The first read stream gives up as an unreachable journal's does; later ones work."""

    lost = False

    async def read(self, log: str, from_position: int) -> AsyncIterator[list[Entry]]:
        if not self.lost:
            self.lost = True
            raise Unavailable("read: no node reachable (test)")
        async for batch in super().read(log, from_position):
            yield batch


async def test_a_returning_read_stream_logs_how_long_it_was_gone_and_the_catch_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from kvstore.member import Member, MemberConfig

    config = MemberConfig(name="a", data_dir=str(tmp_path / "a"), state_dir=str(tmp_path / "a-state"))
    journal = _LosesFirstRead(str(tmp_path / "a" / "journal"))
    m = Member(config, journal)
    with caplog.at_level(logging.INFO, logger="kvstore.member"):
        await m.start()  # its heartbeat is applied only through the second stream
        # Applied once the backlog's end is known (a barrier beside the applier): the catch-up record.
        for _ in range(5):
            await m.propose(Kind.PUT, pb.PutRequest(key=b"k", value=b"v"))
            if any(r.getMessage().startswith("caught up: ") for r in caplog.records):
                break
        await m.stop()
    await journal.close()
    messages = [r.getMessage() for r in caplog.records]
    back = [s for s in messages if s.startswith("journal read stream back at position 1 after ")]
    assert back, messages
    assert any(s.startswith("caught up: ") for s in messages), messages


class _LosesTwoReadsAndBarriers(LocalJournal):
    """The read stream gives up, comes back for one batch, gives up again, then stays; every
    barrier fails (the leader unreachable)."""

    reads = 0

    async def read(self, log: str, from_position: int) -> AsyncIterator[list[Entry]]:
        self.reads += 1
        if self.reads == 1:
            raise Unavailable("read: no node reachable (test)")
        async for batch in super().read(log, from_position):
            yield batch
            if self.reads == 2:
                raise Unavailable("read: no node reachable again (test)")

    async def barrier(self, log: str) -> int:
        raise Unavailable("barrier: no leader reachable (test)")


async def test_a_failed_backlog_barrier_replaced_by_the_next_heal_leaves_nothing_unretrieved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    import gc

    from kvstore.member import Member, MemberConfig

    reports: list[str] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reports.append(context["message"]))
    config = MemberConfig(name="a", data_dir=str(tmp_path / "a"), state_dir=str(tmp_path / "a-state"))
    journal = _LosesTwoReadsAndBarriers(str(tmp_path / "a" / "journal"))
    m = Member(config, journal)
    with caplog.at_level(logging.INFO, logger="kvstore.member"):
        await m.start()
        # Applied through the third stream: the second heal's barrier task replaces the first's.
        await m.propose(Kind.PUT, pb.PutRequest(key=b"k", value=b"v"))
        await m.stop()
    await journal.close()
    gc.collect()
    await asyncio.sleep(0)
    backs = [r for r in caplog.records if r.getMessage().startswith("journal read stream back")]
    assert journal.reads >= 3 and len(backs) >= 2, [r.getMessage() for r in caplog.records]
    assert reports == []
