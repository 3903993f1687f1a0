"""Reads answered in a front end: KV.Range, read-only KV.Txn, Lease.LeaseTimeToLive and
Lease.LeaseLeases.

A read is answered from the front end's read-only view of the state file
(kvstore/workers/view.py); a JWT is checked here, a simple token looked up in
the front end's mirror of the member's tokens (one the mirror does not hold is
forwarded to the member's process, which answers it). A serializable read is
answered at once, with what the applier committed before it arrived; a
linearizable one first waits for a barrier shared by the front end's reads
(kvstore/workers/notify.py), as the member's own servicer waits for its own.
A read-only txn is linearizable unless every range in it is serializable, as
etcd decides. With auth on, the read runs as the member would run it (a JWT's
user; a simple token's user; with --client-cert-auth the certificate's common
name; else no one), and its permissions are checked against the auth store in
the same read transaction as the read itself. Lease reads are linearizable and
check no credentials, as the member's Lease servicer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc

from journal import failpoints
from kvstore.auth.store import AuthInfo, AuthStore
from kvstore.auth.tokens import JWTTokens
from kvstore.errors import EtcdError
from kvstore.mvcc.store import MVCCStore
from kvstore.mvcc.txn import execute_txn, read_only_txn_is_serializable
from kvstore.transport.cmux import PeerIdentities
from kvstore.v3rpc import validate
from kvstore.v3rpc.servicers import Malformed, lease_leases, lease_time_to_live, strict_parser
from kvstore.workers.credentials import FrontEndCredentials
from kvstore.workers.forward import Forwarder
from kvstore.workers.metrics import FrontEndMetrics
from kvstore.workers.notify import ChannelDown, MemberNotifications
from kvstore.workers.view import StateView
from proto.etcdserverpb import rpc_pb2 as pb

KV_RANGE = "/etcdserverpb.KV/Range"
KV_TXN = "/etcdserverpb.KV/Txn"
LEASE_TIME_TO_LIVE = "/etcdserverpb.Lease/LeaseTimeToLive"
LEASE_LEASES = "/etcdserverpb.Lease/LeaseLeases"

# Reads the view's store into the response's wire bytes, given the header to send (the member's ids).
ReadFn = Callable[[MVCCStore, Any], bytes]
# Raises the EtcdError etcd answers when the caller may not make this read (auth on).
PermitFn = Callable[[AuthStore, AuthInfo | None], None]


class LocalReads:
    def __init__(
        self,
        view: StateView,
        metrics: FrontEndMetrics,
        notifications: MemberNotifications,
        *,
        max_txn_ops: int,
        identities: PeerIdentities | None = None,
        jwt: JWTTokens | None = None,
    ) -> None:
        """identities: the front end's, with --client-cert-auth; jwt: --auth-token jwt's verifier."""
        self.view = view
        # Read inside the request's own read transaction: the auth revision the read is checked at.
        self.credentials = FrontEndCredentials(identities, lambda: view.auth.revision, jwt, notifications.tokens)
        self.metrics = metrics
        self.notifications = notifications
        self.max_txn_ops = max_txn_ops
        self.header = pb.ResponseHeader()  # the member's ids and raft term (frontend.py refreshes it)
        self._parse_range = strict_parser(pb.RangeRequest)
        self._parse_time_to_live = strict_parser(pb.LeaseTimeToLiveRequest)
        self._parse_leases = strict_parser(pb.LeaseLeasesRequest)
        self._forward_calls: dict[str, Any] = {}  # the forwarding call of each path, made once
        # Set when the front end stops (also when the member died: parent-death signal): from
        # then on the member, or its successor, answers, never a view of a file it may rebuild.
        self.stopping = False

    async def range(self, request: bytes, context: Any, forwarder: Forwarder) -> bytes:
        """The KV.Range handler."""
        started_s = time.monotonic()
        msg = self._parse_range(request)
        if isinstance(msg, Malformed) or not self._may_answer(context):
            return await self._forward(KV_RANGE, request, context, forwarder)
        try:
            validate.check_range(msg)  # before the barrier, as the member's servicer does
        except EtcdError as err:
            await self._refuse(KV_RANGE, err, started_s, context)
        return await self._answer(KV_RANGE, request, context, forwarder, msg.serializable,
                                  lambda store, header: store.range_encoded(msg, header),
                                  lambda auth, info: auth.check_range(info, msg.key, msg.range_end),
                                  started_s)  # fmt: skip

    async def read_only_txn(self, msg: Any, request: bytes, context: Any, forwarder: Forwarder) -> bytes:
        """A parsed KV.Txn with no write in any branch (writes.py hands it over)."""
        started_s = time.monotonic()
        if not self._may_answer(context):
            return await self._forward(KV_TXN, request, context, forwarder)
        try:
            validate.check_txn(msg, self.max_txn_ops)
        except EtcdError as err:
            await self._refuse(KV_TXN, err, started_s, context)

        def read(store: MVCCStore, header: Any) -> bytes:
            txn = store.begin()  # a txn that writes nothing: the view is never written
            resp = execute_txn(store, msg, txn)
            txn.end()
            return _encoded(resp, header, store)

        serializable = read_only_txn_is_serializable(msg)
        return await self._answer(KV_TXN, request, context, forwarder, serializable, read,
                                  lambda auth, info: auth.check_txn(info, msg), started_s)  # fmt: skip

    def handlers(self) -> dict[str, Callable[[bytes, Any, Forwarder], Any]]:
        return {KV_RANGE: self.range, LEASE_TIME_TO_LIVE: self.lease_time_to_live, LEASE_LEASES: self.lease_leases}

    async def lease_time_to_live(self, request: bytes, context: Any, forwarder: Forwarder) -> bytes:
        msg = self._parse_time_to_live(request)
        return await self._lease_read(LEASE_TIME_TO_LIVE, msg, request, context, forwarder,
                                      lambda store: lease_time_to_live(store, msg))  # fmt: skip

    async def lease_leases(self, request: bytes, context: Any, forwarder: Forwarder) -> bytes:
        msg = self._parse_leases(request)
        return await self._lease_read(LEASE_LEASES, msg, request, context, forwarder, lease_leases)

    async def _lease_read(
        self, path: str, msg: Any, request: bytes, context: Any, forwarder: Forwarder, answer: Callable[[Any], Any]
    ) -> bytes:
        if isinstance(msg, Malformed) or self.stopping:
            return await self._forward(path, request, context, forwarder)
        return await self._answer(path, request, context, forwarder, False,
                                  lambda store, header: _encoded(answer(store), header, store), None,
                                  time.monotonic())  # fmt: skip

    def _may_answer(self, context: Any) -> bool:
        return self.credentials.answers_here(context) and not self.stopping

    async def _answer(
        self,
        path: str,
        request: bytes,
        context: Any,
        forwarder: Forwarder,
        serializable: bool,
        read: ReadFn,
        permit: PermitFn | None,
        started_s: float,
    ) -> bytes:
        """permit: None for a read that checks no credentials (a lease's)."""
        if not serializable and not failpoints.enabled("stale_read"):
            if not self.notifications.up:
                return await self._forward(path, request, context, forwarder)
            try:
                await self.notifications.read_barrier()
            except ChannelDown:
                return await self._forward(path, request, context, forwarder)
            except EtcdError as err:  # the member's answer: the barrier timed out
                await self._refuse(path, err, started_s, context)
        error: EtcdError | None = None
        answer = b""
        with self.view.reading() as store:
            try:
                # As the member's servicer: after the barrier, before the read (a bad JWT is refused
                # with auth off too, as the member's Authenticator refuses it).
                if permit is not None:
                    info = self.credentials.info(context)
                    auth = self.view.auth
                    if auth.enabled:
                        permit(auth, info)
                header = pb.ResponseHeader()
                header.CopyFrom(self.header)
                answer = read(store, header)
            except EtcdError as err:
                error = err
        if path == KV_TXN:  # as the member's servicer counts a read-only txn past validation
            self.metrics.count("etcd_mvcc_txn_total", 1)
        if error is not None:
            await self._refuse(path, error, started_s, context)
        self._served(path, grpc.StatusCode.OK, started_s)
        return answer

    def _served(self, path: str, code: grpc.StatusCode, started_s: float) -> None:
        if path == KV_RANGE:
            self.metrics.range_served(code, started_s)
        else:
            self.metrics.served(path, code, started_s)

    async def _refuse(self, path: str, err: EtcdError, started_s: float, context: Any) -> None:
        self._served(path, err.code, started_s)
        await context.abort(err.code, err.message)

    async def _forward(self, path: str, request: bytes, context: Any, forwarder: Forwarder) -> bytes:
        call = self._forward_calls.get(path)
        if call is None:
            call = self._forward_calls[path] = forwarder.unary_call(path)
        return await forwarder.unary(call, request, context)


def _encoded(resp: Any, header: Any, store: MVCCStore) -> bytes:
    """A response read from the view, with the member's header at the view's revision, as bytes."""
    resp.header.CopyFrom(header)
    resp.header.revision = store.revision
    data: bytes = resp.SerializeToString()
    return data
