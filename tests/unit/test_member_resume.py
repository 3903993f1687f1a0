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
