"""The replication core under a pipelined shell: one Ready's writes in flight (a slow
fsync) while ticks and messages go on through ``ready(writes=False)``.

journal.node persists one Ready at a time (group commit) and takes light Readies
meanwhile; these tests drive real cores that way, by hand, with no I/O.
"""

from __future__ import annotations

import pytest

from journal.replication import (
    Append,
    AppendResponse,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    LogEntry,
    RequestVote,
    Role,
    VoteResponse,
)
from tests.journal.test_replication import Net


class PipelinedNet(Net):
    """Like Net, but a node in ``hold`` has at most one Ready's writes in flight, as
    journal.node's driver: while it is, only ``ready(writes=False)`` is taken."""

    def drain(self, node_id: str) -> None:
        core = self.cores[node_id]
        while True:
            in_flight = bool(self.held[node_id])
            if not core.has_ready(writes=not in_flight):
                return
            rd = core.ready(writes=not in_flight)
            self.results.extend(rd.append_results)
            self.barriers.extend(rd.barrier_results)
            self._send(rd.messages)
            if in_flight:
                assert rd.seq == 0 and not rd.must_persist() and not rd.messages_after_persist
                continue
            if node_id in self.hold and rd.must_persist():
                self.held[node_id].append(rd)
            else:
                core.advance(rd)
                self._send(rd.messages_after_persist)

    def stall(self, node_id: str) -> None:
        """The node's next write starts and does not finish until release()."""
        self.hold.add(node_id)


def _sent_since(net: Net, mark: int, kind: type, src: str) -> list:  # type: ignore[type-arg]
    return [m for m in net.sent[mark:] if isinstance(m, kind) and m.src == src]


def test_leader_in_a_slow_fsync_keeps_its_leadership() -> None:
    net = PipelinedNet()
    leader = net.elect("n0")
    term = leader.term
    net.stall("n0")
    net.propose("n0", "c", 1, [b"x"])
    assert net.held["n0"], "the proposal's write is in flight"
    mark = len(net.sent)
    net.tick(5 * leader.cfg.election_ticks)  # far past every follower's election timeout
    assert len(_sent_since(net, mark, Heartbeat, "n0")) >= 2 * 5 * leader.cfg.election_ticks
    assert net.leaders() == ["n0"]
    assert all(c.term == term and c.leader == "n0" for c in net.cores.values())
    assert len(net.held["n0"]) == 1, "one write at a time: what came meanwhile waits for the next"


def test_full_readies_only_would_lose_the_leadership() -> None:
    """The control: a shell that takes no Ready while a write is in flight (the old
    driver) sends no heartbeat, and the followers elect another leader."""
    net = Net()
    net.elect("n0")
    net.propose("n0", "c", 1, [b"x"])
    net.hold.add("n0")
    net.propose("n0", "c", 2, [b"y"])
    stalled = net.cores["n0"]
    ticks = 5 * stalled.cfg.election_ticks
    for _ in range(ticks):
        for node_id, core in net.cores.items():
            core.tick()
            if node_id != "n0":
                net.drain(node_id)
        inbox, net.inbox = net.inbox, []
        for m in inbox:
            if m.dst != "n0":
                net.cores[m.dst].step(m)
    assert {net.cores["n1"].leader, net.cores["n2"].leader} - {"n0", ""}


def test_slow_leader_commits_through_its_followers_and_counts_itself_only_after_persist() -> None:
    net = PipelinedNet()
    net.elect("n0")
    net.stall("n0")
    net.propose("n0", "c", 1, [b"x"])  # its write is in flight
    net.propose("n0", "c", 2, [b"y"])  # handed in no write yet
    leader = net.cores["n0"]
    # Both followers hold both proposals durably: a two-AZ majority without the leader.
    assert net.result("c", 2).appended is not None
    assert leader._persisted_index < leader.status().last_index
    # With one follower away, the leader's own copy is needed: nothing more commits
    # until its writes are durable.
    net.isolated.add("n2")
    net.propose("n0", "c", 3, [b"z"])
    assert not [r for r in net.results if r.request_seq == 3]
    net.flush("n0")  # the first write completes; the next one (y, z) starts
    net.pump()
    assert not [r for r in net.results if r.request_seq == 3]
    net.release("n0")
    assert net.result("c", 3).appended is not None


def test_slow_follower_answers_heartbeats_but_acks_only_what_is_durable() -> None:
    net = PipelinedNet()
    net.elect("n0")
    net.isolated.add("n2")
    net.stall("n1")
    net.propose("n0", "c", 1, [b"x"])  # n1's write of x is in flight
    net.propose("n0", "c", 2, [b"y"])  # n1 holds y in memory only
    follower = net.cores["n1"]
    mark = len(net.sent)
    net.tick(3 * follower.cfg.election_ticks)
    assert _sent_since(net, mark, HeartbeatResponse, "n1")
    assert not [m for m in _sent_since(net, 0, AppendResponse, "n1") if m.success and m.match_index > 1]
    assert not net.results, "nothing of the slow follower's counts: no commit"
    assert net.leaders() == ["n0"] and follower.leader == "n0"
    net.flush("n1")  # x durable: its ack leaves; y's write starts
    acked = max(m.match_index for m in _sent_since(net, 0, AppendResponse, "n1") if m.success)
    assert follower.log_entries(acked, acked)[0].data == b"x"
    net.pump()
    assert net.result("c", 1).appended is not None
    assert not [r for r in net.results if r.request_seq == 2]
    net.release("n1")
    assert net.result("c", 2).appended is not None


def test_vote_granted_during_a_slow_fsync_leaves_only_after_the_next_write() -> None:
    net = PipelinedNet()
    voter = net.cores["n1"]
    e = LogEntry(1, 1, 1, 1000, EntryKind.DATA, b"x")
    voter.step(Append(1, "n0", "n1", 0, 0, (e,), 0))
    net.stall("n1")
    net.drain("n1")  # the entry's write is in flight
    voter._election_elapsed = voter.cfg.election_ticks  # out of n0's lease
    voter.step(RequestVote(2, "n2", "n1", 1, 1, pre_vote=False))
    mark = len(net.sent)
    net.drain("n1")
    assert voter.vote == "n2"
    assert not _sent_since(net, mark, VoteResponse, "n1")
    net.flush("n1")  # the entry is durable; the next write (term, vote) starts
    assert not _sent_since(net, mark, VoteResponse, "n1")
    net.release("n1")
    grants = [m for m in _sent_since(net, mark, VoteResponse, "n1") if m.granted and not m.pre_vote]
    assert [m.dst for m in grants] == ["n2"]


def test_a_light_ready_hands_no_writes_and_takes_no_advance() -> None:
    net = PipelinedNet()
    net.elect("n0")
    core = net.cores["n1"]
    e = LogEntry(core.status().last_index + 1, core.term, 1, 1000, EntryKind.DATA, b"x")
    core.step(Append(core.term, "n0", "n1", e.index - 1, core.term, (e,), 0))
    light = core.ready(writes=False)
    assert light.seq == 0 and not light.entries and light.hard_state is None and not light.messages_after_persist
    assert not core.has_ready(writes=False) and core.has_ready(), "the writes and the ack wait for a full Ready"
    with pytest.raises(AssertionError):
        core.advance(light)
    full = core.ready()
    assert [x.data for x in full.entries] == [b"x"]
    assert [m.match_index for m in full.messages_after_persist if isinstance(m, AppendResponse)] == [e.index]
    core.advance(full)
    assert not core.has_ready()
    assert core.role is Role.FOLLOWER


def test_persisted_index_counts_advanced_writes_of_the_log_as_it_now_stands() -> None:
    """What journal.node serves reads up to (with commit): never an overwritten suffix."""
    net = PipelinedNet()
    net.elect("n0")
    core = net.cores["n1"]
    base = core.status().last_index
    e1 = LogEntry(base + 1, core.term, 1, 1000, EntryKind.DATA, b"x")
    e2 = LogEntry(base + 2, core.term, 2, 1000, EntryKind.DATA, b"y")
    core.step(Append(core.term, "n0", "n1", base, core.term, (e1, e2), 0))
    rd = core.ready()
    assert core.persisted_index == base, "handed, not yet durable"
    core.advance(rd)
    assert core.persisted_index == base + 2
    # A newer leader overwrites e2: out of the count at once, before any write.
    e2b = LogEntry(base + 2, core.term + 1, 2, 1000, EntryKind.DATA, b"z")
    core.step(Append(core.term + 1, "n2", "n1", base + 1, core.term, (e2b,), 0))
    assert core.persisted_index == base + 1
    core.advance(core.ready())
    assert core.persisted_index == base + 2
