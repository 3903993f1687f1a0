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
    core.advance(rd)                # after the fsync: rd's writes are durable
    ... then send rd.messages_after_persist ...

Why the split between ``messages`` and ``messages_after_persist``: a follower's append
acknowledgement and a vote grant are promises about durable state, so they may only
leave once the writes they describe are on disk. A leader's own append messages can
leave at once, in parallel with its own fsync (Raft thesis 10.2.1): the leader counts
itself towards a commit quorum only after ``advance`` reports its own persist.

Readies must be advanced in the order they were returned. A Ready with nothing to
persist may be advanced at once.

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

import enum
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from journal.api import Appended

# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class Peer:
    """A voting member of the log's replica group."""

    node_id: str
    az: str


# Committed requests remembered per client for retries (journal.client keeps its requests
# in flight within half of this: see DEDUP_WINDOW there and docs/journal.md).
DEDUP_REQUESTS_PER_CLIENT_MAX = 64


@dataclass(frozen=True, slots=True)
class Config:
    """Static configuration of one core. ``peers`` lists every member, self included."""

    node_id: str
    peers: tuple[Peer, ...]
    # An election timeout is drawn uniformly from [election_ticks, 2 * election_ticks).
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    # Flow control, per follower: entries and bytes in one Append, Appends in flight.
    append_entries_max: int = 64
    append_bytes_max: int = 1 << 20
    inflight_appends_max: int = 64
    # Proposals are refused (BUSY) while this many data bytes are uncommitted.
    uncommitted_bytes_max: int = 64 << 20
    # One proposal: at most this many entries.
    proposal_entries_max: int = 1024
    # Dedup table: clients remembered, and recent requests remembered per client.
    dedup_clients_max: int = 4096
    dedup_requests_per_client_max: int = DEDUP_REQUESTS_PER_CLIENT_MAX
    # Barriers waiting for a leadership confirmation round.
    barriers_pending_max: int = 4096
    # Results not yet taken by ready() (bounds memory if the shell stalls).
    pending_proposals_max: int = 65536

    def validate(self) -> None:
        ids = [p.node_id for p in self.peers]
        assert len(ids) == len(set(ids)), "duplicate node ids"
        assert self.node_id in ids, "node_id must be one of the peers"
        azs = {p.az for p in self.peers}
        assert len(azs) >= 2, "a commit quorum must span two AZs: configure at least two AZs"
        # A majority of nodes in pairwise distinct AZs always spans >= 2 AZs when n >= 3;
        # with several nodes per AZ the commit rule checks AZ spread explicitly.
        assert self.election_ticks > self.heartbeat_ticks >= 1
        assert self.append_entries_max >= 1 and self.append_bytes_max >= 1
        assert self.inflight_appends_max >= 1
        assert self.dedup_clients_max >= 1 and self.dedup_requests_per_client_max >= 1


# --------------------------------------------------------------------------- log


class EntryKind(enum.IntEnum):
    DATA = 0  # a client's entry; takes the next journal position
    NOOP = 1  # appended by a new leader; invisible to readers; repeats the previous position


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One Raft log entry.

    ``client_id``/``request_seq`` identify the proposal that created the entry (empty
    client_id: no dedup). All entries of one proposal share them, and ``batch_index``
    /``batch_size`` place the entry within its proposal.
    """

    index: int
    term: int
    position: int
    timestamp_ms: int
    kind: EntryKind
    data: bytes = b""
    client_id: str = ""
    request_seq: int = 0
    batch_index: int = 0
    batch_size: int = 1


@dataclass(frozen=True, slots=True)
class DedupRecord:
    """Outcome of one committed proposal, kept to answer its retries."""

    request_seq: int
    first_position: int
    count: int
    timestamp_ms: int  # every entry of one proposal carries the same timestamp


# client_id -> that client's most recent committed proposals, oldest first.
DedupState = tuple[tuple[str, tuple[DedupRecord, ...]], ...]


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """The state of the log's trimmed prefix: everything at or below ``index``.

    The journal's member snapshots (opaque blobs) live elsewhere; what replication
    needs of a trimmed prefix is only where it ends and the dedup table at that point.
    """

    index: int = 0
    term: int = 0
    position: int = 0
    timestamp_ms: int = 0
    dedup: DedupState = ()


@dataclass(frozen=True, slots=True)
class HardState:
    """What must survive a crash besides the log: Raft's currentTerm and votedFor."""

    term: int = 0
    vote: str = ""  # "" when this node has not voted in ``term``


@dataclass(frozen=True, slots=True)
class RestoredState:
    """What the shell read back from disk at start (all of it durable)."""

    hard_state: HardState = HardState()
    snapshot: SnapshotMeta = SnapshotMeta()
    entries: tuple[LogEntry, ...] = ()  # contiguous, starting at snapshot.index + 1


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class RequestVote:
    """(Pre-)vote request. For a pre-vote, ``term`` is the term the sender WOULD use."""

    term: int
    src: str
    dst: str
    last_index: int
    last_term: int
    pre_vote: bool


@dataclass(frozen=True, slots=True)
class VoteResponse:
    term: int
    src: str
    dst: str
    granted: bool
    pre_vote: bool


@dataclass(frozen=True, slots=True)
class Append:
    """Entries after (prev_index, prev_term), plus the leader's commit index."""

    term: int
    src: str
    dst: str
    prev_index: int
    prev_term: int
    entries: tuple[LogEntry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendResponse:
    """success: the follower durably holds the leader's log through ``match_index``.

    On rejection, ``last_index`` is the follower's last index: a hint for the leader's
    next probe (Raft's fast back-off, simplified).
    """

    term: int
    src: str
    dst: str
    success: bool
    match_index: int
    last_index: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader liveness; ``read_seq`` tags the leadership-confirmation round for barriers."""

    term: int
    src: str
    dst: str
    commit: int
    read_seq: int


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    term: int
    src: str
    dst: str
    read_seq: int
    last_index: int  # lets the leader notice a follower that fell behind


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """The follower needs entries the leader has trimmed: jump to ``snapshot``."""

    term: int
    src: str
    dst: str
    snapshot: SnapshotMeta


Message = RequestVote | VoteResponse | Append | AppendResponse | Heartbeat | HeartbeatResponse | InstallSnapshot


# --------------------------------------------------------------------------- results


class ErrorCode(enum.Enum):
    NOT_LEADER = "not_leader"  # retry at ``leader`` (may be ""); outcome of a pending append unknown
    POSITION_MISMATCH = "position_mismatch"  # conditional append: the tail is ``tail``
    BUSY = "busy"  # too many uncommitted bytes or pending requests: back off and retry
    DEDUP_EXPIRED = "dedup_expired"  # the retried request is older than the dedup table remembers
    TOO_LARGE = "too_large"  # more entries than proposal_entries_max / bytes than append_bytes_max
    INVALID = "invalid"  # malformed (empty batch, negative seq, ...)


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Answer to propose(client_id, request_seq, ...): committed positions or an error."""

    client_id: str
    request_seq: int
    appended: tuple[Appended, ...] = ()
    error: ErrorCode | None = None
    tail: int = 0  # POSITION_MISMATCH: the tail position
    leader: str = ""  # NOT_LEADER: the leader this node believes in ("" if unknown)
    token: int = 0  # echoes propose(token=...) for the shell's bookkeeping


@dataclass(frozen=True, slots=True)
class BarrierResult:
    """Answer to barrier(request_id): a committed position, or an error."""

    request_id: int
    position: int = 0
    error: ErrorCode | None = None
    leader: str = ""


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class Ready:
    """Everything the core asks of its shell since the previous ready().

    Persist in this order: ``snapshot`` (replaces the log prefix and discards any stored
    entry at or below snapshot.index that does not match it), then ``entries`` (if the
    first one's index is at or below the stored last index, truncate the stored log from
    there first: a new leader overwrote an uncommitted suffix), then ``hard_state``.
    """

    seq: int  # 1, 2, 3, ...: advance() must see them in this order
    hard_state: HardState | None
    snapshot: SnapshotMeta | None
    entries: tuple[LogEntry, ...]
    messages: tuple[Message, ...]  # send now
    messages_after_persist: tuple[Message, ...]  # send only after the writes above are durable
    # Committed through this index/position. May cover entries handed in this or an
    # earlier Ready and not yet fsynced locally (another quorum holds them durably).
    commit_index: int
    commit_position: int
    append_results: tuple[AppendResult, ...]
    barrier_results: tuple[BarrierResult, ...]
    role: Role
    term: int
    leader: str

    def must_persist(self) -> bool:
        return self.hard_state is not None or self.snapshot is not None or bool(self.entries)


@dataclass(frozen=True, slots=True)
class Status:
    node_id: str
    role: Role
    term: int
    leader: str
    commit_index: int
    commit_position: int
    last_index: int
    tail_position: int
    first_index: int  # lowest index still held (snapshot.index + 1)


# --------------------------------------------------------------------------- internals


class _Flow(enum.Enum):
    PROBE = "probe"  # next is a guess: one Append at a time until the follower answers
    REPLICATE = "replicate"  # next is known: stream Appends, up to inflight_appends_max


@dataclass(slots=True)
class _Progress:
    """The leader's view of one follower (etcd's tracker.Progress, reduced)."""

    match: int = 0
    next: int = 1
    flow: _Flow = _Flow.PROBE
    paused: bool = False  # PROBE: an Append is out, wait for an answer or a heartbeat
    inflight: list[int] = field(default_factory=list)  # last index of each Append in flight
    recent_active: bool = False  # heard from since the last check-quorum
    read_ack: int = 0  # highest barrier round (read_seq) it acknowledged in this term
    match_at_heartbeat: int = 0  # match at the previous heartbeat answer: detects stalls


@dataclass(slots=True)
class _Pending:
    """A proposal appended by this leader (or inherited uncommitted) awaiting commit."""

    client_id: str
    request_seq: int
    last_index: int  # of the proposal's last entry
    tokens: list[int]


@dataclass(slots=True)
class _BarrierWait:
    request_id: int
    read_seq: int


class _Dedup:
    """The replicated dedup table: a deterministic function of the committed log.

    Every node applies committed entries to it in order, so after a failover the new
    leader answers a retry with the original positions. Bounded: least recently
    active clients are forgotten first, and each client keeps its latest requests.
    """

    def __init__(self, clients_max: int, requests_max: int, state: DedupState = ()) -> None:
        self._clients_max = clients_max
        self._requests_max = requests_max
        self._table: OrderedDict[str, OrderedDict[int, DedupRecord]] = OrderedDict()
        for client_id, records in state:
            self._table[client_id] = OrderedDict((r.request_seq, r) for r in records)

    def lookup(self, client_id: str, request_seq: int) -> DedupRecord | ErrorCode | None:
        """The record of a committed request, DEDUP_EXPIRED if too old to know, else None."""
        records = self._table.get(client_id)
        if records is None:
            return None
        record = records.get(request_seq)
        if record is not None:
            return record
        if len(records) >= self._requests_max and request_seq < min(records):
            return ErrorCode.DEDUP_EXPIRED
        return None

    def apply(self, entry: LogEntry) -> None:
        """Record a committed proposal when its last entry commits."""
        if entry.kind is not EntryKind.DATA or not entry.client_id:
            return
        if entry.batch_index != entry.batch_size - 1:
            return
        records = self._table.pop(entry.client_id, None)
        if records is None:
            records = OrderedDict()
        records[entry.request_seq] = DedupRecord(
            entry.request_seq, entry.position - entry.batch_size + 1, entry.batch_size, entry.timestamp_ms
        )
        while len(records) > self._requests_max:
            records.popitem(last=False)
        self._table[entry.client_id] = records  # most recently active last
        while len(self._table) > self._clients_max:
            self._table.popitem(last=False)

    def state(self) -> DedupState:
        return tuple((client_id, tuple(records.values())) for client_id, records in self._table.items())


# Retries of one pending proposal waiting for its outcome (more get BUSY).
_RETRY_WAITERS_MAX = 64


def _ends_proposal(entry: LogEntry) -> bool:
    """True if a commit index may stop at this entry (proposals commit whole)."""
    return entry.kind is EntryKind.NOOP or entry.batch_index == entry.batch_size - 1


def _entry_bytes(entry: LogEntry) -> int:
    return len(entry.data) + len(entry.client_id) + 64  # 64: a rough per-entry overhead


# --------------------------------------------------------------------------- the core


class ReplicationCore:
    """Raft for one log, as a deterministic state machine (see the module docstring)."""

    def __init__(self, config: Config, rng: random.Random, restored: RestoredState | None = None) -> None:
        config.validate()
        restored = restored or RestoredState()
        self.cfg = config
        self.id = config.node_id
        self._rng = rng
        self._az = {p.node_id: p.az for p in config.peers}
        self._others = tuple(p.node_id for p in config.peers if p.node_id != self.id)
        self._majority = len(config.peers) // 2 + 1

        # Persistent state (Raft figure 2), as last handed to the shell ...
        self.term = restored.hard_state.term
        self.vote = restored.hard_state.vote
        self._snap = restored.snapshot
        self._log: list[LogEntry] = list(restored.entries)
        self._check_log()
        if self._last_term() > self.term:
            # Entries reached the disk but the hard state written after them did not:
            # currentTerm is never below a term in the log, and we voted in none of it.
            self.term, self.vote = self._last_term(), ""
        # ... and as known durable (advance() moves these).
        self._hs_handed = restored.hard_state
        self._hs_durable = restored.hard_state
        self._persisted_index = self._last_index()
        self._persist_from: int | None = None  # lowest index changed since the last Ready
        self._snap_to_persist: SnapshotMeta | None = None

        # Volatile state.
        self.role = Role.FOLLOWER
        self.leader = ""
        self.commit = self._snap.index
        self._dedup = _Dedup(config.dedup_clients_max, config.dedup_requests_per_client_max, self._snap.dedup)
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._election_timeout = self._random_timeout()
        self._votes: dict[str, bool] = {}

        # Leader state.
        self._progress: dict[str, _Progress] = {}
        self._pending: list[_Pending] = []  # in index order
        self._pending_by_key: dict[tuple[str, int], _Pending] = {}
        self._uncommitted_bytes = 0
        self._read_seq = 0  # last barrier round started
        self._read_round_wanted = False
        self._barriers: list[_BarrierWait] = []
        self._barriers_before_commit: list[int] = []  # wait for this term's first commit

        # Outputs, drained by ready().
        self._msgs: list[Message] = []
        self._msgs_after: list[Message] = []
        self._append_results: list[AppendResult] = []
        self._barrier_results: list[BarrierResult] = []
        self._ready_seq = 0
        self._advanced_seq = 0
        self._last_ready_commit = self.commit
        self._last_ready_soft = (self.role, self.term, self.leader)

    # ------------------------------------------------------------------ log helpers

    def _check_log(self) -> None:
        prev_index, prev_position, prev_ts = self._snap.index, self._snap.position, self._snap.timestamp_ms
        prev_term = self._snap.term
        for e in self._log:
            assert e.index == prev_index + 1, "log must be contiguous after the snapshot"
            assert e.term >= prev_term and e.timestamp_ms >= prev_ts
            assert e.position == prev_position + (1 if e.kind is EntryKind.DATA else 0)
            prev_index, prev_position, prev_ts, prev_term = e.index, e.position, e.timestamp_ms, e.term

    def _last_index(self) -> int:
        return self._snap.index + len(self._log)

    def _last_term(self) -> int:
        return self._log[-1].term if self._log else self._snap.term

    def _tail_position(self) -> int:
        return self._log[-1].position if self._log else self._snap.position

    def _last_timestamp_ms(self) -> int:
        return self._log[-1].timestamp_ms if self._log else self._snap.timestamp_ms

    def _term_at(self, index: int) -> int | None:
        """Term of the entry at index; None if trimmed away or beyond the end."""
        if index == self._snap.index:
            return self._snap.term
        offset = index - self._snap.index - 1
        if 0 <= offset < len(self._log):
            return self._log[offset].term
        return None

    def _entry(self, index: int) -> LogEntry:
        offset = index - self._snap.index - 1
        assert 0 <= offset < len(self._log), (index, self._snap.index, len(self._log))
        return self._log[offset]

    def _position_at(self, index: int) -> int:
        return self._snap.position if index == self._snap.index else self._entry(index).position

    def _timestamp_at(self, index: int) -> int:
        return self._snap.timestamp_ms if index == self._snap.index else self._entry(index).timestamp_ms

    def _append_to_log(self, entries: Sequence[LogEntry]) -> None:
        """Append entries, truncating a conflicting (never committed) suffix first."""
        if not entries:
            return
        first = entries[0].index
        assert first > self.commit, "a committed entry is never overwritten"
        assert self._snap.index < first <= self._last_index() + 1
        del self._log[first - self._snap.index - 1 :]
        self._log.extend(entries)
        self._persisted_index = min(self._persisted_index, first - 1)
        self._persist_from = first if self._persist_from is None else min(self._persist_from, first)

    def _up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft 5.4.1: a candidate's log is at least as up to date as ours."""
        return (last_term, last_index) >= (self._last_term(), self._last_index())

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
        dedup = _Dedup(self.cfg.dedup_clients_max, self.cfg.dedup_requests_per_client_max, self._snap.dedup)
        for i in range(self._snap.index + 1, index + 1):
            dedup.apply(self._entry(i))
        e = self._entry(index)
        self._log = self._log[index - self._snap.index :]
        self._snap = SnapshotMeta(index, e.term, e.position, e.timestamp_ms, dedup.state())
        self._snap_to_persist = self._snap
        if self._persist_from is not None and self._persist_from <= index:
            # Not handed to the shell yet, and now covered by the snapshot: write what remains.
            self._persist_from = index + 1 if self._log else None

    def has_ready(self) -> bool:
        return bool(
            self._read_round_wanted
            or self._msgs
            or self._msgs_after
            or self._append_results
            or self._barrier_results
            or self._persist_from is not None
            or self._snap_to_persist is not None
            or self._hs_handed.term != self.term
            or self._hs_handed.vote != self.vote
            or self._last_ready_commit != self.commit
            or self._last_ready_soft != (self.role, self.term, self.leader)
        )

    def ready(self) -> Ready:
        """Hand over (and forget) everything pending: writes, messages, answers."""
        if self._read_round_wanted:
            self._read_round_wanted = False
            self._read_seq += 1
            self._broadcast_heartbeat()
        hs = HardState(self.term, self.vote)
        entries: tuple[LogEntry, ...] = ()
        if self._persist_from is not None:
            entries = tuple(self._log[self._persist_from - self._snap.index - 1 :])
        self._ready_seq += 1
        rd = Ready(
            seq=self._ready_seq,
            hard_state=hs if hs != self._hs_handed else None,
            snapshot=self._snap_to_persist,
            entries=entries,
            messages=tuple(self._msgs),
            messages_after_persist=tuple(self._msgs_after),
            commit_index=self.commit,
            commit_position=self._position_at(self.commit),
            append_results=tuple(self._append_results),
            barrier_results=tuple(self._barrier_results),
            role=self.role,
            term=self.term,
            leader=self.leader,
        )
        self._hs_handed = hs
        self._persist_from = None
        self._snap_to_persist = None
        self._msgs, self._msgs_after = [], []
        self._append_results, self._barrier_results = [], []
        self._last_ready_commit = self.commit
        self._last_ready_soft = (self.role, self.term, self.leader)
        return rd

    def advance(self, rd: Ready) -> None:
        """The shell reports that rd's writes are durable (readies advance in order)."""
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

    def status(self) -> Status:
        return Status(
            node_id=self.id,
            role=self.role,
            term=self.term,
            leader=self.leader,
            commit_index=self.commit,
            commit_position=self._position_at(self.commit),
            last_index=self._last_index(),
            tail_position=self._tail_position(),
            first_index=self._snap.index + 1,
        )

    def peer_match_indexes(self) -> dict[str, int]:
        """A leader's view: the index through which each follower durably holds the log (empty unless leading)."""
        return {peer: pr.match for peer, pr in self._progress.items()}

    def log_entries(self, lo: int, hi: int) -> list[LogEntry]:
        """Entries with lo <= index <= hi still held in memory (for tests and the simulator)."""
        lo = max(lo, self._snap.index + 1)
        hi = min(hi, self._last_index())
        return self._log[lo - self._snap.index - 1 : hi - self._snap.index] if lo <= hi else []

    @property
    def snapshot_meta(self) -> SnapshotMeta:
        return self._snap

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

    def _random_timeout(self) -> int:
        return self.cfg.election_ticks + self._rng.randrange(self.cfg.election_ticks)

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
        self._progress = {p: _Progress(match=0, next=last + 1) for p in self._others}
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
                p = _Pending(e.client_id, e.request_seq, i - e.batch_index + e.batch_size - 1, [])
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
        pending = _Pending(client_id, request_seq, index + len(datas), [token])
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
        if pr.next > self._last_index() and pr.flow is _Flow.REPLICATE:
            return
        prev_index = pr.next - 1
        prev_term = self._term_at(prev_index)
        if prev_term is None:
            # Trimmed below what the follower needs: it jumps to our snapshot.
            self._msgs.append(InstallSnapshot(self.term, self.id, peer, self._snap))
            pr.flow, pr.paused = _Flow.PROBE, True
            return
        entries = self._entries_for_append(pr.next)
        self._msgs.append(Append(self.term, self.id, peer, prev_index, prev_term, entries, self.commit))
        if pr.flow is _Flow.REPLICATE:
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
            if pr.flow is _Flow.PROBE:
                pr.flow, pr.paused, pr.inflight = _Flow.REPLICATE, False, []
                pr.next = pr.match + 1
        else:
            stale = m.match_index <= pr.match or (pr.flow is _Flow.PROBE and m.match_index != pr.next - 1)
            if stale:
                return  # a reject for an Append we have already moved past
            # Back off: below the rejected index, and no further than the follower's end.
            pr.next = max(pr.match + 1, min(m.match_index, m.last_index + 1))
            pr.flow, pr.paused, pr.inflight = _Flow.PROBE, False, []
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
        self._barriers.append(_BarrierWait(request_id, self._read_seq + 1))
        self._read_round_wanted = True  # one round, started by ready(), serves every waiter

    def _on_heartbeat_response(self, m: HeartbeatResponse) -> None:
        if self.role is not Role.LEADER:
            return
        pr = self._progress[m.src]
        pr.recent_active = True
        pr.read_ack = max(pr.read_ack, m.read_seq)
        if pr.flow is _Flow.PROBE:
            pr.paused = False  # the probe may have been lost: try again
        elif pr.match < self._last_index() and pr.match == pr.match_at_heartbeat:
            # No progress over a whole heartbeat interval: an Append was lost. Probe again.
            pr.flow, pr.paused, pr.inflight, pr.next = _Flow.PROBE, False, [], pr.match + 1
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
        self._dedup = _Dedup(self.cfg.dedup_clients_max, self.cfg.dedup_requests_per_client_max, s.dedup)
        self._msgs_after.append(AppendResponse(self.term, self.id, m.src, True, s.index, self._last_index()))
