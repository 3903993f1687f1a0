"""Client of the replicated journal: journal.api.Journal over the wire protocol.

The client finds each log's leader by itself (following ``not_leader``
redirects, or trying the endpoints in turn) and retries through failover
with the same (client id, request sequence), which the replication core
deduplicates: a retried append lands once, and its caller sees only a delay.

Concurrent unconditional appends to one log are coalesced into one proposal
(client-side group commit): fewer round trips, and few proposals in flight,
well inside the core's per-client dedup window.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import ssl
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from journal import failpoints, snapshot_client
from journal.api import (
    Appended,
    Entry,
    LogStatus,
    PositionMismatch,
    PositionTrimmed,
    Snapshot,
    SnapshotSource,
    Unavailable,
    read_all,
)
from journal.connection import (
    HEARTBEAT_MS,
    LIVENESS_TIMEOUT_MS,
    NodeConnection,
    RemoteError,
    SilentConnection,
    SlowAnswer,
    UnreachableNode,
    open_connection,
    parse_addr,
    read_or_silent,
    set_liveness_options,
)
from journal.replication import DEDUP_REQUESTS_PER_CLIENT_MAX
from journal.snapshots import chunk_bytes_for
from journal.wire import FRAME_BYTES_MAX_DEFAULT, FrameDecoder, ProtocolError, encode_frame

log = logging.getLogger(__name__)

PROPOSAL_ENTRIES_MAX = 1024  # the core's proposal_entries_max
PROPOSAL_BYTES_MAX = 768 * 1024  # coalesced bytes per proposal: one Append message, one frame
PROPOSALS_INFLIGHT_MAX = 8  # per log; well inside DEDUP_WINDOW
PENDING_ENTRIES_MAX = 100_000  # appends queued in the client per log (backpressure beyond)
BACKOFF_MS_MIN = 10
BACKOFF_MS_MAX = 200  # elections end within ~1 s: poll often, with at most 8 proposals in flight per log
RETRYABLE = frozenset({"not_leader", "busy", "unavailable"})
# Entries of the read-stream frames already received handed on as one batch at most (a node's
# batch is up to READ_BATCH_ENTRIES_MAX, journal/read_batches.py; this bounds a merge of many).
READ_COALESCE_ENTRIES_MAX = 4096
# A request answered not_leader for this long follows a live node's redirect even to a suspect
# leader: by then the nodes have had an election timeout to agree, so the hint is fresher
# than our suspicion (a healed node is suspect until a ping of it is answered, 1 s or more).
ELECTION_TIMEOUT_MS_MAX = 1000
# A node whose connection went silent, or that did not answer a connect, is tried last for
# this long, renewed while a ping to it (every HEARTBEAT_MS) fails, and forgiven as soon as
# one is answered: a healed or resumed node is used again within about a heartbeat.
SUSPECT_MS = 2000
# The core remembers a client's newest DEDUP_REQUESTS_PER_CLIENT_MAX committed requests per
# log. The client never starts a request DEDUP_WINDOW or more sequence numbers past its oldest
# unanswered one, so while it retries request s every other request of it that commits lies in
# (s - DEDUP_WINDOW, s + DEDUP_WINDOW): fewer than the core remembers. A retry therefore finds
# its own record if s committed, and is never answered dedup_expired (docs/journal.md).
DEDUP_WINDOW = DEDUP_REQUESTS_PER_CLIENT_MAX // 2


@dataclass(slots=True)
class _Waiter:
    entries: list[bytes]
    future: asyncio.Future[list[Appended]]
    size_bytes: int


@dataclass(slots=True)
class _LogAppender:
    pending: deque[_Waiter] = field(default_factory=deque)
    pending_entries: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    space: asyncio.Event = field(default_factory=asyncio.Event)
    inflight: int = 0
    task: asyncio.Task[None] | None = None


class JournalClient:
    """journal.api.Journal against a cluster of journal nodes."""

    def __init__(
        self,
        endpoints: Sequence[str],
        client_id: str | None = None,
        *,
        request_timeout_ms: int = 30_000,
        rpc_timeout_ms: int = 2_000,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        read_from: str = "leader",
        liveness_timeout_ms: int = LIVENESS_TIMEOUT_MS,
        election_timeout_ms: int = ELECTION_TIMEOUT_MS_MAX,
        spool_dir: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if read_from not in ("leader", "any"):
            raise ValueError("read_from is 'leader' or 'any'")
        if not endpoints:
            raise ValueError("at least one endpoint")
        for e in endpoints:
            parse_addr(e)
        self.endpoints = list(endpoints)
        self.client_id = client_id or uuid.uuid4().hex
        self.request_timeout_ms = request_timeout_ms
        self.rpc_timeout_ms = rpc_timeout_ms
        self.frame_bytes_max = frame_bytes_max
        self.liveness_timeout_ms = liveness_timeout_ms
        self.election_timeout_ms = election_timeout_ms  # the nodes' longest (see ELECTION_TIMEOUT_MS_MAX)
        # Followers learn a new commit position with the next append or heartbeat
        # (up to a heartbeat interval later), so a tail read from the leader sees
        # entries sooner; "any" spreads read streams over the nodes instead.
        self.read_from = read_from
        self.spool_dir = spool_dir  # where a streamed snapshot is spooled before its upload (default: TMPDIR)
        self.ssl_context = ssl_context
        self._conns: dict[str, NodeConnection] = {}
        self._leader: dict[str, str] = {}  # log -> address believed to lead it
        self._next_endpoint = random.randrange(len(self.endpoints))
        self._seq = 0
        self._unanswered: set[int] = set()  # sequence numbers of proposals not yet answered
        self._seq_space = asyncio.Event()
        self._suspect: dict[str, float] = {}  # address -> loop time until which it is tried last
        self._probes: dict[str, asyncio.Task[None]] = {}  # address -> its ping loop while suspect
        self._appenders: dict[str, _LogAppender] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # proposals in flight (strong refs)
        self._closed = False
        self.retries = 0  # requests re-sent after a failure or redirect (observability, tests)

    # ------------------------------------------------------------- plumbing

    def _conn(self, addr: str) -> NodeConnection:
        c = self._conns.get(addr)
        if c is None:
            c = NodeConnection(addr, self.frame_bytes_max, self.liveness_timeout_ms, self.ssl_context)
            self._conns[addr] = c
        return c

    def _rotate(self, skip_suspects: bool = True) -> str:
        """The next endpoint, skipping nodes that went silent recently while others remain."""
        now = asyncio.get_running_loop().time()
        for _ in range(len(self.endpoints)):
            addr = self.endpoints[self._next_endpoint % len(self.endpoints)]
            self._next_endpoint += 1
            if not skip_suspects or self._suspect.get(addr, 0.0) <= now:
                return addr
        return self.endpoints[self._next_endpoint % len(self.endpoints)]

    def _mark_suspect(self, addr: str, why: BaseException) -> None:
        if not self._is_suspect(addr):
            log.info("journal node %s: %s; trying it last until it answers a ping", addr, why)
        self._suspect[addr] = asyncio.get_running_loop().time() + SUSPECT_MS / 1000
        if addr not in self._probes and not self._closed:
            self._probes[addr] = asyncio.create_task(self._probe(addr))

    async def _probe(self, addr: str) -> None:
        """Ping a suspect node every heartbeat: renew the suspicion while it fails, end it once answered."""
        loop = asyncio.get_running_loop()
        try:
            while not self._closed and addr in self._suspect:
                await asyncio.sleep(HEARTBEAT_MS / 1000)
                try:
                    await self._conn(addr).call("ping", {}, self.liveness_timeout_ms / 1000)
                except RemoteError:
                    pass  # an answer all the same: the node is alive
                except (OSError, ConnectionError, TimeoutError, ProtocolError, RuntimeError):
                    self._suspect[addr] = loop.time() + SUSPECT_MS / 1000
                    continue
                self._suspect.pop(addr, None)
                log.info("journal node %s answers again", addr)
        finally:
            self._probes.pop(addr, None)

    def _is_suspect(self, addr: str) -> bool:
        return self._suspect.get(addr, 0.0) > asyncio.get_running_loop().time()

    async def _take_seq(self) -> int:
        """A new request sequence number, once it is within DEDUP_WINDOW of the oldest unanswered one."""
        while self._unanswered and self._seq + 1 - min(self._unanswered) >= DEDUP_WINDOW:
            self._seq_space.clear()
            await self._seq_space.wait()
            if self._closed:
                raise Unavailable("client is closed")
        self._seq += 1
        self._unanswered.add(self._seq)
        return self._seq

    def _answered(self, seq: int) -> None:
        self._unanswered.discard(seq)
        self._seq_space.set()

    async def _leader_call(self, log_name: str, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send to the log's leader, following redirects and retrying until the request timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout_ms / 1000
        backoff_ms = BACKOFF_MS_MIN
        last_error: BaseException | None = None
        not_leader_since: float | None = None  # the first not_leader answer to this request

        def answers_outweigh_suspicion() -> bool:
            """Answered not_leader for an election timeout: a live node's redirect is followed,
            and the rotation tried, suspect nodes included. Before that suspect nodes are skipped
            (a hint may be stale, and a connect to a cut-off node costs the liveness timeout);
            after, that would keep asking the same followers for as long as the suspicion lasts."""
            return not_leader_since is not None and loop.time() - not_leader_since >= self.election_timeout_ms / 1000

        for attempt in itertools.count():
            if self._closed:
                raise Unavailable("client is closed")
            addr = self._leader.get(log_name) or self._rotate(skip_suspects=not answers_outweigh_suspicion())
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                break
            try:
                return await self._conn(addr).call(kind, dict(payload), min(self.rpc_timeout_ms / 1000, remaining_s))
            except RemoteError as e:
                if e.code not in RETRYABLE:
                    raise
                last_error = e
                if e.code == "not_leader" and not_leader_since is None:
                    not_leader_since = loop.time()
                if (e.code == "not_leader" and e.leader and e.leader != addr
                        and (answers_outweigh_suspicion() or not self._is_suspect(e.leader))):  # fmt: skip
                    self._leader[log_name] = e.leader
                    self.retries += 1
                    if attempt % 4 != 3:  # follow fresh redirects at once, but not forever
                        continue
                else:
                    self._leader.pop(log_name, None)
            except (OSError, ConnectionError, TimeoutError, ProtocolError) as e:
                last_error = e
                if isinstance(e, SilentConnection | UnreachableNode):
                    self._mark_suspect(addr, e)
                if not isinstance(e, SlowAnswer):
                    # (A slow answer on a live connection: the node showed it is alive,
                    # and a leader that lost its leadership answers not_leader; retry
                    # there rather than try every node in turn.)
                    self._leader.pop(log_name, None)
            self.retries += 1
            await asyncio.sleep(min(backoff_ms, max(0.0, deadline - loop.time()) * 1000) / 1000)
            backoff_ms = min(BACKOFF_MS_MAX, backoff_ms * 2)
        raise Unavailable(f"{kind} on log {log_name!r}: no answer within {self.request_timeout_ms} ms ({last_error!r})")

    # --------------------------------------------------------------- append

    async def append(self, log: str, entries: Sequence[bytes], expected_position: int | None = None) -> list[Appended]:
        if not entries:
            raise ValueError("append needs at least one entry")
        datas = [bytes(e) for e in entries]
        if expected_position is not None:
            # Conditional appends go alone: their check is against the tail at
            # the moment the leader takes them.
            return await self._propose(log, datas, expected_position)
        if self._closed:
            raise Unavailable("client is closed")
        ap = self._appenders.get(log)
        if ap is None:
            ap = self._appenders[log] = _LogAppender()
            ap.space.set()
            ap.task = asyncio.create_task(self._append_loop(log, ap))
        while ap.pending_entries > 0 and ap.pending_entries + len(datas) > PENDING_ENTRIES_MAX:
            ap.space.clear()
            await ap.space.wait()
        fut: asyncio.Future[list[Appended]] = asyncio.get_running_loop().create_future()
        ap.pending.append(_Waiter(datas, fut, sum(len(d) for d in datas)))
        ap.pending_entries += len(datas)
        ap.wake.set()
        return await fut

    async def _append_loop(self, log_name: str, ap: _LogAppender) -> None:
        slots = asyncio.Semaphore(PROPOSALS_INFLIGHT_MAX)
        while not self._closed:
            if not ap.pending:
                ap.wake.clear()
                await ap.wake.wait()
                continue
            await slots.acquire()
            group: list[_Waiter] = []
            n = size = 0
            while ap.pending:
                w = ap.pending[0]
                if group and (n + len(w.entries) > PROPOSAL_ENTRIES_MAX or size + w.size_bytes > PROPOSAL_BYTES_MAX):
                    break
                ap.pending.popleft()
                ap.pending_entries -= len(w.entries)
                group.append(w)
                n += len(w.entries)
                size += w.size_bytes
            ap.space.set()
            group = [w for w in group if not w.future.cancelled()]
            if not group:
                slots.release()
                continue

            async def send(group: list[_Waiter]) -> None:
                try:
                    datas = [d for w in group for d in w.entries]
                    result = await self._propose(log_name, datas, None)
                    at = 0
                    for w in group:
                        if not w.future.done():
                            w.future.set_result(result[at : at + len(w.entries)])
                        at += len(w.entries)
                except BaseException as e:
                    for w in group:
                        if not w.future.done():
                            w.future.set_exception(e if isinstance(e, Exception) else Unavailable("cancelled"))
                    if not isinstance(e, Exception):
                        raise
                finally:
                    slots.release()

            task = asyncio.create_task(send(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _propose(self, log_name: str, datas: list[bytes], expected_position: int | None) -> list[Appended]:
        seq = await self._take_seq()
        payload = {"log": log_name, "client": self.client_id, "seq": seq, "entries": datas,
                   "expected": expected_position}  # fmt: skip
        try:
            result = await self._leader_call(log_name, "append", payload)
        except RemoteError as e:
            if e.code == "position_mismatch":
                raise PositionMismatch(e.tail) from None
            if e.code == "dedup_expired":
                raise Unavailable(f"outcome of append {seq} unknown: {e.code}") from None
            raise
        finally:
            self._answered(seq)
        out = [Appended(int(p), int(t)) for p, t in result["appended"]]
        assert len(out) == len(datas), (len(out), len(datas))
        return out

    # ----------------------------------------------------------------- read

    async def read(self, log: str, from_position: int) -> AsyncIterator[list[Entry]]:
        """Follow the log from any node, reconnecting to another one on failure."""
        if from_position < 1:
            raise ValueError("positions start at 1")
        position = from_position
        loop = asyncio.get_running_loop()
        backoff_ms = BACKOFF_MS_MIN
        failing_since: float | None = None
        redirects = 0  # in a row without an entry in between (bounds a redirect loop)
        while not self._closed:
            if failing_since is not None:
                self._leader.pop(log, None)  # it may be the node that just failed
            addr = await self._read_target(log)
            writer: asyncio.StreamWriter | None = None
            try:
                try:
                    reader, w = await open_connection(addr, self.liveness_timeout_ms / 1000, self.ssl_context)
                except UnreachableNode as e:
                    self._mark_suspect(addr, e)
                    raise
                set_liveness_options(w.get_extra_info("socket"), self.liveness_timeout_ms)
                writer = w
                request = {"id": 1, "log": log, "from": position, "leader_only": self.read_from == "leader"}
                w.write(encode_frame("read", request, self.frame_bytes_max))
                await w.drain()
                decoder = FrameDecoder(self.frame_bytes_max)
                pending: list[Entry] = []  # entries frames already received, handed on as one batch
                while True:
                    frame = decoder.next_frame()
                    entries = frame is not None and frame[0] == "entries"
                    if entries:
                        assert frame is not None
                        batch = [Entry(int(p), int(t), d) for p, t, d in frame[1]["entries"]]
                        if batch:
                            if batch[0].position != position:
                                raise ProtocolError(
                                    f"read stream from {addr} skipped: {batch[0].position} != {position}"
                                )
                            position = batch[-1].position + 1
                            pending += batch
                    if pending and (not entries or len(pending) >= READ_COALESCE_ENTRIES_MAX):
                        # Every entries frame already received as one batch (the ones before an error
                        # frame first): a reader that fell behind (paused, busy) finds one small frame
                        # per commit in its buffer, and applies them in one step instead of one each.
                        failing_since = None
                        redirects = 0
                        backoff_ms = BACKOFF_MS_MIN
                        out, pending = pending, []
                        yield out
                    if entries:
                        continue
                    if frame is None:
                        # A live node sends an empty batch every HEARTBEAT_MS on an idle
                        # stream: silence past the liveness timeout means it froze or is cut off.
                        silence_s = None if failpoints.enabled("pin_read_stream") else self.liveness_timeout_ms / 1000
                        try:
                            data = await read_or_silent(reader, 256 * 1024, silence_s, f"{addr} read stream")
                        except SilentConnection as e:
                            self._mark_suspect(addr, e)
                            raise
                        if not data:
                            raise ConnectionError(f"{addr} closed the read stream")
                        decoder.feed(data)
                        continue
                    kind, payload = frame
                    if kind == "error":
                        code = payload.get("code", "")
                        if code == "trimmed":
                            raise PositionTrimmed(position, int(payload.get("first", 0)))
                        leader = str(payload.get("leader", "") or "")
                        if code == "not_leader" and leader and leader != addr and redirects < 4 and not (
                            self._is_suspect(leader)
                        ):
                            # Caught up on a follower: go on at the leader, at once.
                            self._leader[log] = leader
                            redirects += 1
                            self.retries += 1
                            break
                        if code in RETRYABLE:
                            raise ConnectionError(f"{addr}: {code}")
                        raise RemoteError(code, str(payload.get("message", "")))
                    raise ProtocolError(f"unexpected {kind!r} on a read stream")
            except (OSError, ConnectionError, TimeoutError, ProtocolError, RuntimeError) as e:
                now = loop.time()
                failing_since = failing_since if failing_since is not None else now
                if now - failing_since > self.request_timeout_ms / 1000:
                    raise Unavailable(f"read of {log!r}: no node reachable ({e})") from None
                await asyncio.sleep(backoff_ms / 1000)
                backoff_ms = min(BACKOFF_MS_MAX, backoff_ms * 2)
            finally:
                if writer is not None:
                    writer.close()
        raise Unavailable("client is closed")

    async def _read_target(self, log_name: str) -> str:
        if self.read_from == "leader":
            leader = self._leader.get(log_name)
            if leader is None:
                addr = self._rotate()
                try:  # learn it: one status round trip per (re)connect
                    async with asyncio.timeout(self.rpc_timeout_ms / 1000):
                        leader = (await self._conn(addr).call("status", {"log": log_name}, 1.0)).get("leader")
                except (OSError, ConnectionError, TimeoutError, ProtocolError, RemoteError, RuntimeError) as e:
                    if isinstance(e, SilentConnection | UnreachableNode):
                        self._mark_suspect(addr, e)
                    leader = None
                if leader and self._is_suspect(str(leader)):
                    leader = None
            if leader and not self._is_suspect(str(leader)):
                return str(leader)
        return self._rotate()

    # ------------------------------------------------------- other requests

    async def barrier(self, log: str) -> int:
        result = await self._leader_call(log, "barrier", {"log": log})
        return int(result["position"])

    async def status(self, log: str) -> LogStatus:
        result = await self._leader_call(log, "status", {"log": log})
        return LogStatus(int(result["epoch"]), int(result["committed"]), str(result["leader"]))

    async def trim(self, log: str, below: int) -> None:
        await self._leader_call(log, "trim", {"log": log, "below": below})

    async def snapshot_put(self, log: str, snapshot: SnapshotSource) -> None:
        await snapshot_client.put(
            self._leader_call, log, snapshot, chunk_bytes_for(self.frame_bytes_max), self.spool_dir,
            lambda e: isinstance(e, RemoteError) and e.code == "unknown_upload",
        )  # fmt: skip

    async def snapshot_open(self, log: str) -> snapshot_client.ClientSnapshotReader | None:
        return await snapshot_client.open_reader(self._leader_call, log, chunk_bytes_for(self.frame_bytes_max))

    async def snapshot_get(self, log: str) -> Snapshot | None:
        reader = await self.snapshot_open(log)
        return None if reader is None else Snapshot(reader.position, await read_all(reader))

    async def close(self) -> None:
        self._closed = True
        self._seq_space.set()
        for probe in list(self._probes.values()):
            probe.cancel()
        for ap in self._appenders.values():
            ap.wake.set()
            ap.space.set()
            if ap.task is not None:
                ap.task.cancel()
            for w in ap.pending:
                if not w.future.done():
                    w.future.set_exception(Unavailable("client is closed"))
        for c in list(self._conns.values()):
            await c.close()
        self._conns.clear()
