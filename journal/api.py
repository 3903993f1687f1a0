"""The journal interface that members program against.

Two implementations stand behind it: the local single-node journal
(journal.local.LocalJournal, segment files on one disk) and the replicated
multi-AZ journal client (journal.client). A member switches between them by
configuration only.

Positions are 1-based and dense within a log: the first entry of a log is at
position 1, and position 0 means "nothing". Timestamps are milliseconds
assigned by the log's sequencer; within a log they never move backwards, so
members may use them to decide lease expiry deterministically.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Entry:
    """One committed journal entry."""

    position: int
    timestamp_ms: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an appended entry landed."""

    position: int
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class LogStatus:
    epoch: int  # the sequencer's epoch (raft term); never decreases
    committed: int  # highest committed position
    leader: str  # identity of the current sequencer ("" when unknown)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A member snapshot held in memory: fine while it is small (see SnapshotStream for large ones)."""

    position: int  # the blob reflects every entry at or below this position
    blob: bytes


@dataclass(frozen=True, slots=True)
class SnapshotStream:
    """A member snapshot produced chunk by chunk (any sizes; the journal re-chunks): never all in memory."""

    position: int
    chunks: AsyncIterable[bytes]


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    """A member snapshot already in a file (its whole content is the blob); read in chunks."""

    position: int
    path: str


SnapshotSource = Snapshot | SnapshotStream | SnapshotFile


class SnapshotReader(Protocol):
    """The journal's current snapshot, opened: its header, then its blob in bounded chunks.

    chunks() checks the blob's size and CRC as it goes and raises JournalError after the last chunk if
    they do not match, so a caller installs what it received only once the iteration ended normally.
    Reading does not stop the journal: a newer snapshot may be put meanwhile (this one stays readable
    until closed, or fails cleanly with JournalError: open again).
    """

    position: int
    size_bytes: int
    crc32: int

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


async def read_all(reader: SnapshotReader) -> bytes:
    """The whole blob (small snapshots only: it is all in memory at the end), verified."""
    out = bytearray()
    try:
        async for chunk in reader.chunks():
            out += chunk
    finally:
        await reader.close()
    return bytes(out)


class JournalError(Exception):
    """Base class of journal failures a caller may see."""


class PositionMismatch(JournalError):
    """A conditional append found a tail other than the expected one."""

    def __init__(self, tail: int) -> None:
        super().__init__(f"expected position does not match the log's tail {tail}")
        self.tail = tail


class PositionTrimmed(JournalError):
    """A read asked for entries that were trimmed; fetch the snapshot instead."""

    def __init__(self, position: int, first_position: int) -> None:
        super().__init__(f"position {position} was trimmed; the log starts at {first_position}")
        self.position = position
        self.first_position = first_position


class Unavailable(JournalError):
    """The journal cannot commit right now (no quorum, shutting down, ...)."""


class Journal(Protocol):
    async def append(
        self, log: str, entries: Sequence[bytes], expected_position: int | None = None
    ) -> list[Appended]:
        """Append entries atomically, in order; return once they are committed.

        With expected_position set, the append succeeds only if the log's tail
        (its last position) equals it; otherwise PositionMismatch(tail).
        """
        ...

    def read(self, log: str, from_position: int) -> AsyncIterator[list[Entry]]:
        """Committed entries from from_position on, in batches, following the tail forever."""
        ...

    async def barrier(self, log: str) -> int:
        """A committed position P such that every append acknowledged before this call is <= P."""
        ...

    async def status(self, log: str) -> LogStatus: ...

    async def trim(self, log: str, below: int) -> None:
        """Allow the journal to discard entries below this position (a snapshot covers them)."""
        ...

    async def snapshot_put(self, log: str, snapshot: SnapshotSource) -> None:
        """Store a member snapshot durably, streamed in bounded chunks, checked end to end (CRC).

        An older snapshot than the stored one is ignored (trims may rely on the newer). A failure
        leaves the previous snapshot in place; a put interrupted by a lost connection or a leader
        change resumes or starts again by itself, within the journal's request timeout.
        """
        ...

    async def snapshot_open(self, log: str) -> SnapshotReader | None:
        """The newest stored member snapshot, to read in chunks (None if there is none)."""
        ...

    async def snapshot_get(self, log: str) -> Snapshot | None:
        """snapshot_open, read whole: for small snapshots."""
        ...

    async def close(self) -> None: ...
