"""The journal client's leader calls against fake nodes: a not_leader redirect to a leader the
client holds suspect (journal/client.py, ELECTION_TIMEOUT_MS_MAX)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from journal.api import Unavailable
from journal.client import JournalClient
from journal.connection import RemoteError

LEADER, FOLLOWER, OTHER_FOLLOWER = "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"


class _FakeNode:
    def __init__(self, addr: str, answer: dict[str, Any] | None) -> None:
        self.addr = addr
        self.answer = answer  # None: a follower naming LEADER
        self.calls: list[str] = []

    async def call(self, kind: str, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        self.calls.append(kind)
        await asyncio.sleep(0)
        if self.answer is None:
            raise RemoteError("not_leader", f"{self.addr} does not lead", leader=LEADER)
        return self.answer


def _client(election_timeout_ms: int) -> tuple[JournalClient, _FakeNode, list[_FakeNode]]:
    client = JournalClient(
        [LEADER, FOLLOWER, OTHER_FOLLOWER], request_timeout_ms=300, election_timeout_ms=election_timeout_ms
    )
    leader = _FakeNode(LEADER, {"position": 5})
    followers = [_FakeNode(FOLLOWER, None), _FakeNode(OTHER_FOLLOWER, None)]
    client._conns.update({n.addr: n for n in [leader, *followers]})  # type: ignore[misc]
    # The leader went silent once (a cut, healed since): tried last until a ping answers,
    # which in this test never comes (no probe runs).
    client._suspect[LEADER] = asyncio.get_running_loop().time() + 3600
    client._next_endpoint = 1  # the rotation starts at a follower
    return client, leader, followers


async def test_a_barrier_follows_a_live_followers_redirect_to_a_suspect_leader_after_the_election_timeout() -> None:
    # An election timeout of 0: the first not_leader answer has already lasted it.
    client, leader, followers = _client(election_timeout_ms=0)
    assert await client.barrier("log") == 5
    # At once from the first follower (not round the other follower first).
    assert [n.calls for n in followers] == [["barrier"], []] and leader.calls == ["barrier"]


async def test_within_the_election_timeout_a_suspect_leader_is_not_followed() -> None:
    # (The hint may be stale: a connect to a cut-off node costs the liveness timeout.)
    client, leader, followers = _client(election_timeout_ms=3_600_000)
    with pytest.raises(Unavailable, match="not_leader"):
        await client.barrier("log")
    assert leader.calls == [] and all(len(n.calls) > 1 for n in followers)


async def test_not_leader_without_a_hint_tries_the_suspect_nodes_after_the_election_timeout() -> None:
    # The only node not suspect is a deposed leader that knows no leader (cut off, a candidate):
    # skipping suspects would send every retry back to it.
    client = JournalClient([LEADER, FOLLOWER], request_timeout_ms=300, election_timeout_ms=0)
    leader, deposed = _FakeNode(LEADER, {"position": 5}), _FakeNode(FOLLOWER, None)

    async def no_hint(kind: str, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        deposed.calls.append(kind)
        raise RemoteError("not_leader", "no leader known")

    deposed.call = no_hint  # type: ignore[method-assign]
    client._conns.update({LEADER: leader, FOLLOWER: deposed})  # type: ignore[dict-item]
    client._suspect[LEADER] = asyncio.get_running_loop().time() + 3600
    client._next_endpoint = 1  # the rotation starts at the deposed node
    assert await client.barrier("log") == 5
    assert deposed.calls == ["barrier"] and leader.calls == ["barrier"]
