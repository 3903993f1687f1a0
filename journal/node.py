"""The journal node: the asyncio shell around the replication core.

One node per AZ. For every log it serves, the node holds one
journal.replication.ReplicationCore (which decides) and does what the core
asks (which it cannot do itself):

- persist: the core's Raft log goes to a SegmentLog keyed by Raft index
  (record epoch = Raft term); hard state (term, vote) and the trimmed-prefix
  metadata go to one small file written atomically (journal.node_storage);
- send: messages go to peers over one outbound TCP link per peer, dropped
  rather than queued without bound when a peer is slow or gone (Raft
  retransmits; journal.peer_link);
- time: every ``tick_ms`` each core gets one tick;
- serve clients (journal.wire): append (leader only; the leader's clock gives
  the timestamp), read following the tail (any node, committed and locally
  durable entries only), barrier, status, trim, member snapshots.

The per-log driver loop is the usual Ready cycle: ready() -> send messages ->
answer -> persist (one write + one fsync on the replica's thread for everything
in the Ready: group commit) -> advance() -> send messages_after_persist. While
a persist is in flight new proposals accumulate in the core and go in the next
Ready together, and the loop keeps taking ``ready(writes=False)``: heartbeats,
Appends, votes requested and answers (a commit reached through the followers)
leave at once, so a slow disk does not look like a dead leader. Acks and vote
grants wait for the write they promise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from journal import replication as r
from journal.connection import HEARTBEAT_MS, NodeConnection, set_liveness_options
from journal.frame_out import FrameOut
from journal.local import (
    LOG_NAME_BYTES_MAX,
    atomic_write,
    log_dir_name,
)
from journal.metrics import JournalMetrics, LogSample, NodeSample, PeerSample
from journal.node_storage import ReplicaStorage
from journal.peer_link import PeerLink
from journal.peer_link import PeerSpec as PeerSpec  # the node's configuration names its peers
from journal.read_batches import entries_from
from journal.segments import FSYNC_POLICIES, SEGMENT_BYTES_MAX_DEFAULT, FsyncPolicy
from journal.snapshot_node import SNAPSHOT_REQUESTS, NodeSnapshots, SnapshotRequestError
from journal.snapshots import remove_temporaries
from journal.wire import (
    FRAME_BYTES_MAX_DEFAULT,
    FrameDecoder,
    ProtocolError,
    decode_message,
    encode_frame,
    encode_message,
)

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_MS = 10_000  # a proposal the core has not answered by then: "unavailable", client retries
LOGS_MAX_DEFAULT = 256
CONNECTIONS_MAX = 1024
CONN_REQUESTS_INFLIGHT_MAX = 4096  # unary requests in flight on one connection
# Warn (as etcd's "slow fdatasync" does) when one Ready's write + fsync, or the gap between
# two ticks, takes this long: a quarter of an election timeout's worth of the 2 s failover
# budget. The log then tells a slow disk or a starved process from a fault.
SLOW_PERSIST_S = 0.5
LATE_TICK_S = 0.5

_ERROR_CODES = {
    r.ErrorCode.NOT_LEADER: "not_leader",
    r.ErrorCode.POSITION_MISMATCH: "position_mismatch",
    r.ErrorCode.BUSY: "busy",
    r.ErrorCode.DEDUP_EXPIRED: "dedup_expired",
    r.ErrorCode.TOO_LARGE: "too_large",
    r.ErrorCode.INVALID: "invalid",
}


_ERROR_MESSAGES = {
    r.ErrorCode.NOT_LEADER: "leadership lost",
    r.ErrorCode.POSITION_MISMATCH: "the log's tail is not the expected position",
    r.ErrorCode.BUSY: "too much uncommitted; retry later",
    r.ErrorCode.DEDUP_EXPIRED: "the retried request is older than the dedup window remembers",
    r.ErrorCode.TOO_LARGE: "too many entries or bytes",
    r.ErrorCode.INVALID: "malformed request",
}


class RequestError(Exception):
    def __init__(self, code: str, message: str = "", **extra: Any) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message  # what goes on the wire; the code travels separately
        self.extra = extra


@dataclass(slots=True)
class NodeConfig:
    node_id: str
    az: str
    listen: str
    peers: tuple[PeerSpec, ...]  # the other nodes
    data_dir: str
    fsync: FsyncPolicy = "always"
    fsync_interval_ms: int = 2
    tick_ms: int = 50
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT
    advertise: str = ""  # the host:port clients are sent to for this node (default: listen)
    # Largest entry, and largest Append message to a follower. Above etcd's
    # default request limit (1.5 MiB), as a member appends one entry per request.
    append_bytes_max: int = 4 * 1024 * 1024
    logs_max: int = LOGS_MAX_DEFAULT
    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT
    # TLS (the --peer-* flags): what this node's port requires, and what it uses towards its peers.
    server_ssl: ssl.SSLContext | None = None
    client_ssl: ssl.SSLContext | None = None

    def validate(self) -> None:
        if self.fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy must be one of {FSYNC_POLICIES}")
        ids = [self.node_id, *(p.node_id for p in self.peers)]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate node ids")
        if len({self.az, *(p.az for p in self.peers)}) < 2:
            raise ValueError("a journal needs nodes in at least two AZs")
        assert self.tick_ms > 0 and self.election_ticks > self.heartbeat_ticks >= 1


# ----------------------------------------------------------------- replica


@dataclass(slots=True)
class _Replica:
    name: str
    directory: str
    core: r.ReplicationCore
    storage: ReplicaStorage
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    committed_event: asyncio.Event = field(default_factory=asyncio.Event)  # replaced when readable moves
    readable_position: int = 0  # committed AND durable here: what reads may serve
    persisted_index: int = 0
    commit_index: int = 0  # as of the last Ready taken
    commit_position: int = 0
    role: r.Role = r.Role.FOLLOWER
    term: int = 0
    leader: str = ""
    appends: dict[int, asyncio.Future[r.AppendResult]] = field(default_factory=dict)
    barriers: dict[int, asyncio.Future[r.BarrierResult]] = field(default_factory=dict)
    driver: asyncio.Task[None] | None = None
    persisting: asyncio.Future[None] | None = None
    failed: BaseException | None = None
    last_fsync_monotonic: float = 0.0
    snapshot_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Persists run on the replica's own thread: one log's long write or fsync never waits for,
    # or holds, a worker of a pool shared with the other logs.
    persist_thread: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal-persist")
    )


def _snapshot_handler(kind: str) -> Any:
    async def handle(node: JournalNode, payload: dict[str, Any]) -> dict[str, Any]:
        return await node._h_snapshot(kind, payload)

    return handle


class JournalNode:
    def __init__(self, config: NodeConfig, *, clock_ms: Callable[[], int] | None = None) -> None:
        config.validate()
        if config.fsync == "never":
            log.warning("journal node %s: fsync=never is UNSAFE: a machine crash loses acknowledged entries",
                        config.node_id)  # fmt: skip
        self.cfg = config
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._replicas: dict[str, _Replica] = {}
        self._opening: dict[str, asyncio.Future[_Replica]] = {}
        # Liveness deadline for connections that should never be silent: the longest election timeout.
        self.silence_ms_max = 2 * config.election_ticks * config.tick_ms
        self._peer_links = {
            p.node_id: PeerLink(p, config.node_id, self.silence_ms_max, config.client_ssl) for p in config.peers
        }
        self._peer_addr = {p.node_id: p.addr for p in config.peers}
        self._peer_addr[config.node_id] = config.advertise or config.listen
        self._peer_conns = {
            p.node_id: NodeConnection(p.addr, config.frame_bytes_max, ssl_context=config.client_ssl)
            for p in config.peers
        }
        self._core_config_peers = (
            r.Peer(config.node_id, config.az),
            *(r.Peer(p.node_id, p.az) for p in config.peers),
        )
        self._tokens = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connections: set[asyncio.StreamWriter] = set()
        self._conn_tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.entries_served = 0  # by read streams (observability, tests)
        self.metrics = JournalMetrics(config.node_id, config.az)
        self.snapshots = NodeSnapshots(self)
        os.makedirs(os.path.join(config.data_dir, "logs"), exist_ok=True)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        host, _, port = self.cfg.listen.rpartition(":")
        self._server = await asyncio.start_server(
            self._serve_conn, host, int(port), reuse_address=True, ssl=self.cfg.server_ssl
        )
        for link in self._peer_links.values():
            link.task = self._spawn(link.run())
        self._spawn(self._ticker())
        # Open the logs that exist on disk, so that their elections start now.
        for name in os.listdir(os.path.join(self.cfg.data_dir, "logs")):
            path = os.path.join(self.cfg.data_dir, "logs", name, "name")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    await self._replica(f.read())

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
        # Server.close() leaves accepted connections open: close them, so
        # that clients and peers see this node go away.
        for w in list(self._connections):
            w.close()
        for t in list(self._conn_tasks):
            t.cancel()
        await asyncio.gather(*self._conn_tasks, return_exceptions=True)
        for link in self._peer_links.values():
            # Python 3.11's asyncio.wait_for can swallow a cancel (gh-86296);
            # the flag ends the loop whatever happens to the cancel.
            link.closed = True
            if link.writer is not None:
                link.writer.close()
            if link.pump is not None:
                link.pump.cancel()
        for t in list(self._tasks):
            t.cancel()
        for rep in self._replicas.values():
            if rep.driver is not None:
                rep.driver.cancel()
        await asyncio.gather(*self._tasks, *(p.driver for p in self._replicas.values() if p.driver),
                             return_exceptions=True)  # fmt: skip
        self.snapshots.close()
        for c in self._peer_conns.values():
            await c.close()
        for rep in self._replicas.values():
            if rep.persisting is not None:
                with contextlib.suppress(Exception):
                    await rep.persisting
            await asyncio.to_thread(rep.storage.close)
            rep.persist_thread.shutdown(wait=False)
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()

    async def serve_forever(self) -> None:
        await self.start()
        assert self._server is not None
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    # ------------------------------------------------------------- replicas

    async def _replica(self, name: str) -> _Replica:
        rep = self._replicas.get(name)
        if rep is not None:
            return rep
        if self._closed:
            raise RequestError("unavailable", "node is shutting down")
        opening = self._opening.get(name)
        if opening is not None:
            return await asyncio.shield(opening)
        if not name or len(name.encode()) > LOG_NAME_BYTES_MAX:
            raise RequestError("invalid", "bad log name")
        if len(self._replicas) >= self.cfg.logs_max:
            raise RequestError("invalid", f"this node serves at most {self.cfg.logs_max} logs")
        fut: asyncio.Future[_Replica] = asyncio.get_running_loop().create_future()
        self._opening[name] = fut
        try:
            directory = os.path.join(self.cfg.data_dir, "logs", log_dir_name(name))

            def open_storage() -> tuple[ReplicaStorage, r.RestoredState]:
                os.makedirs(directory, exist_ok=True)
                name_path = os.path.join(directory, "name")
                if not os.path.exists(name_path):
                    atomic_write(name_path, name.encode())
                remove_temporaries(directory)  # of snapshot uploads cut short by a crash
                st = ReplicaStorage(directory, self.cfg.fsync, self.cfg.segment_bytes_max)
                return st, st.load()

            storage, restored = await asyncio.to_thread(open_storage)
            core_cfg = r.Config(
                node_id=self.cfg.node_id,
                peers=self._core_config_peers,
                election_ticks=self.cfg.election_ticks,
                heartbeat_ticks=self.cfg.heartbeat_ticks,
                append_bytes_max=self.cfg.append_bytes_max,
            )
            core = r.ReplicationCore(core_cfg, random.Random(int.from_bytes(os.urandom(8), "little")), restored)
            rep = _Replica(name, directory, core, storage)
            st = core.status()
            rep.persisted_index = core.persisted_index
            # Only what is known committed may be read; at start that is the snapshot.
            rep.readable_position = st.commit_position
            rep.commit_index, rep.commit_position = st.commit_index, st.commit_position
            rep.term = st.term
            rep.driver = asyncio.create_task(self._drive(rep), name=f"journal-driver-{name}")
            self._replicas[name] = rep
            fut.set_result(rep)
            return rep
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()
            raise
        finally:
            del self._opening[name]

    def _send(self, rep: _Replica, messages: tuple[r.Message, ...]) -> None:
        for m in messages:
            link = self._peer_links.get(m.dst)
            if link is not None:
                link.send(encode_frame("raft", {"log": rep.name, "m": encode_message(m)}, self.cfg.frame_bytes_max),
                          rep.name)  # fmt: skip

    async def _drive(self, rep: _Replica) -> None:
        core = rep.core
        in_flight: r.Ready | None = None  # the Ready whose writes are on the persist thread
        persist_started = 0.0
        try:
            while True:
                if in_flight is not None and rep.persisting is not None and rep.persisting.done():
                    rep.persisting.result()  # a failed write or fsync raises here
                    self._persisted(rep, in_flight, time.perf_counter() - persist_started)
                    in_flight = rep.persisting = None
                    continue
                if in_flight is None and core.has_ready():
                    if self.cfg.fsync == "batch" and core.status().last_index > rep.persisted_index:
                        # Space fsyncs out; what arrives meanwhile joins this Ready.
                        # (Only when there is something to write: a Ready of
                        # messages and answers alone goes at once.)
                        wait_s = rep.last_fsync_monotonic + self.cfg.fsync_interval_ms / 1000 - time.monotonic()
                        if wait_s > 0:
                            await asyncio.sleep(wait_s)
                    rd = core.ready()
                    self._send(rep, rd.messages)
                    if rd.must_persist():
                        persist_started = time.perf_counter()
                        rep.persisting = asyncio.get_running_loop().run_in_executor(
                            rep.persist_thread, rep.storage.persist, rd
                        )
                        rep.persisting.add_done_callback(lambda _: rep.wake.set())
                        in_flight = rd
                    else:
                        core.advance(rd)
                        self._send(rep, rd.messages_after_persist)
                    self._after_ready(rep, rd)
                    continue
                if in_flight is not None and core.has_ready(writes=False):
                    # A write is in flight (group commit: one at a time): heartbeats,
                    # Appends and answers go now, writes and acks wait for the next one.
                    rd = core.ready(writes=False)
                    self._send(rep, rd.messages)
                    self._after_ready(rep, rd)
                    continue
                rep.wake.clear()
                await rep.wake.wait()  # a tick, a message, a request, or the persist's end
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            # A failed write or fsync: nothing about this replica's disk is
            # certain any more. Stop it (fail-stop); the others carry on.
            log.critical("log %r: replica stopped: %r", rep.name, e, exc_info=True)
            rep.failed = e
            for afut in rep.appends.values():
                if not afut.done():
                    afut.set_exception(RequestError("unavailable", f"replica failed: {e}"))
            for bfut in rep.barriers.values():
                if not bfut.done():
                    bfut.set_exception(RequestError("unavailable", f"replica failed: {e}"))

    def _persisted(self, rep: _Replica, rd: r.Ready, persist_s: float) -> None:
        """rd's writes are durable: tell the core, send what waited for them."""
        self.metrics.fsync_duration.labels(rep.name).observe(persist_s)
        if persist_s >= SLOW_PERSIST_S:
            log.warning("log %r: slow fsync: writing %d entries took %.2f s",
                        rep.name, len(rd.entries), persist_s)  # fmt: skip
        rep.last_fsync_monotonic = time.monotonic()
        rep.core.advance(rd)
        self._send(rep, rd.messages_after_persist)
        self._update_readable(rep, False)

    def _after_ready(self, rep: _Replica, rd: r.Ready) -> None:
        leadership_changed = (rep.role, rep.leader) != (rd.role, rd.leader)
        if leadership_changed and rd.leader and rd.leader != rep.leader:
            self.metrics.leader_changes.labels(rep.name).inc()
            log.info("log %r: leader %s, term %d", rep.name, rd.leader, rd.term,
                     extra={"partition": rep.name, "journal_position": rd.commit_position})  # fmt: skip
        rep.role, rep.term, rep.leader = rd.role, rd.term, rd.leader
        rep.commit_index, rep.commit_position = rd.commit_index, rd.commit_position
        self._update_readable(rep, leadership_changed)
        for res in rd.append_results:
            fut = rep.appends.pop(res.token, None)
            if fut is not None and not fut.done():
                fut.set_result(res)
        for b in rd.barrier_results:
            bfut = rep.barriers.pop(b.request_id, None)
            if bfut is not None and not bfut.done():
                bfut.set_result(b)

    def _update_readable(self, rep: _Replica, leadership_changed: bool) -> None:
        """Reads serve what is committed AND durable here; wake the readers when that grows."""
        # The core's count: a Ready's writes are in only once advanced, and an overwritten
        # suffix or a log replaced by a snapshot is out as soon as the core replaced it.
        rep.persisted_index = rep.core.persisted_index
        readable_index = min(rep.commit_index, rep.persisted_index)
        if readable_index == rep.commit_index:
            readable = rep.commit_position
        else:
            readable = self._position_at(rep, readable_index)
        if readable > rep.readable_position or leadership_changed:
            # (A leadership change wakes the readers too: leader-only tails move on.)
            rep.readable_position = max(rep.readable_position, readable)
            rep.committed_event.set()
            rep.committed_event = asyncio.Event()

    @staticmethod
    def _position_at(rep: _Replica, index: int) -> int:
        snap = rep.core.snapshot_meta
        if index <= snap.index:
            return snap.position
        got = rep.core.log_entries(index, index)
        assert got, index
        return got[0].position

    async def _ticker(self) -> None:
        interval_s = self.cfg.tick_ms / 1000
        loop = asyncio.get_running_loop()
        next_at = loop.time() + interval_s
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            late_s = loop.time() - next_at
            if late_s >= LATE_TICK_S:
                log.warning("tick %.2f s late: this process did not run (paused or starved of CPU)", late_s)
            # After a pause (SIGSTOP, a long GC) deliver one tick, not a burst.
            next_at = max(next_at + interval_s, loop.time())
            for rep in list(self._replicas.values()):
                if rep.failed is None:
                    rep.core.tick()
                    rep.wake.set()

    # ---------------------------------------------------------- connections

    async def _serve_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= CONNECTIONS_MAX or self._closed:
            writer.close()
            return
        self._connections.add(writer)
        me = asyncio.current_task()
        assert me is not None
        self._conn_tasks.add(me)
        decoder = FrameDecoder(self.cfg.frame_bytes_max)
        write_lock = asyncio.Lock()
        out = FrameOut(writer)
        inflight: set[asyncio.Task[Any]] = set()
        streams: dict[int, asyncio.Task[Any]] = {}
        heartbeat: asyncio.Task[Any] | None = None
        set_liveness_options(writer.get_extra_info("socket"), self.silence_ms_max)
        try:
            while not self._closed:
                data = await reader.read(256 * 1024)
                if not data:
                    break
                decoder.feed(data)
                for kind, payload in decoder.frames():
                    if kind == "raft":
                        await self._on_raft(payload)
                    elif kind == "hello":
                        # A peer's outbound link: show it this node is alive (see journal.peer_link).
                        if heartbeat is None:
                            heartbeat = self._spawn(self._peer_heartbeats(out, write_lock))
                        continue
                    elif kind == "read":
                        rid = int(payload.get("id", 0))
                        streams[rid] = self._spawn(self._serve_read(payload, out, write_lock))
                    elif kind == "cancel":
                        task = streams.pop(int(payload.get("id", 0)), None)
                        if task is not None:
                            task.cancel()
                    elif kind == "trim_local":
                        rep = await self._replica(str(payload["log"]))
                        rep.core.trim(int(payload["below"]))
                        rep.wake.set()
                    else:
                        if len(inflight) >= CONN_REQUESTS_INFLIGHT_MAX:
                            # Stop reading until some finish: TCP pushes back on the client.
                            await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                        task = self._spawn(self._serve_request(kind, payload, out, write_lock))
                        inflight.add(task)
                        task.add_done_callback(inflight.discard)
        except (OSError, ProtocolError) as e:
            log.debug("connection: %s", e)
        except RequestError as e:
            log.debug("connection: %s", e)
        except asyncio.CancelledError:
            pass  # the node is closing; end quietly
        finally:
            self._connections.discard(writer)
            self._conn_tasks.discard(me)
            for t in streams.values():
                t.cancel()
            if heartbeat is not None:
                heartbeat.cancel()
            for t in inflight:
                t.cancel()
            writer.close()

    async def _peer_heartbeats(self, out: FrameOut, lock: asyncio.Lock) -> None:
        frame = encode_frame("alive", {})
        with contextlib.suppress(OSError, ConnectionError):
            while not out.writer.is_closing():
                await self._write(out, lock, frame)
                await asyncio.sleep(HEARTBEAT_MS / 1000)

    async def _on_raft(self, payload: dict[str, Any]) -> None:
        name = str(payload["log"])
        m = decode_message(payload["m"])
        rep = self._replicas.get(name) or await self._replica(name)
        if rep.failed is None:
            rep.core.step(m)
            rep.wake.set()

    @staticmethod
    async def _write(out: FrameOut, lock: asyncio.Lock, frame: bytes) -> None:
        async with lock:
            out.write(frame)  # with the connection's other frames of this loop turn: one send
            await out.writer.drain()

    async def _serve_request(
        self, kind: str, payload: dict[str, Any], out: FrameOut, lock: asyncio.Lock
    ) -> None:
        rid = payload.get("id", 0)
        try:
            handler = self._handlers.get(kind)
            if handler is None:
                raise RequestError("invalid", f"unknown request {kind!r}")
            result = await handler(self, payload)
            result["id"] = rid
            frame = encode_frame("ok", result, self.cfg.frame_bytes_max)
        except RequestError as e:
            frame = encode_frame("error", {"id": rid, "code": e.code, "message": e.message, **e.extra})
        except (KeyError, TypeError, ValueError) as e:
            frame = encode_frame("error", {"id": rid, "code": "invalid", "message": repr(e)})
        with contextlib.suppress(OSError, ConnectionError):
            await self._write(out, lock, frame)

    def _not_leader(self, rep: _Replica) -> RequestError:
        return RequestError("not_leader", f"{self.cfg.node_id} does not lead {rep.name!r}",
                            leader=self._peer_addr.get(rep.leader, ""))  # fmt: skip

    async def _live_replica(self, payload: dict[str, Any]) -> _Replica:
        rep = await self._replica(str(payload["log"]))
        if rep.failed is not None:
            raise RequestError("unavailable", f"replica failed: {rep.failed}")
        return rep

    # -------------------------------------------------------------- handlers

    async def _h_append(self, payload: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        rep = await self._live_replica(payload)
        if rep.core.role is not r.Role.LEADER:
            raise self._not_leader(rep)
        entries = payload["entries"]
        if not isinstance(entries, list) or not all(isinstance(e, bytes) for e in entries):
            raise RequestError("invalid", "entries must be a list of bytes")
        expected = payload.get("expected")
        token = next(self._tokens)
        fut: asyncio.Future[r.AppendResult] = asyncio.get_running_loop().create_future()
        rep.appends[token] = fut
        rep.core.propose(
            str(payload.get("client", "")), int(payload.get("seq", 0)), entries, self._clock_ms(),
            None if expected is None else int(expected), token,
        )  # fmt: skip
        res = await self._core_result(rep, rep.appends, token, fut, "not committed in time; retry with the same seq")
        self.metrics.append_duration.labels(rep.name).observe(time.perf_counter() - started)
        if res.error is not None:
            raise RequestError(_ERROR_CODES[res.error], _ERROR_MESSAGES[res.error], tail=res.tail)
        return {"appended": [[a.position, a.timestamp_ms] for a in res.appended]}

    async def _h_barrier(self, payload: dict[str, Any]) -> dict[str, Any]:
        rep = await self._live_replica(payload)
        if rep.core.role is not r.Role.LEADER:
            raise self._not_leader(rep)
        rid = next(self._tokens)
        fut: asyncio.Future[r.BarrierResult] = asyncio.get_running_loop().create_future()
        rep.barriers[rid] = fut
        rep.core.barrier(rid)
        res = await self._core_result(rep, rep.barriers, rid, fut, "barrier not confirmed in time")
        if res.error is not None:
            raise RequestError(_ERROR_CODES[res.error], _ERROR_MESSAGES[res.error])
        return {"position": res.position}

    async def _core_result(
        self, rep: _Replica, waiting: dict[int, Any], key: int, fut: asyncio.Future[Any], timeout_message: str
    ) -> Any:
        """Wake the replica's loop, wait for the core's answer to one request, map lost leadership."""
        rep.wake.set()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_MS / 1000):
                res = await fut
        except TimeoutError:
            raise RequestError("unavailable", timeout_message) from None
        finally:
            waiting.pop(key, None)
        if res.error is r.ErrorCode.NOT_LEADER:
            raise RequestError("not_leader", "leadership lost", leader=self._peer_addr.get(res.leader, ""))
        return res

    async def _h_status(self, payload: dict[str, Any]) -> dict[str, Any]:
        rep = await self._live_replica(payload)
        st = rep.core.status()
        return {
            "epoch": st.term,
            "committed": st.commit_position,
            "leader": self._peer_addr.get(st.leader, "") if st.leader else "",
            "role": st.role.value,
            "node": self.cfg.node_id,
            "readable": rep.readable_position,
            "peer_frames_dropped": {p: link.dropped for p, link in self._peer_links.items()},
        }

    async def _h_trim(self, payload: dict[str, Any]) -> dict[str, Any]:
        rep = await self._live_replica(payload)
        below = int(payload["below"])
        # Each replica trims its own copy (Raft compacts independently);
        # tell the others, best effort: a trim is only an allowance.
        rep.core.trim(below)
        rep.wake.set()
        frame = encode_frame("trim_local", {"log": rep.name, "below": below})
        for link in self._peer_links.values():
            link.send(frame, rep.name)
        return {}

    async def _h_snapshot(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await self.snapshots.handlers()[kind](payload)
        except SnapshotRequestError as e:
            raise RequestError(e.code, e.message) from None
        return result

    async def _h_ping(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {}  # a client's liveness probe (journal.connection.NodeConnection)

    _handlers: dict[str, Any] = {
        "ping": _h_ping,
        "append": _h_append,
        "barrier": _h_barrier,
        "status": _h_status,
        "trim": _h_trim,
        **{kind: _snapshot_handler(kind) for kind in SNAPSHOT_REQUESTS},
    }

    # ----------------------------------------------------------------- reads

    async def _serve_read(self, payload: dict[str, Any], out: FrameOut, lock: asyncio.Lock) -> None:
        rid = payload.get("id", 0)
        try:
            rep = await self._live_replica(payload)
            position = int(payload["from"])
            leader_only = bool(payload.get("leader_only", False))
            if position < 1:
                raise RequestError("invalid", "positions start at 1")
            index_hint = 0
            while True:
                if rep.failed is not None:
                    raise RequestError("unavailable", "replica failed")
                snap = rep.core.snapshot_meta
                if position <= snap.position:
                    raise RequestError("trimmed", f"position {position} was trimmed", first=snap.position + 1)
                if position > rep.readable_position:
                    if leader_only and rep.role is not r.Role.LEADER:
                        # Caught up on a follower, which learns commits a heartbeat
                        # late, or this node lost the leadership: send the reader on
                        # to the leader (if known) for the tail, at once.
                        raise self._not_leader(rep)
                    event = rep.committed_event
                    try:
                        await asyncio.wait_for(event.wait(), HEARTBEAT_MS / 1000)
                    except TimeoutError:
                        # Idle: an empty batch tells the reader this node is alive.
                        await self._write(out, lock, encode_frame("entries", {"id": rid, "entries": []}))
                    continue
                batch, index_hint = entries_from(rep.core, position, rep.readable_position, index_hint)
                assert batch and batch[0][0] == position
                self.entries_served += len(batch)
                position = batch[-1][0] + 1
                await self._write(out, lock, encode_frame("entries", {"id": rid, "entries": batch}))
        except RequestError as e:
            with contextlib.suppress(OSError, ConnectionError):
                frame = encode_frame("error", {"id": rid, "code": e.code, "message": e.message, **e.extra})
                await self._write(out, lock, frame)
        except (OSError, ConnectionError):
            pass
        except (KeyError, TypeError, ValueError) as e:
            with contextlib.suppress(OSError, ConnectionError):
                frame = encode_frame("error", {"id": rid, "code": "invalid", "message": repr(e)})
                await self._write(out, lock, frame)

    # --------------------------------------------------------- introspection

    def metrics_sample(self) -> NodeSample:
        """What journal.metrics serves: each open log's positions, each peer link's state."""
        logs = []
        for name, rep in list(self._replicas.items()):
            st = rep.core.status()
            logs.append(LogSample(
                log=name, is_leader=st.role is r.Role.LEADER, has_leader=bool(st.leader), term=st.term,
                commit_index=st.commit_index, commit_position=st.commit_position,
                readable_position=rep.readable_position, last_index=st.last_index,
                persisted_index=rep.persisted_index, first_index=st.first_index,
                peer_match=rep.core.peer_match_indexes(),
            ))  # fmt: skip
        peers = tuple(PeerSample(p, link.connected, link.dropped) for p, link in self._peer_links.items())
        return NodeSample(tuple(logs), peers, self.entries_served)

    def replica_status(self, name: str) -> r.Status | None:
        rep = self._replicas.get(name)
        return rep.core.status() if rep is not None else None
