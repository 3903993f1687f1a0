"""What goes in and out of the replication core: peer messages, results, and the Ready.

The core (journal.replication) takes messages in ``step`` and hands everything
it asks of its shell out in a ``Ready``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from journal.api import Appended
from journal.replication_log import HardState, LogEntry, SnapshotMeta

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

    seq: int  # 1, 2, 3, ...: advance() must see them in this order; 0: ready(writes=False), no advance()
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
