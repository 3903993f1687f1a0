"""The local single-node journal: segment files on one disk.

Implements journal.api.Journal for one process. Each log lives in its own
directory under ``data_dir/logs``. Appends to a log go through a bounded
queue to one writer task, which writes everything pending, issues one fsync
(group commit) in a worker thread, then acknowledges all of it at once.

Durability follows the fsync policy:

- ``always`` (default): every acknowledged append has been fsynced.
- ``batch``: as ``always``, but fsyncs are spaced at least
  ``fsync_interval_ms`` apart; appends wait for the next one (larger groups,
  more latency).
- ``never``: acknowledged once written to the OS page cache. UNSAFE: a
  machine crash loses acknowledged entries. Opt-in for tests and tmpfs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from journal.api import (
    Appended,
    Entry,
    LogStatus,
    PositionMismatch,
    Snapshot,
    SnapshotSource,
    Unavailable,
    read_all,
)
from journal.segments import (
    FSYNC_POLICIES,
    RECORD_PAYLOAD_BYTES_MAX,
    SEGMENT_BYTES_MAX_DEFAULT,
    FsyncPolicy,
    Record,
    SegmentLog,
    fsync_dir,
)
from journal.snapshots import (
    SNAPSHOT_CHUNK_BYTES,
    SNAPSHOT_FILE,
    CrcCheck,
    SnapshotFileReader,
    SnapshotWriter,
    open_reader,
    remove_temporaries,
    source_chunks,
)

log = logging.getLogger(__name__)

LOG_NAME_BYTES_MAX = 200
APPEND_ENTRIES_MAX = 10_000  # entries in one append call
QUEUE_ENTRIES_MAX_DEFAULT = 50_000  # entries waiting for the writer of one log (backpressure beyond)
QUEUE_BYTES_MAX_DEFAULT = 64 * 1024 * 1024  # bytes waiting for the writer of one log (backpressure beyond)
WRITE_BATCH_BYTES_MAX = 8 * 1024 * 1024  # bytes the writer takes in one group
TAIL_CACHE_ENTRIES_MAX_DEFAULT = 8192
TAIL_CACHE_BYTES_MAX_DEFAULT = 16 * 1024 * 1024
READ_BATCH_ENTRIES_MAX = 1024
READ_BATCH_BYTES_MAX = 4 * 1024 * 1024

EPOCH_FILE = "epoch"


def atomic_write(path: str, data: bytes) -> None:
    """Write a file so that a crash leaves either the old or the new content."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def log_dir_name(name: str) -> str:
    """A file name for a log name; injective, so two logs never share a directory."""
    if not name or len(name.encode()) > LOG_NAME_BYTES_MAX:
        raise ValueError(f"log name must be 1..{LOG_NAME_BYTES_MAX} bytes")
    return urllib.parse.quote(name, safe="-_").replace(".", "%2E")


@dataclass(slots=True)
class _Pending:
    entries: Sequence[bytes]
    expected_position: int | None
    future: asyncio.Future[list[Appended]]
    size_bytes: int


@dataclass(slots=True)
class _Log:
    name: str
    directory: str
    segments: SegmentLog
    committed: int
    last_timestamp_ms: int
    queue: deque[_Pending] = field(default_factory=deque)
    queued_entries: int = 0
    wake_writer: asyncio.Event = field(default_factory=asyncio.Event)
    space: asyncio.Event = field(default_factory=asyncio.Event)  # set when the queue has room
    committed_event: asyncio.Event = field(default_factory=asyncio.Event)  # replaced on each commit
    writer: asyncio.Task[None] | None = None
    cache: deque[Entry] = field(default_factory=deque)  # the newest committed entries
    cache_bytes: int = 0
    last_fsync_monotonic: float = 0.0
    failed: BaseException | None = None
    snapshot_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued_bytes: int = 0
    # Writes and fsyncs run on the log's own thread: a flooded log never holds a worker of a
    # pool shared with the other logs.
    write_thread: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal-writer")
    )


class FileSnapshotReader:
    """journal.api.SnapshotReader over an open snapshot file (a newer snapshot renamed over it meanwhile
    does not disturb it)."""

    def __init__(self, f: SnapshotFileReader, chunk_bytes: int = SNAPSHOT_CHUNK_BYTES) -> None:
        self._file = f
        self.position, self.size_bytes, self.crc32 = f.info.position, f.info.size_bytes, f.info.crc32
        self.chunk_bytes = chunk_bytes

    async def chunks(self) -> AsyncIterator[bytes]:
        check = CrcCheck(self._file.info, self._file.path)
        offset = 0
        while offset < self.size_bytes:
            data = await asyncio.to_thread(self._file.read_at, offset, self.chunk_bytes)
            offset += len(data)
            check.add(data)
            yield data
        check.done()

    async def close(self) -> None:
        self._file.close()


class LocalJournal:
    """journal.api.Journal on local segment files."""

    # One writer per log writes and fsyncs one group at a time, and takes everything queued as the
    # next group: a second append in flight only waits in its queue. A proposer holds what arrives
    # meanwhile and sends it as one append instead (kvstore.member.proposer), which saves the
    # per-append work (a task, a future, a timer) that otherwise ran for nearly every entry.
    appends_in_flight_useful = 1

    def __init__(
        self,
        data_dir: str,
        fsync: FsyncPolicy = "always",
        *,
        fsync_interval_ms: int = 2,
        segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT,
        queue_entries_max: int = QUEUE_ENTRIES_MAX_DEFAULT,
        queue_bytes_max: int = QUEUE_BYTES_MAX_DEFAULT,
        tail_cache_entries_max: int = TAIL_CACHE_ENTRIES_MAX_DEFAULT,
        tail_cache_bytes_max: int = TAIL_CACHE_BYTES_MAX_DEFAULT,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy must be one of {FSYNC_POLICIES}, not {fsync!r}")
        assert fsync_interval_ms >= 0 and queue_entries_max >= 1
        if fsync == "never":
            log.warning("journal %s: fsync=never is UNSAFE: a machine crash loses acknowledged entries", data_dir)
        self.data_dir = data_dir
        self.fsync_policy: FsyncPolicy = fsync
        self.fsync_interval_ms = fsync_interval_ms
        self.segment_bytes_max = segment_bytes_max
        self.queue_entries_max = queue_entries_max
        self.queue_bytes_max = queue_bytes_max
        self.tail_cache_entries_max = tail_cache_entries_max
        self.tail_cache_bytes_max = tail_cache_bytes_max
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._logs: dict[str, _Log] = {}
        self._opening: dict[str, asyncio.Future[_Log]] = {}
        self._closed = False
        self.disk_reads = 0  # read batches served from segment files, not the tail cache
        os.makedirs(os.path.join(data_dir, "logs"), exist_ok=True)
        # The epoch goes up by one per open, so it never decreases across restarts.
        epoch_path = os.path.join(data_dir, EPOCH_FILE)
        previous = 0
        if os.path.exists(epoch_path):
            with open(epoch_path, "rb") as f:
                previous = int(f.read().decode() or "0")
        self.epoch = previous + 1
        atomic_write(epoch_path, str(self.epoch).encode())

    # ------------------------------------------------------------ plumbing

    @property
    def fsync_count(self) -> int:
        """Data fsyncs issued over all open logs (tests check group commit with it)."""
        return sum(lg.segments.fsync_count for lg in self._logs.values())

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("journal is closed")

    async def _log(self, name: str) -> _Log:
        lg = self._logs.get(name)
        if lg is not None:
            return lg
        self._check_open()
        opening = self._opening.get(name)
        if opening is not None:
            return await asyncio.shield(opening)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_Log] = loop.create_future()
        self._opening[name] = fut
        try:
            directory = os.path.join(self.data_dir, "logs", log_dir_name(name))
            segments = await asyncio.to_thread(
                SegmentLog, directory, fsync=self.fsync_policy, segment_bytes_max=self.segment_bytes_max
            )
            await asyncio.to_thread(remove_temporaries, directory)
            if segments.truncated_bytes_on_open:
                log.warning("log %r: dropped a torn tail of %d bytes on open", name, segments.truncated_bytes_on_open)
            lg = _Log(name, directory, segments, segments.last_position, segments.last_timestamp_ms)
            lg.space.set()
            lg.writer = asyncio.create_task(self._writer(lg), name=f"journal-writer-{name}")
            self._logs[name] = lg
            fut.set_result(lg)
            return lg
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters re-raise it
            raise
        finally:
            del self._opening[name]

    # -------------------------------------------------------------- append

    async def append(self, log: str, entries: Sequence[bytes], expected_position: int | None = None) -> list[Appended]:
        if not entries:
            raise ValueError("append needs at least one entry")
        if len(entries) > APPEND_ENTRIES_MAX:
            raise ValueError(f"append takes at most {APPEND_ENTRIES_MAX} entries")
        size_bytes = 0
        for e in entries:
            if not isinstance(e, bytes | bytearray | memoryview):
                raise TypeError("entries must be bytes")
            if len(e) > RECORD_PAYLOAD_BYTES_MAX:
                raise ValueError(f"entry of {len(e)} bytes is over the limit of {RECORD_PAYLOAD_BYTES_MAX}")
            size_bytes += len(e)
        lg = await self._log(log)
        # Backpressure, per log: wait while this log's queue is full (an
        # oversized single request is let in alone so it cannot wait forever).
        while lg.queued_entries > 0 and (
            lg.queued_entries + len(entries) > self.queue_entries_max
            or lg.queued_bytes + size_bytes > self.queue_bytes_max
        ):
            lg.space.clear()
            await lg.space.wait()
            self._check_open()
        if lg.failed is not None:
            raise Unavailable(f"log {log!r} failed: {lg.failed}")
        self._check_open()
        fut: asyncio.Future[list[Appended]] = asyncio.get_running_loop().create_future()
        lg.queue.append(_Pending([bytes(e) for e in entries], expected_position, fut, size_bytes))
        lg.queued_entries += len(entries)
        lg.queued_bytes += size_bytes
        lg.wake_writer.set()
        return await fut

    async def _writer(self, lg: _Log) -> None:
        while True:
            if not lg.queue:
                if self._closed:
                    return
                lg.wake_writer.clear()
                await lg.wake_writer.wait()
                continue
            if self.fsync_policy == "batch":
                # Space fsyncs out; appends arriving meanwhile join this group.
                wait_s = lg.last_fsync_monotonic + self.fsync_interval_ms / 1000 - time.monotonic()
                if wait_s > 0 and not self._closed:
                    await asyncio.sleep(wait_s)
            batch: list[_Pending] = []
            batch_bytes = 0
            while lg.queue and (not batch or batch_bytes + lg.queue[0].size_bytes <= WRITE_BATCH_BYTES_MAX):
                p = lg.queue.popleft()
                lg.queued_entries -= len(p.entries)
                lg.queued_bytes -= p.size_bytes
                batch.append(p)
                batch_bytes += p.size_bytes
            lg.space.set()
            await self._write_group(lg, batch)

    async def _write_group(self, lg: _Log, batch: list[_Pending]) -> None:
        records: list[Record] = []
        results: list[tuple[_Pending, list[Appended] | BaseException]] = []
        tail = lg.segments.last_position
        ts = lg.last_timestamp_ms
        for p in batch:
            if p.future.cancelled():
                continue  # the caller gave up before anything was written
            if p.expected_position is not None and p.expected_position != tail:
                results.append((p, PositionMismatch(tail)))
                continue
            # Never backwards, even if the wall clock is.
            ts = max(ts, self._clock_ms())
            appended: list[Appended] = []
            for data in p.entries:
                tail += 1
                records.append(Record(tail, self.epoch, ts, data))
                appended.append(Appended(tail, ts))
            results.append((p, appended))
        if records:
            if lg.failed is not None:
                for p, _ in results:
                    if not p.future.done():
                        p.future.set_exception(Unavailable(f"log {lg.name!r} failed: {lg.failed}"))
                return
            try:
                await asyncio.get_running_loop().run_in_executor(
                    lg.write_thread, self._write_and_sync, lg.segments, records
                )
            except BaseException as e:  # an I/O error: after a failed fsync nothing is certain
                log.exception("log %r: write failed; refusing further appends", lg.name)
                lg.failed = e
                for p, _ in results:
                    if not p.future.done():
                        p.future.set_exception(Unavailable(f"log {lg.name!r} failed: {e}"))
                if not isinstance(e, Exception):
                    raise
                return
            lg.last_fsync_monotonic = time.monotonic()
            lg.last_timestamp_ms = ts
            assert lg.segments.synced_position == tail
            lg.committed = tail
            for r in records:
                self._cache_add(lg, Entry(r.position, r.timestamp_ms, r.payload))
            lg.committed_event.set()
            lg.committed_event = asyncio.Event()
        for p, result in results:
            if p.future.done():
                continue
            if isinstance(result, BaseException):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)

    @staticmethod
    def _write_and_sync(segments: SegmentLog, records: list[Record]) -> None:
        segments.append(records)
        segments.sync()

    def _cache_add(self, lg: _Log, entry: Entry) -> None:
        lg.cache.append(entry)
        lg.cache_bytes += len(entry.data)
        while lg.cache and (len(lg.cache) > self.tail_cache_entries_max or lg.cache_bytes > self.tail_cache_bytes_max):
            lg.cache_bytes -= len(lg.cache.popleft().data)

    # ---------------------------------------------------------------- read

    async def read(self, log: str, from_position: int) -> AsyncIterator[list[Entry]]:
        if from_position < 1:
            raise ValueError("positions start at 1")
        lg = await self._log(log)
        position = from_position
        while True:
            self._check_open()
            if position > lg.committed:
                event = lg.committed_event
                if position > lg.committed:
                    await event.wait()
                continue
            batch = self._from_cache(lg, position)
            if batch is None:
                self.disk_reads += 1
                records = await asyncio.to_thread(
                    lg.segments.read,
                    position,
                    min(lg.committed, position + READ_BATCH_ENTRIES_MAX - 1),
                    READ_BATCH_BYTES_MAX,
                )
                batch = [Entry(r.position, r.timestamp_ms, r.payload) for r in records]
            assert batch and batch[0].position == position, (position, batch[:1])
            position = batch[-1].position + 1
            yield batch

    @staticmethod
    def _from_cache(lg: _Log, position: int) -> list[Entry] | None:
        if not lg.cache or position < lg.cache[0].position:
            return None
        start = position - lg.cache[0].position
        end = min(len(lg.cache), start + READ_BATCH_ENTRIES_MAX)
        batch = [lg.cache[i] for i in range(start, end)]
        return batch or None

    # ---------------------------------------------------- barrier / status

    async def barrier(self, log: str) -> int:
        # Acknowledgements happen only after `committed` moves, so the
        # committed position already covers every acknowledged append.
        lg = await self._log(log)
        return lg.committed

    async def status(self, log: str) -> LogStatus:
        lg = await self._log(log)
        return LogStatus(epoch=self.epoch, committed=lg.committed, leader="local")

    async def trim(self, log: str, below: int) -> None:
        lg = await self._log(log)
        below = min(below, lg.committed + 1)
        await asyncio.to_thread(lg.segments.trim, below)

    # ------------------------------------------------------------ snapshots

    async def snapshot_put(self, log: str, snapshot: SnapshotSource) -> None:
        lg = await self._log(log)
        if snapshot.position > lg.committed:
            raise ValueError(f"snapshot position {snapshot.position} is past the committed {lg.committed}")
        writer = await asyncio.to_thread(SnapshotWriter, lg.directory, snapshot.position)
        try:
            async for chunk in source_chunks(snapshot, SNAPSHOT_CHUNK_BYTES):
                await asyncio.to_thread(writer.write, chunk)
            await asyncio.to_thread(writer.finish)
        except BaseException:
            await asyncio.to_thread(writer.abort)
            raise
        async with lg.snapshot_lock:  # only the rename is serialised: puts write their files side by side
            await asyncio.to_thread(writer.install)  # an older one than the current is dropped

    async def snapshot_open(self, log: str) -> FileSnapshotReader | None:
        lg = await self._log(log)
        async with lg.snapshot_lock:
            f = await asyncio.to_thread(open_reader, os.path.join(lg.directory, SNAPSHOT_FILE))
        return None if f is None else FileSnapshotReader(f)

    async def snapshot_get(self, log: str) -> Snapshot | None:
        reader = await self.snapshot_open(log)
        return None if reader is None else Snapshot(reader.position, await read_all(reader))

    # ---------------------------------------------------------------- close

    async def close(self) -> None:
        """Flush what is queued, stop the writers, close the files."""
        if self._closed:
            return
        self._closed = True
        for lg in list(self._logs.values()):
            lg.wake_writer.set()
            lg.space.set()
            lg.committed_event.set()  # wake readers so they see the close
        for lg in list(self._logs.values()):
            if lg.writer is not None:
                await lg.writer
            await asyncio.to_thread(lg.segments.close)
            lg.write_thread.shutdown(wait=False)
        self._logs.clear()
