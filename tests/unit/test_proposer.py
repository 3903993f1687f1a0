"""The proposer (kvstore/member/proposer.py) on the local journal: one append in flight, what
arrives meanwhile goes out together as the next append, and every proposal is answered."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from journal.local import LocalJournal
from kvstore.errors import EtcdError
from kvstore.member.config import PENDING_PROPOSALS_MAX, PROPOSAL_APPENDS_INFLIGHT_MAX
from kvstore.member.proposer import Proposer
from kvstore.server import build_parser, member_config
from kvstore.statemachine import Kind, decode_entry

PROPOSALS = 40


class _CountedJournal:
    """A LocalJournal whose appends are counted, with the most that were in flight at once."""

    def __init__(self, journal: LocalJournal) -> None:
        self.journal = journal
        self.appends_in_flight_useful = journal.appends_in_flight_useful
        self.appends = 0
        self.in_flight = 0
        self.in_flight_max = 0

    async def append(self, log: str, entries: Sequence[bytes]) -> Any:
        self.appends += 1
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        try:
            return await self.journal.append(log, entries)
        finally:
            self.in_flight -= 1


async def test_local_journal_one_append_in_flight_the_rest_grouped(tmp_path: Path) -> None:
    journal = LocalJournal(str(tmp_path), "always")
    counted = _CountedJournal(journal)
    counters = {"proposals_committed": 0, "proposals_failed": 0}
    proposer = Proposer(counted, "kv", timer=contextlib.nullcontext, on_contact=lambda: None, counters=counters,
                        log_fields=dict)  # fmt: skip

    async def applier() -> None:  # answers each entry as the member's applier does: with its result
        async for batch in journal.read("kv", 1):
            for entry in batch:
                _, _, seq, payload, _ = decode_entry(entry.data)
                proposer.resolve(seq, payload)

    applying = asyncio.get_running_loop().create_task(applier())
    try:
        proposals = []
        for i in range(PROPOSALS):  # one per loop turn, as gRPC hands requests over
            proposals.append(asyncio.ensure_future(proposer.propose_payload(Kind.PUT, b"%d" % i)))
            await asyncio.sleep(0)
        results = await asyncio.wait_for(asyncio.gather(*proposals), 10)
    finally:
        applying.cancel()
        await journal.close()
    assert results == [b"%d" % i for i in range(PROPOSALS)]
    assert counters["proposals_committed"] == PROPOSALS
    assert PROPOSAL_APPENDS_INFLIGHT_MAX > 1  # the journal's own limit is what holds it to one
    assert counted.in_flight_max == 1
    # The fsync of the first append outlasts many loop turns: the proposals of those turns share appends.
    assert counted.appends < PROPOSALS / 2


async def test_beyond_its_share_of_pending_proposals_it_answers_too_many_requests(tmp_path: Path) -> None:
    """etcd's "too many requests" once the pending proposals reach this process's share."""
    journal = LocalJournal(str(tmp_path), "always")
    counters = {"proposals_committed": 0, "proposals_failed": 0}
    proposer = Proposer(journal, "kv", timer=contextlib.nullcontext, on_contact=lambda: None, counters=counters,
                        log_fields=dict, pending_max=3)  # fmt: skip
    try:
        waiting = [asyncio.ensure_future(proposer.propose_payload(Kind.PUT, b"%d" % i)) for i in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(EtcdError) as refused:
            await proposer.propose_payload(Kind.PUT, b"one too many")
        assert refused.value.message == "etcdserver: too many requests"
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        for seq in (1, 2, 3):  # answered: room again
            proposer.resolve(seq, b"ok")
        assert await asyncio.gather(*waiting) == [b"ok"] * 3
        fits = asyncio.ensure_future(proposer.propose_payload(Kind.PUT, b"fits"))
        await asyncio.sleep(0)
        proposer.resolve(4, b"ok")
        assert await asyncio.wait_for(fits, 1) == b"ok"
    finally:
        await journal.close()


def test_a_member_of_n_processes_admits_its_limit_in_all() -> None:
    args = build_parser().parse_args(["--workers", "4"])
    assert member_config(args).pending_proposals_max == PENDING_PROPOSALS_MAX // 4
    assert member_config(build_parser().parse_args(["--workers", "1"])).pending_proposals_max == PENDING_PROPOSALS_MAX
