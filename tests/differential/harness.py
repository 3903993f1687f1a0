"""The differential harness: run the same steps against two servers and compare the answers.

A scenario is a function `build() -> list[Step]`. Steps are data (request dicts with placeholders),
resolved per server by a `Session`:

* keys: a `str` in a `key`/`range_end` field gets the scenario's unique prefix (so scenarios can share
  one server); `bytes` are sent as they are. `PREFIX_END` as range_end means "every key with this key
  as prefix", `FROM_KEY` means `\\0`.
* revisions: `R(n)` is the revision at scenario start plus n (a fresh store starts at 1, so in a
  fresh-pair scenario `R(1)` is the revision of the first write).
* leases: `LID(n)` is a client-chosen lease id unique to the scenario; `Lease("a")` is the id the
  server chose in an earlier `grant(..., save="a")` step.

Every response (or gRPC error code + message) is turned into a dict by walking the protobuf fields
that are set, then normalised: cluster_id, member_id and raft_term are dropped; lease ids are replaced
by names in order of first appearance (per server, so server-chosen ids compare); remaining TTLs
compare within a tolerance; Range results sorted by a non-unique target compare with ties in key
order (etcd's Go sort.Sort is not stable, so the order inside a tie is unspecified).
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message

from proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from proto.mvccpb import kv_pb2

RPC_TIMEOUT_S = 10.0
STREAM_RECV_TIMEOUT_S = 5.0
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


def prefix_end(key: bytes) -> bytes:
    """etcd's getPrefix: increment the last byte < 0xff and drop what follows; all 0xff -> "\\0"."""
    b = bytearray(key)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"


# Message types whose `key` / `range_end` fields carry keys that get the scenario prefix.
_KEYED = {"RangeRequest", "PutRequest", "DeleteRangeRequest", "Compare", "WatchCreateRequest"}


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
        for k in ("version", "dbSize", "dbSizeInUse", "leader", "raftIndex", "raftTerm", "raftAppliedIndex",
                  "storageVersion", "dbSizeQuota", "downgradeInfo", "isLearner"):
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


# ---------------------------------------------------------------------------------------------------
# streams over sync grpc


class Stream:
    """A bidi stream: requests go through a bounded queue, a thread drains responses into another."""

    QUEUE_MAX = 10_000

    def __init__(self, method: Callable[..., Any], metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._out: queue.Queue[Message | None] = queue.Queue(self.QUEUE_MAX)
        self._in: queue.Queue[Any] = queue.Queue(self.QUEUE_MAX)
        self._call = method(self._requests(), timeout=600, metadata=metadata or None)
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        self.closed_with: dict[str, Any] | None = None

    def _requests(self) -> Iterator[Message]:
        while True:
            item = self._out.get()
            if item is None:
                return
            yield item

    def _pump(self) -> None:
        try:
            for resp in self._call:
                self._in.put(resp)
            self._in.put(("end", None))
        except grpc.RpcError as e:
            self._in.put(("error", e))

    def send(self, req: Message) -> None:
        self._out.put(req, timeout=RPC_TIMEOUT_S)

    def recv(self, timeout_s: float) -> Any:
        """A response, ("end", None), ("error", e), or None on timeout."""
        try:
            return self._in.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self._out.put_nowait(None)
        self._call.cancel()


# ---------------------------------------------------------------------------------------------------
# sessions: one per (scenario, server)


@dataclass
class Session:
    channel: grpc.Channel
    prefix: bytes
    base_rev: int
    lease_base: int
    label: str = ""
    leases: LeaseNames = field(default_factory=LeaseNames)
    saved: dict[str, int] = field(default_factory=dict)
    streams: dict[str, Stream] = field(default_factory=dict)
    granted: list[int] = field(default_factory=list)
    server: Any = None  # the ServerProcess, for steps that restart it

    def __post_init__(self) -> None:
        self.rebind(self.channel)

    def rebind(self, channel: grpc.Channel) -> None:
        """Use a new channel (after the server restarted); open streams died with the old process."""
        for st in self.streams.values():
            st.close()
        self.streams.clear()
        self.channel = channel
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.watch = rpc_pb2_grpc.WatchStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
        self.maint = rpc_pb2_grpc.MaintenanceStub(self.channel)
        self.cluster = rpc_pb2_grpc.ClusterStub(self.channel)

    # -- placeholder resolution ----------------------------------------------------------------------
    def key(self, k: Any) -> bytes:
        if isinstance(k, str):
            return self.prefix + k.encode()
        assert isinstance(k, bytes), k
        return k

    def resolve(self, cls: type[Message], spec: dict[str, Any] | Message) -> Message:
        if isinstance(spec, Message):
            return spec
        msg = cls()
        tname = cls.DESCRIPTOR.name
        fields = cls.DESCRIPTOR.fields_by_name
        for name, v in spec.items():
            fd = fields[name]
            if name in ("key", "range_end") and tname in _KEYED:
                if v is PREFIX_END:
                    v = prefix_end(self.key(spec["key"]))
                elif v is FROM_KEY:
                    v = b"\0"
                else:
                    v = self.key(v)
                setattr(msg, name, v)
                continue
            if fd.type == fd.TYPE_MESSAGE:
                sub_cls = _message_class(fd.message_type.full_name)
                if fd.is_repeated:
                    getattr(msg, name).extend(self.resolve(sub_cls, s) for s in v)
                else:
                    getattr(msg, name).CopyFrom(self.resolve(sub_cls, v))
                continue
            if fd.is_repeated:
                getattr(msg, name).extend(self.value(x, fd) for x in v)
            else:
                setattr(msg, name, self.value(v, fd))
        return msg

    def value(self, v: Any, fd: Any = None) -> Any:
        if isinstance(v, R):
            return self.base_rev + v.n
        if isinstance(v, LID):
            return self.lease_base + v.n
        if isinstance(v, Lease):
            return self.saved[v.name]
        if isinstance(v, str) and fd is not None and fd.type == fd.TYPE_BYTES:
            return v.encode()
        if isinstance(v, str) and fd is not None and fd.type == fd.TYPE_ENUM:
            return fd.enum_type.values_by_name[v].number
        return v

    def norm(self, msg: Message) -> dict[str, Any]:
        return to_dict(msg, self.leases)

    def close(self) -> None:
        for s in self.streams.values():
            s.close()
        self.streams.clear()


_CLASSES: dict[str, type[Message]] = {}
for _mod in (rpc_pb2, kv_pb2):
    for _name in dir(_mod):
        _obj = getattr(_mod, _name)
        if isinstance(_obj, type) and issubclass(_obj, Message):
            _CLASSES[_obj.DESCRIPTOR.full_name] = _obj
            for _nested in _obj.DESCRIPTOR.nested_types:
                _CLASSES[_nested.full_name] = getattr(_obj, _nested.name)


def _message_class(full_name: str) -> type[Message]:
    return _CLASSES[full_name]


# ---------------------------------------------------------------------------------------------------
# steps


@dataclass
class Step:
    label: str
    run: Callable[[Session], Any]  # returns a comparable (normalised) result
    parallel: bool = False  # run on both servers at once (waiting steps)
    once: bool = False  # run once, not per server (a sleep)
    # Where etcd 3.5.1 differs from the etcd 3.6 behaviour we target: the reference is not asked, the
    # server under test is compared with this literal 3.6 answer (skipped when the target is etcd 3.5.1).
    expect36: Any = None
    run_reference: bool = False  # with expect36: still run the step on the reference (stream steps)
    compare: bool = True
    note: str = ""  # why this step is special (e.g. an etcd 3.5.1 vs 3.6 difference)


_UNARY: dict[str, tuple[str, str, type[Message]]] = {
    "Range": ("kv", "Range", rpc_pb2.RangeRequest),
    "Put": ("kv", "Put", rpc_pb2.PutRequest),
    "DeleteRange": ("kv", "DeleteRange", rpc_pb2.DeleteRangeRequest),
    "Txn": ("kv", "Txn", rpc_pb2.TxnRequest),
    "Compact": ("kv", "Compact", rpc_pb2.CompactionRequest),
    "LeaseGrant": ("lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest),
    "LeaseRevoke": ("lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest),
    "LeaseTimeToLive": ("lease", "LeaseTimeToLive", rpc_pb2.LeaseTimeToLiveRequest),
    "LeaseLeases": ("lease", "LeaseLeases", rpc_pb2.LeaseLeasesRequest),
    "Status": ("maint", "Status", rpc_pb2.StatusRequest),
    "Alarm": ("maint", "Alarm", rpc_pb2.AlarmRequest),
    "Defragment": ("maint", "Defragment", rpc_pb2.DefragmentRequest),
    "HashKV": ("maint", "HashKV", rpc_pb2.HashKVRequest),
    "Hash": ("maint", "Hash", rpc_pb2.HashRequest),
    "MemberList": ("cluster", "MemberList", rpc_pb2.MemberListRequest),
    "MoveLeader": ("maint", "MoveLeader", rpc_pb2.MoveLeaderRequest),
    "Downgrade": ("maint", "Downgrade", rpc_pb2.DowngradeRequest),
    "MemberAdd": ("cluster", "MemberAdd", rpc_pb2.MemberAddRequest),
    "MemberRemove": ("cluster", "MemberRemove", rpc_pb2.MemberRemoveRequest),
    "MemberUpdate": ("cluster", "MemberUpdate", rpc_pb2.MemberUpdateRequest),
    "MemberPromote": ("cluster", "MemberPromote", rpc_pb2.MemberPromoteRequest),
}


def call(s: Session, rpc: str, spec: dict[str, Any] | Message) -> tuple[Message | None, dict[str, Any]]:
    stub_name, method, cls = _UNARY[rpc]
    req = s.resolve(cls, spec)
    try:
        resp = getattr(getattr(s, stub_name), method)(req, timeout=RPC_TIMEOUT_S)
    except grpc.RpcError as e:
        return None, rpc_error(e)
    out = s.norm(resp)
    if rpc == "Range":
        out = canonical_sorted_range(out, req)  # type: ignore[arg-type]
    if rpc == "Txn":
        out = canonical_txn(out, req)  # type: ignore[arg-type]
    if rpc == "LeaseGrant" and resp.ID:
        s.granted.append(resp.ID)
    return resp, out


def unary(rpc: str, spec: dict[str, Any] | None = None, *, label: str = "", save: str | None = None,
          drop: tuple[str, ...] = (), note: str = "") -> Step:
    """One unary RPC; `save` stores a LeaseGrant's ID; `drop` removes response fields not compared."""
    spec = spec or {}

    def run(s: Session) -> Any:
        resp, out = call(s, rpc, spec)
        if save is not None and resp is not None:
            s.saved[save] = resp.ID  # type: ignore[attr-defined]
        for d in drop:
            out.pop(d, None)
        return out

    return Step(label or f"{rpc} {_short(spec)}", run, note=note)


def _short(v: Any) -> Any:
    """A request spec for labels: long keys and values abbreviated."""
    if isinstance(v, dict):
        return {k: _short(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_short(x) for x in v] if len(v) <= 8 else [*(_short(x) for x in v[:3]), f"... {len(v)} ops"]
    if isinstance(v, str | bytes) and len(v) > 48:
        return f"<{len(v)} x {v[:8]!r}...>"
    return v


def range_(key: Any, **kw: Any) -> Step:
    return unary("Range", {"key": key, **kw})


def put(key: Any, value: Any = "", **kw: Any) -> Step:
    return unary("Put", {"key": key, "value": value, **kw})


def delete(key: Any, **kw: Any) -> Step:
    return unary("DeleteRange", {"key": key, **kw})


def txn(compare: list[dict[str, Any]] | None = None, success: list[dict[str, Any]] | None = None,
        failure: list[dict[str, Any]] | None = None, **kw: Any) -> Step:
    return unary("Txn", {"compare": compare or [], "success": success or [], "failure": failure or []}, **kw)


def compact(rev: Any, physical: bool = False, **kw: Any) -> Step:
    return unary("Compact", {"revision": rev, "physical": physical}, **kw)


def grant(ttl: int, id_: Any = 0, save: str | None = None, **kw: Any) -> Step:
    return unary("LeaseGrant", {"TTL": ttl, "ID": id_}, save=save, **kw)


def revoke(id_: Any, **kw: Any) -> Step:
    return unary("LeaseRevoke", {"ID": id_}, **kw)


def ttl(id_: Any, keys: bool = False, **kw: Any) -> Step:
    return unary("LeaseTimeToLive", {"ID": id_, "keys": keys}, **kw)


# txn op / compare builders
def op_range(key: Any, **kw: Any) -> dict[str, Any]:
    return {"request_range": {"key": key, **kw}}


def op_put(key: Any, value: Any = "", **kw: Any) -> dict[str, Any]:
    return {"request_put": {"key": key, "value": value, **kw}}


def op_del(key: Any, **kw: Any) -> dict[str, Any]:
    return {"request_delete_range": {"key": key, **kw}}


def op_txn(compare: list[dict[str, Any]] | None = None, success: list[dict[str, Any]] | None = None,
           failure: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"request_txn": {"compare": compare or [], "success": success or [], "failure": failure or []}}


def cmp(key: Any, target: str, result: str, value: Any, **kw: Any) -> dict[str, Any]:
    """A Compare; `target` VERSION/CREATE/MOD/VALUE/LEASE picks the union field unless `union` is given."""
    union = kw.pop("union", {"VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision",
                             "VALUE": "value", "LEASE": "lease"}[target])
    return {"key": key, "target": target, "result": result, union: value, **kw}


def expect36(step: Step, expected: Any, note: str) -> Step:
    """Compare the server under test with etcd 3.6's answer instead of etcd 3.5.1's (see Step.expect36)."""
    step.expect36 = expected
    step.note = note
    step.run_reference = step.parallel  # stream reads must drain the reference's stream too
    return step


def sleep(seconds: float, label: str = "") -> Step:
    """Wait once (both servers are waited on at the same time)."""

    def run(s: Session) -> Any:
        time.sleep(seconds)
        return None

    return Step(label or f"sleep {seconds}s", run, once=True, compare=False)


def restart(kill: bool = False) -> Step:
    """Restart both servers on the same ports and data (kill=True: SIGKILL first, as a crash)."""

    def run(s: Session) -> Any:
        if kill:
            s.server.kill()
            s.server.start()
        else:
            s.server.restart()
        s.rebind(s.server.channel())
        return None

    return Step("kill -9 and restart" if kill else "restart", run, parallel=True, compare=False)


def custom(label: str, fn: Callable[[Session], Any], parallel: bool = False, note: str = "") -> Step:
    return Step(label, fn, parallel=parallel, note=note)


# -- watch streams -------------------------------------------------------------------------------------


def watch_open(name: str = "w", metadata: tuple[tuple[str, str], ...] = ()) -> Step:
    """Open a Watch stream (with gRPC metadata, e.g. kube's `hasleader: true`)."""

    def run(s: Session) -> Any:
        s.streams[name] = Stream(s.watch.Watch, metadata)
        return None

    return Step(f"open watch stream {name} {dict(metadata) or ''}", run, compare=False)


def watch_create(name: str = "w", **spec: Any) -> Step:
    def run(s: Session) -> Any:
        s.streams[name].send(rpc_pb2.WatchRequest(create_request=s.resolve(rpc_pb2.WatchCreateRequest, spec)))
        return None

    return Step(f"{name}: create {spec}", run, compare=False)


def watch_cancel(name: str = "w", watch_id: int = 0) -> Step:
    def run(s: Session) -> Any:
        s.streams[name].send(rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=watch_id)))
        return None

    return Step(f"{name}: cancel {watch_id}", run, compare=False)


def watch_progress(name: str = "w") -> Step:
    def run(s: Session) -> Any:
        s.streams[name].send(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))
        return None

    return Step(f"{name}: progress request", run, compare=False)


def watch_send_raw(name: str, req: rpc_pb2.WatchRequest) -> Step:
    def run(s: Session) -> Any:
        s.streams[name].send(req)
        return None

    return Step(f"{name}: send {req}", run, compare=False)


def _recv_norm(s: Session, name: str, timeout_s: float) -> Any:
    item = s.streams[name].recv(timeout_s)
    if item is None:
        return None
    if isinstance(item, tuple):
        kind, e = item
        return {"stream_end": kind, **(rpc_error(e) if e is not None else {})}
    return s.norm(item)


def watch_recv(name: str = "w", n: int = 1, timeout_s: float = STREAM_RECV_TIMEOUT_S, note: str = "",
               unordered: bool = False) -> Step:
    """Receive exactly n responses (a missing one shows as "timeout") and compare them in order.

    `unordered`: responses of different watch ids may interleave in any order (etcd notifies the
    watchers of one revision by walking a Go map); each watch's own responses stay in order."""

    def run(s: Session) -> Any:
        out = []
        deadline = time.monotonic() + timeout_s
        for _ in range(n):
            r = _recv_norm(s, name, max(0.0, deadline - time.monotonic()))
            if r is None:
                out.append("timeout")
                break
            out.append(r)
        if unordered:
            out.sort(key=lambda r: r.get("watch_id", 0) if isinstance(r, dict) else 1 << 62)
        return out

    return Step(f"{name}: recv {n}", run, parallel=True, note=note)


def watch_quiet(name: str = "w", seconds: float = 0.4, note: str = "") -> Step:
    """Nothing more arrives within `seconds` (whatever does arrive is compared)."""

    def run(s: Session) -> Any:
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and len(out) < 100:
            r = _recv_norm(s, name, left)
            if r is None:
                break
            out.append(r)
        return out

    return Step(f"{name}: quiet {seconds}s", run, parallel=True, note=note)


def stream_close(name: str = "w") -> Step:
    def run(s: Session) -> Any:
        st = s.streams.pop(name, None)
        if st is not None:
            st.close()
        return None

    return Step(f"close stream {name}", run, compare=False)


# -- lease keepalive stream ----------------------------------------------------------------------------


def keepalive_open(name: str = "ka") -> Step:
    def run(s: Session) -> Any:
        s.streams[name] = Stream(s.lease.LeaseKeepAlive)
        return None

    return Step(f"open keepalive stream {name}", run, compare=False)


def keepalive_send(name: str, id_: Any) -> Step:
    def run(s: Session) -> Any:
        s.streams[name].send(rpc_pb2.LeaseKeepAliveRequest(ID=s.value(id_)))
        return None

    return Step(f"{name}: keepalive {id_}", run, compare=False)


# ---------------------------------------------------------------------------------------------------
# scenarios and the runner


@dataclass
class Scenario:
    name: str
    build: Callable[[], list[Step]]
    fresh: bool = False  # needs its own empty servers (revisions from 1, compaction of 0, lease lists...)
    flags: dict[str, object] = field(default_factory=dict)  # etcd flags for both servers (implies fresh)
    note: str = ""  # e.g. where etcd 3.5.1 differs from the 3.6 behaviour we target
    slow: bool = False  # long (restarts, waits): excluded from the CI run, run with -m slow
    # A difference the design accepts (the issue says so): the test must fail against our server
    # (strict xfail), so it shows up if the server ever changes; against etcd it must pass.
    deliberate: str = ""


@dataclass
class Mismatch:
    index: int
    label: str
    a: Any
    b: Any
    note: str = ""

    def render(self, a_name: str, b_name: str) -> str:
        lines = [f"step #{self.index}: {self.label}"]
        if self.note:
            lines.append(f"  note: {self.note}")
        a, b = self.a, self.b
        if isinstance(a, list) and isinstance(b, list) and len(repr(a)) > 2000:
            # long sequences: show where they part
            i = next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            lines.append(f"  lengths {a_name}={len(a)} {b_name}={len(b)}; first difference at element {i}")
            a, b = a[max(0, i - 1): i + 2], b[max(0, i - 1): i + 2]
        lines.append(f"  {a_name}: {a!r}")
        lines.append(f"  {b_name}: {b!r}")
        return "\n".join(lines)


def current_revision(channel: grpc.Channel) -> int:
    resp = rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"\0", count_only=True), timeout=RPC_TIMEOUT_S)
    return int(resp.header.revision)


PAD_KEY = b"/__diff_pad__"
PAD_MAX = 10_000


def align_revisions(a: grpc.Channel, b: grpc.Channel) -> int:
    """Bring both shared servers to the same revision (puts to a pad key on the one behind).

    Only needed after an earlier scenario diverged; returns how many pads were written."""
    ra, rb = current_revision(a), current_revision(b)
    behind = b if ra > rb else a
    n = abs(ra - rb)
    assert n <= PAD_MAX, f"revisions too far apart to align: {ra} vs {rb}"
    kv = rpc_pb2_grpc.KVStub(behind)
    for _ in range(n):
        kv.Put(rpc_pb2.PutRequest(key=PAD_KEY, value=b"pad"), timeout=RPC_TIMEOUT_S)
    return n


def _run_parallel(step: Step, sa: Session, sb: Session) -> tuple[Any, Any]:
    """Run a waiting step on both servers at once (so two 5 s waits cost 5 s)."""
    res: list[Any] = [None, None]
    errs: list[BaseException | None] = [None, None]

    def go(idx: int, sess: Session) -> None:
        try:
            res[idx] = step.run(sess)
        except BaseException as e:  # re-raised below, in the test's thread
            errs[idx] = e

    threads = [threading.Thread(target=go, args=(0, sa)), threading.Thread(target=go, args=(1, sb))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for err in errs:
        if err is not None:
            raise err
    return res[0], res[1]


def run_steps(
    steps: list[Step], sa: Session, sb: Session, stop_at_first: bool = False
) -> list[Mismatch]:
    mismatches: list[Mismatch] = []
    for i, step in enumerate(steps):
        if step.once:
            step.run(sa)
            continue
        if step.expect36 is not None:
            if step.run_reference:
                step.run(sa)  # keeps the reference's streams in step; its 3.5.1 answer is not compared
            if sb.label == "etcd":  # validating the harness with two 3.5.1s: keep streams in step, skip
                if step.run_reference:
                    step.run(sb)
                continue
            rb = step.run(sb)
            want = step.expect36(sb) if callable(step.expect36) else step.expect36
            if rb != want:
                note = "reference not asked, left = expected: " + step.note
                mismatches.append(Mismatch(i, step.label, want, rb, note))
            continue
        if step.parallel:
            ra, rb = _run_parallel(step, sa, sb)
        else:
            ra = step.run(sa)
            rb = step.run(sb)
        if step.compare and ra != rb:
            mismatches.append(Mismatch(i, step.label, ra, rb, step.note))
            if stop_at_first:
                break
    return mismatches


# ---------------------------------------------------------------------------------------------------
# pairs of servers


@dataclass
class Pair:
    a: Any  # ServerProcess: the reference, a real etcd
    b: Any  # ServerProcess: the server under test (ours, or a second etcd to validate the harness)

    def stop(self) -> None:
        for s in (self.a, self.b):
            s.stop()


def _flags_key(flags: dict[str, object]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in flags.items()))


class PairPool:
    """Starts pairs (etcd, target): one shared pair per flag set, and fresh pairs on demand."""

    def __init__(self, target: str, start: Callable[[str, str, dict[str, object]], Any]) -> None:
        self.target = target
        self._start = start
        self._shared: dict[tuple[tuple[str, str], ...], Pair] = {}
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._spare: tuple[threading.Thread, list[Any]] | None = None

    def _new_pair(self, flags: dict[str, object]) -> Pair:
        with self._seq_lock:
            self._seq += 1
            seq = self._seq
        out: list[Any] = [None, None]
        errs: list[BaseException | None] = [None, None]

        def go(i: int, kind: str, name: str) -> None:
            try:
                out[i] = self._start(kind, name, flags)
            except BaseException as e:
                errs[i] = e

        threads = [
            threading.Thread(target=go, args=(0, "etcd", f"ref{seq}")),
            threading.Thread(target=go, args=(1, self.target, f"sut{seq}")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if any(errs):
            for s in out:
                if s is not None:
                    s.stop()
            raise next(e for e in errs if e is not None)
        return Pair(out[0], out[1])

    def shared(self, flags: dict[str, object] | None = None) -> Pair:
        key = _flags_key(flags or {})
        if key not in self._shared:
            self._shared[key] = self._new_pair(dict(flags or {}))
        return self._shared[key]

    def fresh(self, flags: dict[str, object] | None = None) -> Pair:
        """An empty pair. One spare pair with default flags is kept warming in the background, so the
        next fresh scenario does not wait for two server start-ups (etcd alone takes ~1.3 s to elect)."""
        if flags:
            return self._new_pair(dict(flags))
        spare, self._spare = self._spare, None
        pair = self._take(spare) if spare is not None else self._new_pair({})
        self._spare = self._warm()
        return pair

    def _warm(self) -> tuple[threading.Thread, list[Any]]:
        box: list[Any] = []

        def go() -> None:
            try:
                box.append(self._new_pair({}))
            except BaseException as e:  # surfaced when the spare is taken
                box.append(e)

        t = threading.Thread(target=go, daemon=True)
        t.start()
        return t, box

    @staticmethod
    def _take(spare: tuple[threading.Thread, list[Any]]) -> Pair:
        t, box = spare
        t.join()
        if isinstance(box[0], BaseException):
            raise box[0]
        assert isinstance(box[0], Pair)
        return box[0]

    def close(self) -> None:
        if self._spare is not None:
            spare, self._spare = self._spare, None
            with contextlib.suppress(BaseException):
                self._take(spare).stop()
        for p in self._shared.values():
            p.stop()
        self._shared.clear()


def render_mismatches(scenario: Scenario, pair: Pair, mismatches: list[Mismatch]) -> str:
    head = f"scenario {scenario.name}: {len(mismatches)} mismatch(es) between {pair.a!r} and {pair.b!r}"
    if scenario.note:
        head += f"\n  scenario note: {scenario.note}"
    body = "\n".join(m.render(f"{pair.a.kind}", f"{pair.b.kind}") for m in mismatches)
    return f"{head}\n{body}\n--- logs ---\n{pair.b.stderr_tail(1500)}"


SCENARIOS: list[Scenario] = []


Build = Callable[[], list[Step]]


def scenario(fresh: bool = False, flags: dict[str, object] | None = None, note: str = "",
             name: str | None = None, slow: bool = False, deliberate: str = "") -> Callable[[Build], Build]:
    """Register `build` as a scenario named after the function (without a leading `sc_`)."""

    def deco(build: Build) -> Build:
        n = name or build.__name__.removeprefix("sc_")
        assert all(s.name != n for s in SCENARIOS), f"duplicate scenario {n}"
        SCENARIOS.append(Scenario(n, build, fresh=fresh or bool(flags), flags=dict(flags or {}), note=note,
                                  slow=slow, deliberate=deliberate))
        return build

    return deco


def run_scenario(scenario: Scenario, pool: PairPool, index: int) -> tuple[Pair, list[Mismatch]]:
    """Run one scenario against both servers of a pair; return the pair and the mismatches."""
    fresh = scenario.fresh
    pair = pool.fresh(scenario.flags) if fresh else pool.shared(scenario.flags)
    try:
        ca, cb = pair.a.channel(), pair.b.channel()
        if fresh:
            base, prefix = 1, b""
        else:
            align_revisions(ca, cb)
            base = current_revision(ca)
            prefix = f"/diff/{scenario.name}/".encode()
        lease_base = (index + 1) * 1_000_000
        sa = Session(ca, prefix, base, lease_base, label=pair.a.kind, server=pair.a)
        sb = Session(cb, prefix, base, lease_base, label=pair.b.kind, server=pair.b)
        try:
            mismatches = run_steps(scenario.build(), sa, sb)
        finally:
            sa.close()
            sb.close()
            if not fresh:
                # Leases left behind would expire later and bump revisions under other scenarios.
                for s in (sa, sb):
                    for lid in s.granted:
                        with contextlib.suppress(grpc.RpcError):
                            s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lid), timeout=RPC_TIMEOUT_S)
        return pair, mismatches
    finally:
        if fresh:
            pair.stop()
