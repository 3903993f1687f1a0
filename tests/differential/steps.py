"""The steps scenarios are made of: each a label and a function of a Session, returning what is compared."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from proto.etcdserverpb import rpc_pb2
from tests.differential.normalize import canonical_sorted_range, canonical_txn, rpc_error
from tests.differential.session import RPC_TIMEOUT_S, STREAM_RECV_TIMEOUT_S, Session, Stream

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


def unary(
    rpc: str,
    spec: dict[str, Any] | None = None,
    *,
    label: str = "",
    save: str | None = None,
    drop: tuple[str, ...] = (),
    note: str = "",
) -> Step:
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


def txn(
    compare: list[dict[str, Any]] | None = None,
    success: list[dict[str, Any]] | None = None,
    failure: list[dict[str, Any]] | None = None,
    **kw: Any,
) -> Step:
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


def op_txn(
    compare: list[dict[str, Any]] | None = None,
    success: list[dict[str, Any]] | None = None,
    failure: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {"request_txn": {"compare": compare or [], "success": success or [], "failure": failure or []}}


def cmp(key: Any, target: str, result: str, value: Any, **kw: Any) -> dict[str, Any]:
    """A Compare; `target` VERSION/CREATE/MOD/VALUE/LEASE picks the union field unless `union` is given."""
    union = kw.pop(
        "union",
        {"VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision", "VALUE": "value", "LEASE": "lease"}[
            target
        ],
    )
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


def watch_recv(
    name: str = "w", n: int = 1, timeout_s: float = STREAM_RECV_TIMEOUT_S, note: str = "", unordered: bool = False
) -> Step:
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
