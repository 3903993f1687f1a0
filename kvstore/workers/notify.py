"""The notification channel from the member's process to each front end.

One unix socket per member (member_socket_path(state_dir, "notify")); each
front end keeps one connection to it. Messages are msgpack arrays, in order:

- member -> front end `[APPLIED, position]`: after every batch the applier
  committed (and once at connect): the front end's view of the state file
  holds every entry up to `position` from then on;
- front end -> member `[BARRIER]`: "a position the journal committed after
  now"; the member answers `[BARRIER, position]` from its own shared journal
  barrier (Member.barrier_position), or `[BARRIER_FAILED, code, message]` with
  the error its own linearizable read would answer (etcd's request timeout).

- front end -> member `[HELLO, origin]` at connect: the origin of the journal
  entries this front end proposes (kvstore/workers/writes.py);
- front end -> member `[APPEND, id, [entry, ...]]`: journal entries the front
  end built (the member's journal path appends them, as its own proposer's);
  the member answers `[APPENDED, id]` or `[APPEND_FAILED, id, message]`;
- member -> front end `[RESULT, seq, response bytes]` or `[RESULT, seq, code,
  message]`: what the applier computed for the front end's entry `seq` (by
  origin), sent after the batch's commit, before that batch's APPLIED.
- member -> front end `[TOKENS, auth revision, {token: user}]` at connect, then
  `[TOKEN_CHANGES, auth revision, [change, ...]]` (kvstore/auth/tokens.py) with a
  batch's APPLIED, before it, when the batch registered or revoked simple tokens or
  moved the auth revision, and after each expiry sweep (TOKEN_EXPIRY_INTERVAL_S) that
  dropped some: the front end's MirroredTokens; front end -> member `[TOKEN_TOUCH,
  [token, ...]]` (every TOKEN_TOUCH_INTERVAL_S): the tokens it answered calls with,
  whose TTL the member restarts.
- member -> front end `[FENCE, id]`, answered `[FENCED, id]`: before physical
  compaction removes records, the member waits (at most FENCE_WAIT_S) until
  every front end has handled the APPLIED notifications sent before the fence:
  its watch feed has read the events of every revision applied so far
  (kvstore/workers/watches.py).

A front end has at most one barrier request out (kvstore/member/rounds.py
shares it among the front end's concurrent linearizable reads), so answers come
back in the order asked. A linearizable read in a front end is then: one shared
barrier round, wait for APPLIED >= that position, read from the view: what the
member's own linearizable read does, without the read crossing the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import msgpack

from journal import failpoints
from journal.api import JournalError
from kvstore.auth.tokens import MirroredTokens, TokenChange
from kvstore.errors import EtcdError
from kvstore.member.rounds import SharedRounds
from kvstore.workers import member_socket_path

if TYPE_CHECKING:
    from kvstore.member import Member

log = logging.getLogger("kvstore.workers")

APPLIED = 0
BARRIER = 1
BARRIER_FAILED = 2
HELLO = 3
APPEND = 4
APPENDED = 5
APPEND_FAILED = 6
RESULT = 7
FENCE = 8
FENCED = 9
TOKENS = 10
TOKEN_CHANGES = 11
TOKEN_TOUCH = 12
# etcd's TTL keeper checks every second; a front end's uses reach the member within a second
TOKEN_EXPIRY_INTERVAL_S = 1.0
TOKEN_TOUCH_INTERVAL_S = 1.0
FENCE_WAIT_S = 1.0  # a front end slower than this to answer a fence: compaction goes on without it
READ_CHUNK_BYTES = 64 * 1024
RECONNECT_DELAY_S = 0.2
# What the member queues for one front end that does not read, before it closes that channel.
NOTIFY_BUFFER_BYTES_MAX = 64 * 1024 * 1024


class ChannelDown(Exception):
    """The front end has no notification channel now: the member answers instead."""


class Notifier:
    """In the member's process: tells every connected front end what the applier applied, and
    answers their barrier requests."""

    def __init__(self, member: Member, path: str) -> None:
        self.member = member
        self.path = path
        self._writers: set[asyncio.StreamWriter] = set()
        self._by_origin: dict[int, asyncio.StreamWriter] = {}
        self._results: dict[asyncio.StreamWriter, list[bytes]] = {}  # of the batch being applied
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._fences: dict[int, tuple[asyncio.StreamWriter, asyncio.Future[None]]] = {}
        self._fence_ids = itertools.count(1)
        self._token_changes: list[TokenChange] = []  # not yet sent to the front ends
        self._token_revision = 0  # the auth revision the front ends were last told

    async def listen(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._server = await asyncio.start_unix_server(self._serve, self.path)
        self.member.applied_listeners.append(self._applied)
        self.member.foreign_result = self._result
        self.member.before_physical_compaction = self.fence
        self.member.auth_tokens.listeners.append(self._token_changed)
        self._token_revision = self.member.sm.auth.revision
        self._spawn(self._expire_tokens())

    async def fence(self) -> None:
        """Until every front end has handled every notification sent before now (or FENCE_WAIT_S)."""
        loop = asyncio.get_running_loop()
        ids = []
        for writer in list(self._writers):
            fence_id = next(self._fence_ids)
            self._fences[fence_id] = (writer, loop.create_future())
            writer.write(msgpack.packb([FENCE, fence_id]))
            ids.append(fence_id)
        try:
            async with asyncio.timeout(FENCE_WAIT_S):
                for fence_id in ids:
                    entry = self._fences.get(fence_id)
                    if entry is not None:
                        await entry[1]
        except TimeoutError:
            log.warning("a front end did not answer a fence within %.1f s: compacting without it", FENCE_WAIT_S)
        finally:
            for fence_id in ids:
                self._fences.pop(fence_id, None)

    def _fenced(self, fence_id: int) -> None:
        entry = self._fences.get(fence_id)
        if entry is not None and not entry[1].done():
            entry[1].set_result(None)

    def _result(self, origin: int, seq: int, result: Any) -> None:
        """The applier's result for an entry of another origin: to the front end that proposed it."""
        writer = self._by_origin.get(origin)
        if writer is None:
            return  # another member's entry, or a front end gone meanwhile
        if isinstance(result, EtcdError):
            frame = msgpack.packb([RESULT, seq, result.code.name, result.message])
        else:
            frame = msgpack.packb([RESULT, seq, result.SerializeToString()])
        # Sent once the batch is committed (_applied): the front end answers its client then, and
        # that client's next read, from any view, has the write.
        self._results.setdefault(writer, []).append(frame)

    def _token_changed(self, change: TokenChange) -> None:
        self._token_changes.append(change)

    def _tokens_frame(self) -> bytes:
        """The token changes not yet sent, as one frame (b"" when there are none and the auth
        revision did not move)."""
        revision = self.member.sm.auth.revision
        if not self._token_changes and revision == self._token_revision:
            return b""
        changes, self._token_changes = self._token_changes, []
        self._token_revision = revision
        return msgpack.packb([TOKEN_CHANGES, revision, changes])  # type: ignore[no-any-return]

    async def _expire_tokens(self) -> None:
        while True:
            await asyncio.sleep(TOKEN_EXPIRY_INTERVAL_S)
            self.member.auth_tokens.expire()
            frame = self._tokens_frame()
            if frame:
                for writer in list(self._writers):
                    writer.write(frame)

    def _applied(self, position: int) -> None:
        results, self._results = self._results, {}
        # The batch's token changes first: a front end never answers with a token this batch
        # revoked once it has read the batch's APPLIED.
        frame = self._tokens_frame() + msgpack.packb([APPLIED, position])
        for writer in list(self._writers):
            if writer.transport.get_write_buffer_size() > NOTIFY_BUFFER_BYTES_MAX:
                log.warning("a front end reads no notifications: closing its channel")
                writer.close()  # it reconnects, or its supervisor restarts it
                self._writers.discard(writer)
                continue
            # The batch's results, then its APPLIED, in one write: one syscall per front end and
            # batch, and the front end reads them together.
            own = results.pop(writer, None)
            writer.write(b"".join((*own, frame)) if own else frame)
        for writer, frames in results.items():  # a channel not (or no longer) in _writers
            if not writer.is_closing():
                writer.write(b"".join(frames))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        # The tokens as of now (a change still unsent is sent again later: the mirror's updates
        # are idempotent), then the position.
        table = msgpack.packb([TOKENS, self.member.sm.auth.revision, self.member.auth_tokens.table()])
        writer.write(table + msgpack.packb([APPLIED, self.member.sm.applied_position]))
        unpacker = msgpack.Unpacker()
        origin: int | None = None
        try:
            while data := await reader.read(READ_CHUNK_BYTES):
                unpacker.feed(data)
                for message in unpacker:
                    kind = message[0]
                    if kind == BARRIER:
                        self._spawn(self._answer_barrier(writer))
                    elif kind == APPEND:
                        self._spawn(self._append(writer, message[1], message[2]))
                    elif kind == HELLO:
                        origin = message[1]
                        self._by_origin[origin] = writer
                    elif kind == FENCED:
                        self._fenced(message[1])
                    elif kind == TOKEN_TOUCH:
                        for token in message[1]:
                            self.member.auth_tokens.username(token)  # a use: its TTL restarts
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            for fence_id, (fenced_writer, _) in list(self._fences.items()):
                if fenced_writer is writer:  # gone: nothing to wait for
                    self._fenced(fence_id)
            if origin is not None and self._by_origin.get(origin) is writer:
                del self._by_origin[origin]
            writer.close()

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _append(self, writer: asyncio.StreamWriter, append_id: int, entries: list[bytes]) -> None:
        """A front end's proposals, appended as the member's proposer appends its own."""
        try:
            with self.member.metrics.wal_fsync.time():  # the member's durable write, whoever proposed it
                await self.member.journal.append(self.member.log_name, entries)
            self.member.journal_contacted()
            answer: list[Any] = [APPENDED, append_id]
        except (JournalError, OSError) as exc:
            answer = [APPEND_FAILED, append_id, str(exc)]
        if not writer.is_closing():
            writer.write(msgpack.packb(answer))

    async def _answer_barrier(self, writer: asyncio.StreamWriter) -> None:
        answer: list[Any]
        try:
            answer = [BARRIER, await self.member.barrier_position()]
        except EtcdError as err:
            answer = [BARRIER_FAILED, err.code.name, err.message]
        except Exception as exc:  # answered all the same: the front end's round waits for this answer
            log.warning("barrier for a front end failed: %r", exc)
            answer = [BARRIER_FAILED, grpc.StatusCode.UNAVAILABLE.name, f"barrier failed: {exc!r}"]
        if not writer.is_closing():
            writer.write(msgpack.packb(answer))

    def close(self) -> None:
        self.member.foreign_result = None
        if self.member.before_physical_compaction == self.fence:
            self.member.before_physical_compaction = None
        if self._applied in self.member.applied_listeners:
            self.member.applied_listeners.remove(self._applied)
        if self._token_changed in self.member.auth_tokens.listeners:
            self.member.auth_tokens.listeners.remove(self._token_changed)
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class MemberNotifications:
    """In a front end: the member's applied position, and linearizable read barriers."""

    def __init__(self, path: str, origin: int = 0) -> None:
        self.path = path
        self.origin = origin  # of the journal entries this front end proposes
        self.applied = 0
        self.on_result: Callable[[int, Any], None] | None = None  # (seq, bytes or EtcdError)
        self.applied_listeners: list[Callable[[int], None]] = []  # the watch feed (workers/watches.py)
        self.fence_listeners: list[Callable[[], None]] = []  # called before a fence is answered
        self._appends: dict[int, asyncio.Future[None]] = {}
        self._append_ids = itertools.count(1)
        self._writer: asyncio.StreamWriter | None = None
        self._barrier: asyncio.Future[int] | None = None
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_ids = itertools.count()
        self._rounds = SharedRounds(self._ask_barrier)
        self.tokens = MirroredTokens()  # the member's simple tokens, as it tells them

    @property
    def up(self) -> bool:
        return self._writer is not None

    async def run(self) -> None:
        """Keep the connection to the member's notification socket (until cancelled)."""
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.path)
            except OSError:
                await asyncio.sleep(RECONNECT_DELAY_S)
                continue
            self._writer = writer
            writer.write(msgpack.packb([HELLO, self.origin]))
            touches = asyncio.get_running_loop().create_task(self._send_touches(writer))
            try:
                await self._receive(reader)
            except (ConnectionError, OSError):
                pass
            finally:
                touches.cancel()
                self._writer = None
                writer.close()
                self._down()
            await asyncio.sleep(RECONNECT_DELAY_S)

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        while data := await reader.read(READ_CHUNK_BYTES):
            if failpoints.enabled("front_end_lag"):
                await asyncio.sleep(random.uniform(0, failpoints.FRONT_END_LAG_S))
            unpacker.feed(data)
            for message in unpacker:
                kind = message[0]
                if kind == APPLIED:
                    self._applied(message[1])
                elif kind == RESULT:
                    if self.on_result is not None:
                        result = message[2] if len(message) == 3 else EtcdError(grpc.StatusCode[message[2]], message[3])
                        self.on_result(message[1], result)
                elif kind == FENCE:  # every APPLIED before it was handled (the feed advanced)
                    for fence_listener in self.fence_listeners:
                        fence_listener()
                    if self._writer is not None:
                        self._writer.write(msgpack.packb([FENCED, message[1]]))
                elif kind == TOKEN_CHANGES:
                    self.tokens.change(message[1], message[2])
                elif kind == TOKENS:
                    self.tokens.reset(message[1], message[2])
                elif kind in (APPENDED, APPEND_FAILED):
                    fut = self._appends.pop(message[1], None)
                    if fut is not None and not fut.done():
                        if kind == APPENDED:
                            fut.set_result(None)
                        else:
                            fut.set_exception(JournalError(message[2]))
                elif self._barrier is not None and not self._barrier.done():
                    if kind == BARRIER:
                        self._barrier.set_result(message[1])
                    else:
                        self._barrier.set_exception(EtcdError(grpc.StatusCode[message[1]], message[2]))

    def _applied(self, position: int) -> None:
        self.applied = max(self.applied, position)
        waiters = self._waiters
        while waiters and waiters[0][0] <= self.applied:
            _, _, fut = heapq.heappop(waiters)
            if not fut.done():
                fut.set_result(None)
        for listener in self.applied_listeners:
            listener(self.applied)

    async def _send_touches(self, writer: asyncio.StreamWriter) -> None:
        while True:
            await asyncio.sleep(TOKEN_TOUCH_INTERVAL_S)
            touched = self.tokens.take_touched()
            if touched and not writer.is_closing():
                writer.write(msgpack.packb([TOKEN_TOUCH, touched]))

    def _down(self) -> None:
        """The member went away: whoever waits here is answered by forwarding instead (its
        tokens went with it: a restarted member knows none, as a restarted etcd)."""
        self.tokens.reset(0, {})
        if self._barrier is not None and not self._barrier.done():
            self._barrier.set_exception(ChannelDown())
        for _, _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(ChannelDown())
        self._waiters.clear()
        for append in self._appends.values():
            if not append.done():  # whether the member appended it is unknown: the proposer times out
                append.set_exception(JournalError("the member's process went away"))
        self._appends.clear()

    async def append(self, log: str, entries: Sequence[bytes]) -> None:
        """Journal entries through the member's journal path (the proposer's `journal.append`)."""
        if self._writer is None:
            raise JournalError("no channel to the member's process")
        append_id = next(self._append_ids)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._appends[append_id] = fut
        self._writer.write(msgpack.packb([APPEND, append_id, list(entries)]))
        await fut

    async def _ask_barrier(self) -> int:
        if self._writer is None:
            raise ChannelDown()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._barrier = fut
        self._writer.write(msgpack.packb([BARRIER]))
        return await fut

    async def read_barrier(self) -> None:
        """Until the view holds every write acknowledged before this call (ChannelDown, or the
        member's EtcdError, if it cannot say)."""
        position = await self._rounds.next()
        if self.applied >= position:
            return
        if self._writer is None:
            raise ChannelDown()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (position, next(self._waiter_ids), fut))
        await fut


def notify_socket_path(state_dir: str) -> str:
    return member_socket_path(state_dir, "notify")
