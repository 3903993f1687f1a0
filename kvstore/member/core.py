"""The member: an asyncio shell that proposes to the journal and applies from it.

Write path: a request becomes a journal entry (proposals arriving together
go out in one append); the member waits until its own applier has applied
that entry and answers with the result the state machine computed there.
Read path: serializable reads use local state at once; linearizable reads
first ask the journal for its committed position (one barrier shared by all
reads waiting at that moment) and wait until the applier has reached it.

State lives in an LMDB file in the state directory (tmpfs by default,
kvstore/mvcc/backend.py). The applier commits one write transaction per
journal batch (cut into parts of APPLY_BATCH_BYTES_MAX, one event-loop step
each), holding the batch's changes and the position it reaches, so a
restart opens the file and replays only the journal's tail; a lost, damaged
or foreign file is rebuilt from the journal's snapshot and tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import heapq
import itertools
import json
import logging
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import lmdb
import msgpack

from journal import failpoints
from journal.api import Journal, JournalError, PositionTrimmed, SnapshotStream
from kvstore import errors
from kvstore.auth.store import Authenticated, AuthInfo
from kvstore.auth.tokens import JWTTokens, SimpleTokens
from kvstore.errors import EtcdError, fail
from kvstore.member.config import (
    APPLIER_RETRY_S,
    APPLY_BATCH_BYTES_MAX,
    APPLY_PAUSE_S,
    BARRIER_SLOW_S,
    COMPACT_PAUSE_MIN_S,
    COMPACT_STEP_ENTRIES_MAX,
    COMPACT_WAIT_POLL_S,
    FAULT_DEFRAG_COPY_GATE_ENV,
    FAULT_KILL_AFTER_COMMIT_ENV,
    FAULT_KILL_IN_BATCH_ENV,
    IDENTITY_FILE,
    JOURNAL_CONTACT_S_MAX,
    JOURNAL_STATUS_INTERVAL_S,
    JOURNAL_STATUS_TIMEOUT_S,
    LEASE_EXPIRE_BATCH_MAX,
    LEASE_EXPIRE_RETRY_MS,
    LEASE_EXPIRY_CHECK_S,
    MEMBER_HEARTBEATS_PER_TTL,
    SNAPSHOT_READERS_POLL_S,
    MemberConfig,
    batch_parts,
    default_state_dir,
    id64,
    new_lease_id,
    now_ms,
    parse_duration_s,
)
from kvstore.member.defrag import defragment
from kvstore.member.proposer import Proposer
from kvstore.member.rounds import SharedRounds
from kvstore.member.snapshots import SNAPSHOT_ITEM_BYTES, ThreadQueueChunks, on_loop
from kvstore.metrics import MemberMetrics
from kvstore.mvcc.backend import (
    FORMAT_VERSION,
    META_FORMAT,
    META_JOURNAL,
    STATE_FILE,
    Backend,
    StateFileRefused,
    map_size_for,
    remove_state_file,
)
from kvstore.mvcc.store import MVCCStore
from kvstore.statemachine import Kind, StateMachine
from kvstore.watch import WatchHub
from proto.etcdserverpb import rpc_pb2 as pb

log = logging.getLogger("kvstore.member")
T = TypeVar("T")


class Member:
    def __init__(self, config: MemberConfig, journal: Journal) -> None:
        self.config = config
        self.journal = journal
        self.log_name = config.log_name
        self.state_dir = config.state_dir or default_state_dir(config.data_dir)
        os.makedirs(config.data_dir, exist_ok=True)
        os.makedirs(self.state_dir, exist_ok=True)
        self._identity_new = False  # set by _load_identity when it makes a new identity
        identity = self._load_identity()
        self.member_id: int = identity["member_id"]
        self.cluster_id: int = identity["cluster_id"]
        self.journal_token: str = identity["journal_token"]
        self.state_path = os.path.join(self.state_dir, STATE_FILE)
        self._map_size = map_size_for(config.quota_backend_bytes)
        self.sm = StateMachine(self._open_backend())
        self.hub = WatchHub(
            self.sm.store,
            self.header,
            cache_revisions_max=config.watch_cache_revisions,
            cache_bytes_max=config.watch_cache_bytes,
            max_request_bytes=config.max_request_bytes,
        )
        self.raft_term = 1
        self.committed_position = 0
        self._apply_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_ids = itertools.count()
        self._barriers = SharedRounds(self._journal_barrier)
        self._started_committed = 0
        # Called with the applied position after each applied batch (the front ends' notifications).
        self.applied_listeners: list[Callable[[int], None]] = []
        # Called with (origin, seq, result) for entries of other origins (the front ends' proposals).
        self.foreign_result: Callable[[int, int, Any], None] | None = None
        self._lease_proposed_ms: dict[int, int] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        # Awaited before the physical steps of each compaction target begin: the front ends' watch
        # feeds read every applied revision's events before its records can go (workers/notify.py).
        self.before_physical_compaction: Callable[[], Awaitable[None]] | None = None
        self._fenced_target: int | None = None
        # Held by whatever writes the backend (applier batches, compaction steps, defragment).
        self._write_lock = asyncio.Lock()
        self._defrag_lock = asyncio.Lock()  # one defragment at a time
        self._fault_after_commit = int(os.environ.get(FAULT_KILL_AFTER_COMMIT_ENV, "0"))
        self._fault_in_batch = int(os.environ.get(FAULT_KILL_IN_BATCH_ENV, "0"))
        self._fault_defrag_gate = os.environ.get(FAULT_DEFRAG_COPY_GATE_ENV, "")
        self._batches = 0
        # Threads reading an environment through a transaction of their own (snapshot streams,
        # hashes), per environment (the id of its lmdb.Environment): a replaced one is closed
        # once they are done, and they go on reading it meanwhile.
        self._snapshot_readers: dict[int, int] = {}
        self._snapshot_position = 0
        self._snapshot_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._journal_contact = time.monotonic()  # last answer from the journal's leader
        self.counters: dict[str, int] = {
            "proposals_committed": 0,
            "proposals_failed": 0,
            "puts": 0,
            "deletes": 0,
            "txns": 0,
            "ranges": 0,
        }
        self.ready = asyncio.Event()
        self.metrics = MemberMetrics(self, config.metrics)
        self.proposer = Proposer(
            journal,
            self.log_name,
            timer=self.metrics.wal_fsync.time,
            on_contact=self.journal_contacted,
            counters=self.counters,
            log_fields=self._log_fields,
            pending_max=config.pending_proposals_max,
        )
        # Simple tokens live in each member's memory, as in etcd (see kvstore.auth.tokens);
        # jwt is set when --auth-token is jwt,... and then issues every token.
        self.auth_tokens = SimpleTokens(config.auth_token_ttl_s)
        self.jwt: JWTTokens | None = None
        self.removed = asyncio.Event()  # set once MemberRemove evicts this member: it stops serving

    # ------------------------------------------------------------- identity

    def _load_identity(self) -> dict[str, Any]:
        path = os.path.join(self.config.data_dir, IDENTITY_FILE)
        if os.path.exists(path):
            with open(path) as f:
                identity: dict[str, Any] = json.load(f)
            return identity
        identity = {
            "name": self.config.name,
            "member_id": id64(f"member/{self.config.name}/{self.config.initial_cluster_token}/{os.urandom(8).hex()}"),
            "cluster_id": id64(f"cluster/{self.config.initial_cluster_token}"),
            "journal_token": os.urandom(16).hex(),
        }
        self._identity_new = True
        self._write_identity(identity)
        return identity

    def _write_identity(self, identity: dict[str, Any]) -> None:
        path = os.path.join(self.config.data_dir, IDENTITY_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(identity, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def journal_contacted(self) -> None:
        self._journal_contact = time.monotonic()

    @property
    def origin(self) -> int:
        return self.proposer.origin

    @property
    def journal_reachable(self) -> bool:
        """The journal's leader answered recently (the member's "has a leader")."""
        return time.monotonic() - self._journal_contact <= JOURNAL_CONTACT_S_MAX

    def header(self, revision: int) -> Any:
        return pb.ResponseHeader(
            cluster_id=self.cluster_id, member_id=self.member_id, revision=revision, raft_term=self.raft_term
        )

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        status = await self.journal.status(self.log_name)
        self.raft_term = max(status.epoch, 1)
        self.committed_position = status.committed
        self._started_committed = status.committed  # acknowledged, perhaps, by an earlier process
        refused = self._refusal(status.committed)
        if refused:
            log.warning("state file %s refused: %s; rebuilding it from the journal", self.state_path, refused)
            self.sm.close()
            remove_state_file(self.state_path)
            self.sm = StateMachine(self._open_backend())
            self.hub.rebind(self.sm.store)
        if self.sm.applied_position == 0 and self.sm.store.revision == 1:
            # A new (or rebuilt) file: start from the journal's snapshot if it has one.
            await self._install_journal_snapshot(-1)  # a restored or imported snapshot sits at position 0
        else:
            log.info("opened state file at journal position %d", self.sm.applied_position)
        loop = asyncio.get_running_loop()
        applier = loop.create_task(self._applier(), name="applier")
        applier.add_done_callback(self._applier_done)
        self._tasks = [
            applier,
            loop.create_task(self._lease_expiry_loop(), name="lease-expiry"),
            loop.create_task(self._progress_loop(), name="progress-notify"),
            loop.create_task(self._compactor_loop(), name="compactor"),
            loop.create_task(self._auto_compaction_loop(), name="auto-compaction"),
            loop.create_task(self._journal_status_loop(), name="journal-status"),
        ]
        await self.wait_applied(status.committed)
        self._adopt_added_id()
        await self._heartbeat()  # listed in MemberList before serving
        self._tasks.append(loop.create_task(self._heartbeat_loop(), name="member-heartbeat"))
        self._snapshot_position = self.sm.applied_position
        self.ready.set()
        if failpoints.active():
            log.warning("TEST FAILPOINTS ENABLED (%s): this member breaks rules on purpose",
                        ",".join(sorted(failpoints.active())))  # fmt: skip
        log.info(
            "member %x ready: revision %d, journal position %d, term %d",
            self.member_id,
            self.sm.store.revision,
            self.sm.applied_position,
            self.raft_term,
            extra=self._log_fields(),
        )

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.proposer.stop()
        self.sm.close()

    # ------------------------------------------------------------ state file

    def _open_backend(self) -> Backend:
        """The state file, or a fresh one when it cannot be opened (a lost file costs a replay)."""
        # What a process killed during a defragment or an install left beside the file.
        for leftover in glob.glob(glob.escape(self.state_path) + ".*"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)
        if os.path.islink(self.state_path + "-lock"):  # to a swapped-in lock file (Backend.swap_in), gone now
            os.remove(self.state_path + "-lock")
        try:
            backend = Backend(self.state_path, map_size=self._map_size)
        except (lmdb.Error, StateFileRefused, OSError) as exc:
            log.warning("state file %s cannot be opened (%s); starting a new one", self.state_path, exc)
            remove_state_file(self.state_path)
            backend = Backend(self.state_path, map_size=self._map_size)
        if backend.get_meta(META_JOURNAL) is None:
            with backend.batch():
                backend.put_meta(META_JOURNAL, self._journal_meta())
        return backend

    def _journal_meta(self) -> bytes:
        data: bytes = msgpack.packb({"token": self.journal_token, "log": self.log_name})
        return data

    def _log_fields(self) -> dict[str, Any]:
        """Fields for structured log lines (journal.logs): where this member stands in the journal."""
        return {"local_member_id": f"{self.member_id:x}", "journal_position": self.sm.applied_position,
                "revision": self.sm.store.revision}  # fmt: skip

    def _refusal(self, committed: int) -> str:
        """Why the state file cannot serve this journal ("" if it can)."""
        file_format = self.sm.backend.get_meta(META_FORMAT)
        if file_format != FORMAT_VERSION:
            return f"its format is {file_format!r}, this server writes {FORMAT_VERSION!r}"
        meta = msgpack.unpackb(self.sm.backend.get_meta(META_JOURNAL) or b"\x80")
        if meta.get("token") != self.journal_token or meta.get("log") != self.log_name:
            return f"it belongs to another journal (token {meta.get('token')!r}, log {meta.get('log')!r})"
        if self.sm.applied_position > committed:
            return (
                f"it is from the future of this journal (applied position {self.sm.applied_position}, "
                f"journal committed {committed})"
            )
        return ""

    async def install_snapshot(self, chunks: Any, *, position: int | None = None) -> None:
        """Replace the state with a snapshot stream: an iterable or an async iterable of byte chunks.

        Written into a new file beside the current one in a thread while the member keeps
        serving the old state, then swapped in; watchers catch up from the new state.
        `position` overrides the snapshot's journal position (a restore starts a new journal).
        """
        tmp = self.sm.backend.swap_path("install")

        def build() -> None:
            backend = Backend(tmp, map_size=self._map_size)
            try:
                sm = StateMachine.from_chunks(chunks, backend)
                with backend.batch():
                    backend.put_meta(META_JOURNAL, self._journal_meta())
                    if position is not None:
                        sm.applied_position = position
                        sm.flush()
            finally:
                backend.close()

        feeder: asyncio.Task[None] | None = None
        if hasattr(chunks, "__aiter__"):
            # An async source (a journal streaming its snapshot): the thread reads a bounded queue.
            source, chunks = chunks, ThreadQueueChunks()
            feeder = asyncio.get_running_loop().create_task(chunks.feed(source))
        async with self._write_lock:
            try:
                await asyncio.to_thread(build)
            except BaseException:
                remove_state_file(tmp)
                raise
            finally:
                if feeder is not None:
                    chunks.close()
                    feeder.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await feeder
            remove_state_file(tmp + "-lock")  # the builder's; the swapped-in env makes its own
            backend = self.sm.backend
            old_env = backend.env
            cleanup = backend.swap_in(tmp)
            self.sm = StateMachine(backend)
            self.hub.rebind(self.sm.store)
        await self.retire(old_env, cleanup)
        log.info("installed a snapshot at journal position %d", self.sm.applied_position)

    # --------------------------------------------------------------- applier

    def _applier_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping:
            return
        # Fail-stop: a member that cannot apply the journal must not keep serving stale state.
        log.critical("the applier stopped: %r; exiting", task.exception(), exc_info=task.exception())
        os._exit(70)

    async def _applier(self) -> None:
        lost_at: float | None = None  # when the read stream last gave up (journal unreachable)
        catch_up: tuple[float, int] | None = None  # (resumed at, applied position then) while behind
        backlog_end: asyncio.Task[int] | None = None
        applying_s = 0.0  # of the catch-up: time in apply steps (the rest: the stream and other tasks)
        while True:
            try:
                async for batch in self.journal.read(self.log_name, self.sm.applied_position + 1):
                    if lost_at is not None:
                        # The record of a heal: how long the stream was gone and how far behind it resumed.
                        log.info("journal read stream back at position %d after %.2f s", batch[0].position,
                                 time.monotonic() - lost_at, extra=self._log_fields())  # fmt: skip
                        # The backlog's end, confirmed by the leader (any node answers a status), learnt
                        # beside the applier so that it does not wait for a barrier round.
                        backlog_end = asyncio.get_running_loop().create_task(self._journal_barrier())
                        # Read below only if the stream stays up until caught up; a later heal drops it.
                        backlog_end.add_done_callback(lambda t: t.cancelled() or t.exception())
                        catch_up, lost_at, applying_s = (time.monotonic(), self.sm.applied_position), None, 0.0
                    if failpoints.enabled("stale_read"):  # members fall behind by different amounts
                        await asyncio.sleep(random.uniform(0, failpoints.STALE_READ_LAG_S))
                    for part in batch_parts(batch, APPLY_BATCH_BYTES_MAX):
                        step_started = time.monotonic()
                        async with self._write_lock:
                            self._apply_batch(part)
                        applying_s += time.monotonic() - step_started
                        self.committed_position = max(self.committed_position, self.sm.applied_position)
                        if (catch_up is not None and backlog_end is not None and backlog_end.done()
                                and self.sm.applied_position >= self.committed_position):  # fmt: skip
                            started, base = catch_up
                            failed = backlog_end.cancelled() or backlog_end.exception() is not None
                            log.info("caught up: %d entries applied in %.2f s since the read stream came back "
                                     "(%.2f s of it in apply steps; the leader's committed position %s)",
                                     self.sm.applied_position - base, time.monotonic() - started, applying_s,
                                     "unknown" if failed else backlog_end.result(),
                                     extra=self._log_fields())  # fmt: skip
                            catch_up = None
                        self._wake_apply_waiters()
                        await asyncio.sleep(APPLY_PAUSE_S if self.ready.is_set() else 0)  # requests run between parts
                    self._maybe_snapshot()
            except PositionTrimmed:
                # This member fell behind the journal's trim point: start again from its snapshot.
                log.warning("journal trimmed past position %d; installing its snapshot", self.sm.applied_position,
                            extra=self._log_fields())  # fmt: skip
                if not await self._install_journal_snapshot(self.sm.applied_position):
                    raise
                self._wake_apply_waiters()
            except JournalError as exc:
                # Unavailable: no node answered for the journal's request timeout. Keep
                # trying (/health says false meanwhile): exiting would not bring it back.
                log.warning("journal read stream: %s; retrying", exc)
                lost_at = lost_at if lost_at is not None else time.monotonic()
                await asyncio.sleep(APPLIER_RETRY_S)

    def _maybe_snapshot(self) -> None:
        if self._snapshot_task is not None and not self._snapshot_task.done():
            return
        if self.sm.applied_position - self._snapshot_position >= self.config.snapshot_count > 0:
            self._snapshot_task = asyncio.get_running_loop().create_task(self._snapshot_and_trim())

    async def _snapshot_and_trim(self) -> None:
        """etcd's --snapshot-count: put the state in the journal, then let it drop what the
        snapshot covers, keeping snapshot_catchup_entries for members slightly behind."""
        try:
            position = self.sm.applied_position
            log.info("snapshot at journal position %d: streaming it to the journal", position,
                     extra={"journal_position": position})  # fmt: skip
            with self.metrics.backend_snapshot.time():
                await self.journal.snapshot_put(self.log_name, SnapshotStream(position, self.snapshot_stream()))
            keep = self.config.snapshot_catchup_entries
            if position - keep > 1:
                await self.journal.trim(self.log_name, position - keep)
            self._snapshot_position = position
            log.info("snapshot at journal position %d; trimmed below %d", position, position - keep,
                     extra={"journal_position": position})  # fmt: skip
        except (JournalError, OSError) as exc:
            log.warning("snapshot at %d failed: %s", position, exc)

    def _apply_batch(self, batch: Any) -> None:
        """Entries of one journal batch (or a part of one) in one LMDB write transaction: all of them land, or none."""
        backend = self.sm.backend
        self._batches += 1
        backend.begin_batch()
        try:
            for n, entry in enumerate(batch):
                if self._fault_in_batch == self._batches and n == len(batch) // 2:
                    _kill_self(f"in batch {self._batches}, before entry {n} of {len(batch)}")
                self._apply_one(entry.position, entry.timestamp_ms, entry.data)
            self.sm.flush()
        except BaseException:
            backend.abort_batch()
            raise
        with self.metrics.backend_commit.time():
            backend.commit_batch()
        if self._fault_after_commit == self._batches:
            _kill_self(f"after the commit of batch {self._batches} at position {self.sm.applied_position}")

    def _apply_one(self, position: int, timestamp_ms: int, data: bytes) -> None:
        applied = self.sm.apply(position, timestamp_ms, data, flush=False)
        for rev_events in applied.events:
            self.hub.publish(rev_events)
        if applied.compacted_to is not None:
            self.hub.compacted(applied.compacted_to)
        if isinstance(applied.result, Authenticated) and applied.result.token and self.ready.is_set():
            # Not while replaying the journal at start: tokens do not outlive a restart, as in etcd.
            self.auth_tokens.register(applied.result.token, applied.result.username)
        if applied.tokens_revoked_for is not None:
            self.auth_tokens.invalidate_user(applied.tokens_revoked_for)
        if applied.tokens_cleared:
            self.auth_tokens.clear()
        if applied.removed_member is not None and applied.removed_member == self.member_id:
            self._evicted()
        if applied.origin == self.proposer.origin:
            self.proposer.resolve(applied.seq, applied.result)
        elif self.foreign_result is not None and self.ready.is_set():
            self.foreign_result(applied.origin, applied.seq, applied.result)

    async def _compactor_loop(self) -> None:
        """Physical compaction in bounded steps, one write transaction each, between batches."""
        while True:
            store = self.sm.store
            if not store.compaction_pending:
                await asyncio.sleep(0.05)
                continue
            target = store.compaction_target
            if self.before_physical_compaction is not None and target != self._fenced_target:
                await self.before_physical_compaction()
                self._fenced_target = target
                continue  # the target may have moved on meanwhile: fence that one too
            started = time.monotonic()
            async with self._write_lock:
                if self.sm.store is store:
                    with store.backend.batch():
                        store.compact_step(COMPACT_STEP_ENTRIES_MAX)
            # At most half of the loop's time: requests get at least as long between steps.
            await asyncio.sleep(max(time.monotonic() - started, COMPACT_PAUSE_MIN_S))

    async def wait_compacted(self) -> None:
        """Until physical compaction has nothing left to drop (etcd's Compact with physical=true
        answers then; a defragment after it can free the pages)."""
        while self.sm.store.compaction_pending and not self._stopping:
            await asyncio.sleep(COMPACT_WAIT_POLL_S)

    def _wake_apply_waiters(self) -> None:
        applied = self.sm.applied_position
        waiters = self._apply_waiters
        while waiters and waiters[0][0] <= applied:
            _, _, fut = heapq.heappop(waiters)
            if not fut.done():
                fut.set_result(None)
        for listener in self.applied_listeners:
            listener(applied)

    async def wait_applied(self, position: int) -> None:
        if self.sm.applied_position >= position:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._apply_waiters, (position, next(self._waiter_ids), fut))
        await fut

    # -------------------------------------------------------------- proposing

    async def propose(self, kind: Kind, request: Any, auth: AuthInfo | None = None) -> Any:
        """Append a request to the journal; return the response our applier computed for it.
        `auth`: the credentials it was made with, checked where it is applied."""
        return await self.proposer.propose_payload(kind, request.SerializeToString(), auth)

    async def propose_payload(self, kind: Kind, payload: bytes, auth: AuthInfo | None = None) -> Any:
        return await self.proposer.propose_payload(kind, payload, auth)

    # ------------------------------------------------------------------ reads

    async def linearizable_barrier(self) -> None:
        """Wait until every write acknowledged before this call is applied locally."""
        if failpoints.enabled("stale_read"):
            return
        await self.wait_applied(await self.barrier_position())

    async def barrier_position(self) -> int:
        """A position covering every write acknowledged before this call began: one the journal
        committed after it (one journal barrier per round, shared by every reader that arrived
        before the round began); with a journal of its own, what this member has applied."""
        if self.config.journal_exclusive:
            # Acknowledgements follow this member's apply (its own writes, and its front ends',
            # whose results are sent after the batch's commit), and start() applied everything
            # the journal had committed before serving: what is applied covers every acknowledged
            # write. Entries committed but not applied yet were acknowledged to nobody: concurrent
            # with this read, so it may order itself before them (and not wait for the applier).
            return max(self.sm.applied_position, self._started_committed)
        return await self._barriers.next()

    async def _journal_barrier(self) -> int:
        started = time.monotonic()
        try:
            position = await self.journal.barrier(self.log_name)
        except JournalError as exc:
            raise fail(errors.TIMEOUT) from exc
        took_s = time.monotonic() - started
        if took_s > BARRIER_SLOW_S:
            log.info("journal barrier took %.2f s: position %d, applied %d", took_s, position,
                     self.sm.applied_position, extra=self._log_fields())  # fmt: skip
        self._journal_contact = time.monotonic()
        self.committed_position = max(self.committed_position, position)
        return position

    # ------------------------------------------------------------------ quota

    async def check_quota(self, cost: int) -> None:
        """etcd's quota gate before proposing a write that adds data: raise the NOSPACE alarm
        (through the journal, so every member sees it) before answering the error."""
        quota = self.config.quota_backend_bytes
        if cost <= 0 or quota <= 0:
            return
        if self.db_size_bytes + cost >= quota:
            if (self.member_id, pb.NOSPACE) not in self.sm.alarms:
                await self.propose(
                    Kind.ALARM,
                    pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=self.member_id, alarm=pb.NOSPACE),
                )
            raise fail(errors.NO_SPACE)

    async def defragment(self) -> None:
        """etcd's defragment (kvstore/member/defrag.py)."""
        await defragment(self)

    @property
    def db_size_bytes(self) -> int:
        return self.sm.backend.file_bytes

    @property
    def db_size_in_use_bytes(self) -> int:
        return self.sm.backend.in_use_bytes

    # ------------------------------------------------------------------ leases

    def new_member_id(self) -> int:
        return random.getrandbits(63) | 1

    def new_lease_id(self) -> int:
        return new_lease_id()

    async def _lease_expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(LEASE_EXPIRY_CHECK_S)
            now = now_ms()
            due = [
                lease_id
                for lease_id in self.sm.store.leases.due(now, LEASE_EXPIRE_BATCH_MAX)
                if now - self._lease_proposed_ms.get(lease_id, 0) >= LEASE_EXPIRE_RETRY_MS
            ]
            for lease_id in list(self._lease_proposed_ms):
                if lease_id not in self.sm.store.leases:
                    del self._lease_proposed_ms[lease_id]
            if not due:
                continue
            for lease_id in due:
                self._lease_proposed_ms[lease_id] = now
            with contextlib.suppress(EtcdError):
                await self.propose_payload(Kind.LEASE_EXPIRE, msgpack.packb(due))

    # ------------------------------------------------------------ membership

    def _adopt_added_id(self) -> None:
        """A new member whose peer URLs MemberAdd pre-registered takes that id, as etcd's joining member does."""
        if not self._identity_new or not self.config.advertise_peer_urls:
            return
        added = self.sm.members.claim(self.config.advertise_peer_urls)
        if added is not None:
            self.member_id = added
            self._write_identity({
                "name": self.config.name,
                "member_id": added,
                "cluster_id": self.cluster_id,
                "journal_token": self.journal_token,
            })
            log.info("member %x: the id MemberAdd registered for %s", added, ",".join(self.config.advertise_peer_urls))

    def _evicted(self) -> None:
        if not self.removed.is_set():
            log.error("member %x has been permanently removed from the cluster; it stops serving", self.member_id)
            self.removed.set()

    def heartbeat_payload(self) -> bytes:
        me = pb.Member(
            ID=self.member_id,
            name=self.config.name,
            peerURLs=self.config.advertise_peer_urls,
            clientURLs=self.config.advertise_client_urls,
        )
        data: bytes = msgpack.packb([me.SerializeToString(), int(self.config.member_liveness_ttl_s * 1000)])
        return data

    async def _heartbeat(self) -> None:
        """Register in the log, or renew the registration; a refusal means this member was removed."""
        try:
            await self.propose_payload(Kind.MEMBER_HEARTBEAT, self.heartbeat_payload())
        except EtcdError as err:
            if err == fail(errors.MEMBER_REMOVED):
                self._evicted()
            elif err != fail(errors.STOPPED):
                log.warning("member heartbeat failed: %s", err.message)

    async def _heartbeat_loop(self) -> None:
        """Renew the registration a few times per liveness TTL, until removed."""
        interval_s = self.config.member_liveness_ttl_s / MEMBER_HEARTBEATS_PER_TTL
        while not self.removed.is_set():
            await asyncio.sleep(interval_s)
            await self._heartbeat()

    # ------------------------------------------------------------ background

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.progress_notify_interval_s)
            self.hub.progress_tick()

    async def _journal_status_loop(self) -> None:
        """Follow the journal's epoch (reported as raft_term) and committed position, and
        whether its leader answers at all (journal_reachable, for /health)."""
        while True:
            await asyncio.sleep(JOURNAL_STATUS_INTERVAL_S)
            with contextlib.suppress(JournalError, OSError, TimeoutError):
                async with asyncio.timeout(JOURNAL_STATUS_TIMEOUT_S):
                    status = await self.journal.status(self.log_name)
                self._journal_contact = time.monotonic()
                self.raft_term = max(self.raft_term, status.epoch)
                self.committed_position = max(self.committed_position, status.committed)

    async def _auto_compaction_loop(self) -> None:
        retention = self.config.auto_compaction_retention
        if retention in ("", "0"):
            return
        if self.config.auto_compaction_mode == "revision":
            keep = int(retention)
            while True:
                await asyncio.sleep(300)  # etcd's revision compactor checks every 5 minutes
                target = self.sm.store.revision - keep
                await self._compact_to(target)
        else:
            period_s = parse_duration_s(retention, default_unit_s=3600)
            # Record (time, revision) samples; compact to the revision seen `period` ago.
            samples: list[tuple[float, int]] = []
            interval_s = max(period_s / 10, 0.1)
            while True:
                await asyncio.sleep(interval_s)
                now = time.monotonic()
                samples.append((now, self.sm.store.revision))
                while len(samples) > 1 and samples[1][0] <= now - period_s:
                    samples.pop(0)
                if samples[0][0] <= now - period_s:
                    await self._compact_to(samples[0][1])

    async def _compact_to(self, revision: int) -> None:
        if revision > self.sm.store.compact_revision and revision > 0:
            with contextlib.suppress(EtcdError):
                await self.propose(Kind.COMPACT, pb.CompactionRequest(revision=revision))
                log.info("auto-compacted to revision %d", revision, extra=self._log_fields())

    # ------------------------------------------------------------- snapshots

    def snapshot_stream(self) -> AsyncIterator[bytes]:
        """The committed state now (sm.applied_position) as byte chunks from one LMDB read
        transaction, produced on the loop in slices of a few ms, after the applier while reads wait for
        it (kvstore/member/snapshots.py)."""
        chunks = self.sm.snapshot_chunks(SNAPSHOT_ITEM_BYTES)  # the read transaction starts here
        env_id = self._reader_started()
        return on_loop(chunks, lambda: self._reader_done(env_id), lambda: bool(self._apply_waiters))

    async def _install_journal_snapshot(self, after_position: int) -> bool:
        """Install the journal's snapshot, streamed in chunks, if it is past after_position."""
        reader = await self.journal.snapshot_open(self.log_name)
        if reader is None:
            return False
        try:
            if reader.position <= after_position:
                return False
            log.info("installing the journal's snapshot at position %d (%d bytes)", reader.position,
                     reader.size_bytes, extra=self._log_fields())  # fmt: skip
            await self.install_snapshot(reader.chunks())
            return True
        finally:
            await reader.close()

    async def read_in_thread(self, read: Callable[[], T]) -> T:
        """Run a read that holds its own LMDB read transaction (a hash of every record) in a
        thread; the environment is not closed under it (defragment, install wait)."""
        env_id = self._reader_started()
        try:
            return await asyncio.to_thread(read)
        finally:
            self._reader_done(env_id)

    def _reader_started(self) -> int:
        """A thread reads the current environment with a transaction of its own (opened just now)."""
        env_id = id(self.sm.backend.env)
        self._snapshot_readers[env_id] = self._snapshot_readers.get(env_id, 0) + 1
        return env_id

    def _reader_done(self, env_id: int) -> None:
        self._snapshot_readers[env_id] -= 1
        if not self._snapshot_readers[env_id]:
            del self._snapshot_readers[env_id]

    async def retire(self, env: Any, cleanup: Callable[[], None]) -> None:
        """Close and free an environment that was replaced (Backend.swap_in's cleanup, in a thread)
        once no snapshot stream or hash reads it any more: swapping never waits for them."""
        while id(env) in self._snapshot_readers:
            await asyncio.sleep(SNAPSHOT_READERS_POLL_S)
        await asyncio.to_thread(cleanup)

    async def save_journal_snapshot(self) -> None:
        """The state now as the journal's snapshot, streamed: never whole in memory."""
        position = self.sm.applied_position  # snapshot_stream's read transaction starts at this position
        await self.journal.snapshot_put(self.log_name, SnapshotStream(position, self.snapshot_stream()))

    @property
    def store(self) -> MVCCStore:
        return self.sm.store


def _kill_self(where: str) -> None:
    log.critical("fault injection: SIGKILL %s", where)
    os.kill(os.getpid(), signal.SIGKILL)
