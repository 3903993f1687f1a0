"""The journal node's member snapshots: chunked uploads, quorum replication, chunked reads.

Requests (see journal/wire.py for the frame format; docs/journal.md for the protocol):

``snap_begin``   log, position, size, crc32, store_only -> upload
                 A new upload into a temporary file. Clients go to the log's leader (not_leader
                 otherwise); ``store_only`` is the leader pushing to a peer (any node accepts it).
``snap_chunk``   log, upload, offset, data -> received
                 Written if offset is the bytes received so far; a repeated chunk (its answer was
                 lost) is acknowledged without writing again, so a client resumes by offset. An
                 unknown upload: not_leader on a follower (the client goes on at the leader),
                 unknown_upload on the leader (the client starts again from the first byte).
``snap_commit``  log, upload -> done
                 Checks size and CRC, fsyncs, renames over the current snapshot unless that is newer.
                 For a client upload the leader then streams the file to every peer and answers
                 done once a quorum spanning two AZs holds it (as an entry's commit); until then
                 it answers done=false and the client asks again. Pushes to the remaining peers go
                 on in the background.
``snap_info``    log -> position (None if no snapshot), size, crc32: this node's own snapshot.
``snap_open``    log -> position, size, crc32: the newest of a majority (leader only). A peer's
                 newer snapshot is first fetched to this node; peers found behind get it pushed.
``snap_read``    log, position, offset, length, here -> data: a chunk of the snapshot at position,
                 from a reader opened by snap_open (kept while used), so a newer snapshot renamed
                 over it meanwhile does not disturb the read; snapshot_gone once it is closed (a
                 follower without it redirects to the leader, unless ``here``: a peer's fetch).

Memory per transfer is one chunk; files stay on disk. An upload idle for UPLOAD_IDLE_S is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from journal import replication as r
from journal.api import JournalError
from journal.snapshots import (
    SNAPSHOT_FILE,
    SnapshotFileReader,
    SnapshotInfo,
    SnapshotWriter,
    chunk_bytes_for,
    open_reader,
    read_info,
)

if TYPE_CHECKING:
    from journal.node import JournalNode, _Replica

log = logging.getLogger(__name__)

UPLOADS_MAX = 16  # uploads in progress on one node (busy beyond)
UPLOAD_IDLE_S = 120.0  # an upload with no request for this long is dropped (its client gave up)
READERS_MAX = 8  # snapshot readers kept open for snap_read
READER_IDLE_S = 120.0
COMMIT_WAIT_S = 1.0  # a commit answers done=false after this; the client asks again
PEER_CALL_TIMEOUT_S = 30.0
PUSH_RETRY_S = 600.0  # a peer that missed a snapshot is offered it again for this long
PUSH_RETRY_DELAY_S_MIN = 0.5
PUSH_RETRY_DELAY_S_MAX = 10.0


SNAPSHOT_REQUESTS = ("snap_begin", "snap_chunk", "snap_commit", "snap_info", "snap_open", "snap_read")


class SnapshotRequestError(Exception):
    """Mapped by the node to an error answer (code, message)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


@dataclass(slots=True)
class _Upload:
    rep: _Replica
    writer: SnapshotWriter
    expected: SnapshotInfo
    store_only: bool
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    used: float = field(default_factory=time.monotonic)
    installed: SnapshotInfo | None = None  # sealed and checked
    done: bool = False  # the put is complete (replicated, or superseded by a newer snapshot)
    job: asyncio.Task[None] | None = None  # replication to the peers


@dataclass(slots=True)
class _Reader:
    file: SnapshotFileReader
    used: float = field(default_factory=time.monotonic)
    busy: int = 0  # reads in a worker thread: the file is not closed under them


def _info(payload: dict[str, Any]) -> SnapshotInfo:
    return SnapshotInfo(int(payload["position"]), int(payload["size"]), int(payload["crc32"]))


def _answer(info: SnapshotInfo | None) -> dict[str, Any]:
    if info is None:
        return {"position": None}
    return {"position": info.position, "size": info.size_bytes, "crc32": info.crc32}


class NodeSnapshots:
    """The snapshot requests of one JournalNode (its replicas' directories, its peer connections)."""

    def __init__(self, node: JournalNode) -> None:
        self.node = node
        self.chunk_bytes = chunk_bytes_for(node.cfg.frame_bytes_max)
        self._uploads: dict[int, _Upload] = {}
        self._upload_ids = itertools.count(int.from_bytes(os.urandom(4), "little") << 20)
        self._readers: dict[tuple[str, int], _Reader] = {}
        self._pushing: set[tuple[str, str]] = set()  # (log, peer) pushes in progress
        self.pushes_done = 0  # snapshots pushed to a peer (observability, tests)

    def handlers(self) -> dict[str, Any]:
        return {kind: getattr(self, kind.removeprefix("snap_")) for kind in SNAPSHOT_REQUESTS}

    def close(self) -> None:
        for up in self._uploads.values():
            if up.job is not None:
                up.job.cancel()
            up.writer.abort()
        self._uploads.clear()
        for rd in self._readers.values():
            rd.file.close()
        self._readers.clear()

    # ----------------------------------------------------------- uploads

    def _expire(self) -> None:
        now = time.monotonic()
        for uid, up in list(self._uploads.items()):
            if now - up.used > UPLOAD_IDLE_S and (up.job is None or up.job.done()):
                del self._uploads[uid]
                up.writer.abort()
        for key, rd in list(self._readers.items()):
            if now - rd.used > READER_IDLE_S and not rd.busy:
                del self._readers[key]
                rd.file.close()

    async def _upload(self, payload: dict[str, Any]) -> _Upload:
        up = self._uploads.get(int(payload["upload"]))
        if up is None or up.rep.name != str(payload["log"]):
            rep = await self.node._live_replica(payload)
            if rep.core.role is not r.Role.LEADER:
                raise self.node._not_leader(rep)  # the client's uploads are at the leader: go there
            raise SnapshotRequestError("unknown_upload", "no such upload here (expired, or this node restarted)")
        up.used = time.monotonic()
        return up

    async def begin(self, payload: dict[str, Any]) -> dict[str, Any]:
        rep = await self.node._live_replica(payload)
        store_only = bool(payload.get("store_only", False))
        if not store_only and rep.core.role is not r.Role.LEADER:
            raise self.node._not_leader(rep)
        self._expire()
        if len(self._uploads) >= UPLOADS_MAX:
            raise SnapshotRequestError("busy", f"{UPLOADS_MAX} snapshot uploads in progress")
        expected = _info(payload)
        if expected.position < 0 or expected.size_bytes < 0:
            raise SnapshotRequestError("invalid", "position and size must be >= 0")
        writer = await asyncio.to_thread(SnapshotWriter, rep.directory, expected.position)
        uid = next(self._upload_ids)
        self._uploads[uid] = _Upload(rep, writer, expected, store_only)
        return {"upload": uid, "chunk_bytes": self.chunk_bytes}

    async def chunk(self, payload: dict[str, Any]) -> dict[str, Any]:
        up = await self._upload(payload)
        offset, data = int(payload["offset"]), payload["data"]
        if not isinstance(data, bytes):
            raise SnapshotRequestError("invalid", "data must be bytes")
        async with up.lock:
            if up.installed is not None:
                return {"received": up.writer.size_bytes}
            if offset == up.writer.size_bytes:
                if offset + len(data) > up.expected.size_bytes:
                    raise SnapshotRequestError("invalid", "more bytes than announced")
                await asyncio.to_thread(up.writer.write, data)
        return {"received": up.writer.size_bytes}

    async def commit(self, payload: dict[str, Any]) -> dict[str, Any]:
        up = await self._upload(payload)
        async with up.lock:
            if up.installed is None:
                try:
                    up.installed = await asyncio.to_thread(up.writer.finish, up.expected)
                except JournalError as e:
                    self._uploads.pop(int(payload["upload"]), None)
                    raise SnapshotRequestError("invalid", str(e)) from None
                async with up.rep.snapshot_lock:
                    installed = await asyncio.to_thread(up.writer.install)
                up.done = not installed or up.store_only  # not installed: a newer snapshot is already here
            if up.done:
                return {"done": True}
            if up.job is None or (up.job.done() and (up.job.cancelled() or up.job.exception() is not None)):
                up.job = self.node._spawn(self._replicate(up.rep, up.installed))
        done, _ = await asyncio.wait({up.job}, timeout=COMMIT_WAIT_S)
        if not done:
            return {"done": False}
        exc = up.job.exception()
        if exc is not None:
            raise SnapshotRequestError("unavailable", str(exc))
        up.done = True
        return {"done": True}

    async def _replicate(self, rep: _Replica, info: SnapshotInfo) -> None:
        """Durable once a quorum spanning two AZs holds it, like an entry; the rest get it later."""
        cfg = self.node.cfg
        needed = (len(cfg.peers) + 1) // 2 + 1
        stored, azs = 1, {cfg.az}
        pushes = {self.node._spawn(self._push(rep, p.node_id, info)): p for p in cfg.peers}
        pending = set(pushes)
        while pending and not (stored >= needed and len(azs) >= 2):
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if not t.cancelled() and t.exception() is None and t.result():
                    stored += 1
                    azs.add(pushes[t].az)
        for t, p in pushes.items():  # the peers not there yet (down, slow) get it when they can
            if not (t.done() and not t.cancelled() and t.exception() is None and t.result()):
                self.node._spawn(self._push_later(rep, p.node_id, info, t))
        if stored < needed or len(azs) < 2:
            raise JournalError(f"snapshot stored on {stored} nodes in {len(azs)} AZs, {needed} nodes in 2 AZs needed")

    async def _push_later(self, rep: _Replica, peer: str, info: SnapshotInfo, first: asyncio.Task[bool]) -> None:
        """Keep offering the snapshot to a peer that did not take it (for PUSH_RETRY_S): a node that was
        down while it was put holds it soon after it is back, so the snapshot survives more failures."""
        with contextlib.suppress(Exception):
            if await first:
                return
        deadline = time.monotonic() + PUSH_RETRY_S
        delay_s = PUSH_RETRY_DELAY_S_MIN
        while time.monotonic() < deadline:
            await asyncio.sleep(delay_s)
            delay_s = min(PUSH_RETRY_DELAY_S_MAX, delay_s * 2)
            current = await asyncio.to_thread(read_info, os.path.join(rep.directory, SNAPSHOT_FILE))
            if current is None or current.position > info.position:
                return  # superseded: the newer one's own push takes over
            if await self._push(rep, peer, info):
                return

    async def _push(self, rep: _Replica, peer: str, info: SnapshotInfo) -> bool:
        """Stream our snapshot at info.position to peer; True once the peer holds it (or a newer one)."""
        key = (rep.name, peer)
        while key in self._pushing:  # one push per peer and log at a time
            await asyncio.sleep(0.05)
        self._pushing.add(key)
        conn = self.node._peer_conns[peer]
        f: SnapshotFileReader | None = None
        try:
            theirs = await conn.call("snap_info", {"log": rep.name}, PEER_CALL_TIMEOUT_S)
            if theirs.get("position") is not None and int(theirs["position"]) >= info.position:
                return True
            # The current file: this one, or a newer one renamed over it since (then that one goes).
            f = await asyncio.to_thread(SnapshotFileReader, os.path.join(rep.directory, SNAPSHOT_FILE))
            return f.info.position >= info.position and await self._push_file(rep, peer, f)
        except (OSError, ConnectionError, TimeoutError, JournalError) as e:
            log.info("snapshot of %r to %s: %s", rep.name, peer, e)
            return False
        finally:
            if f is not None:
                f.close()
            self._pushing.discard(key)

    async def _push_file(self, rep: _Replica, peer: str, f: SnapshotFileReader) -> bool:
        conn = self.node._peer_conns[peer]
        info = f.info
        begin = {"log": rep.name, **_answer(info), "store_only": True}
        uid = (await conn.call("snap_begin", begin, PEER_CALL_TIMEOUT_S))["upload"]
        offset = 0
        while offset < info.size_bytes:
            data = await asyncio.to_thread(f.read_at, offset, self.chunk_bytes)
            req = {"log": rep.name, "upload": uid, "offset": offset, "data": data}
            offset = int((await conn.call("snap_chunk", req, PEER_CALL_TIMEOUT_S))["received"])
        await conn.call("snap_commit", {"log": rep.name, "upload": uid}, PEER_CALL_TIMEOUT_S)
        self.pushes_done += 1
        return True

    # ------------------------------------------------------------- reads

    async def info(self, payload: dict[str, Any]) -> dict[str, Any]:
        rep = await self.node._live_replica(payload)
        try:
            return _answer(await asyncio.to_thread(read_info, os.path.join(rep.directory, SNAPSHOT_FILE)))
        except JournalError:
            return {"position": None}  # damaged: as good as none (a peer's copy wins)

    async def open(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The newest snapshot of a majority (a put is on a majority: reading one sees it), here."""
        rep = await self.node._live_replica(payload)
        if rep.core.role is not r.Role.LEADER:
            raise self.node._not_leader(rep)
        cfg = self.node.cfg
        mine = await self.info(payload)
        answers: dict[str, dict[str, Any]] = {}
        needed = (len(cfg.peers) + 1) // 2 + 1
        calls = {
            asyncio.create_task(self.node._peer_conns[p.node_id].call("snap_info", {"log": rep.name}, 5.0)): p.node_id
            for p in cfg.peers
        }
        try:
            pending = set(calls)
            while pending and 1 + len(answers) < needed:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if not t.cancelled() and t.exception() is None:
                        answers[calls[t]] = t.result()
        finally:
            for t in calls:
                t.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
        if 1 + len(answers) < needed:
            raise SnapshotRequestError("unavailable", "no majority answered")

        def pos(a: dict[str, Any]) -> int:
            return -1 if a.get("position") is None else int(a["position"])

        best_peer = max(answers, key=lambda p: pos(answers[p]), default=None)
        if best_peer is not None and pos(answers[best_peer]) > pos(mine):
            await self._fetch(rep, best_peer, _info(answers[best_peer]))
            mine = await self.info(payload)
        if mine.get("position") is None:
            return mine
        info = _info(mine)
        for peer, a in answers.items():  # repair the peers found behind, in the background
            if pos(a) < info.position and (rep.name, peer) not in self._pushing:
                self.node._spawn(self._push(rep, peer, info))
        await self._reader(rep, info.position)
        return mine

    async def _fetch(self, rep: _Replica, peer: str, info: SnapshotInfo) -> None:
        """Copy a peer's snapshot here, chunk by chunk (this node missed its put)."""
        conn = self.node._peer_conns[peer]
        writer = await asyncio.to_thread(SnapshotWriter, rep.directory, info.position)
        try:
            while writer.size_bytes < info.size_bytes:
                req = {"log": rep.name, "position": info.position, "offset": writer.size_bytes,
                       "length": self.chunk_bytes, "here": True}  # fmt: skip
                data = (await conn.call("snap_read", req, PEER_CALL_TIMEOUT_S))["data"]
                if not isinstance(data, bytes) or not data:
                    raise JournalError(f"snapshot from {peer}: empty chunk")
                await asyncio.to_thread(writer.write, data)
            await asyncio.to_thread(writer.finish, info)
        except (OSError, ConnectionError, TimeoutError, JournalError) as e:
            await asyncio.to_thread(writer.abort)
            raise SnapshotRequestError("unavailable", f"fetching the snapshot from {peer}: {e}") from None
        async with rep.snapshot_lock:
            await asyncio.to_thread(writer.install)

    async def _reader(self, rep: _Replica, position: int) -> _Reader:
        self._expire()
        rd = self._readers.get((rep.name, position))
        if rd is not None:
            rd.used = time.monotonic()
            return rd
        async with rep.snapshot_lock:
            f = await asyncio.to_thread(open_reader, os.path.join(rep.directory, SNAPSHOT_FILE))
        if f is None or f.info.position != position:
            if f is not None:
                f.close()
            raise SnapshotRequestError("snapshot_gone", f"no snapshot at {position} here any more; open again")
        if len(self._readers) >= READERS_MAX:
            f.close()
            raise SnapshotRequestError("busy", f"{READERS_MAX} snapshot readers open")
        rd = self._readers[(rep.name, position)] = _Reader(f)
        return rd

    async def read(self, payload: dict[str, Any]) -> dict[str, Any]:
        rep = await self.node._live_replica(payload)
        try:
            rd = await self._reader(rep, int(payload["position"]))
        except SnapshotRequestError as e:
            if e.code == "snapshot_gone" and rep.core.role is not r.Role.LEADER and not payload.get("here"):
                raise self.node._not_leader(rep) from None  # the leader opened it for the client
            raise
        offset = int(payload["offset"])
        length = min(int(payload.get("length", self.chunk_bytes)), self.chunk_bytes)
        if offset < 0 or length < 1:
            raise SnapshotRequestError("invalid", "offset >= 0 and length >= 1")
        rd.busy += 1
        try:
            return {"data": await asyncio.to_thread(rd.file.read_at, offset, length)}
        finally:
            rd.busy -= 1
            rd.used = time.monotonic()
