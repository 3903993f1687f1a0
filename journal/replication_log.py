"""The replication core's log and what it persists: entries, the trimmed prefix, hard state.

These are the values the shell writes to disk and reads back at start
(journal.node_storage), and the simulator keeps in memory (journal.sim).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
