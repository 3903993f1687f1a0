"""The replicated journal client's member snapshots: chunked upload to the leader, chunked reads.

An upload goes to the log's leader in chunks (``snap_begin``, ``snap_chunk``..., ``snap_commit``;
see journal/snapshot_node.py). A chunk whose answer is lost is sent again at the same offset (the
node acknowledges what it already has), so a dropped connection resumes; a leader change (the new
leader has no such upload) starts the upload again from the first byte. That needs the blob to be
readable again: a SnapshotStream is first spooled to a temporary file on disk (bounded memory), a
SnapshotFile and an in-memory Snapshot are read where they are.

A read opens the newest snapshot of a majority at the leader (``snap_open``) and pulls it chunk by
chunk (``snap_read``), resuming by offset across reconnects, with the CRC checked at the end.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from journal.api import JournalError, Snapshot, SnapshotFile, SnapshotSource, SnapshotStream
from journal.snapshots import CrcCheck, DirtyBound, SnapshotInfo, source_chunks

UPLOAD_RESTARTS_MAX = 5  # uploads started again from the first byte (leader changes) before giving up
COMMIT_POLL_S = 0.05
COMMIT_BYTES_PER_S_MIN = 10 * 1024 * 1024  # the commit's deadline: a quorum copy at no less than this
COMMIT_TIMEOUT_S_MIN = 60.0

Call = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]  # (log, kind, payload) -> result


class RestartUpload(Exception):
    """The node lost the upload (a leader change, a restart): start again from the first byte."""


async def _file_info(path: str, position: int, chunk_bytes: int) -> SnapshotInfo:
    def scan() -> SnapshotInfo:
        crc = size = 0
        with open(path, "rb") as f:
            while data := f.read(chunk_bytes):
                crc, size = zlib.crc32(data, crc), size + len(data)
        return SnapshotInfo(position, size, crc)

    return await asyncio.to_thread(scan)


async def _spool(stream: SnapshotStream, directory: str | None, chunk_bytes: int) -> str:
    """The stream written to a temporary file (removed by the caller)."""
    fd, path = tempfile.mkstemp(prefix="journal-snapshot-", dir=directory)
    try:
        with os.fdopen(fd, "wb", buffering=0) as f:
            dirty = DirtyBound(fd)  # a spool of any size leaves few dirty pages (journal/snapshots.py)

            def write(chunk: bytes) -> None:
                view = memoryview(chunk)
                while view:  # unbuffered: one write(2) each, which may be short
                    view = view[f.write(view) or 0 :]
                dirty.written(f.tell())

            async for chunk in source_chunks(stream, chunk_bytes):
                await asyncio.to_thread(write, chunk)
    except BaseException:
        os.unlink(path)
        raise
    return path


async def put(
    call: Call, log: str, source: SnapshotSource, chunk_bytes: int, spool_dir: str | None, is_lost_upload: Any
) -> None:
    """Upload source to the leader in chunks; return once a quorum of nodes holds it."""
    spooled: str | None = None
    try:
        if isinstance(source, SnapshotStream):
            spooled = await _spool(source, spool_dir, chunk_bytes)
            source = SnapshotFile(source.position, spooled)
        if isinstance(source, Snapshot):
            info = SnapshotInfo(source.position, len(source.blob), zlib.crc32(source.blob))
        else:
            info = await _file_info(source.path, source.position, chunk_bytes)
        for _ in range(UPLOAD_RESTARTS_MAX):
            try:
                await _upload(call, log, source, info, chunk_bytes, is_lost_upload)
                return
            except RestartUpload:
                continue
        raise JournalError(f"snapshot upload of {log!r} restarted {UPLOAD_RESTARTS_MAX} times; giving up")
    finally:
        if spooled is not None:
            os.unlink(spooled)


def _chunk_reader(source: SnapshotSource, chunk_bytes: int) -> tuple[Callable[[int], Awaitable[bytes]], Any]:
    if isinstance(source, Snapshot):
        view = memoryview(source.blob)

        async def from_memory(offset: int) -> bytes:
            return bytes(view[offset : offset + chunk_bytes])

        return from_memory, None
    assert isinstance(source, SnapshotFile)
    fd = os.open(source.path, os.O_RDONLY)

    async def from_file(offset: int) -> bytes:
        return await asyncio.to_thread(os.pread, fd, chunk_bytes, offset)

    return from_file, fd


async def _upload(
    call: Call, log: str, source: SnapshotSource, info: SnapshotInfo, chunk_bytes: int, is_lost_upload: Any
) -> None:
    read_at, fd = _chunk_reader(source, chunk_bytes)
    try:
        begin = {"log": log, "position": info.position, "size": info.size_bytes, "crc32": info.crc32}
        answer = await call(log, "snap_begin", begin)
        uid = answer["upload"]
        size = min(chunk_bytes, int(answer.get("chunk_bytes", chunk_bytes)))
        offset = 0
        try:
            while offset < info.size_bytes:
                data = (await read_at(offset))[:size]
                req = {"log": log, "upload": uid, "offset": offset, "data": data}
                offset = int((await call(log, "snap_chunk", req))["received"])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max(COMMIT_TIMEOUT_S_MIN, info.size_bytes / COMMIT_BYTES_PER_S_MIN)
            while not (await call(log, "snap_commit", {"log": log, "upload": uid}))["done"]:
                if loop.time() > deadline:
                    raise JournalError(f"snapshot of {log!r} not on a quorum in time")
                await asyncio.sleep(COMMIT_POLL_S)
        except JournalError as e:
            if is_lost_upload(e):
                raise RestartUpload from None
            raise
    finally:
        if fd is not None:
            os.close(fd)


class ClientSnapshotReader:
    """journal.api.SnapshotReader over the wire: chunks pulled from the leader, resumed by offset."""

    def __init__(self, call: Call, log: str, info: SnapshotInfo, chunk_bytes: int) -> None:
        self._call, self._log, self._info = call, log, info
        self.position, self.size_bytes, self.crc32 = info.position, info.size_bytes, info.crc32
        self.chunk_bytes = chunk_bytes

    async def chunks(self) -> AsyncIterator[bytes]:
        check = CrcCheck(self._info, f"of log {self._log!r} at {self.position}")
        offset = 0
        while offset < self.size_bytes:
            req = {"log": self._log, "position": self.position, "offset": offset, "length": self.chunk_bytes}
            data = (await self._call(self._log, "snap_read", req))["data"]
            if not isinstance(data, bytes) or not data:
                raise JournalError(f"snapshot of {self._log!r}: empty chunk at {offset}")
            offset += len(data)
            check.add(data)
            yield data
        check.done()

    async def close(self) -> None:
        pass  # nothing held here; the node closes an idle reader by itself


async def open_reader(call: Call, log: str, chunk_bytes: int) -> ClientSnapshotReader | None:
    answer = await call(log, "snap_open", {"log": log})
    if answer.get("position") is None:
        return None
    info = SnapshotInfo(int(answer["position"]), int(answer["size"]), int(answer["crc32"]))
    return ClientSnapshotReader(call, log, info, chunk_bytes)
