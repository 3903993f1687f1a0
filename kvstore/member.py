"""The member: an asyncio shell that proposes to the journal and applies from it.

Write path: a request becomes a journal entry (proposals arriving together
go out in one append); the member waits until its own applier has applied
that entry and answers with the result the state machine computed there.
Read path: serializable reads use local state at once; linearizable reads
first ask the journal for its committed position (one barrier shared by all
reads waiting at that moment) and wait until the applier has reached it.

State lives in an LMDB file in the state directory (tmpfs by default,
kvstore/mvcc/backend.py). The applier commits one write transaction per
journal batch, holding the batch's changes and the position it reaches, so a
restart opens the file and replays only the journal's tail; a lost, damaged
or foreign file is rebuilt from the journal's snapshot and tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import hashlib
import heapq
import itertools
import json
import logging
import os
import queue
import random
import signal
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import lmdb
import msgpack

from journal import failpoints
from journal.api import Journal, JournalError, PositionTrimmed, SnapshotStream
from kvstore import errors
from kvstore.auth.store import Authenticated, AuthInfo
from kvstore.auth.tokens import AUTH_TOKEN_TTL_S_DEFAULT, JWTTokens, SimpleTokens
from kvstore.errors import EtcdError, fail
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
from kvstore.statemachine import Kind, StateMachine, encode_entry
from kvstore.watch import WatchHub
from proto.etcdserverpb import rpc_pb2 as pb

log = logging.getLogger(__name__)
T = TypeVar("T")

ETCD_VERSION = "3.6.0"  # what Status and /version report: kube-apiserver needs >= 3.5.13 for progress requests
CLUSTER_VERSION = "3.6.0"
STORAGE_VERSION = "3.6.0"
PENDING_PROPOSALS_MAX = 10_000  # beyond this etcd answers "too many requests"
PROPOSAL_BATCH_ENTRIES_MAX = 1024
# Appends of proposals in flight at once; what arrives meanwhile waits in the outbox and goes
# out as one append when one returns. The journal commits in groups anyway (one fsync, one
# Raft round for what it has), so holding proposals for an in-flight append costs little
# latency and makes each append, applier batch and LMDB commit carry many entries instead of one.
PROPOSAL_APPENDS_INFLIGHT_MAX = 4
# ... but no longer than this: when appends hang (the journal quiet), what waits goes out on its
# own, so every write still fails or succeeds within the journal's request timeout of its arrival.
PROPOSAL_HOLD_S_MAX = 0.05
LEASE_EXPIRY_CHECK_S = 0.5
LEASE_EXPIRE_BATCH_MAX = 1000
LEASE_EXPIRE_RETRY_MS = 3000  # propose a due lease again only after this long
IDENTITY_FILE = "member.json"
JOURNAL_STATUS_INTERVAL_S = 0.5
# etcd's request timeout: 5 s + 2 x the election timeout (1 s by default). A proposal the
# journal has not committed by then answers "etcdserver: request timed out".
REQUEST_TIMEOUT_MS = 7000
JOURNAL_STATUS_TIMEOUT_S = 1.0  # one status round trip to the journal's leader, bounded
JOURNAL_CONTACT_S_MAX = 2.0  # no answer from the journal's leader for this long: /health false
APPLIER_RETRY_S = 0.1  # the read stream gave up (journal unreachable): start it again after this
COMPACT_STEP_ENTRIES_MAX = 1000  # index entries one physical compaction step visits (about 1-5 ms)
COMPACT_PAUSE_MIN_S = 0.001
# Test-only fault injection (off unless set): SIGKILL this process right after the Nth batch
# commit, before the next journal read; or in the middle of the Nth batch, before its commit.
FAULT_KILL_AFTER_COMMIT_ENV = "KVSTORE_FAULT_KILL_AFTER_COMMIT"
FAULT_KILL_IN_BATCH_ENV = "KVSTORE_FAULT_KILL_IN_BATCH"
MEMBER_HEARTBEATS_PER_TTL = 4


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _id64(text: str) -> int:
    """A stable non-zero 64-bit id (etcd derives member and cluster ids by hashing too)."""
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    return value or 1


@dataclass
class MemberConfig:
    name: str = "default"
    data_dir: str = "default.etcd"
    state_dir: str = ""  # "" -> under /dev/shm (see default_state_dir)
    advertise_client_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2379"])
    advertise_peer_urls: list[str] = field(default_factory=list)  # shown in MemberList; MemberAdd matches them
    member_liveness_ttl_s: float = 10.0  # a member missing heartbeats this long leaves MemberList
    initial_cluster_token: str = "etcd-cluster"
    log_name: str = "default"  # the journal log (partition) this member serves
    quota_backend_bytes: int = 2 * 1024 * 1024 * 1024
    max_request_bytes: int = 1_572_864
    max_txn_ops: int = 128
    auto_compaction_mode: str = "periodic"  # periodic | revision
    auto_compaction_retention: str = "0"  # "0" disables
    progress_notify_interval_s: float = 600.0  # etcd's default: 10 minutes
    snapshot_count: int = 100_000  # etcd's --snapshot-count: journal entries between snapshots
    snapshot_catchup_entries: int = 5000  # entries kept behind a snapshot for members slightly behind
    watch_cache_revisions: int = 100_000
    metrics: str = "basic"  # etcd's --metrics: basic | extensive (adds gRPC handling-time histograms)
    watch_cache_bytes: int = 16 * 1024 * 1024
    auth_token_ttl_s: float = AUTH_TOKEN_TTL_S_DEFAULT  # etcd's --auth-token-ttl (simple tokens)


def default_state_dir(data_dir: str) -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else os.path.join(os.path.abspath(data_dir), "state")
    digest = hashlib.sha256(os.path.abspath(data_dir).encode()).hexdigest()[:12]
    return os.path.join(base, "kvstore", f"{os.path.basename(os.path.abspath(data_dir))}-{digest}")


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
        # Identifies this process's proposals in the journal; new per start so a
        # replayed entry from an earlier incarnation never resolves a new request.
        self.origin = random.getrandbits(62) | 1
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
        self._seq = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._outbox: list[tuple[int, bytes]] = []
        self._flush_scheduled = False
        self._appends_inflight = 0
        self._hold_timer: asyncio.TimerHandle | None = None
        self._apply_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_ids = itertools.count()
        self._barrier_next: asyncio.Future[int] | None = None
        self._barrier_task: asyncio.Task[None] | None = None
        self._lease_proposed_ms: dict[int, int] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        # Held by whatever writes the backend (applier batches, compaction steps, defragment).
        self._write_lock = asyncio.Lock()
        self._fault_after_commit = int(os.environ.get(FAULT_KILL_AFTER_COMMIT_ENV, "0"))
        self._fault_in_batch = int(os.environ.get(FAULT_KILL_IN_BATCH_ENV, "0"))
        self._batches = 0
        self._snapshot_readers = 0
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
            "member_id": _id64(f"member/{self.config.name}/{self.config.initial_cluster_token}/{os.urandom(8).hex()}"),
            "cluster_id": _id64(f"cluster/{self.config.initial_cluster_token}"),
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
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(fail(errors.STOPPED))
        self.sm.close()

    # ------------------------------------------------------------ state file

    def _open_backend(self) -> Backend:
        """The state file, or a fresh one when it cannot be opened (a lost file costs a replay)."""
        # What a process killed during a defragment or an install left beside the file.
        for leftover in glob.glob(glob.escape(self.state_path) + ".*"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)
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
            await self._no_snapshot_readers()
            backend = self.sm.backend
            cleanup = backend.swap_in(tmp)
            self.sm = StateMachine(backend)
            self.hub.rebind(self.sm.store)
        await asyncio.to_thread(cleanup)
        log.info("installed a snapshot at journal position %d", self.sm.applied_position)

    # --------------------------------------------------------------- applier

    def _applier_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping:
            return
        # Fail-stop: a member that cannot apply the journal must not keep serving stale state.
        log.critical("the applier stopped: %r; exiting", task.exception(), exc_info=task.exception())
        os._exit(70)

    async def _applier(self) -> None:
        while True:
            try:
                async for batch in self.journal.read(self.log_name, self.sm.applied_position + 1):
                    if failpoints.enabled("stale_read"):  # members fall behind by different amounts
                        await asyncio.sleep(random.uniform(0, failpoints.STALE_READ_LAG_S))
                    async with self._write_lock:
                        self._apply_batch(batch)
                    self.committed_position = max(self.committed_position, self.sm.applied_position)
                    self._wake_apply_waiters()
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
        """One journal batch in one LMDB write transaction: all of it lands, or none of it."""
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
        if applied.origin == self.origin:
            fut = self._pending.pop(applied.seq, None)
            if fut is not None and not fut.done():
                fut.set_result(applied.result)

    async def _compactor_loop(self) -> None:
        """Physical compaction in bounded steps, one write transaction each, between batches."""
        while True:
            store = self.sm.store
            if not store.compaction_pending:
                await asyncio.sleep(0.05)
                continue
            started = time.monotonic()
            async with self._write_lock:
                if self.sm.store is store:
                    with store.backend.batch():
                        store.compact_step(COMPACT_STEP_ENTRIES_MAX)
            # At most half of the loop's time: requests get at least as long between steps.
            await asyncio.sleep(max(time.monotonic() - started, COMPACT_PAUSE_MIN_S))

    def _wake_apply_waiters(self) -> None:
        applied = self.sm.applied_position
        waiters = self._apply_waiters
        while waiters and waiters[0][0] <= applied:
            _, _, fut = heapq.heappop(waiters)
            if not fut.done():
                fut.set_result(None)

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
        return await self.propose_payload(kind, request.SerializeToString(), auth)

    async def propose_payload(self, kind: Kind, payload: bytes, auth: AuthInfo | None = None) -> Any:
        if len(self._pending) >= PENDING_PROPOSALS_MAX:
            raise fail(errors.TOO_MANY_REQUESTS)
        if self._stopping:
            raise fail(errors.STOPPED)
        seq = next(self._seq)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[seq] = fut
        self._outbox.append((seq, encode_entry(kind, self.origin, seq, payload, auth)))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        result = await fut
        if isinstance(result, EtcdError):
            raise result
        return result

    def _flush(self) -> None:
        """Send the proposals queued in this loop iteration, or while the appends in flight were
        out, as one append (group commit starts here)."""
        self._flush_scheduled = False
        self._send_outbox()

    def _send_outbox(self, *, capped: bool = True) -> None:
        while self._outbox and (not capped or self._appends_inflight < PROPOSAL_APPENDS_INFLIGHT_MAX):
            batch = self._outbox[:PROPOSAL_BATCH_ENTRIES_MAX]
            del self._outbox[:PROPOSAL_BATCH_ENTRIES_MAX]
            self._appends_inflight += 1
            asyncio.get_running_loop().create_task(self._append(batch))
        if self._outbox and self._hold_timer is None:
            self._hold_timer = asyncio.get_running_loop().call_later(PROPOSAL_HOLD_S_MAX, self._send_held)

    def _send_held(self) -> None:
        self._hold_timer = None
        if not self._stopping:
            self._send_outbox(capped=False)  # held too long: out now, whatever is in flight

    async def _append(self, batch: list[tuple[int, bytes]]) -> None:
        try:
            with self.metrics.wal_fsync.time():
                await self.journal.append(self.log_name, [data for _, data in batch])
                self._journal_contact = time.monotonic()
            self.counters["proposals_committed"] += len(batch)
        except (JournalError, OSError) as exc:
            log.warning("journal append failed: %s", exc, extra=self._log_fields())
            self.counters["proposals_failed"] += len(batch)
            for seq, _ in batch:
                fut = self._pending.pop(seq, None)
                if fut is not None and not fut.done():
                    fut.set_result(fail(errors.TIMEOUT))
        finally:
            self._appends_inflight -= 1
            if not self._stopping:
                self._flush()  # what queued behind this append goes out now

    # ------------------------------------------------------------------ reads

    async def linearizable_barrier(self) -> None:
        """Wait until every write acknowledged before this call is applied locally."""
        if failpoints.enabled("stale_read"):
            return
        loop = asyncio.get_running_loop()
        if self._barrier_next is None:
            self._barrier_next = loop.create_future()
        fut = self._barrier_next
        if self._barrier_task is None or self._barrier_task.done():
            self._barrier_task = loop.create_task(self._barrier_rounds())
        position = await asyncio.shield(fut)
        await self.wait_applied(position)

    async def _barrier_rounds(self) -> None:
        # One journal barrier per round, shared by every reader that arrived before the round began.
        while self._barrier_next is not None:
            fut = self._barrier_next
            self._barrier_next = None
            try:
                position = await self.journal.barrier(self.log_name)
                self._journal_contact = time.monotonic()
                self.committed_position = max(self.committed_position, position)
                fut.set_result(position)
            except Exception as exc:
                fut.set_exception(fail(errors.TIMEOUT) if isinstance(exc, JournalError) else exc)

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
        """etcd's defragment: a compacting copy of the file, then the copy replaces it (the tmpfs
        file shrinks to the pages in use). The copy runs in a thread; reads go on meanwhile,
        applying waits for the swap."""
        async with self._write_lock:
            await self._no_snapshot_readers()
            backend = self.sm.backend
            tmp = backend.swap_path("defrag")
            try:
                await asyncio.to_thread(backend.compact_copy, tmp)
            except BaseException:
                remove_state_file(tmp)
                raise
            cleanup = backend.swap_in(tmp)
            self.sm = StateMachine(backend)
            self.hub.store = self.sm.store  # the same state, new handles: watchers go on as they are
        await asyncio.to_thread(cleanup)  # unmap and free the old file off the event loop

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
        return random.getrandbits(62) | (1 << 61)  # positive, and never 0

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
        """The committed state now (sm.applied_position) as byte chunks, each produced in a thread
        from one LMDB read transaction: the event loop never waits for more than one chunk."""
        chunks = self.sm.snapshot_chunks()  # the read transaction starts here
        self._snapshot_readers += 1
        return self._chunks_in_thread(chunks)

    async def _chunks_in_thread(self, chunks: Generator[bytes, None, None]) -> AsyncIterator[bytes]:
        try:
            while True:
                chunk = await asyncio.to_thread(next, chunks, None)
                if chunk is None:
                    return
                yield chunk
        finally:
            self._snapshot_readers -= 1
            await asyncio.to_thread(chunks.close)

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
        self._snapshot_readers += 1
        try:
            return await asyncio.to_thread(read)
        finally:
            self._snapshot_readers -= 1

    async def _no_snapshot_readers(self) -> None:
        """Wait until no snapshot stream reads the environment (before it is closed)."""
        while self._snapshot_readers:
            await asyncio.sleep(0.01)

    async def save_journal_snapshot(self) -> None:
        """The state now as the journal's snapshot, streamed: never whole in memory."""
        position = self.sm.applied_position  # snapshot_stream's read transaction starts at this position
        await self.journal.snapshot_put(self.log_name, SnapshotStream(position, self.snapshot_stream()))

    @property
    def store(self) -> MVCCStore:
        return self.sm.store


class ThreadQueueChunks:
    """Chunks of an async iterator handed to a thread through a bounded queue."""

    _END = b""
    QUEUE_CHUNKS_MAX = 4

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(self.QUEUE_CHUNKS_MAX)
        self._closed = False

    def close(self) -> None:
        """The reader is done (or failed): unblock and stop the feeder."""
        self._closed = True
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()

    async def feed(self, source: AsyncIterator[bytes]) -> None:
        try:
            async for chunk in source:
                if self._closed:
                    return
                if chunk:
                    await asyncio.to_thread(self._queue.put, chunk)
            await asyncio.to_thread(self._queue.put, self._END)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the thread sees the source's failure
            await asyncio.to_thread(self._queue.put, exc)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if item == self._END:
                return
            yield item


def _kill_self(where: str) -> None:
    log.critical("fault injection: SIGKILL %s", where)
    os.kill(os.getpid(), signal.SIGKILL)


def parse_duration_s(text: str, default_unit_s: float) -> float:
    """etcd's retention values: a bare number is in the default unit (hours), else a Go duration like 5m, 30s."""
    text = text.strip()
    try:
        return float(text) * default_unit_s
    except ValueError:
        pass
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    total = 0.0
    number = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else ch
        if unit not in units or not number:
            raise ValueError(f"invalid duration {text!r}")
        total += float(number) * units[unit]
        number = ""
        i += len(unit)
    if number:
        raise ValueError(f"invalid duration {text!r}: missing unit")
    return total
