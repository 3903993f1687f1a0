"""Unit tests of the replication core (journal.replication), driven by a tiny in-test network.

Each test builds a cluster of real cores, moves messages by hand and decides when
each node's writes become durable, so every rule is exercised in isolation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from journal.api import Appended
from journal.replication import (
    Append,
    AppendResponse,
    AppendResult,
    BarrierResult,
    Config,
    EntryKind,
    ErrorCode,
    HardState,
    InstallSnapshot,
    LogEntry,
    Message,
    Peer,
    Ready,
    ReplicationCore,
    RequestVote,
    RestoredState,
    Role,
    VoteResponse,
)

PUMP_ROUNDS_MAX = 1_000


@dataclass
class Net:
    """A synchronous network of cores: pump() moves messages until nothing moves."""

    azs: tuple[str, ...] = ("az-a", "az-b", "az-c")
    seed: int = 0
    cfg: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.peers = tuple(Peer(f"n{i}", az) for i, az in enumerate(self.azs))
        self.cores = {p.node_id: self._core(p.node_id) for p in self.peers}
        self.isolated: set[str] = set()  # messages to and from these are dropped
        self.hold: set[str] = set()  # these nodes' writes stay un-durable until release()
        self.held: dict[str, list[Ready]] = {p.node_id: [] for p in self.peers}
        self.inbox: list[Message] = []
        self.results: list[AppendResult] = []
        self.barriers: list[BarrierResult] = []
        self.sent: list[Message] = []

    def _core(self, node_id: str, restored: RestoredState | None = None) -> ReplicationCore:
        index = [p.node_id for p in self.peers].index(node_id)
        config = Config(node_id, self.peers, **self.cfg)  # type: ignore[arg-type]
        return ReplicationCore(config, random.Random(self.seed * 100 + index), restored)

    def _send(self, msgs: tuple[Message, ...]) -> None:
        for m in msgs:
            self.sent.append(m)
            if m.src not in self.isolated and m.dst not in self.isolated:
                self.inbox.append(m)

    def drain(self, node_id: str) -> None:
        core = self.cores[node_id]
        while core.has_ready():
            rd = core.ready()
            self.results.extend(rd.append_results)
            self.barriers.extend(rd.barrier_results)
            self._send(rd.messages)
            if node_id in self.hold or self.held[node_id]:
                self.held[node_id].append(rd)
            else:
                core.advance(rd)
                self._send(rd.messages_after_persist)

    def flush(self, node_id: str) -> None:
        """The node's pending fsyncs complete (later writes stay held if it is in hold)."""
        held, self.held[node_id] = self.held[node_id], []
        for rd in held:
            self.cores[node_id].advance(rd)
            self._send(rd.messages_after_persist)

    def release(self, node_id: str) -> None:
        """The node's pending fsyncs complete and it stops holding writes."""
        self.hold.discard(node_id)
        self.flush(node_id)
        self.pump()

    def pump(self) -> None:
        for _ in range(PUMP_ROUNDS_MAX):
            for node_id in self.cores:
                self.drain(node_id)
            if not self.inbox:
                return
            inbox, self.inbox = self.inbox, []
            for m in inbox:
                self.cores[m.dst].step(m)
        raise AssertionError("network did not quiesce")

    def tick(self, n: int = 1, only: str | None = None) -> None:
        for _ in range(n):
            for node_id, core in self.cores.items():
                if only is None or node_id == only:
                    core.tick()
            self.pump()

    def elect(self, node_id: str) -> ReplicationCore:
        """Let node_id time out first and win.

        The other followers are first moved out of the old leader's lease (as if an
        election timeout passed without a heartbeat), else they rightly ignore n's votes.
        """
        for other, core in self.cores.items():
            if other != node_id and core.role is not Role.LEADER:
                core._election_elapsed = max(core._election_elapsed, core.cfg.election_ticks)
        for _ in range(4 * self.cores[node_id].cfg.election_ticks):
            self.tick(only=node_id)
            if self.cores[node_id].role is Role.LEADER:
                self.pump()
                return self.cores[node_id]
        raise AssertionError(f"{node_id} did not become leader")

    def leaders(self) -> list[str]:
        return [n for n, c in self.cores.items() if c.role is Role.LEADER]

    def propose(
        self, node_id: str, client_id: str, seq: int, datas: list[bytes], now_ms: int = 1000, **kw: int
    ) -> None:
        self.cores[node_id].propose(client_id, seq, datas, now_ms, **kw)  # type: ignore[arg-type]
        self.pump()

    def result(self, client_id: str, seq: int) -> AppendResult:
        found = [r for r in self.results if r.client_id == client_id and r.request_seq == seq]
        assert found, f"no result for {client_id}/{seq}"
        return found[-1]

    def data_log(self, node_id: str) -> list[bytes]:
        core = self.cores[node_id]
        return [e.data for e in core.log_entries(1, core.status().last_index) if e.kind is EntryKind.DATA]

    def restart(self, node_id: str, restored: RestoredState) -> None:
        self.cores[node_id] = self._core(node_id, restored)
        self.held[node_id] = []


# --------------------------------------------------------------------------- config


def test_config_rejects_a_single_az() -> None:
    peers = (Peer("n0", "a"), Peer("n1", "a"), Peer("n2", "a"))
    with pytest.raises(AssertionError, match="two AZs"):
        ReplicationCore(Config("n0", peers), random.Random(0))


def test_config_requires_self_among_peers() -> None:
    peers = (Peer("n0", "a"), Peer("n1", "b"), Peer("n2", "c"))
    with pytest.raises(AssertionError):
        ReplicationCore(Config("n9", peers), random.Random(0))


# --------------------------------------------------------------------------- elections


def test_a_leader_is_elected_and_commits_a_noop_of_its_term() -> None:
    net = Net()
    net.tick(40)
    assert len(net.leaders()) == 1
    leader = net.cores[net.leaders()[0]]
    assert all(c.term == leader.term and c.leader == leader.id for c in net.cores.values())
    status = leader.status()
    assert status.commit_index == 1 and status.commit_position == 0  # the NOOP takes no position
    assert all(c.status().commit_index == 1 for c in net.cores.values())


def test_five_nodes_elect_one_leader() -> None:
    net = Net(azs=("a", "b", "c", "d", "e"), seed=3)
    net.tick(60)
    assert len(net.leaders()) == 1


def test_candidate_does_not_lead_before_its_own_vote_is_durable() -> None:
    net = Net()
    net.hold.add("n0")
    for _ in range(40):
        net.tick(only="n0")
        if net.cores["n0"].role is Role.CANDIDATE:
            break
    assert net.cores["n0"].role is Role.CANDIDATE
    net.pump()
    # Both peers granted, but n0's own term/vote is not on disk yet.
    assert net.cores["n0"].role is Role.CANDIDATE
    net.release("n0")
    assert net.cores["n0"].role is Role.LEADER


def test_vote_is_granted_once_per_term() -> None:
    net = Net()
    core = net.cores["n0"]
    core.step(RequestVote(5, "n1", "n0", 0, 0, pre_vote=False))
    core.step(RequestVote(5, "n2", "n0", 0, 0, pre_vote=False))
    rd = core.ready()
    grants = [m for m in rd.messages_after_persist if isinstance(m, VoteResponse)]
    assert [(m.dst, m.granted) for m in grants] == [("n1", True), ("n2", False)]
    assert rd.hard_state == HardState(5, "n1")
    assert not [m for m in rd.messages if isinstance(m, VoteResponse)], "a grant must wait for the persist"


def test_election_restriction_rejects_a_less_up_to_date_candidate() -> None:
    net = Net()
    net.elect("n0")
    net.propose("n0", "c", 1, [b"x"])
    core = net.cores["n1"]
    net.isolated.add("n1")
    net.tick(core.cfg.election_ticks, only="n1")  # out of the leader's lease
    last = core.status().last_index
    core.step(RequestVote(core.term + 1, "n2", "n1", last - 1, core.term, pre_vote=False))
    rd = core.ready()
    votes = [m for m in rd.messages_after_persist if isinstance(m, VoteResponse)]
    assert len(votes) == 1 and not votes[0].granted


def test_pre_vote_keeps_an_isolated_node_from_deposing_the_leader() -> None:
    net = Net()
    net.elect("n0")
    term = net.cores["n0"].term
    net.isolated.add("n2")
    net.tick(100)  # n2 times out again and again, alone
    assert net.cores["n2"].term == term, "pre-vote must not bump the term"
    net.isolated.clear()
    net.tick(5)
    assert net.leaders() == ["n0"] and all(c.term == term for c in net.cores.values())


def test_lease_ignores_vote_requests_while_the_leader_is_alive() -> None:
    net = Net()
    net.elect("n0")
    follower = net.cores["n1"]
    last = follower.status().last_index
    follower.step(RequestVote(follower.term + 1, "n2", "n1", last + 10, follower.term + 1, pre_vote=False))
    rd = follower.ready()
    assert rd.hard_state is None and not rd.messages_after_persist and not rd.messages
    assert follower.role is Role.FOLLOWER and follower.leader == "n0"


def test_check_quorum_makes_an_isolated_leader_step_down() -> None:
    net = Net()
    net.elect("n0")
    net.isolated.add("n0")
    net.tick(2 * net.cores["n0"].cfg.election_ticks + 1, only="n0")
    assert net.cores["n0"].role is Role.FOLLOWER
    net.tick(60)
    leaders = net.leaders()
    assert len(leaders) == 1 and leaders[0] != "n0"


def test_stale_epoch_messages_are_rejected() -> None:
    net = Net()
    net.elect("n0")
    net.elect("n1")  # n0 deposed (it saw the higher term)
    follower = net.cores["n2"]
    term = follower.term
    entry = LogEntry(100, term - 1, 1, 0, EntryKind.DATA, b"stale")
    follower.step(Append(term - 1, "n0", "n2", follower.status().last_index, term - 1, (entry,), 0))
    rd = follower.ready()
    replies = [m for m in rd.messages if isinstance(m, AppendResponse)]
    assert len(replies) == 1 and replies[0].term == term and not replies[0].success
    assert b"stale" not in net.data_log("n2")
    assert follower.leader == "n1"


def test_deposed_leader_steps_down_on_hearing_the_new_term() -> None:
    net = Net()
    net.elect("n0")
    net.isolated.add("n0")
    net.elect("n1")
    assert sorted(net.leaders()) == ["n0", "n1"]  # n0 has not heard yet
    net.isolated.clear()
    net.tick(2)
    assert net.leaders() == ["n1"]
    assert net.cores["n0"].term == net.cores["n1"].term


# --------------------------------------------------------------------------- commit rules


def test_commit_needs_durable_copies_and_the_leader_counts_itself_only_after_persist() -> None:
    net = Net()
    net.elect("n0")
    net.isolated.add("n2")
    net.hold.add("n0")
    net.propose("n0", "c", 1, [b"x"])
    # n1 persisted and acked, n0 has not fsynced: one durable copy of three.
    assert net.cores["n0"].commit == 1 and not net.results
    net.release("n0")
    assert net.cores["n0"].status().commit_position == 1
    assert net.result("c", 1).appended == (Appended(1, 1000),)


def test_follower_acks_only_after_its_persist() -> None:
    net = Net()
    net.elect("n0")
    net.isolated.add("n2")
    net.hold.add("n1")
    net.propose("n0", "c", 1, [b"x"])
    assert net.cores["n0"].status().commit_position == 0
    net.release("n1")
    assert net.cores["n0"].status().commit_position == 1


def test_commit_needs_a_quorum_spanning_two_azs() -> None:
    net = Net(azs=("az-a", "az-a", "az-b"))
    net.elect("n0")
    net.isolated.add("n2")  # the only node in az-b
    net.propose("n0", "c", 1, [b"x"])
    assert net.cores["n1"].status().last_index == 2, "n1 holds the entry durably"
    assert net.cores["n0"].status().commit_position == 0, "a majority in one AZ is not enough"
    net.isolated.clear()
    net.tick(2)
    assert net.cores["n0"].status().commit_position == 1
    assert net.result("c", 1).error is None


def test_five_nodes_two_azs_need_both_azs() -> None:
    net = Net(azs=("a", "a", "a", "b", "b"))
    net.elect("n0")
    net.isolated.update({"n3", "n4"})
    net.propose("n0", "c", 1, [b"x"])
    assert net.cores["n0"].status().commit_position == 0
    net.isolated.discard("n3")
    net.tick(2)
    assert net.cores["n0"].status().commit_position == 1


# --------------------------------------------------------------------------- proposals


def test_retry_returns_the_original_positions() -> None:
    net = Net()
    net.elect("n0")
    net.propose("n0", "c", 1, [b"a", b"b"])
    net.propose("n0", "c", 1, [b"a", b"b"], now_ms=5000)
    first, second = [r for r in net.results if r.client_id == "c"]
    assert first.appended == second.appended == (Appended(1, 1000), Appended(2, 1000))
    assert net.data_log("n1") == [b"a", b"b"]


def test_retry_while_pending_attaches_to_the_original() -> None:
    net = Net()
    net.elect("n0")
    net.isolated.update({"n1", "n2"})
    net.propose("n0", "c", 7, [b"a"])
    net.cores["n0"].propose("c", 7, [b"a"], 2000, token=99)
    net.isolated.clear()
    net.tick(2)
    answers = [r for r in net.results if r.client_id == "c"]
    assert sorted(r.token for r in answers) == [0, 99]
    assert all(r.appended == (Appended(1, 1000),) for r in answers)
    assert net.data_log("n0") == [b"a"]


def test_dedup_survives_failover() -> None:
    net = Net()
    net.elect("n0")
    net.propose("n0", "c", 1, [b"a"])
    net.isolated.add("n0")
    net.elect("n1")
    net.propose("n1", "c", 1, [b"a"])
    assert net.result("c", 1).appended == (Appended(1, 1000),)
    assert net.data_log("n1") == [b"a"]


def test_uncommitted_retry_is_not_duplicated_after_failover() -> None:
    net = Net()
    net.elect("n0")
    net.hold.add("n1")
    net.isolated.add("n2")
    net.propose("n0", "c", 1, [b"a", b"b"])  # on n0 and (not yet durable) on n1
    net.release("n1")  # n1 now holds it; n0 crashes before hearing the ack
    net.isolated = {"n0"}
    net.elect("n1")
    net.propose("n1", "c", 1, [b"a", b"b"])
    assert net.result("c", 1).appended == (Appended(1, 1000), Appended(2, 1000))
    assert net.data_log("n1") == [b"a", b"b"]


def test_dedup_table_is_bounded_and_says_when_it_forgot() -> None:
    net = Net(cfg={"dedup_requests_per_client_max": 2, "dedup_clients_max": 2})
    net.elect("n0")
    for seq in (1, 2, 3):
        net.propose("n0", "c", seq, [b"%d" % seq])
    net.propose("n0", "c", 1, [b"1"])
    assert net.result("c", 1).error is ErrorCode.DEDUP_EXPIRED
    for client in ("d", "e"):
        net.propose("n0", client, 1, [client.encode()])
    assert net.cores["n0"].snapshot_meta.dedup == ()  # nothing trimmed yet
    net.cores["n0"].trim(100)
    net.pump()
    clients = [client for client, _ in net.cores["n0"].snapshot_meta.dedup]
    assert clients == ["d", "e"], "least recently active client forgotten first"


def test_conditional_append() -> None:
    net = Net()
    net.elect("n0")
    net.propose("n0", "c", 1, [b"a"], expected_position=0)
    assert net.result("c", 1).appended == (Appended(1, 1000),)
    net.propose("n0", "c", 2, [b"b"], expected_position=0)
    r = net.result("c", 2)
    assert r.error is ErrorCode.POSITION_MISMATCH and r.tail == 1
    net.propose("n0", "c", 3, [b"c"], expected_position=1)
    assert net.result("c", 3).appended == (Appended(2, 1000),)
    assert net.data_log("n0") == [b"a", b"c"]


def test_timestamps_never_go_backwards_even_across_leaders() -> None:
    net = Net()
    net.elect("n0")
    net.propose("n0", "c", 1, [b"a"], now_ms=5000)
    net.propose("n0", "c", 2, [b"b"], now_ms=4000)
    assert net.result("c", 2).appended == (Appended(2, 5000),)
    net.isolated.add("n0")
    net.elect("n1")
    net.propose("n1", "c", 3, [b"c"], now_ms=100)  # a new leader whose clock is far behind
    assert net.result("c", 3).appended == (Appended(3, 5000),)
    net.propose("n1", "c", 4, [b"d"], now_ms=6000)
    assert net.result("c", 4).appended == (Appended(4, 6000),)


def test_follower_refuses_proposals_with_a_leader_hint() -> None:
    net = Net()
    net.elect("n0")
    net.propose("n1", "c", 1, [b"a"])
    r = net.result("c", 1)
    assert r.error is ErrorCode.NOT_LEADER and r.leader == "n0"


def test_pending_proposals_fail_when_the_leader_steps_down() -> None:
    net = Net()
    net.elect("n0")
    net.isolated.update({"n1", "n2"})
    net.propose("n0", "c", 1, [b"a"])
    net.tick(2 * net.cores["n0"].cfg.election_ticks + 1, only="n0")
    assert net.result("c", 1).error is ErrorCode.NOT_LEADER


def test_limits() -> None:
    net = Net(cfg={"uncommitted_bytes_max": 300, "proposal_entries_max": 3, "append_bytes_max": 200})
    net.elect("n0")
    net.propose("n0", "c", 1, [])
    assert net.result("c", 1).error is ErrorCode.INVALID
    net.propose("n0", "c", 2, [b"x"] * 4)
    assert net.result("c", 2).error is ErrorCode.TOO_LARGE
    net.propose("n0", "c", 3, [b"x" * 500])
    assert net.result("c", 3).error is ErrorCode.TOO_LARGE
    net.isolated.update({"n1", "n2"})
    net.propose("n0", "c", 4, [b"x" * 100])
    net.propose("n0", "c", 5, [b"x" * 100])
    net.propose("n0", "c", 6, [b"x" * 100])
    assert net.result("c", 6).error is ErrorCode.BUSY


def test_append_messages_are_bounded() -> None:
    net = Net(cfg={"append_entries_max": 2})
    net.elect("n0")
    net.isolated.add("n2")
    for seq in range(1, 8):
        net.propose("n0", "c", seq, [b"x"])
    net.isolated.clear()
    net.tick(3)
    appends = [m for m in net.sent if isinstance(m, Append)]
    assert appends and max(len(m.entries) for m in appends) <= 2
    assert net.data_log("n2") == [b"x"] * 7


# --------------------------------------------------------------------------- barrier


def test_barrier_answers_the_commit_after_a_heartbeat_round() -> None:
    net = Net()
    net.elect("n0")
    net.propose("n0", "c", 1, [b"a", b"b"])
    net.cores["n0"].barrier(1)
    net.pump()
    assert net.barriers == [BarrierResult(1, position=2)]


def test_barrier_is_not_answered_by_a_leader_that_cannot_reach_a_majority() -> None:
    net = Net()
    net.elect("n0")
    net.isolated.add("n0")
    net.cores["n0"].barrier(1)
    net.pump()
    assert net.barriers == []
    net.tick(2 * net.cores["n0"].cfg.election_ticks + 1, only="n0")
    assert net.barriers == [BarrierResult(1, error=ErrorCode.NOT_LEADER)]


def test_barrier_on_a_follower_redirects() -> None:
    net = Net()
    net.elect("n0")
    net.cores["n1"].barrier(5)
    net.pump()
    assert net.barriers == [BarrierResult(5, error=ErrorCode.NOT_LEADER, leader="n0")]


def test_barrier_waits_for_the_new_leaders_first_commit() -> None:
    net = Net()
    net.elect("n0")
    net.propose("n0", "c", 1, [b"a"])
    net.isolated.add("n0")
    net.hold.add("n2")
    net.cores["n2"]._election_elapsed = net.cores["n2"].cfg.election_ticks  # out of n0's lease
    for _ in range(80):
        net.tick(only="n1")
        if net.cores["n1"].role is Role.CANDIDATE:
            break
    net.flush("n2")  # n2's vote becomes durable and leaves; its later writes stay held
    net.pump()
    n1 = net.cores["n1"]
    assert n1.role is Role.LEADER and n1.status().commit_index < n1.status().last_index
    n1.barrier(9)
    net.pump()
    assert not net.barriers, "the NOOP of the new term is not committed yet"
    net.release("n2")
    assert net.barriers == [BarrierResult(9, position=1)]


# --------------------------------------------------------------------------- trim, snapshots, restart


def test_lagging_follower_catches_up_through_a_snapshot() -> None:
    net = Net()
    net.elect("n0")
    net.isolated.add("n2")
    for seq in range(1, 6):
        net.propose("n0", "c", seq, [b"%d" % seq])
    net.cores["n0"].trim(4)  # forget positions 1..3
    net.pump()
    assert net.cores["n0"].status().first_index > 2
    net.isolated.clear()
    net.tick(3)
    assert any(isinstance(m, InstallSnapshot) for m in net.sent)
    n2 = net.cores["n2"]
    assert n2.status().commit_position == 5 and net.data_log("n2") == [b"4", b"5"]
    assert n2.snapshot_meta.position == 3
    # The dedup table travelled with the snapshot: a retry on n2 as leader is not re-appended.
    net.isolated = {"n0"}
    net.elect("n2")
    net.propose("n2", "c", 2, [b"2"])
    assert net.result("c", 2).appended == (Appended(2, 1000),)


def test_restart_keeps_term_vote_and_log() -> None:
    net = Net()
    net.elect("n0")
    net.propose("n0", "c", 1, [b"a"])
    core = net.cores["n1"]
    entries = tuple(core.log_entries(1, core.status().last_index))
    restored = RestoredState(HardState(core.term, core.vote), core.snapshot_meta, entries)
    net.restart("n1", restored)
    assert net.cores["n1"].term == core.term and net.cores["n1"].vote == core.vote
    assert net.cores["n1"].commit == 0  # learns the commit again from the leader
    net.tick(2)
    assert net.cores["n1"].status().commit_position == 1


def test_ready_must_be_advanced_in_order() -> None:
    net = Net()
    core = net.cores["n0"]
    core.tick()
    for _ in range(40):
        core.tick()
        if core.has_ready():
            break
    first = core.ready()
    core.step(RequestVote(99, "n1", "n0", 10, 10, pre_vote=False))
    second = core.ready()
    with pytest.raises(AssertionError):
        core.advance(second)
    core.advance(first)
    core.advance(second)


def test_trim_of_entries_not_yet_handed_to_the_shell() -> None:
    net = Net()
    net.elect("n0")
    net.propose("n0", "c", 1, [b"a"])
    follower = net.cores["n1"]
    last = follower.status().last_index
    e1 = LogEntry(last + 1, follower.term, 2, 1000, EntryKind.DATA, b"b")
    e2 = LogEntry(last + 2, follower.term, 3, 1000, EntryKind.DATA, b"c")
    follower.step(Append(follower.term, "n0", "n1", last, follower.term, (e1, e2), last + 1))
    follower.trim(3)  # drops b (committed) before any Ready carried it
    rd = follower.ready()
    assert rd.snapshot is not None and rd.snapshot.index == last + 1 and rd.snapshot.position == 2
    assert [e.data for e in rd.entries] == [b"c"]


def test_entries_of_an_earlier_term_commit_only_with_one_of_the_current_term() -> None:
    """Raft figure 8: a majority copy of an old-term entry is not enough to commit it."""
    net = Net(cfg={"append_entries_max": 1})
    net.elect("n0")
    net.isolated.update({"n1", "n2"})
    net.propose("n0", "c", 1, [b"x"])  # index 2, term 1: on n0 only
    net.tick(2 * net.cores["n0"].cfg.election_ticks + 1, only="n0")  # check-quorum: n0 steps down
    assert net.cores["n0"].role is Role.FOLLOWER
    net.isolated = {"n2"}
    net.hold.add("n1")  # n1's acks leave only when the test flushes its writes
    net.cores["n1"]._election_elapsed = net.cores["n1"].cfg.election_ticks
    n0 = net.cores["n0"]
    for _ in range(80):
        net.tick(only="n0")
        net.flush("n1")
        net.pump()
        if n0.role is Role.LEADER:
            break
    assert n0.role is Role.LEADER and n0.term == 2
    seen = []
    for _ in range(10):
        net.flush("n1")
        net.pump()
        seen.append(n0.status().commit_index)
    # n1 acknowledged index 2 (term 1) one step before index 3 (term 2): commit jumps 1 -> 3.
    assert 2 not in seen and seen[-1] == 3, seen
    assert net.result("c", 1).error is ErrorCode.NOT_LEADER  # its first leader could not know


def test_commit_never_stops_inside_a_proposal() -> None:
    net = Net()
    net.elect("n0")
    net.isolated.update({"n1", "n2"})
    net.propose("n0", "c", 1, [b"a", b"b", b"c"])  # indexes 2, 3, 4
    n0 = net.cores["n0"]
    n0.step(AppendResponse(n0.term, "n1", "n0", True, 3, 3))  # n1 holds a and b only
    assert n0.commit == 1 and not net.results
    n0.step(AppendResponse(n0.term, "n1", "n0", True, 4, 4))
    net.pump()
    assert n0.commit == 4
    assert net.result("c", 1).appended == tuple(Appended(p, 1000) for p in (1, 2, 3))


def test_new_leader_drops_an_earlier_leaders_partial_proposal() -> None:
    net = Net()
    net.elect("n0")
    net.isolated.update({"n1", "n2"})
    net.propose("n0", "c", 1, [b"a", b"b", b"c"])
    n0, n1 = net.cores["n0"], net.cores["n1"]
    # n1 received the first two entries of the proposal only.
    n1.step(Append(n0.term, "n0", "n1", 1, n0.term, tuple(n0.log_entries(2, 3)), 1))
    net.pump()
    assert net.data_log("n1") == [b"a", b"b"]
    net.isolated = {"n0"}
    net.elect("n1")
    assert net.data_log("n1") == [] and net.data_log("n2") == []
    net.propose("n1", "c", 1, [b"a", b"b", b"c"])  # the client's retry appends it whole
    assert net.result("c", 1).appended == tuple(Appended(p, 1000) for p in (1, 2, 3))
    assert net.data_log("n2") == [b"a", b"b", b"c"]


def test_restart_with_entries_newer_than_the_hard_state() -> None:
    peers = (Peer("n0", "a"), Peer("n1", "b"), Peer("n2", "c"))
    entries = (LogEntry(1, 4, 0, 0, EntryKind.NOOP),)
    core = ReplicationCore(Config("n0", peers), random.Random(0), RestoredState(HardState(2, "n1"), entries=entries))
    assert core.term == 4 and core.vote == ""
