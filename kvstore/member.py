"""The member: an asyncio shell that proposes to the journal and applies from it.

Write path: a request becomes a journal entry (proposals arriving together
go out in one append); the member waits until its own applier has applied
that entry and answers with the result the state machine computed there.
Read path: serializable reads use local state at once; linearizable reads
first ask the journal for its committed position (one barrier shared by all
reads waiting at that moment) and wait until the applier has reached it.

State lives in memory; a checkpoint of it is written to the state directory
(tmpfs by default) so that a restart replays only the journal's tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from journal.api import Journal, JournalError, PositionTrimmed, Snapshot
from kvstore import errors
from kvstore.errors import EtcdError, fail
from kvstore.mvcc.store import MVCCStore
from kvstore.statemachine import Kind, StateMachine, encode_entry
from kvstore.watch import WatchHub
from proto.etcdserverpb import rpc_pb2 as pb

log = logging.getLogger(__name__)

ETCD_VERSION = "3.6.0"  # what Status and /version report: kube-apiserver needs >= 3.5.13 for progress requests
CLUSTER_VERSION = "3.6.0"
STORAGE_VERSION = "3.6.0"
PENDING_PROPOSALS_MAX = 10_000  # beyond this etcd answers "too many requests"
PROPOSAL_BATCH_ENTRIES_MAX = 1024
LEASE_EXPIRY_CHECK_S = 0.5
LEASE_EXPIRE_BATCH_MAX = 1000
LEASE_EXPIRE_RETRY_MS = 3000  # propose a due lease again only after this long
DB_BASE_BYTES = 20_480  # a fresh etcd bbolt file; keeps dbSize honest for an empty store
CHECKPOINT_FILE = "checkpoint"
CHECKPOINT_MAGIC = b"KVCKPT01"
IDENTITY_FILE = "member.json"
JOURNAL_STATUS_INTERVAL_S = 1.0
CHECKPOINT_LOOP_SHARE_MAX = 0.05
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
    checkpoint_interval_s: float = 5.0
    snapshot_count: int = 100_000  # etcd's --snapshot-count: journal entries between snapshots
    snapshot_catchup_entries: int = 5000  # entries kept behind a snapshot for members slightly behind
    watch_cache_revisions: int = 100_000


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
        self.sm = StateMachine()
        self.hub = WatchHub(
            self.sm.store,
            self.header,
            cache_revisions_max=config.watch_cache_revisions,
            max_request_bytes=config.max_request_bytes,
        )
        self.raft_term = 1
        self.committed_position = 0
        self.db_size_bytes = DB_BASE_BYTES
        self._seq = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._outbox: list[tuple[int, bytes]] = []
        self._flush_scheduled = False
        self._apply_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_ids = itertools.count()
        self._barrier_next: asyncio.Future[int] | None = None
        self._barrier_task: asyncio.Task[None] | None = None
        self._lease_proposed_ms: dict[int, int] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._checkpointed_position = 0
        self._changed_position = 0  # the last applied entry that changed more than liveness
        self._snapshot_position = 0
        self._snapshot_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.counters: dict[str, int] = {
            "proposals_committed": 0,
            "proposals_failed": 0,
            "puts": 0,
            "deletes": 0,
            "txns": 0,
            "ranges": 0,
        }
        self.ready = asyncio.Event()
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

    def header(self, revision: int) -> Any:
        return pb.ResponseHeader(
            cluster_id=self.cluster_id, member_id=self.member_id, revision=revision, raft_term=self.raft_term
        )

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        status = await self.journal.status(self.log_name)
        self.raft_term = max(status.epoch, 1)
        self.committed_position = status.committed
        recovered = self._recover(status.committed)
        if not recovered:
            snapshot = await self.journal.snapshot_get(self.log_name)
            if snapshot is not None:
                self._install(StateMachine.loads(snapshot.blob))
        loop = asyncio.get_running_loop()
        applier = loop.create_task(self._applier(), name="applier")
        applier.add_done_callback(self._applier_done)
        self._tasks = [
            applier,
            loop.create_task(self._lease_expiry_loop(), name="lease-expiry"),
            loop.create_task(self._progress_loop(), name="progress-notify"),
            loop.create_task(self._checkpoint_loop(), name="checkpoint"),
            loop.create_task(self._auto_compaction_loop(), name="auto-compaction"),
            loop.create_task(self._journal_status_loop(), name="journal-status"),
        ]
        await self.wait_applied(status.committed)
        self._adopt_added_id()
        await self._heartbeat()  # listed in MemberList before serving
        self._tasks.append(loop.create_task(self._heartbeat_loop(), name="member-heartbeat"))
        self._snapshot_position = self.sm.applied_position
        self.ready.set()
        log.info(
            "member %x ready: revision %d, journal position %d, term %d",
            self.member_id,
            self.sm.store.revision,
            self.sm.applied_position,
            self.raft_term,
        )

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            self.write_checkpoint()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(fail(errors.STOPPED))

    def _install(self, sm: StateMachine) -> None:
        self.sm = sm
        self._changed_position = sm.applied_position
        self.hub.rebind(sm.store)
        self._update_db_size()

    # ----------------------------------------------------------- checkpoints

    def _checkpoint_path(self) -> str:
        return os.path.join(self.state_dir, CHECKPOINT_FILE)

    def _recover(self, committed: int) -> bool:
        """Load the tmpfs checkpoint if it belongs to this journal; True if it did."""
        path = self._checkpoint_path()
        if not os.path.exists(path):
            return False
        try:
            with open(path, "rb") as f:
                data = f.read()
            if not data.startswith(CHECKPOINT_MAGIC):
                raise ValueError("bad magic")
            meta_len = int.from_bytes(data[8:12], "big")
            meta = msgpack.unpackb(data[12 : 12 + meta_len], raw=False)
            if meta["journal_token"] != self.journal_token or meta["log"] != self.log_name:
                log.warning("checkpoint %s belongs to another journal; ignoring it", path)
                return False
            if meta["position"] > committed:
                log.warning("checkpoint at %d is ahead of the journal (%d); ignoring it", meta["position"], committed)
                return False
            body = data[12 + meta_len :]
            if hashlib.sha256(body).hexdigest() != meta["sha256"]:
                raise ValueError("checksum mismatch")
            self._install(StateMachine.loads(body))
            self._checkpointed_position = self.sm.applied_position
            log.info("recovered checkpoint at journal position %d", self.sm.applied_position)
            return True
        except Exception as exc:  # a damaged checkpoint costs a longer replay, nothing else
            log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
            return False

    def write_checkpoint(self) -> None:
        """Write the state to the state dir atomically (tmp + rename; tmpfs needs no fsync)."""
        body = self.sm.dumps()
        meta = msgpack.packb(
            {
                "journal_token": self.journal_token,
                "log": self.log_name,
                "position": self.sm.applied_position,
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        )
        path = self._checkpoint_path()
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(CHECKPOINT_MAGIC + len(meta).to_bytes(4, "big") + meta)
            f.write(body)
        os.replace(tmp, path)
        self._checkpointed_position = self.sm.applied_position

    async def _checkpoint_loop(self) -> None:
        # A checkpoint serialises the whole store on the event loop; space them so that
        # they take at most CHECKPOINT_LOOP_SHARE_MAX of its time on a large store.
        while True:
            await asyncio.sleep(self.config.checkpoint_interval_s)
            # heartbeats alone do not justify serialising the store: replaying them is cheap
            if self._changed_position <= self._checkpointed_position:
                continue
            started = time.monotonic()
            self.write_checkpoint()
            took_s = time.monotonic() - started
            await asyncio.sleep(max(0.0, took_s / CHECKPOINT_LOOP_SHARE_MAX - self.config.checkpoint_interval_s))

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
                    for entry in batch:
                        self._apply_one(entry.position, entry.timestamp_ms, entry.data)
                    self.committed_position = max(self.committed_position, self.sm.applied_position)
                    self._wake_apply_waiters()
                    self._maybe_snapshot()
            except PositionTrimmed:
                # This member fell behind the journal's trim point: start again from its snapshot.
                snapshot = await self.journal.snapshot_get(self.log_name)
                if snapshot is None or snapshot.position <= self.sm.applied_position:
                    raise
                log.warning(
                    "journal trimmed past position %d; installing its snapshot at %d",
                    self.sm.applied_position,
                    snapshot.position,
                )
                self._install(StateMachine.loads(snapshot.blob))
                self._wake_apply_waiters()

    def _maybe_snapshot(self) -> None:
        if self._snapshot_task is not None and not self._snapshot_task.done():
            return
        if self.sm.applied_position - self._snapshot_position >= self.config.snapshot_count > 0:
            self._snapshot_task = asyncio.get_running_loop().create_task(self._snapshot_and_trim())

    async def _snapshot_and_trim(self) -> None:
        """etcd's --snapshot-count: put the state in the journal, then let it drop what the
        snapshot covers, keeping snapshot_catchup_entries for members slightly behind."""
        position = self.sm.applied_position
        try:
            await self.journal.snapshot_put(self.log_name, Snapshot(position, self.sm.dumps()))
            keep = self.config.snapshot_catchup_entries
            if position - keep > 1:
                await self.journal.trim(self.log_name, position - keep)
            self._snapshot_position = position
            log.info("snapshot at journal position %d; trimmed below %d", position, position - keep)
        except (JournalError, OSError) as exc:
            log.warning("snapshot at %d failed: %s", position, exc)

    def _apply_one(self, position: int, timestamp_ms: int, data: bytes) -> None:
        applied = self.sm.apply(position, timestamp_ms, data)
        if not applied.liveness_only:
            self._changed_position = position
        for rev_events in applied.events:
            self.hub.publish(rev_events)
        if applied.compacted_to is not None:
            self.hub.compacted(applied.compacted_to)
        if applied.events:
            self._update_db_size()
        if applied.removed_member is not None and applied.removed_member == self.member_id:
            self._evicted()
        if applied.origin == self.origin:
            fut = self._pending.pop(applied.seq, None)
            if fut is not None and not fut.done():
                fut.set_result(applied.result)

    def _update_db_size(self) -> None:
        # Like a bbolt file, the reported size only grows until a defragment.
        self.db_size_bytes = max(self.db_size_bytes, self.db_size_in_use_bytes)

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

    async def propose(self, kind: Kind, request: Any) -> Any:
        """Append a request to the journal; return the response our applier computed for it."""
        return await self.propose_payload(kind, request.SerializeToString())

    async def propose_payload(self, kind: Kind, payload: bytes) -> Any:
        if len(self._pending) >= PENDING_PROPOSALS_MAX:
            raise fail(errors.TOO_MANY_REQUESTS)
        if self._stopping:
            raise fail(errors.STOPPED)
        seq = next(self._seq)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[seq] = fut
        self._outbox.append((seq, encode_entry(kind, self.origin, seq, payload)))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        result = await fut
        if isinstance(result, EtcdError):
            raise result
        return result

    def _flush(self) -> None:
        """Send every proposal queued in this loop iteration as one append (group commit starts here)."""
        self._flush_scheduled = False
        while self._outbox:
            batch = self._outbox[:PROPOSAL_BATCH_ENTRIES_MAX]
            del self._outbox[:PROPOSAL_BATCH_ENTRIES_MAX]
            asyncio.get_running_loop().create_task(self._append(batch))

    async def _append(self, batch: list[tuple[int, bytes]]) -> None:
        try:
            await self.journal.append(self.log_name, [data for _, data in batch])
            self.counters["proposals_committed"] += len(batch)
        except (JournalError, OSError) as exc:
            log.warning("journal append failed: %s", exc)
            self.counters["proposals_failed"] += len(batch)
            for seq, _ in batch:
                fut = self._pending.pop(seq, None)
                if fut is not None and not fut.done():
                    fut.set_result(fail(errors.TIMEOUT))

    # ------------------------------------------------------------------ reads

    async def linearizable_barrier(self) -> None:
        """Wait until every write acknowledged before this call is applied locally."""
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

    def defragment(self) -> None:
        self.db_size_bytes = self.db_size_in_use_bytes

    @property
    def db_size_in_use_bytes(self) -> int:
        return DB_BASE_BYTES + self.sm.store.bytes_in_use

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
        """Follow the journal's epoch (reported as raft_term) and committed position."""
        while True:
            await asyncio.sleep(JOURNAL_STATUS_INTERVAL_S)
            with contextlib.suppress(JournalError, OSError):
                status = await self.journal.status(self.log_name)
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
                log.info("auto-compacted to revision %d", revision)

    # ------------------------------------------------------------- snapshots

    def snapshot_blob(self) -> bytes:
        return self.sm.dumps()

    async def save_journal_snapshot(self) -> None:
        await self.journal.snapshot_put(self.log_name, Snapshot(self.sm.applied_position, self.sm.dumps()))

    @property
    def store(self) -> MVCCStore:
        return self.sm.store


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
