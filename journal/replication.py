"""Deterministic replication core for ONE journal log (Raft, in etcd-io/raft's shape).

The core decides; the caller (the asyncio node shell, or the simulator) owns disk,
network and time. It is a plain object with no I/O, no clock and no random source of
its own (randomised election timeouts come from a seeded ``random.Random`` passed in):

    core = ReplicationCore(config, rng, restored_state)
    core.step(message)              # a message from a peer
    core.tick()                     # one logical tick (heartbeats, election timeouts)
    core.propose(client_id, request_seq, datas, now_ms, expected_position)
    core.barrier(request_id)        # read index
    rd = core.ready()               # what to persist, send and answer (drains the outputs)
    ... send rd.messages now; write rd.snapshot, rd.entries, rd.hard_state; fsync ...
    core.ready(writes=False)        # meanwhile (ticks, steps): messages and answers only
    core.advance(rd)                # after the fsync: rd's writes are durable
    ... then send rd.messages_after_persist ...

Why the split between ``messages`` and ``messages_after_persist``: a follower's append
acknowledgement and a vote grant are promises about durable state, so they may only
leave once the writes they describe are on disk. A leader's own append messages can
leave at once, in parallel with its own fsync (Raft thesis 10.2.1): the leader counts
itself towards a commit quorum only after ``advance`` reports its own persist.

Readies must be advanced in the order they were returned. A Ready with nothing to
persist may be advanced at once. A shell that persists one Ready at a time (group
commit: what arrives meanwhile goes in the next write) takes ``ready(writes=False)``
while that write is in flight, so that heartbeats, Appends and answers are not held
behind a slow disk.

Raft indexes vs journal positions: a new leader appends a NOOP entry to commit its
predecessors' entries (Raft 5.4.2) and to serve barriers. Members must never see it,
and journal positions are dense, so every ``LogEntry`` carries both its Raft ``index``
and its journal ``position``: a DATA entry takes the next position, a NOOP repeats the
previous one. Positions are therefore non-decreasing in the index, and the DATA entry
holding position p is unique in any log.

Commit rule: an entry commits once it is durable on a set of nodes that is a majority
AND spans at least two availability zones, and (Raft 5.4.2) it belongs to the leader's
current term. Elections need a plain majority, which intersects every commit quorum,
so a new leader holds every committed entry (the election restriction, Raft 5.4.1).
"""

from __future__ import annotations

from collections.abc import Sequence

from journal.api import Appended
from journal.dedup import DEDUP_REQUESTS_PER_CLIENT_MAX, DedupTable
from journal.replication_io import (
    Append,
    AppendResponse,
    AppendResult,
    BarrierResult,
    ErrorCode,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    Ready,
    RequestVote,
    Role,
    Status,
    VoteResponse,
)
from journal.replication_log import (
    DedupRecord,
    DedupState,
    EntryKind,
    HardState,
    LogEntry,
    RestoredState,
    SnapshotMeta,
)
from journal.replication_state import (
    BarrierWait,
    Config,
    CoreState,
    Flow,
    Peer,
    PendingProposal,
    Progress,
)

# The core's types live by concept in replication_log (what is persisted),
# replication_io (messages and results), replication_state (configuration and
# state) and dedup; callers import them from here, with the core.
__all__ = [
    "DEDUP_REQUESTS_PER_CLIENT_MAX",
    "Append",
    "AppendResponse",
    "AppendResult",
    "BarrierResult",
    "Config",
    "DedupRecord",
    "DedupState",
    "EntryKind",
    "ErrorCode",
    "HardState",
    "Heartbeat",
    "HeartbeatResponse",
    "InstallSnapshot",
    "LogEntry",
    "Message",
    "Peer",
    "Ready",
    "ReplicationCore",
    "RequestVote",
    "RestoredState",
    "Role",
    "SnapshotMeta",
    "Status",
    "VoteResponse",
]

# Retries of one pending proposal waiting for its outcome (more get BUSY).
_RETRY_WAITERS_MAX = 64


def _ends_proposal(entry: LogEntry) -> bool:
    """True if a commit index may stop at this entry (proposals commit whole)."""
    return entry.kind is EntryKind.NOOP or entry.batch_index == entry.batch_size - 1


def _entry_bytes(entry: LogEntry) -> int:
    return len(entry.data) + len(entry.client_id) + 64  # 64: a rough per-entry overhead


class ReplicationCore(CoreState):
    """Raft for one log, as a deterministic state machine (see the module docstring)."""

    # ------------------------------------------------------------------ public API

    def tick(self) -> None:
        """One logical tick: the shell calls this every tick interval."""
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._election_elapsed += 1
            if self._election_elapsed >= self._election_timeout:
                self._campaign_pre_vote()

    def step(self, m: Message) -> None:
        """Handle one message from a peer (duplicated, stale or reordered is fine)."""
        if m.dst != self.id or m.src not in self._az or m.src == self.id:
            return
        if not self._step_term(m):
            return
        if isinstance(m, RequestVote):
            self._on_request_vote(m)
        elif isinstance(m, VoteResponse):
            self._on_vote_response(m)
        elif isinstance(m, Append):
            self._on_append(m)
        elif isinstance(m, AppendResponse):
            self._on_append_response(m)
        elif isinstance(m, Heartbeat):
            self._on_heartbeat(m)
        elif isinstance(m, HeartbeatResponse):
            self._on_heartbeat_response(m)
        elif isinstance(m, InstallSnapshot):
            self._on_install_snapshot(m)

    def propose(
        self,
        client_id: str,
        request_seq: int,
        datas: Sequence[bytes],
        now_ms: int,
        expected_position: int | None = None,
        token: int = 0,
    ) -> None:
        """Append datas atomically; the outcome comes later as an AppendResult in a Ready.

        ``now_ms`` is the shell's clock; the entries' timestamp is max(it, the last
        timestamp in the log), so timestamps never move backwards, across leaders too
        (a new leader's log holds every committed entry). With a non-empty client_id,
        a retry of (client_id, request_seq) never appends twice: it gets the original
        positions once committed. ``token`` is echoed in the result.
        """
        error = self._check_proposal(client_id, request_seq, datas)
        if error is not None:
            self._append_results.append(AppendResult(client_id, request_seq, error=error, token=token))
            return
        if self.role is not Role.LEADER:
            self._append_results.append(
                AppendResult(client_id, request_seq, error=ErrorCode.NOT_LEADER, leader=self.leader, token=token)
            )
            return
        if client_id and self._answer_retry(client_id, request_seq, token):
            return
        tail = self._tail_position()
        if expected_position is not None and expected_position != tail:
            self._append_results.append(
                AppendResult(client_id, request_seq, error=ErrorCode.POSITION_MISMATCH, tail=tail, token=token)
            )
            return
        size = sum(len(d) + len(client_id) + 64 for d in datas)
        if (
            self._uncommitted_bytes + size > self.cfg.uncommitted_bytes_max
            or len(self._pending) >= self.cfg.pending_proposals_max
        ):
            self._append_results.append(AppendResult(client_id, request_seq, error=ErrorCode.BUSY, token=token))
            return
        self._append_proposal(client_id, request_seq, datas, now_ms, token)

    def barrier(self, request_id: int) -> None:
        """Read index: answer (in a Ready) with a committed position P >= every acked append.

        The leader first commits an entry of its own term (so its commit index covers
        every entry acknowledged by earlier leaders), then confirms it still leads with a
        heartbeat round acknowledged by a majority (so no newer leader can have acked
        anything it does not know about).
        """
        if self.role is not Role.LEADER:
            self._barrier_results.append(BarrierResult(request_id, error=ErrorCode.NOT_LEADER, leader=self.leader))
            return
        if len(self._barriers) + len(self._barriers_before_commit) >= self.cfg.barriers_pending_max:
            self._barrier_results.append(BarrierResult(request_id, error=ErrorCode.BUSY))
            return
        if self._term_at(self.commit) != self.term:
            self._barriers_before_commit.append(request_id)
            return
        self._start_barrier(request_id)

    def trim(self, below_position: int) -> None:
        """Forget the log prefix below a position (only committed entries are forgotten).

        The new SnapshotMeta (with the dedup table at that point) comes in the next
        Ready; the shell persists it and may then delete the trimmed entries.
        """
        index = self._snap.index
        while index < self.commit and self._entry(index + 1).position < below_position:
            index += 1
        if index == self._snap.index:
            return
        dedup = DedupTable(self.cfg.dedup_clients_max, self.cfg.dedup_requests_per_client_max, self._snap.dedup)
        for i in range(self._snap.index + 1, index + 1):
            dedup.apply(self._entry(i))
        e = self._entry(index)
        self._log = self._log[index - self._snap.index :]
        self._snap = SnapshotMeta(index, e.term, e.position, e.timestamp_ms, dedup.state())
        self._snap_to_persist = self._snap
        if self._persist_from is not None and self._persist_from <= index:
            # Not handed to the shell yet, and now covered by the snapshot: write what remains.
            self._persist_from = index + 1 if self._log else None

    def has_ready(self, writes: bool = True) -> bool:
        """True if ready() would hand anything (with writes=False: anything but writes)."""
        return bool(
            self._read_round_wanted
            or self._msgs
            or self._append_results
            or self._barrier_results
            or self._last_ready_commit != self.commit
            or self._last_ready_soft != (self.role, self.term, self.leader)
            or (
                writes
                and (
                    self._msgs_after
                    or self._persist_from is not None
                    or self._snap_to_persist is not None
                    or self._hs_handed.term != self.term
                    or self._hs_handed.vote != self.vote
                )
            )
        )

    def ready(self, writes: bool = True) -> Ready:
        """Hand over (and forget) everything pending: writes, messages, answers.

        With ``writes=False`` (while an earlier Ready's writes are in flight) hand over
        only what may go before any further write is durable: messages to send now,
        answers, commit and role. The writes and messages_after_persist stay for the
        next full Ready. Such a Ready has seq 0 and takes no advance(): a leader in a
        slow fsync keeps sending heartbeats and Appends, and commits through its
        followers, while its own entries count only once a full Ready is advanced.
        """
        if self._read_round_wanted:
            self._read_round_wanted = False
            self._read_seq += 1
            self._broadcast_heartbeat()
        hs = HardState(self.term, self.vote)
        entries: tuple[LogEntry, ...] = ()
        if writes and self._persist_from is not None:
            entries = tuple(self._log[self._persist_from - self._snap.index - 1 :])
        if writes:
            self._ready_seq += 1
        rd = Ready(
            seq=self._ready_seq if writes else 0,
            hard_state=hs if writes and hs != self._hs_handed else None,
            snapshot=self._snap_to_persist if writes else None,
            entries=entries,
            messages=tuple(self._msgs),
            messages_after_persist=tuple(self._msgs_after) if writes else (),
            commit_index=self.commit,
            commit_position=self._position_at(self.commit),
            append_results=tuple(self._append_results),
            barrier_results=tuple(self._barrier_results),
            role=self.role,
            term=self.term,
            leader=self.leader,
        )
        if writes:
            self._hs_handed = hs
            self._persist_from = None
            self._snap_to_persist = None
            self._msgs_after = []
        self._msgs = []
        self._append_results, self._barrier_results = [], []
        self._last_ready_commit = self.commit
        self._last_ready_soft = (self.role, self.term, self.leader)
        return rd

    def advance(self, rd: Ready) -> None:
        """The shell reports that rd's writes are durable (readies advance in order)."""
        assert rd.seq != 0, "a Ready taken with writes=False takes no advance()"
        assert rd.seq == self._advanced_seq + 1, "advance() readies in the order ready() returned them"
        self._advanced_seq = rd.seq
        if rd.hard_state is not None:
            self._hs_durable = rd.hard_state
        durable: tuple[int, int] | None = None
        if rd.entries:
            durable = (rd.entries[-1].index, rd.entries[-1].term)
        elif rd.snapshot is not None:
            durable = (rd.snapshot.index, rd.snapshot.term)
        # If the log changed at or below that point since, a later Ready carries it.
        if durable is not None and self._term_at(durable[0]) == durable[1]:
            self._persisted_index = max(self._persisted_index, durable[0])
        if self.role is Role.CANDIDATE:
            self._maybe_win_election()
        elif self.role is Role.LEADER:
            self._maybe_commit()

    # ------------------------------------------------------------------ terms and roles

    def _step_term(self, m: Message) -> bool:
        """Apply Raft's term rules; False if the message must be dropped."""
        if m.term > self.term:
            if isinstance(m, RequestVote):
                if self._in_lease():
                    # Check-quorum lease: we heard from a live leader within an election
                    # timeout, so this candidate was cut off; ignore it (Raft thesis 4.2.3).
                    return False
                if m.pre_vote:
                    return True  # a pre-vote never changes our term
            if isinstance(m, VoteResponse) and m.pre_vote and m.granted:
                return True  # granted pre-votes carry the future term
            from_leader = isinstance(m, Append | Heartbeat | InstallSnapshot)
            self._become_follower(m.term, m.src if from_leader else "")
            return True
        if m.term < self.term:
            if isinstance(m, Append | Heartbeat | InstallSnapshot):
                # A deposed leader: tell it our term so it steps down.
                self._msgs.append(AppendResponse(self.term, self.id, m.src, False, 0, self._last_index()))
            elif isinstance(m, RequestVote) and m.pre_vote:
                self._msgs.append(VoteResponse(self.term, self.id, m.src, False, True))
            return False
        return True

    def _in_lease(self) -> bool:
        return self.leader != "" and self._election_elapsed < self.cfg.election_ticks

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = ""
        self.leader = ""
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._election_timeout = self._random_timeout()
        self._votes = {}
        self._read_round_wanted = False
        self._abort_leader_work()

    def _abort_leader_work(self) -> None:
        """Leaving leadership: answer everything waiting with NOT_LEADER (outcome unknown)."""
        for p in self._pending:
            for token in p.tokens:
                self._append_results.append(
                    AppendResult(p.client_id, p.request_seq, error=ErrorCode.NOT_LEADER, token=token)
                )
        for w in self._barriers:
            self._barrier_results.append(BarrierResult(w.request_id, error=ErrorCode.NOT_LEADER))
        for request_id in self._barriers_before_commit:
            self._barrier_results.append(BarrierResult(request_id, error=ErrorCode.NOT_LEADER))
        self._pending, self._pending_by_key = [], {}
        self._barriers, self._barriers_before_commit = [], []
        self._progress = {}
        self._uncommitted_bytes = 0

    def _become_follower(self, term: int, leader: str) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _campaign_pre_vote(self) -> None:
        """Pre-vote (Raft thesis 9.6): ask before bumping the term, so a node that was
        cut off cannot disrupt a healthy leader when it comes back."""
        self._reset(self.term)
        self.role = Role.PRE_CANDIDATE
        self._votes = {self.id: True}
        self._request_votes(pre_vote=True)

    def _campaign(self) -> None:
        self._reset(self.term + 1)
        self.role = Role.CANDIDATE
        self.vote = self.id  # counted only once durable: see _maybe_win_election
        self._votes = {}
        self._request_votes(pre_vote=False)

    def _request_votes(self, pre_vote: bool) -> None:
        term = self.term + 1 if pre_vote else self.term
        for peer in self._others:
            self._msgs.append(RequestVote(term, self.id, peer, self._last_index(), self._last_term(), pre_vote))

    def _on_request_vote(self, m: RequestVote) -> None:
        if m.pre_vote:
            grant = m.term > self.term and self._up_to_date(m.last_index, m.last_term)
            self._msgs.append(VoteResponse(m.term if grant else self.term, self.id, m.src, grant, True))
            return
        can_vote = self.vote == m.src or (self.vote == "" and self.leader == "")
        grant = can_vote and self._up_to_date(m.last_index, m.last_term)
        if grant:
            self.vote = m.src
            self._election_elapsed = 0
        # A grant promises a durable vote: it leaves after the persist.
        self._msgs_after.append(VoteResponse(self.term, self.id, m.src, grant, False))

    def _on_vote_response(self, m: VoteResponse) -> None:
        if m.pre_vote != (self.role is Role.PRE_CANDIDATE):
            return
        if self.role not in (Role.PRE_CANDIDATE, Role.CANDIDATE):
            return
        self._votes[m.src] = m.granted
        if self.role is Role.PRE_CANDIDATE:
            if sum(self._votes.values()) >= self._majority:
                self._campaign()
            elif sum(not g for g in self._votes.values()) >= self._majority:
                self._become_follower(self.term, "")
        else:
            self._maybe_win_election()

    def _maybe_win_election(self) -> None:
        """Lead only once our own vote (and thus our term) is durable: a leader whose
        term could be forgotten in a crash might vote again in it and let a second
        leader be elected in the same term."""
        own = self._hs_durable.term == self.term and self._hs_durable.vote == self.id
        grants = sum(self._votes.values()) + (1 if own else 0)
        if own and grants >= self._majority:
            self._become_leader()
        elif sum(not g for g in self._votes.values()) >= self._majority:
            self._become_follower(self.term, "")

    def _become_leader(self) -> None:
        assert self.role is Role.CANDIDATE
        self.role = Role.LEADER
        self.leader = self.id
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        # An earlier leader's proposal that reached us only in part can never complete
        # here (we only append our own entries after it), and it is not committed (commit
        # never stops inside a proposal): drop it, or our NOOP would commit half of it.
        last = self._last_index()
        if self._log and not _ends_proposal(self._log[-1]):
            last = self._log[-1].index - self._log[-1].batch_index - 1
            assert last >= self.commit, "a committed prefix never ends inside a proposal"
        self._progress = {p: Progress(match=0, next=last + 1) for p in self._others}
        self._read_seq = 0
        # Raft 5.4.2: a leader commits earlier terms' entries only through one of its own.
        noop = LogEntry(last + 1, self.term, self._position_at(last), self._timestamp_at(last), EntryKind.NOOP)
        self._append_to_log([noop])  # truncates the partial proposal, if any
        self._inherit_uncommitted()
        self._broadcast_append()

    def _inherit_uncommitted(self) -> None:
        """Track proposals already in our log but uncommitted, so retries attach to them."""
        for i in range(self.commit + 1, self._last_index() + 1):
            e = self._entry(i)
            if e.kind is EntryKind.DATA:
                self._uncommitted_bytes += _entry_bytes(e)
            # A proposal may straddle the commit index: key it by its first entry.
            if e.kind is EntryKind.DATA and e.client_id and (e.batch_index == 0 or i == self.commit + 1):
                p = PendingProposal(e.client_id, e.request_seq, i - e.batch_index + e.batch_size - 1, [])
                self._pending.append(p)
                self._pending_by_key[(e.client_id, e.request_seq)] = p

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.cfg.election_ticks:
            self._election_elapsed = 0
            if not self._check_quorum():
                self._become_follower(self.term, "")
                return
        if self._heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _check_quorum(self) -> bool:
        """Check-quorum: a leader that heard from no majority in an election timeout
        steps down, so a partitioned leader stops answering barriers and appends."""
        active = 1 + sum(1 for pr in self._progress.values() if pr.recent_active)
        for pr in self._progress.values():
            pr.recent_active = False
        return active >= self._majority

    # ------------------------------------------------------------------ proposals

    def _check_proposal(self, client_id: str, request_seq: int, datas: Sequence[bytes]) -> ErrorCode | None:
        if not datas or request_seq < 0:
            return ErrorCode.INVALID
        if len(datas) > self.cfg.proposal_entries_max:
            return ErrorCode.TOO_LARGE
        if any(len(d) + len(client_id) + 64 > self.cfg.append_bytes_max for d in datas):
            return ErrorCode.TOO_LARGE
        return None

    def _answer_retry(self, client_id: str, request_seq: int, token: int) -> bool:
        """Answer a retried request from the dedup table; True if it was a retry."""
        found = self._dedup.lookup(client_id, request_seq)
        if isinstance(found, ErrorCode):
            self._append_results.append(AppendResult(client_id, request_seq, error=found, token=token))
            return True
        if found is not None:
            appended = tuple(Appended(found.first_position + k, found.timestamp_ms) for k in range(found.count))
            self._append_results.append(AppendResult(client_id, request_seq, appended=appended, token=token))
            return True
        pending = self._pending_by_key.get((client_id, request_seq))
        if pending is not None:
            if len(pending.tokens) >= _RETRY_WAITERS_MAX:
                self._append_results.append(AppendResult(client_id, request_seq, error=ErrorCode.BUSY, token=token))
            else:
                pending.tokens.append(token)  # answered when the original commits
            return True
        return False

    def _append_proposal(
        self, client_id: str, request_seq: int, datas: Sequence[bytes], now_ms: int, token: int
    ) -> None:
        timestamp_ms = max(self._last_timestamp_ms(), now_ms)
        index, position = self._last_index(), self._tail_position()
        entries = [
            LogEntry(
                index + 1 + k,
                self.term,
                position + 1 + k,
                timestamp_ms,
                EntryKind.DATA,
                data,
                client_id,
                request_seq,
                k,
                len(datas),
            )
            for k, data in enumerate(datas)
        ]
        self._append_to_log(entries)
        self._uncommitted_bytes += sum(_entry_bytes(e) for e in entries)
        pending = PendingProposal(client_id, request_seq, index + len(datas), [token])
        self._pending.append(pending)
        if client_id:
            self._pending_by_key[(client_id, request_seq)] = pending
        self._broadcast_append()

    # ------------------------------------------------------------------ leader replication

    def _broadcast_append(self) -> None:
        for peer in self._others:
            self._send_append(peer)

    def _send_append(self, peer: str) -> None:
        """Send the follower what it lacks, within the flow-control limits."""
        pr = self._progress[peer]
        if pr.paused or len(pr.inflight) >= self.cfg.inflight_appends_max:
            return
        if pr.next > self._last_index() and pr.flow is Flow.REPLICATE:
            return
        prev_index = pr.next - 1
        prev_term = self._term_at(prev_index)
        if prev_term is None:
            # Trimmed below what the follower needs: it jumps to our snapshot.
            self._msgs.append(InstallSnapshot(self.term, self.id, peer, self._snap))
            pr.flow, pr.paused = Flow.PROBE, True
            return
        entries = self._entries_for_append(pr.next)
        self._msgs.append(Append(self.term, self.id, peer, prev_index, prev_term, entries, self.commit))
        if pr.flow is Flow.REPLICATE:
            if entries:
                pr.next = entries[-1].index + 1
                pr.inflight.append(entries[-1].index)
        else:
            pr.paused = True

    def _entries_for_append(self, lo: int) -> tuple[LogEntry, ...]:
        out: list[LogEntry] = []
        size = 0
        hi = min(self._last_index(), lo + self.cfg.append_entries_max - 1)
        for i in range(lo, hi + 1):
            e = self._entry(i)
            size += _entry_bytes(e)
            if out and size > self.cfg.append_bytes_max:
                break
            out.append(e)
        return tuple(out)

    def _on_append_response(self, m: AppendResponse) -> None:
        if self.role is not Role.LEADER:
            return
        pr = self._progress[m.src]
        pr.recent_active = True
        if m.success:
            if m.match_index > pr.match:
                pr.match = m.match_index
                pr.next = max(pr.next, m.match_index + 1)
                pr.inflight = [i for i in pr.inflight if i > m.match_index]
                self._maybe_commit()
            if pr.flow is Flow.PROBE:
                pr.flow, pr.paused, pr.inflight = Flow.REPLICATE, False, []
                pr.next = pr.match + 1
        else:
            stale = m.match_index <= pr.match or (pr.flow is Flow.PROBE and m.match_index != pr.next - 1)
            if stale:
                return  # a reject for an Append we have already moved past
            # Back off: below the rejected index, and no further than the follower's end.
            pr.next = max(pr.match + 1, min(m.match_index, m.last_index + 1))
            pr.flow, pr.paused, pr.inflight = Flow.PROBE, False, []
        self._send_append(m.src)

    def _maybe_commit(self) -> None:
        """Advance commit to the highest current-term index durable on a two-AZ majority."""
        assert self.role is Role.LEADER
        matches = {p: pr.match for p, pr in self._progress.items()}
        matches[self.id] = self._persisted_index
        for index in sorted(set(matches.values()), reverse=True):
            if index <= self.commit:
                break
            holders = [p for p, m in matches.items() if m >= index]
            if len(holders) >= self._majority and len({self._az[p] for p in holders}) >= 2:
                # The highest index with such a quorum. Appends are atomic: never stop
                # inside a proposal (ours are whole in our log, so its end is near).
                while index > self.commit and not _ends_proposal(self._entry(index)):
                    index -= 1
                # If it is from an older term, so is every lower index (terms never
                # decrease along the log): nothing to commit yet.
                if index > self.commit and self._term_at(index) == self.term:
                    self._commit_to(index)
                break

    def _commit_to(self, index: int) -> None:
        assert index <= self._last_index()
        if index <= self.commit:
            return
        old = self.commit
        self.commit = index
        for i in range(old + 1, index + 1):
            e = self._entry(i)
            self._dedup.apply(e)
            if self.role is Role.LEADER and e.kind is EntryKind.DATA:
                self._uncommitted_bytes -= _entry_bytes(e)
        if self.role is Role.LEADER:
            self._answer_committed()
            self._answer_barriers()
            if self._barriers_before_commit and self._term_at(self.commit) == self.term:
                waiting, self._barriers_before_commit = self._barriers_before_commit, []
                for request_id in waiting:
                    self._start_barrier(request_id)

    def _answer_committed(self) -> None:
        done = 0
        for p in self._pending:
            if p.last_index > self.commit:
                break
            done += 1
            # From the last entry alone: the first ones may be trimmed already, and a
            # proposal's positions are dense and share one timestamp.
            last = self._entry(p.last_index)
            appended = tuple(
                Appended(last.position - last.batch_size + 1 + k, last.timestamp_ms) for k in range(last.batch_size)
            )
            for token in p.tokens:
                self._append_results.append(AppendResult(p.client_id, p.request_seq, appended=appended, token=token))
            self._pending_by_key.pop((p.client_id, p.request_seq), None)
        del self._pending[:done]

    # ------------------------------------------------------------------ heartbeats and barriers

    def _broadcast_heartbeat(self) -> None:
        for peer in self._others:
            pr = self._progress[peer]
            # Never tell a follower a commit beyond what it is known to hold (etcd does the same).
            commit = min(pr.match, self.commit)
            self._msgs.append(Heartbeat(self.term, self.id, peer, commit, self._read_seq))

    def _start_barrier(self, request_id: int) -> None:
        self._barriers.append(BarrierWait(request_id, self._read_seq + 1))
        self._read_round_wanted = True  # one round, started by ready(), serves every waiter

    def _on_heartbeat_response(self, m: HeartbeatResponse) -> None:
        if self.role is not Role.LEADER:
            return
        pr = self._progress[m.src]
        pr.recent_active = True
        pr.read_ack = max(pr.read_ack, m.read_seq)
        if pr.flow is Flow.PROBE:
            pr.paused = False  # the probe may have been lost: try again
        elif pr.match < self._last_index() and pr.match == pr.match_at_heartbeat:
            # No progress over a whole heartbeat interval: an Append was lost. Probe again.
            pr.flow, pr.paused, pr.inflight, pr.next = Flow.PROBE, False, [], pr.match + 1
        pr.match_at_heartbeat = pr.match
        if pr.match < self._last_index():
            self._send_append(m.src)
        self._answer_barriers()

    def _answer_barriers(self) -> None:
        if not self._barriers:
            return
        acks = sorted((pr.read_ack for pr in self._progress.values()), reverse=True)
        # The leader itself counts as one; the (majority-1)-th best ack completes a round.
        confirmed = acks[self._majority - 2] if self._majority >= 2 else self._read_seq
        if self._term_at(self.commit) != self.term:
            return
        position = self._position_at(self.commit)
        keep = []
        for w in self._barriers:
            if w.read_seq <= confirmed:
                self._barrier_results.append(BarrierResult(w.request_id, position=position))
            else:
                keep.append(w)
        self._barriers = keep

    # ------------------------------------------------------------------ follower side

    def _hear_from_leader(self, m: Append | Heartbeat | InstallSnapshot) -> None:
        if self.role is not Role.FOLLOWER:
            self._become_follower(self.term, m.src)
        self.leader = m.src
        self._election_elapsed = 0

    def _on_append(self, m: Append) -> None:
        assert self.role is not Role.LEADER, "two leaders in one term"
        self._hear_from_leader(m)
        if m.prev_index < self.commit:
            # Everything up to commit is already ours (and matches: it is committed).
            self._msgs_after.append(AppendResponse(self.term, self.id, m.src, True, self.commit, self._last_index()))
            return
        if self._term_at(m.prev_index) != m.prev_term:
            self._msgs_after.append(AppendResponse(self.term, self.id, m.src, False, m.prev_index, self._last_index()))
            return
        # Log matching: the entries we already hold form a prefix of m.entries.
        new = [e for e in m.entries if self._term_at(e.index) != e.term]
        if new:
            self._append_to_log(new)
        last_new = m.prev_index + len(m.entries)
        self._commit_to(min(m.commit, last_new))
        self._msgs_after.append(AppendResponse(self.term, self.id, m.src, True, last_new, self._last_index()))

    def _on_heartbeat(self, m: Heartbeat) -> None:
        self._hear_from_leader(m)
        if m.commit <= self._last_index():
            self._commit_to(m.commit)
        self._msgs.append(HeartbeatResponse(self.term, self.id, m.src, m.read_seq, self._last_index()))

    def _on_install_snapshot(self, m: InstallSnapshot) -> None:
        self._hear_from_leader(m)
        s = m.snapshot
        if s.index <= self.commit:
            self._msgs_after.append(AppendResponse(self.term, self.id, m.src, True, self.commit, self._last_index()))
            return
        if self._term_at(s.index) == s.term:
            self._log = self._log[s.index - self._snap.index :]  # the suffix continues the same log
        else:
            self._log = []
            self._persisted_index = min(self._persisted_index, s.index)
        self._snap = s
        self._snap_to_persist = s
        if self._persist_from is not None:
            self._persist_from = max(self._persist_from, s.index + 1)
            if self._persist_from > self._last_index():
                self._persist_from = None
        self.commit = s.index
        self._dedup = DedupTable(self.cfg.dedup_clients_max, self.cfg.dedup_requests_per_client_max, s.dedup)
        self._msgs_after.append(AppendResponse(self.term, self.id, m.src, True, s.index, self._last_index()))
