"""Writes answered in a front end: Put, DeleteRange, Txn with writes, Compact, and
the lease calls that are journal entries (LeaseGrant, LeaseRevoke, LeaseKeepAlive).

The member's own KV and Lease servicers (kvstore/v3rpc/servicers.py) run here,
unchanged, on a `FrontEndMember`: the same validation, request size and quota checks,
then the same proposer (kvstore/member/proposer.py) builds the journal entry
with the front end's own origin and sends the entries of one event-loop turn
as one append: straight to a remote journal (--journal-endpoints) with the
front end's own journal client, or through the member's journal path on the
notification channel (kvstore/workers/notify.py) to the embedded local
journal, which only the member's process writes. Either way the applier
hands its result for (origin, seq) back over that channel; the servicer
completes the header as the member does.

What the front end does not decide alone it forwards, before proposing
anything: calls with a simple token its mirror of the member's tokens does not
hold, a write that may cross the quota (the member raises the NOSPACE alarm), a
physical Compact (answered once the member's compactor removed the records),
and everything while the channel is down. The entry carries the credentials the
member would give it (a JWT's user and revision; a simple token's user at the
mirror's auth revision; with --client-cert-auth the certificate's common name
at the current auth revision; otherwise none), and the applier checks
permissions against them. A read-only txn is a read: kvstore/workers/reads.py
answers it, as it answers LeaseTimeToLive and LeaseLeases. Only the member's
process proposes the expiry of a lease.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from kvstore.auth.tokens import JWTTokens
from kvstore.errors import EtcdError
from kvstore.member.config import MemberConfig, new_lease_id
from kvstore.member.proposer import Appends, Proposer
from kvstore.metrics import status_code
from kvstore.mvcc.store import MVCCStore
from kvstore.mvcc.txn import txn_has_writes
from kvstore.statemachine import Kind
from kvstore.transport.cmux import PeerIdentities
from kvstore.v3rpc.servicers import KV, Lease, Malformed, strict_parser
from kvstore.workers.credentials import FrontEndCredentials
from kvstore.workers.forward import Forwarder
from kvstore.workers.metrics import FrontEndMetrics
from kvstore.workers.notify import MemberNotifications
from kvstore.workers.view import StateView
from proto.etcdserverpb import rpc_pb2 as pb

# Their responses all carry their header in field 1 (what StoredResponse relies on).
RESPONSE_KINDS = frozenset({Kind.PUT, Kind.DELETE_RANGE, Kind.TXN, Kind.COMPACT, Kind.LEASE_GRANT,
                            Kind.LEASE_REVOKE, Kind.LEASE_KEEPALIVE})  # fmt: skip
LEASE_KEEPALIVE = "/etcdserverpb.Lease/LeaseKeepAlive"
# The member's counters the servicer bumps, and the metric each one is in /metrics.
COUNTER_METRICS = {
    "puts": "etcd_mvcc_put_total",
    "deletes": "etcd_mvcc_delete_total",
    "txns": "etcd_mvcc_txn_total",
    "proposals_failed": "etcd_server_proposals_failed_total",
}


class _FilledHeader:
    """What `fill` sets on a response header (its revision is the applier's, in the bytes)."""

    __slots__ = ("cluster_id", "member_id", "raft_term", "revision")

    def __init__(self) -> None:
        self.cluster_id = self.member_id = self.raft_term = 0
        self.revision = 1  # nonzero: `fill` leaves the revision alone


class StoredResponse:
    """The applier's response bytes, passed on without a decode and an encode in the front end.

    The servicer completes `header` as the member does (`fill`: ids and raft term; the applier
    always set the revision, which is >= 1); the bytes go out with those fields appended as a
    second header (protobuf merges the occurrences of an embedded message: a client reads one
    header, the applier's revision with the member's ids).
    """

    __slots__ = ("header", "raw")
    _suffix: tuple[tuple[int, int, int], bytes] = ((0, 0, 0), b"")  # the last identity's encoding

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.header = _FilledHeader()

    def SerializeToString(self) -> bytes:  # the protobuf method it stands in for
        h = self.header
        identity = (h.cluster_id, h.member_id, h.raft_term)
        cached, suffix = StoredResponse._suffix
        if identity != cached:
            suffix = pb.PutResponse(header=pb.ResponseHeader(cluster_id=identity[0], member_id=identity[1],
                                                             raft_term=identity[2])).SerializeToString()  # fmt: skip
            StoredResponse._suffix = (identity, suffix)
        return self.raw + suffix


class ForwardInstead(Exception):
    """The member's process answers this call (raised before anything was proposed)."""


class _CountedCounters(dict[str, int]):
    """The member's `counters`, each increase also counted in the front end's metric files."""

    def __init__(self, metrics: FrontEndMetrics) -> None:
        super().__init__({"puts": 0, "deletes": 0, "txns": 0, "ranges": 0, "proposals_committed": 0,
                          "proposals_failed": 0})  # fmt: skip
        self.metrics = metrics

    def __setitem__(self, key: str, value: int) -> None:
        name = COUNTER_METRICS.get(key)
        if name is not None:
            self.metrics.count(name, value - self.get(key, 0))
        super().__setitem__(key, value)


class FrontEndMember:
    """What the KV servicer uses of its member, in a front end."""

    def __init__(
        self,
        config: MemberConfig,
        view: StateView,
        notifications: MemberNotifications,
        metrics: FrontEndMetrics,
        journal: Appends | None = None,
    ) -> None:
        """journal: where the proposer appends (a remote journal's own client); by default the
        member's journal path, over the notification channel (the embedded local journal has one
        writer, the member's process)."""
        self.config = config
        self.view = view
        self.counters = _CountedCounters(metrics)
        self.proposer = Proposer(
            journal if journal is not None else notifications,
            config.log_name,
            # The member's process times the appends it makes for the front end (notify.py).
            timer=metrics.wal_fsync.time if journal is not None else contextlib.nullcontext,
            on_contact=lambda: None,
            counters=self.counters,
            log_fields=dict,
            pending_max=config.pending_proposals_max,
        )
        notifications.origin = self.proposer.origin
        notifications.on_result = self.proposer.resolve
        # The state file's size, read again after each applied batch (as the member's own
        # db_size_bytes follows its commits), not stat'ed for every write.
        self._file_bytes: int | None = None
        notifications.applied_listeners.append(self._file_moved)
        self.notifications = notifications
        self.identity = pb.ResponseHeader()  # the member's ids and raft term (frontend.py refreshes it)

    @property
    def cluster_id(self) -> int:
        return int(self.identity.cluster_id)

    @property
    def member_id(self) -> int:
        return int(self.identity.member_id)

    @property
    def raft_term(self) -> int:
        return int(self.identity.raft_term)

    @property
    def store(self) -> MVCCStore:
        return self.view.store

    def new_lease_id(self) -> int:
        return new_lease_id()

    def _file_moved(self, _position: int) -> None:
        self._file_bytes = None

    async def check_quota(self, cost: int) -> None:
        """The member's quota gate; near the quota the member decides (and raises the alarm)."""
        quota = self.config.quota_backend_bytes
        if cost <= 0 or quota <= 0:
            return
        if self._file_bytes is None:  # as of the last applied batch, as the member's db_size_bytes
            self._file_bytes = os.path.getsize(self.view.path)
        if self._file_bytes + cost >= quota:
            raise ForwardInstead()

    async def propose(self, kind: Kind, request: Any, auth: Any = None) -> Any:
        assert kind in RESPONSE_KINDS, kind
        raw = await self.proposer.propose_payload(kind, request.SerializeToString(), auth)
        return StoredResponse(raw)


LocalUnary = Callable[[bytes, Any, Forwarder], Any]
# A parsed read-only TxnRequest, its bytes, the call's context -> the response's bytes.
ReadOnlyTxn = Callable[[Any, bytes, Any, Forwarder], Awaitable[bytes]]


class LocalWrites:
    """The front end's handlers of KV.Put, KV.DeleteRange, KV.Txn, KV.Compact, Lease.LeaseGrant,
    Lease.LeaseRevoke and the Lease.LeaseKeepAlive stream."""

    def __init__(
        self,
        member: FrontEndMember,
        metrics: FrontEndMetrics,
        read_only_txn: ReadOnlyTxn,
        identities: PeerIdentities | None = None,
        jwt: JWTTokens | None = None,
    ) -> None:
        """identities: the front end's, with --client-cert-auth (a call then runs as its certificate's
        common name, at the auth revision the applier last committed: the member's own rule);
        jwt: --auth-token jwt's verifier."""
        self.member = member
        self.metrics = metrics
        self.read_only_txn = read_only_txn
        self.credentials = FrontEndCredentials(identities, member.view.current_auth_revision, jwt,
                                               member.notifications.tokens)  # fmt: skip
        # The member's servicers, on the front end.
        self.kv = KV(member, self.credentials)  # type: ignore[arg-type]
        self.lease = Lease(member, self.credentials)  # type: ignore[arg-type]
        self._parse_keepalive = strict_parser(pb.LeaseKeepAliveRequest)
        self.stopping = False

    def handlers(self) -> dict[str, LocalUnary]:
        answered = (
            ("/etcdserverpb.KV/Put", pb.PutRequest, self.kv, KV.Put),
            ("/etcdserverpb.KV/DeleteRange", pb.DeleteRangeRequest, self.kv, KV.DeleteRange),
            ("/etcdserverpb.KV/Txn", pb.TxnRequest, self.kv, KV.Txn),
            ("/etcdserverpb.KV/Compact", pb.CompactionRequest, self.kv, KV.Compact),
            ("/etcdserverpb.Lease/LeaseGrant", pb.LeaseGrantRequest, self.lease, Lease.LeaseGrant),
            ("/etcdserverpb.Lease/LeaseRevoke", pb.LeaseRevokeRequest, self.lease, Lease.LeaseRevoke),
        )
        return {path: self._handler(path, *rest) for path, *rest in answered}

    def stream_handlers(self) -> dict[str, Any]:
        return {LEASE_KEEPALIVE: self.keep_alive}

    async def keep_alive(self, requests: AsyncIterator[bytes], context: Any, forwarder: Forwarder) -> None:
        """Lease.LeaseKeepAlive: each renewal proposed here, answered with the applier's TTL."""
        if not self._may_answer(context):
            async for response in forwarder.forward_stream(LEASE_KEEPALIVE, requests, context):
                await context.write(response)
            return
        started_s = time.monotonic()
        error: BaseException | None = None
        try:
            async for resp in self.lease.LeaseKeepAlive(self._keepalive_requests(requests, context), context):
                await context.write(resp)
        except BaseException as e:
            error = e
            raise
        finally:
            self.metrics.served(LEASE_KEEPALIVE, status_code(context, error), started_s, "bidi_stream")

    async def _keepalive_requests(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[Any]:
        async for raw in requests:
            msg = self._parse_keepalive(raw)
            if isinstance(msg, Malformed):
                await msg.abort(context)
            yield msg

    def _handler(self, path: str, request_type: Any, target: Any, method: Any) -> LocalUnary:
        parse = strict_parser(request_type)
        servicer = method.__wrapped__  # without the wrapper that aborts: the code is counted here
        name = path.rpartition("/")[2]
        forward_call: list[Any] = []

        async def forward(request: bytes, context: Any, forwarder: Forwarder) -> bytes:
            if not forward_call:
                forward_call.append(forwarder.unary_call(path))
            return await forwarder.unary(forward_call[0], request, context)

        async def handle(request: bytes, context: Any, forwarder: Forwarder) -> bytes:
            started_s = time.monotonic()
            msg = parse(request)
            if name == "Txn" and not isinstance(msg, Malformed) and not txn_has_writes(msg):
                return await self.read_only_txn(msg, request, context, forwarder)
            if isinstance(msg, Malformed) or not self._may_answer(context):
                return await forward(request, context, forwarder)
            if name == "Compact" and msg.physical:  # answered once the member's compactor is done
                return await forward(request, context, forwarder)
            try:
                resp = await servicer(target, msg, context)
            except ForwardInstead:
                return await forward(request, context, forwarder)
            except EtcdError as err:
                self.metrics.served(path, err.code, started_s)
                await context.abort(err.code, err.message)
            self.metrics.served(path, grpc.StatusCode.OK, started_s)
            data: bytes = resp.SerializeToString()
            return data

        return handle

    def _may_answer(self, context: Any) -> bool:
        return not (self.stopping or not self.credentials.answers_here(context) or not self.member.notifications.up)
