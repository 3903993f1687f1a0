"""The member's state machine: journal entries in, store changes, responses and events out.

Every member applies the same journal in the same order through this object
and ends in the same state, byte for byte. It reads no clock, no random source
and no member-local setting: time comes from the journal entry's timestamp,
and everything a request needs (a lease ID chosen for it, the proposing member)
travels inside the entry.

An entry is a msgpack array [kind, origin, seq, payload]: `origin` and `seq`
identify the proposing member and its request so that the member can hand the
result back to the waiting client; `payload` is the etcd request, serialised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import msgpack

from kvstore import errors
from kvstore.errors import EtcdError, fail
from kvstore.lease import MAX_LEASE_TTL_S, MIN_LEASE_TTL_S
from kvstore.membership import MemberRegistry, as_pb, from_pb
from kvstore.mvcc.store import MVCCStore, RevisionEvents, check_put, execute_txn
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
    MEMBER_HEARTBEAT = 10  # payload: msgpack [Member (serialized), liveness ttl ms]
    MEMBER_ADD = 11  # payload: Member (id chosen by the proposer, peer URLs)
    MEMBER_REMOVE = 12
    MEMBER_UPDATE = 13


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


def encode_entry(kind: Kind, origin: int, seq: int, payload: bytes) -> bytes:
    data: bytes = msgpack.packb([int(kind), origin, seq, payload], use_bin_type=True)
    return data


def decode_entry(data: bytes) -> tuple[Kind, int, int, bytes]:
    kind, origin, seq, payload = msgpack.unpackb(data, raw=False)
    return Kind(kind), origin, seq, payload


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
    removed_member: int | None = None  # set when the entry evicted a member
    liveness_only: bool = False  # a member heartbeat: nothing but liveness changed


class StateMachine:
    def __init__(self, store: MVCCStore | None = None) -> None:
        self.store = store if store is not None else MVCCStore()
        self.applied_position = 0  # the last journal position applied
        self.alarms: set[tuple[int, int]] = set()  # (member id, AlarmType)
        self.members = MemberRegistry()

    # -------------------------------------------------------------- applying

    def apply(self, position: int, timestamp_ms: int, data: bytes) -> Applied:
        assert position == self.applied_position + 1, f"entry {position} applied after {self.applied_position}"
        self.applied_position = position
        kind, origin, seq, payload = decode_entry(data)
        out = Applied(origin, seq, None)
        try:
            if kind == Kind.LEASE_EXPIRE:
                out.result = self._lease_expire(msgpack.unpackb(payload), timestamp_ms, out)
            elif kind == Kind.MEMBER_HEARTBEAT:
                member, ttl_ms = msgpack.unpackb(payload)
                out.liveness_only = True
                self.members.expire(timestamp_ms)
                out.result = self.members.heartbeat(from_pb(pb.Member.FromString(member)), ttl_ms, timestamp_ms)
            else:
                req = _REQUEST_TYPE[kind].FromString(payload)
                out.result = self._apply_request(kind, req, timestamp_ms, out)
        except EtcdError as err:
            out.result = err
        except Exception as exc:
            # Every member applies this entry and fails the same way: answer an error rather than
            # let one request stop every member. A write txn was rolled back already; a single
            # put or delete fails before it writes.
            log.exception("unexpected error applying journal entry %d", position)
            out.result = EtcdError(errors.Code.UNKNOWN, f"etcdserver: unexpected error during apply: {exc!r}")
            out.events.clear()
        return out

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
            if txn_quota_cost(req) > 0:
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
        if any(alarm == pb.NOSPACE for _, alarm in self.alarms):
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
            lease = self.store.leases.get(lease_id)
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
                resp.alarms.add(memberID=req.memberID, alarm=req.alarm)
        elif req.action == pb.AlarmRequest.DEACTIVATE:
            if pair in self.alarms:
                self.alarms.discard(pair)
                resp.alarms.add(memberID=req.memberID, alarm=req.alarm)
        return resp

    def _membership(self, kind: Kind, req: Any, now_ms: int, out: Applied) -> Any:
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

    # ------------------------------------------------------------ checkpoints

    def dumps(self) -> bytes:
        data: bytes = msgpack.packb(
            {
                "format": 1,
                "applied_position": self.applied_position,
                "alarms": sorted(self.alarms),
                "members": self.members.to_state(),
                "store": self.store.to_state(),
            },
            use_bin_type=True,
        )
        return data

    @classmethod
    def loads(cls, data: bytes) -> StateMachine:
        state = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if state.get("format") != 1:
            raise ValueError(f"unknown checkpoint format {state.get('format')!r}")
        sm = cls(MVCCStore.from_state(state["store"]))
        sm.applied_position = state["applied_position"]
        sm.alarms = {(m, a) for m, a in state["alarms"]}
        if "members" in state:  # checkpoints from before the registry have none
            sm.members = MemberRegistry.from_state(state["members"])
        return sm
