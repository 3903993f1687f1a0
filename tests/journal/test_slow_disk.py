"""A journal node whose write or fsync does not return (a slow disk), in one process.

The node's driver persists one Ready at a time and keeps taking light Readies
meanwhile (journal.node): the leader keeps sending heartbeats, so no election
follows a disk stall, and it commits through its followers; a follower keeps
answering heartbeats but acks only what it has written.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from journal import replication as r
from journal.node import JournalNode, _Replica
from tests.journal.cluster import InProcessCluster


class StuckDisk:
    """The replica's next write of entries blocks until release() (the thread waits)."""

    def __init__(self, rep: _Replica) -> None:
        self.started = threading.Event()
        self._release = threading.Event()
        real = rep.storage.persist

        def persist(rd: r.Ready) -> None:
            if rd.entries and not self._release.is_set():
                self.started.set()
                self._release.wait()
            real(rd)

        rep.storage.persist = persist  # type: ignore[method-assign]

    def release(self) -> None:
        self._release.set()


@pytest.fixture
def stuck() -> Iterator[list[StuckDisk]]:
    disks: list[StuckDisk] = []
    yield disks
    for d in disks:
        d.release()  # never leave a persist thread waiting


def count_ticks(rep: _Replica) -> list[int]:
    ticks = [0]
    real = rep.core.tick

    def tick() -> None:
        ticks[0] += 1
        real()

    rep.core.tick = tick  # type: ignore[method-assign]
    return ticks


async def ticked(counter: list[int], n: int) -> None:
    """Wait for n more ticks of a core (ticks, not seconds: a starved machine only slows this)."""
    target = counter[0] + n
    while counter[0] < target:
        await asyncio.sleep(0.01)


def replicas(cluster: InProcessCluster, log: str) -> dict[str, _Replica]:
    out = {}
    for n, node in cluster.nodes.items():
        assert isinstance(node, JournalNode)
        out[n] = node._replicas[log]
    return out


async def test_leader_in_a_stuck_fsync_keeps_leading_and_commits_through_its_followers(
    cluster: InProcessCluster, stuck: list[StuckDisk]
) -> None:
    c = cluster.client()
    await c.append("s", [b"warm"])
    leader = await cluster.leader("s")
    reps = replicas(cluster, "s")
    lead = reps[leader]
    term = lead.core.term
    stuck.append(StuckDisk(lead))
    followers = [rep for n, rep in reps.items() if n != leader]
    ticks = count_ticks(followers[0])
    # Two durable copies in two AZs: committed while the leader's own write hangs.
    got = await asyncio.wait_for(c.append("s", [b"during"]), 10)
    assert stuck[0].started.is_set()
    assert lead.persisting is not None and not lead.persisting.done()
    await ticked(ticks, 4 * 2 * cluster.config(leader).election_ticks)  # past every election timeout
    assert lead.persisting is not None and not lead.persisting.done(), "still stuck"
    assert lead.core.role is r.Role.LEADER and lead.core.term == term
    assert all(f.core.leader == leader and f.core.term == term for f in followers)
    # Not durable on the leader: it does not serve it yet.
    assert lead.readable_position < got[0].position
    stuck[0].release()
    while lead.readable_position < got[0].position:
        await asyncio.sleep(0.01)
    assert lead.core.term == term
    await c.close()


async def test_follower_in_a_stuck_fsync_keeps_its_leader_and_acks_only_what_it_wrote(
    cluster: InProcessCluster, stuck: list[StuckDisk]
) -> None:
    c = cluster.client()
    await c.append("f", [b"warm"])
    leader = await cluster.leader("f")
    reps = replicas(cluster, "f")
    lead = reps[leader]
    term = lead.core.term
    slow_id, other_id = sorted(n for n in reps if n != leader)
    slow = reps[slow_id]
    stuck.append(StuckDisk(slow))
    await cluster.stop(other_id)  # the slow follower's copy is needed for a commit
    ticks = count_ticks(slow)
    append = asyncio.create_task(c.append("f", [b"during"]))
    await ticked(ticks, 4 * 2 * cluster.config(leader).election_ticks)
    assert stuck[0].started.is_set()
    assert not append.done(), "acked before the follower's write was durable"
    assert slow.core.leader == leader and slow.core.term == term and lead.core.role is r.Role.LEADER
    stuck[0].release()
    got = await asyncio.wait_for(append, 10)
    assert got[0].position == 2
    await c.close()
