"""What the differential harness compares: placeholders in request specs, and responses turned
into normalised dicts (see harness.py)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from proto.etcdserverpb import rpc_pb2

TTL_TOLERANCE_S = 2


# ---------------------------------------------------------------------------------------------------
# placeholders


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


PREFIX_END = _Marker("PREFIX_END")
FROM_KEY = _Marker("FROM_KEY")


@dataclass(frozen=True)
class R:
    """A revision relative to the scenario's starting revision."""

    n: int


@dataclass(frozen=True)
class LID:
    """A client-chosen lease id, unique to the scenario."""

    n: int


@dataclass(frozen=True)
class Lease:
    """The id a server chose for an earlier grant saved under `name`."""

    name: str


# Message types whose `key` / `range_end` fields carry keys that get the scenario prefix.
KEYED_MESSAGES = {"RangeRequest", "PutRequest", "DeleteRangeRequest", "Compare", "WatchCreateRequest"}


# ---------------------------------------------------------------------------------------------------
# protobuf -> dict, normalised


class Approx:
    """A remaining TTL: equal to another Approx within TTL_TOLERANCE_S; -1/0 compare exactly."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Approx):
            return NotImplemented
        if self.v <= 0 or other.v <= 0:
            return self.v == other.v
        return abs(self.v - other.v) <= TTL_TOLERANCE_S

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return f"~{self.v}"


_DROP_HEADER = ("cluster_id", "member_id", "raft_term")
# (message type, field) pairs that hold lease ids.
_LEASE_FIELDS = {
    ("KeyValue", "lease"),
    ("LeaseGrantResponse", "ID"),
    ("LeaseKeepAliveResponse", "ID"),
    ("LeaseTimeToLiveResponse", "ID"),
    ("LeaseStatus", "ID"),
    ("LeaseRevokeRequest", "ID"),
}


def _bytes_repr(b: bytes) -> str:
    if len(b) > 256:  # long values compare by digest, so mismatch reports stay readable
        return f"<{len(b)} bytes {b[:16]!r}... sha1:{hashlib.sha1(b).hexdigest()[:12]}>"
    try:
        s = b.decode()
        if s.isprintable():
            return s
    except UnicodeDecodeError:
        pass
    return "0x" + b.hex()


def to_dict(msg: Message, leases: LeaseNames | None = None) -> dict[str, Any]:
    """The fields set on the wire (proto3: non-default scalars, present sub-messages), normalised."""
    out: dict[str, Any] = {}
    tname = msg.DESCRIPTOR.name
    for fd, value in msg.ListFields():
        name = fd.name
        if tname == "ResponseHeader" and name in _DROP_HEADER:
            continue
        out[name] = _value(fd, value, tname, leases)
    if tname == "LeaseTimeToLiveResponse" and "TTL" in out:
        out["TTL"] = Approx(out["TTL"])
    if tname == "LeaseTimeToLiveResponse" and "keys" in out:
        out["keys"] = sorted(out["keys"])  # etcd walks a Go map: key order is unspecified
    if tname == "AlarmMember" and out.get("memberID"):
        out["memberID"] = "member"  # member ids differ by server; a single member raises every alarm
    if tname == "LeaseLeasesResponse" and "leases" in out:
        out["leases"] = sorted(out["leases"], key=repr)
    if tname == "StatusResponse":
        # etcd-version- and implementation-specific fields are not comparable.
        for k in (
            "version",
            "dbSize",
            "dbSizeInUse",
            "leader",
            "raftIndex",
            "raftTerm",
            "raftAppliedIndex",
            "storageVersion",
            "dbSizeQuota",
            "downgradeInfo",
            "isLearner",
        ):
            out.pop(k, None)
    return out


def _value(fd: Any, value: Any, tname: str, leases: LeaseNames | None) -> Any:
    if fd.is_repeated:
        return [_scalar(fd, v, tname, leases) for v in value]
    return _scalar(fd, value, tname, leases)


def _scalar(fd: Any, v: Any, tname: str, leases: LeaseNames | None) -> Any:
    if fd.type == fd.TYPE_MESSAGE:
        return to_dict(v, leases)
    if fd.type == fd.TYPE_BYTES:
        return _bytes_repr(v)
    if fd.type == fd.TYPE_ENUM:
        ev = fd.enum_type.values_by_number.get(v)
        return ev.name if ev is not None else v
    if leases is not None and (tname, fd.name) in _LEASE_FIELDS:
        return leases.name(v)
    return v


class LeaseNames:
    """Per-server map of lease ids to stable names, in order of first appearance."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}

    def name(self, lease_id: int) -> str | int:
        if lease_id in (0, -1):
            return lease_id
        if lease_id not in self.names:
            self.names[lease_id] = f"lease#{len(self.names)}"
        return self.names[lease_id]


def canonical_sorted_range(resp: dict[str, Any], req: rpc_pb2.RangeRequest) -> dict[str, Any]:
    """Put ties of a non-KEY sort in key order (etcd's sort.Sort is unstable, tie order is unspecified)."""
    if req.sort_target == rpc_pb2.RangeRequest.KEY or "kvs" not in resp:
        return resp
    field_name = {
        rpc_pb2.RangeRequest.VERSION: "version",
        rpc_pb2.RangeRequest.CREATE: "create_revision",
        rpc_pb2.RangeRequest.MOD: "mod_revision",
        rpc_pb2.RangeRequest.VALUE: "value",
    }[req.sort_target]
    kvs = resp["kvs"]
    groups: list[list[dict[str, Any]]] = []
    for kv in kvs:
        if groups and groups[-1][0].get(field_name) == kv.get(field_name):
            groups[-1].append(kv)
        else:
            groups.append([kv])
    out: list[Any] = []
    for i, g in enumerate(groups):
        g = sorted(g, key=lambda kv: kv.get("key", ""))
        if i == len(groups) - 1 and resp.get("more"):
            # A limit may cut through this tie (the response cannot tell): which members made it is
            # unspecified, so compare the sort value and how many.
            out.append({"tie": g[0].get(field_name), "n": len(g)})
        else:
            out.extend(g)
    return {**resp, "kvs": out}


def canonical_txn(resp: dict[str, Any], req: rpc_pb2.TxnRequest) -> dict[str, Any]:
    """Apply canonical_sorted_range to the Range results inside a Txn (and nested Txns)."""
    ops = req.success if resp.get("succeeded") else req.failure
    subs = resp.get("responses", [])
    if len(subs) != len(ops):
        return resp
    out = []
    for op, sub in zip(ops, subs, strict=True):
        which = op.WhichOneof("request")
        if which == "request_range" and "response_range" in sub:
            sub = {"response_range": canonical_sorted_range(sub["response_range"], op.request_range)}
        elif which == "request_txn" and "response_txn" in sub:
            sub = {"response_txn": canonical_txn(sub["response_txn"], op.request_txn)}
        out.append(sub)
    return {**resp, "responses": out}


# ---------------------------------------------------------------------------------------------------
# results


def rpc_error(e: grpc.RpcError) -> dict[str, Any]:
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    return {"error": {"code": code.name if code else "?", "message": details}}
