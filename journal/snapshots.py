"""Member snapshots on disk, in bounded chunks: the file format, a writer and a reader.

A snapshot file is ``header | blob`` where the header is (magic, position,
blob length, crc32(blob)). It is written to a temporary file chunk by chunk
(the CRC is computed on the way), its header filled in last, fsynced, then
renamed over the current snapshot if it is not older: a crash leaves the old
snapshot or the new one, and at worst a temporary file that the next start
removes. A reader keeps its file open, so a newer snapshot renamed over it
does not disturb a read in progress.

Nothing here holds more than one chunk in memory. The functions are blocking
(plain file I/O): the asyncio callers run them in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import threading
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from journal.api import JournalError, Snapshot, SnapshotFile, SnapshotSource, SnapshotStream
from journal.segments import fsync_dir

SNAPSHOT_MAGIC = b"KVSNAP01"
SNAPSHOT_HEADER = struct.Struct("<8sQQI")  # magic, position, blob length, crc32(blob)
SNAPSHOT_FILE = "snapshot"
SNAPSHOT_TMP_PREFIX = "snapshot.tmp-"
SNAPSHOT_CHUNK_BYTES = 4 * 1024 * 1024  # one chunk in memory at a time, one frame on the wire
# Written bytes are flushed (fdatasync) and dropped from the page cache every this many: a snapshot of
# any size never leaves more dirty pages than this for the next fsync on the disk to wait behind (the
# journal's own, which a put waits for: 350 ms behind a 330 MB snapshot's single final fsync), and never
# fills the page cache (at 20 GB the state on tmpfs needs that memory).
SNAPSHOT_SYNC_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    position: int
    size_bytes: int  # of the blob
    crc32: int  # of the blob


def chunk_bytes_for(frame_bytes_max: int) -> int:
    """The chunk size that fits a frame of frame_bytes_max with room for the request around it."""
    return max(1, min(SNAPSHOT_CHUNK_BYTES, frame_bytes_max // 2))


def read_info(path: str) -> SnapshotInfo | None:
    """The header of the snapshot at path (None if there is none); checks the length, not the CRC."""
    try:
        with open(path, "rb") as f:
            return _header(f.fileno(), path)
    except FileNotFoundError:
        return None


def _header(fd: int, where: str) -> SnapshotInfo:
    head = os.pread(fd, SNAPSHOT_HEADER.size, 0)
    if len(head) < SNAPSHOT_HEADER.size:
        raise JournalError(f"snapshot {where}: short file")
    magic, position, length, crc = SNAPSHOT_HEADER.unpack(head)
    if magic != SNAPSHOT_MAGIC or os.fstat(fd).st_size != SNAPSHOT_HEADER.size + length:
        raise JournalError(f"snapshot {where}: corrupt")
    return SnapshotInfo(position, length, crc)


def remove_temporaries(directory: str) -> None:
    """Drop what interrupted writes left behind (a crash, a failed upload). The names go at once;
    the blocks are freed beside whatever comes next (the last descriptor is closed in a thread):
    a snapshot cut short can be as large as the state, and ext4 takes about 0.2 s per GB to free
    a file's blocks (3.2 GB: 0.65 s here), which a restart spent before it served."""
    held: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            if name.startswith(SNAPSHOT_TMP_PREFIX):
                path = os.path.join(directory, name)
                with contextlib.suppress(FileNotFoundError):
                    held.append(os.open(path, os.O_RDONLY))
                    os.unlink(path)
    if held:
        # A daemon: at exit the kernel closes what is left, and frees the blocks then.
        threading.Thread(target=_close_all, args=(held,), name="free-temporaries", daemon=True).start()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


class DirtyBound:
    """Keeps the written but unflushed bytes of a file under SNAPSHOT_SYNC_BYTES (blocking calls)."""

    def __init__(self, fd: int) -> None:
        self.fd, self.synced = fd, 0  # the file's bytes below `synced` are on disk and out of the cache

    def written(self, end: int) -> None:
        """The file's bytes below end are written."""
        if end - self.synced >= SNAPSHOT_SYNC_BYTES:
            self.flush(end)

    def flush(self, end: int) -> None:
        os.fdatasync(self.fd)
        drop_cached(self.fd, self.synced, end - self.synced)
        self.synced = end


def drop_cached(fd: int, offset: int, length: int) -> None:
    """Drop a range of a file from the page cache (clean pages only: flush first): a snapshot is
    read or written once, and its pages would only push out what the server needs."""
    if length > 0 and hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


class SnapshotWriter:
    """A new snapshot being written chunk by chunk into a temporary file of `directory`."""

    def __init__(self, directory: str, position: int) -> None:
        self.directory = directory
        self.position = position
        self.path = os.path.join(directory, SNAPSHOT_TMP_PREFIX + uuid.uuid4().hex)
        self.size_bytes = 0
        self.crc32 = 0
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.pwrite(self._fd, bytes(SNAPSHOT_HEADER.size), 0)  # filled in by finish()
        self._dirty = DirtyBound(self._fd)

    def write(self, data: bytes) -> None:
        assert self._fd is not None, "writer is finished"
        view = memoryview(data)
        offset = SNAPSHOT_HEADER.size + self.size_bytes
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n
        self.size_bytes += len(data)
        self.crc32 = zlib.crc32(data, self.crc32)
        self._dirty.written(offset)

    def finish(self, expected: SnapshotInfo | None = None) -> SnapshotInfo:
        """Seal the file (header, fsync); with expected, first check that every byte arrived intact."""
        assert self._fd is not None, "writer is finished"
        info = SnapshotInfo(self.position, self.size_bytes, self.crc32)
        if expected is not None and expected != info:
            self.abort()
            raise JournalError(f"snapshot received {info}, announced {expected}")
        os.pwrite(self._fd, SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, info.position, info.size_bytes, info.crc32), 0)
        os.fsync(self._fd)
        drop_cached(self._fd, 0, SNAPSHOT_HEADER.size + info.size_bytes)
        os.close(self._fd)
        self._fd = None
        return info

    def install(self) -> bool:
        """Rename the finished file over the directory's snapshot unless that one is newer (then drop
        it). True if installed. The caller serialises installs of one directory."""
        assert self._fd is None, "finish() first"
        target = os.path.join(self.directory, SNAPSHOT_FILE)
        try:
            current = read_info(target)
        except JournalError:
            current = None  # a damaged snapshot is replaced by any intact one
        if current is not None and current.position > self.position:
            os.unlink(self.path)
            return False
        os.replace(self.path, target)
        fsync_dir(self.directory)
        return True

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class SnapshotFileReader:
    """An open snapshot file: its header, and its blob read at any offset (blocking calls)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDONLY)  # FileNotFoundError: no snapshot
        try:
            self.info = _header(self._fd, path)
        except BaseException:
            self.close()
            raise

    def read_at(self, offset: int, length: int) -> bytes:
        assert self._fd is not None, "reader is closed"
        length = max(0, min(length, self.info.size_bytes - offset))
        out = bytearray()
        while len(out) < length:
            got = os.pread(self._fd, length - len(out), SNAPSHOT_HEADER.size + offset + len(out))
            if not got:
                raise JournalError(f"snapshot {self.path}: truncated")
            out += got
        drop_cached(self._fd, SNAPSHOT_HEADER.size + offset, length)
        return bytes(out)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def open_reader(path: str) -> SnapshotFileReader | None:
    try:
        return SnapshotFileReader(path)
    except FileNotFoundError:
        return None


class CrcCheck:
    """Running CRC of the chunks handed out; raises at the end if they do not make the announced blob."""

    def __init__(self, info: SnapshotInfo, where: str) -> None:
        self.info, self.where = info, where
        self.size_bytes = 0
        self.crc32 = 0

    def add(self, data: bytes) -> None:
        self.size_bytes += len(data)
        self.crc32 = zlib.crc32(data, self.crc32)
        if self.size_bytes > self.info.size_bytes:
            raise JournalError(f"snapshot {self.where}: longer than announced")

    def done(self) -> None:
        if (self.size_bytes, self.crc32) != (self.info.size_bytes, self.info.crc32):
            raise JournalError(f"snapshot {self.where}: corrupt (size or CRC does not match)")


async def source_chunks(source: SnapshotSource, chunk_bytes: int) -> AsyncIterator[bytes]:
    """The blob of any snapshot source as chunks of at most chunk_bytes, one in memory at a time."""
    if isinstance(source, Snapshot):
        view = memoryview(source.blob)
        for i in range(0, len(view), chunk_bytes):
            yield bytes(view[i : i + chunk_bytes])
    elif isinstance(source, SnapshotFile):
        f = open(source.path, "rb")  # closed below; reads go to a worker thread
        try:
            while data := await asyncio.to_thread(f.read, chunk_bytes):
                yield data
        finally:
            f.close()
    elif isinstance(source, SnapshotStream):
        async for data in source.chunks:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise TypeError(f"snapshot chunks must be bytes, not {type(data).__name__}")
            view = memoryview(data)
            for i in range(0, len(view), chunk_bytes):
                yield bytes(view[i : i + chunk_bytes])
    else:
        raise TypeError(f"not a snapshot source: {type(source).__name__}")
