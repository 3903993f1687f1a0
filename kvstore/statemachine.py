"""The member's state machine: journal entries in, store changes, responses and events out.

Every member applies the same journal in the same order through this object
and ends in the same state, byte for byte. It reads no clock, no random source
and no member-local setting: time comes from the journal entry's timestamp,
and everything a request needs (a lease ID chosen for it, the proposing member)
travels inside the entry.

An entry is a msgpack array [kind, origin, seq, payload] or, for a request
made with credentials, [kind, origin, seq, payload, [user, auth revision]]:
`origin` and `seq` identify the proposing member and its request so that the
member can hand the result back to the waiting client; `payload` is the etcd
request, serialised; the last element is etcd's request header auth fields,
which apply checks against the auth store as it is at that entry.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import msgpack

from kvstore import errors
from kvstore.auth.store import REQUEST_TYPES as AUTH_REQUEST_TYPES
from kvstore.auth.store import AuthInfo, AuthStore
from kvstore.errors import EtcdError, fail
from kvstore.lease import MAX_LEASE_TTL_S, MIN_LEASE_TTL_S
from kvstore.membership import MemberRegistry, as_pb, from_pb
from kvstore.mvcc import snapshot
from kvstore.mvcc.backend import Backend
from kvstore.mvcc.store import MVCCStore, RevisionEvents
from kvstore.mvcc.txn import check_put, execute_txn
from proto.etcdserverpb import rpc_pb2 as pb

log = logging.getLogger(__name__)

# etcd's kvOverhead in its quota cost of a put (server/storage/quota.go).
PUT_QUOTA_OVERHEAD_BYTES = 256
LEASE_GRANT_QUOTA_COST_BYTES = 8 * 3 + 16  # etcd: leaseOverhead; any positive cost makes grants quota-checked


class Kind(IntEnum):
    PUT = 1
    DELETE_RANGE = 2
    TXN = 3
    COMPACT = 4
    LEASE_GRANT = 5
    LEASE_REVOKE = 6
    LEASE_KEEPALIVE = 7
    LEASE_EXPIRE = 8  # payload: msgpack list of lease ids the proposer saw due
    ALARM = 9
    AUTH = 10  # payload: msgpack [gRPC method name, request]; see kvstore.auth.store.REQUEST_TYPES
    AUTHENTICATE = 11  # payload: msgpack [user, simple token prefix or "", auth revision the password was checked at]
    MEMBER_HEARTBEAT = 12  # payload: msgpack [Member (serialized), liveness ttl ms]
    MEMBER_ADD = 13  # payload: Member (id chosen by the proposer, peer URLs)
    MEMBER_REMOVE = 14
    MEMBER_UPDATE = 15


_REQUEST_TYPE: dict[Kind, Any] = {
    Kind.PUT: pb.PutRequest,
    Kind.DELETE_RANGE: pb.DeleteRangeRequest,
    Kind.TXN: pb.TxnRequest,
    Kind.COMPACT: pb.CompactionRequest,
    Kind.LEASE_GRANT: pb.LeaseGrantRequest,
    Kind.LEASE_REVOKE: pb.LeaseRevokeRequest,
    Kind.LEASE_KEEPALIVE: pb.LeaseKeepAliveRequest,
    Kind.ALARM: pb.AlarmRequest,
    Kind.MEMBER_ADD: pb.Member,
    Kind.MEMBER_REMOVE: pb.MemberRemoveRequest,
    Kind.MEMBER_UPDATE: pb.MemberUpdateRequest,
}


def encode_entry(kind: Kind, origin: int, seq: int, payload: bytes, auth: AuthInfo | None = None) -> bytes:
    fields: list[Any] = [int(kind), origin, seq, payload]
    if auth is not None:
        fields.append([auth.username, auth.revision])
    data: bytes = msgpack.packb(fields, use_bin_type=True)
    return data


# Kind(n) goes through the enum's metaclass (about 1 µs, once per applied entry); a dict does not.
_KIND_OF: dict[int, Kind] = {int(k): k for k in Kind}


def decode_entry(data: bytes) -> tuple[Kind, int, int, bytes, AuthInfo | None]:
    fields = msgpack.unpackb(data, raw=False)
    auth = AuthInfo(fields[4][0], fields[4][1]) if len(fields) > 4 else None
    return _KIND_OF[fields[0]], fields[1], fields[2], fields[3], auth


def put_quota_cost(req: Any) -> int:
    return PUT_QUOTA_OVERHEAD_BYTES + len(req.key) + len(req.value)


def txn_quota_cost(req: Any) -> int:
    """etcd's costTxn: the larger of the two branches' top-level put sizes."""

    def branch(ops: Any) -> int:
        return sum(put_quota_cost(op.request_put) for op in ops if op.WhichOneof("request") == "request_put")

    return max(branch(req.success), branch(req.failure))


@dataclass(slots=True)
class Applied:
    """The outcome of one journal entry."""

    origin: int
    seq: int
    result: Any  # a response message, or an EtcdError
    events: list[RevisionEvents] = field(default_factory=list)
    compacted_to: int | None = None  # set when the entry compacted the store
    tokens_revoked_for: str | None = None  # a user deleted or re-passworded: its tokens are void
    tokens_cleared: bool = False  # auth was disabled: every token is void
    removed_member: int | None = None  # set when the entry evicted a member


# The state machine's own entries in the backend's meta database. A new piece of replicated
# state (auth, membership, ...) takes a name here, is read in __init__ and written in flush
# (or writes its own table in the batch), and travels in snapshots without more code.
META_APPLIED = b"applied"  # the last journal position applied (8 bytes, big-endian)
META_ALARMS = b"alarms"  # msgpack [[member id, AlarmType], ...], sorted
META_AUTH = b"auth"  # msgpack AuthStore.to_state(): users, roles, enabled, auth revision
META_MEMBERS = b"members"  # msgpack MemberRegistry.to_state(): registered members and their liveness


class StateMachine:
    """Journal entries in; every change lands in the backend's open write batch.

    The member opens one batch per journal read batch (kvstore/member.py); an
    entry applied with no batch open gets one of its own. Each entry's store
    changes, responses' side effects and the position it reaches are in the
    same LMDB transaction, so the file always holds "everything up to P".
    """

    def __init__(self, backend: Backend | None = None) -> None:
        self.backend = backend if backend is not None else Backend.temporary()
        self.store = MVCCStore(self.backend)
        raw = self.backend.get_meta(META_APPLIED)
        self.applied_position = int.from_bytes(raw, "big") if raw else 0
        raw = self.backend.get_meta(META_ALARMS)
        # (member id, AlarmType)
        self.alarms: set[tuple[int, int]] = {(m, a) for m, a in msgpack.unpackb(raw)} if raw else set()
        self._alarms_dirty = False
        raw = self.backend.get_meta(META_AUTH)
        self.auth = AuthStore.from_state(msgpack.unpackb(raw, raw=False)) if raw else AuthStore()
        self._auth_dirty = False
        raw = self.backend.get_meta(META_MEMBERS)
        self.members = MemberRegistry.from_state(msgpack.unpackb(raw, raw=False)) if raw else MemberRegistry()
        self._members_dirty = False

    def close(self) -> None:
        self.backend.close()

    # -------------------------------------------------------------- applying

    def apply(self, position: int, timestamp_ms: int, data: bytes, *, flush: bool = True) -> Applied:
        """Apply one entry. `flush=False` (inside an open batch only): leave the applied position,
        the MVCC counters and the dirty meta on the heap for `flush()`, called once before the
        batch commits (a batch lands whole or not at all, so per-entry copies would be overwritten)."""
        assert position == self.applied_position + 1, f"entry {position} applied after {self.applied_position}"
        assert flush or self.backend.in_batch, "apply(flush=False) needs an open batch"
        if not flush:  # the caller's batch (no batch() context per entry: a part of its apply time)
            out = self._apply(position, timestamp_ms, data)
            self.applied_position = position
            return out
        with self.backend.batch():
            out = self._apply(position, timestamp_ms, data)
            self.applied_position = position
            if flush:
                self.flush()
        return out

    def _apply(self, position: int, timestamp_ms: int, data: bytes) -> Applied:
        kind, origin, seq, payload, auth = decode_entry(data)
        out = Applied(origin, seq, None)
        counters = self.store.counters()
        try:
            # Every change of the entry in a nested transaction: a failure halfway (a txn op that
            # fails its check, the map full) leaves nothing of it behind.
            with self.backend.nested():
                request_type = _REQUEST_TYPE.get(kind)
                if request_type is not None:  # etcd requests (puts first: the common case)
                    req = request_type.FromString(payload)
                    if self.auth.enabled:
                        self._check_permission(kind, req, auth)
                    out.result = self._apply_request(kind, req, timestamp_ms, out)
                elif kind == Kind.LEASE_EXPIRE:
                    out.result = self._lease_expire(msgpack.unpackb(payload), timestamp_ms, out)
                elif kind == Kind.AUTH:
                    self._auth_dirty = True
                    out.result = self._apply_auth(payload, auth, out)
                elif kind == Kind.MEMBER_HEARTBEAT:
                    self._members_dirty = True
                    member, ttl_ms = msgpack.unpackb(payload)
                    self.members.expire(timestamp_ms)
                    out.result = self.members.heartbeat(from_pb(pb.Member.FromString(member)), ttl_ms, timestamp_ms)
                elif kind == Kind.AUTHENTICATE:
                    name, prefix, checked_revision = msgpack.unpackb(payload, raw=False)
                    out.result = self.auth.authenticate(name, prefix, checked_revision, position)
                else:
                    raise AssertionError(f"unknown entry kind {kind}")
        except EtcdError as err:
            self.store.restore_counters(counters)
            out.result = err
        except Exception as exc:
            self.store.restore_counters(counters)
            # Every member applies this entry and fails the same way: answer an error rather than
            # let one request stop every member. Its writes were rolled back with the nested txn.
            log.exception("unexpected error applying journal entry %d", position)
            out.result = EtcdError(errors.Code.UNKNOWN, f"etcdserver: unexpected error during apply: {exc!r}")
            out.events.clear()
        return out

    def flush(self) -> None:
        """Write what is kept on the heap between entries into the open batch."""
        backend = self.backend
        backend.put_meta(META_APPLIED, self.applied_position.to_bytes(8, "big"))
        self.store.flush()
        if self._alarms_dirty:
            backend.put_meta(META_ALARMS, msgpack.packb(sorted(self.alarms)))
            self._alarms_dirty = False
        if self._members_dirty:
            backend.put_meta(META_MEMBERS, msgpack.packb(self.members.to_state()))
            self._members_dirty = False
        if self._auth_dirty:
            # The auth store is small and changes rarely: written whole, in the entry's transaction.
            backend.put_meta(META_AUTH, msgpack.packb(self.auth.to_state()))
            self._auth_dirty = False

    def _check_permission(self, kind: Kind, req: Any, auth: AuthInfo | None) -> None:
        """etcd's authApplierV3: before quota and before the request's own checks."""
        a = self.auth
        if kind == Kind.PUT:
            a.check_put(auth, req.key)
            lease = self.store.leases.get(req.lease) if req.lease else None
            if lease is not None:
                a.check_lease_keys(auth, sorted(lease.keys))
            if req.prev_kv:
                a.check_range(auth, req.key, b"")
        elif kind == Kind.DELETE_RANGE:
            a.check_delete_range(auth, req.key, req.range_end)
            if req.prev_kv:
                a.check_range(auth, req.key, req.range_end)
        elif kind == Kind.TXN:
            a.check_txn(auth, req)
        elif kind == Kind.LEASE_REVOKE:
            lease = self.store.leases.get(req.ID)
            if lease is not None:
                a.check_lease_keys(auth, sorted(lease.keys))

    def _apply_auth(self, payload: bytes, auth: AuthInfo | None, out: Applied) -> Any:
        method, body = msgpack.unpackb(payload, raw=False)
        req = AUTH_REQUEST_TYPES[method].FromString(body)
        was_enabled = self.auth.enabled
        resp = self.auth.apply(method, req, auth)
        if method in ("UserDelete", "UserChangePassword"):
            out.tokens_revoked_for = req.name
        if was_enabled and not self.auth.enabled:
            out.tokens_cleared = True
        resp.header.revision = self.store.revision
        return resp

    def _apply_request(self, kind: Kind, req: Any, now_ms: int, out: Applied) -> Any:
        store = self.store
        if kind == Kind.PUT:
            self._check_space()
            # etcd's Put checks the lease before the ignore_* target (a txn checks them the other way).
            if req.lease and req.lease not in store.leases:
                raise fail(errors.LEASE_NOT_FOUND)
            check_put(store, req)
            txn = store.begin()
            prev = txn.put(req.key, req.value, req.lease, ignore_value=req.ignore_value, ignore_lease=req.ignore_lease)
            resp = pb.PutResponse()
            if req.prev_kv and prev is not None:
                resp.prev_kv.CopyFrom(prev)
            resp.header.revision = self._end(txn, out)
            return resp
        if kind == Kind.DELETE_RANGE:
            txn = store.begin()
            prevs = txn.delete_range(req.key, req.range_end)
            resp = pb.DeleteRangeResponse(deleted=len(prevs))
            if req.prev_kv:
                resp.prev_kvs.extend(prevs)
            resp.header.revision = self._end(txn, out)
            return resp
        if kind == Kind.TXN:
            # The cost (0.5 µs a put to work out) only matters while an alarm may refuse it.
            if self.alarms and txn_quota_cost(req) > 0:
                self._check_space()
            txn = store.begin()
            try:
                resp = execute_txn(store, req, txn)
            except BaseException:
                txn.abort()
                raise
            resp.header.revision = self._end(txn, out)
            return resp
        if kind == Kind.COMPACT:
            store.compact(req.revision)
            out.compacted_to = req.revision
            resp = pb.CompactionResponse()
            resp.header.revision = store.revision
            return resp
        if kind == Kind.LEASE_GRANT:
            return self._lease_grant(req, now_ms)
        if kind == Kind.LEASE_REVOKE:
            if req.ID not in store.leases:
                raise fail(errors.LEASE_NOT_FOUND)
            self._revoke(req.ID, out)
            resp = pb.LeaseRevokeResponse()
            resp.header.revision = store.revision
            return resp
        if kind == Kind.LEASE_KEEPALIVE:
            resp = pb.LeaseKeepAliveResponse(ID=req.ID)
            resp.header.revision = store.revision
            lease = store.leases.renew(req.ID, now_ms)
            if lease is not None:
                resp.TTL = lease.ttl_s
            return resp
        if kind == Kind.ALARM:
            return self._alarm(req)
        if kind in (Kind.MEMBER_ADD, Kind.MEMBER_REMOVE, Kind.MEMBER_UPDATE):
            return self._membership(kind, req, now_ms, out)
        raise AssertionError(f"unknown entry kind {kind}")

    def _end(self, txn: Any, out: Applied) -> int:
        events = txn.events
        rev: int = txn.end()
        if events:
            out.events.append(RevisionEvents(rev, events))
        return rev

    def _check_space(self) -> None:
        if self.alarms and any(alarm == pb.NOSPACE for _, alarm in self.alarms):
            raise fail(errors.NO_SPACE)

    def _lease_grant(self, req: Any, now_ms: int) -> Any:
        self._check_space()
        if req.TTL > MAX_LEASE_TTL_S:
            raise fail(errors.LEASE_TTL_TOO_LARGE)
        if req.ID == 0:
            raise fail(errors.LEASE_NOT_FOUND)  # the proposer always picks an ID; etcd answers so too
        if req.ID in self.store.leases:
            raise fail(errors.LEASE_EXISTS)
        ttl_s = max(req.TTL, MIN_LEASE_TTL_S)
        self.store.leases.grant(req.ID, ttl_s, now_ms)
        resp = pb.LeaseGrantResponse(ID=req.ID, TTL=ttl_s)
        resp.header.revision = self.store.revision
        return resp

    def _revoke(self, lease_id: int, out: Applied) -> None:
        """Delete every key of the lease in one revision (sorted key order), then the lease."""
        store = self.store
        lease = store.leases.get(lease_id)
        assert lease is not None
        txn = store.begin()
        for key in sorted(lease.keys):
            txn.delete_range(key, b"")
        self._end(txn, out)
        store.leases.remove(lease_id)

    def _lease_expire(self, lease_ids: list[int], now_ms: int, out: Applied) -> Any:
        expired = []
        for lease_id in lease_ids:
            lease = self.store.leases.get(lease_id, with_keys=False)
            if lease is not None and now_ms >= lease.deadline_ms:
                self._revoke(lease_id, out)
                expired.append(lease_id)
        return expired

    def _alarm(self, req: Any) -> Any:
        resp = pb.AlarmResponse()
        resp.header.revision = self.store.revision
        pair = (req.memberID, req.alarm)
        if req.action == pb.AlarmRequest.ACTIVATE:
            if req.alarm != pb.NONE:
                self.alarms.add(pair)
                self._alarms_dirty = True
                resp.alarms.add(memberID=req.memberID, alarm=req.alarm)
        elif req.action == pb.AlarmRequest.DEACTIVATE:
            if pair in self.alarms:
                self.alarms.discard(pair)
                self._alarms_dirty = True
                resp.alarms.add(memberID=req.memberID, alarm=req.alarm)
        return resp

    def reset_membership(self) -> None:
        """Forget every member (a restored snapshot starts a cluster of its own, as etcdutl's restore)."""
        with self.backend.batch():
            self.members = MemberRegistry()
            self._members_dirty = True
            self.flush()

    def _membership(self, kind: Kind, req: Any, now_ms: int, out: Applied) -> Any:
        self._members_dirty = True
        members = self.members
        members.expire(now_ms)
        if kind == Kind.MEMBER_ADD:
            added = members.add(req.ID, list(req.peerURLs))
            resp: Any = pb.MemberAddResponse(member=as_pb(added))
        elif kind == Kind.MEMBER_REMOVE:
            members.remove(req.ID)
            out.removed_member = req.ID
            resp = pb.MemberRemoveResponse()
        else:
            members.update(req.ID, list(req.peerURLs))
            resp = pb.MemberUpdateResponse()
        resp.members.extend(as_pb(m) for m in members.listed())
        return resp

    # ------------------------------------------------------------- snapshots

    def snapshot_chunks(self, chunk_bytes: int = snapshot.CHUNK_BYTES) -> Generator[bytes, None, None]:
        """The committed state as a stream of byte chunks of about chunk_bytes (kvstore/mvcc/snapshot.py)."""
        return snapshot.produce(self.backend, chunk_bytes)

    def dumps(self) -> bytes:
        return snapshot.dumps(self.backend)

    @classmethod
    def from_chunks(cls, chunks: Iterable[bytes], backend: Backend | None = None) -> StateMachine:
        """A state machine holding a snapshot, in backend (empty) or a temporary one."""
        backend = backend if backend is not None else Backend.temporary()
        try:
            snapshot.install(backend, chunks)
        except BaseException:
            backend.close()
            raise
        return cls(backend)

    @classmethod
    def loads(cls, data: bytes) -> StateMachine:
        return cls.from_chunks([data])
