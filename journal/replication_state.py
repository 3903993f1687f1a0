"""The replication core's configuration and state, and queries of its log.

journal.replication.ReplicationCore derives from CoreState and holds the
transitions (elections, replication, commit, barriers); this module holds what
they act on: the configuration, Raft's persistent and volatile state, the
leader's view of each follower, and the read-only helpers over the log.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from journal.dedup import DEDUP_REQUESTS_PER_CLIENT_MAX, DedupTable
from journal.replication_io import AppendResult, BarrierResult, Message, Role, Status
from journal.replication_log import EntryKind, LogEntry, RestoredState, SnapshotMeta

# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class Peer:
    """A voting member of the log's replica group."""

    node_id: str
    az: str


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


# --------------------------------------------------------------------------- internals


class Flow(enum.Enum):
    PROBE = "probe"  # next is a guess: one Append at a time until the follower answers
    REPLICATE = "replicate"  # next is known: stream Appends, up to inflight_appends_max


@dataclass(slots=True)
class Progress:
    """The leader's view of one follower (etcd's tracker.Progress, reduced)."""

    match: int = 0
    next: int = 1
    flow: Flow = Flow.PROBE
    paused: bool = False  # PROBE: an Append is out, wait for an answer or a heartbeat
    inflight: list[int] = field(default_factory=list)  # last index of each Append in flight
    recent_active: bool = False  # heard from since the last check-quorum
    read_ack: int = 0  # highest barrier round (read_seq) it acknowledged in this term
    match_at_heartbeat: int = 0  # match at the previous heartbeat answer: detects stalls


@dataclass(slots=True)
class PendingProposal:
    """A proposal appended by this leader (or inherited uncommitted) awaiting commit."""

    client_id: str
    request_seq: int
    last_index: int  # of the proposal's last entry
    tokens: list[int]


@dataclass(slots=True)
class BarrierWait:
    request_id: int
    read_seq: int


# --------------------------------------------------------------------------- state


class CoreState:
    """The state of one core and the queries over its log (no transitions here)."""

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
        self._dedup = DedupTable(config.dedup_clients_max, config.dedup_requests_per_client_max, self._snap.dedup)
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._election_timeout = self._random_timeout()
        self._votes: dict[str, bool] = {}

        # Leader state.
        self._progress: dict[str, Progress] = {}
        self._pending: list[PendingProposal] = []  # in index order
        self._pending_by_key: dict[tuple[str, int], PendingProposal] = {}
        self._uncommitted_bytes = 0
        self._read_seq = 0  # last barrier round started
        self._read_round_wanted = False
        self._barriers: list[BarrierWait] = []
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

    @property
    def persisted_index(self) -> int:
        """The highest index durable here as the log now stands (advanced Readies only; lowered when a
        suffix is overwritten or the log replaced by a snapshot): with commit, what the shell may serve."""
        return self._persisted_index

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

    def _random_timeout(self) -> int:
        return self.cfg.election_ticks + self._rng.randrange(self.cfg.election_ticks)
