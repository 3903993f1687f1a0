"""The history recorder: concurrent etcd clients against several members, every call written down.

Run as its own process (so that it can live in a network namespace of its own):

    python -m tests.robustness.recorder --members a=host:port,b=host:port --seconds 30 --seed 1 \\
        --out history.jsonl --prefix /r/1/

Each member gets ``--clients`` client threads, each pinned to that member and
doing one operation at a time (put, linearizable get, txn compare-and-swap on
mod_revision, delete, lease grant/revoke), and one watcher on the whole prefix
with prev_kv and progress requests, which resumes on the next member from the
revision after the last it saw when its stream breaks. Every value written is
unique (``client:n``), so a value read back names the write. An operation that
fails in a way that may have applied (deadline, UNAVAILABLE, a lost
connection) is recorded with an unknown outcome. See tests.robustness.history.
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from bench.workloads import prefix_end
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from proto.mvccpb import kv_pb2
from tests.robustness.history import Event, Op, WatchResponse, op_line, watch_line

OP_TIMEOUT_S = 2.0  # a client's deadline per request (unknown outcome after it)
KEYS = 8  # keys per run: few enough that operations on one key interleave, enough to spread them
LEASE_TTL_S = 600  # leases never expire during a run: grant and revoke are the only lease events
PROGRESS_REQUEST_S = 1.0
READY_TIMEOUT_S = 90.0
FINAL_WAIT_S = 20.0
# Errors that say for sure a request did not apply (the member refused it before proposing).
DEFINITE_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
}
DEFINITE_MESSAGES = ("etcdserver: too many requests", "etcdserver: server stopped")


def channel(addr: str) -> grpc.Channel:
    return grpc.insecure_channel(
        addr,
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
            ("grpc.min_reconnect_backoff_ms", 100),
            # Like clientv3's DialKeepAliveTime/Timeout: a client notices its own connection died
            # in a cut within about 2 s, so a gap measures the member, not the client's TCP.
            ("grpc.keepalive_time_ms", 1000),
            ("grpc.keepalive_timeout_ms", 1000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )


class Output:
    def __init__(self, path: Path) -> None:
        self._f = open(path, "a", buffering=1)
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            self._f.write(line + "\n")

    def close(self) -> None:
        self._f.close()


class Client(threading.Thread):
    def __init__(
        self, cid: int, member: str, addr: str, prefix: str, seed: int, out: Output, stop: threading.Event
    ) -> None:
        super().__init__(name=f"client-{cid}", daemon=True)
        self.cid, self.member, self.prefix, self.out, self.stop = cid, member, prefix, out, stop
        self.rng = random.Random(seed * 1000 + cid)
        self.ch = channel(addr)
        self.kv = rpc.KVStub(self.ch)
        self.lease = rpc.LeaseStub(self.ch)
        self.n = 0
        self.mod_revs: dict[str, int] = {}
        self.leases: list[int] = []
        self.ops = 0

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.one()
        finally:
            self.ch.close()

    def one(self) -> None:
        r = self.rng.random()
        key = f"{self.prefix}k{self.rng.randrange(KEYS)}"
        self.n += 1
        value = f"{self.cid}:{self.n}"
        if r < 0.35:
            self.call("put", {"key": key, "value": value})
        elif r < 0.65:
            self.call("get", {"key": key})
        elif r < 0.8:
            self.call("cas", {"key": key, "expected": self.mod_revs.get(key, 0), "value": value})
        elif r < 0.9:
            self.call("delete", {"key": key})
        elif r < 0.95 or not self.leases:
            self.call("grant", {"lease": self.rng.getrandbits(60) | 1})
        else:
            lease = self.leases.pop(self.rng.randrange(len(self.leases))) if self.rng.random() < 0.9 else 7
            self.call("revoke", {"lease": lease})

    def call(self, kind: str, inp: dict[str, Any]) -> None:
        call = time.monotonic_ns()
        op = Op(self.cid, self.member, kind, call, None, inp)
        try:
            op.out = self._do(kind, inp)
            op.ret = time.monotonic_ns()
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
            op.error = f"{code.name}: {details}"
            definite = code in DEFINITE_CODES or details in DEFINITE_MESSAGES
            if kind == "grant" and details == "etcdserver: lease already exists":
                op.out, op.ret = {"ok": False}, time.monotonic_ns()
            elif kind == "revoke" and code == grpc.StatusCode.NOT_FOUND:
                op.out, op.ret = {"ok": False}, time.monotonic_ns()
            elif definite:
                op.failed = True
                op.ret = time.monotonic_ns()
            if not definite and op.ret is None:
                time.sleep(0.05)  # do not spin on a member that is down
        self.ops += 1
        self.out.write(op_line(op))

    def _do(self, kind: str, inp: dict[str, Any]) -> dict[str, Any]:
        t = OP_TIMEOUT_S
        if kind == "put":
            resp = self.kv.Put(pb.PutRequest(key=inp["key"].encode(), value=inp["value"].encode()), timeout=t)
            self.mod_revs[inp["key"]] = resp.header.revision
            return {"rev": resp.header.revision}
        if kind == "get":
            rr = self.kv.Range(pb.RangeRequest(key=inp["key"].encode()), timeout=t)
            if rr.kvs:
                self.mod_revs[inp["key"]] = rr.kvs[0].mod_revision
                return {"value": rr.kvs[0].value.decode(), "mod_rev": rr.kvs[0].mod_revision, "rev": rr.header.revision}
            self.mod_revs[inp["key"]] = 0
            return {"value": None, "mod_rev": 0, "rev": rr.header.revision}
        if kind == "delete":
            dr = self.kv.DeleteRange(pb.DeleteRangeRequest(key=inp["key"].encode()), timeout=t)
            self.mod_revs[inp["key"]] = 0
            return {"deleted": dr.deleted, "rev": dr.header.revision}
        if kind == "cas":
            k = inp["key"].encode()
            txn = pb.TxnRequest(
                compare=[
                    pb.Compare(key=k, target=pb.Compare.MOD, result=pb.Compare.EQUAL, mod_revision=inp["expected"])
                ],
                success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=inp["value"].encode()))],
                failure=[pb.RequestOp(request_range=pb.RangeRequest(key=k))],
            )
            tr = self.kv.Txn(txn, timeout=t)
            if tr.succeeded:
                self.mod_revs[inp["key"]] = tr.header.revision
                return {"ok": True, "rev": tr.header.revision}
            kvs = tr.responses[0].response_range.kvs
            self.mod_revs[inp["key"]] = kvs[0].mod_revision if kvs else 0
            return {
                "ok": False,
                "rev": tr.header.revision,
                "value": kvs[0].value.decode() if kvs else None,
                "mod_rev": kvs[0].mod_revision if kvs else 0,
            }
        if kind == "grant":
            self.lease.LeaseGrant(pb.LeaseGrantRequest(ID=inp["lease"], TTL=LEASE_TTL_S), timeout=t)
            self.leases.append(inp["lease"])
            return {"ok": True}
        if kind == "revoke":
            self.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=inp["lease"]), timeout=t)
            return {"ok": True}
        raise ValueError(kind)


class Watcher(threading.Thread):
    """One logical watcher; its stream moves to the next member when it breaks."""

    def __init__(
        self, wid: int, members: list[tuple[str, str]], prefix: str, start: int, out: Output, stop: threading.Event
    ) -> None:
        super().__init__(name=f"watcher-{wid}", daemon=True)
        self.wid, self.members, self.out, self.stop = wid, members, out, stop
        self.prefix = prefix.encode()
        self.next_rev = start
        self.last = start - 1
        self.at = wid % len(members)
        self.call: Any = None

    def run(self) -> None:
        while not self.stop.is_set():
            member, addr = self.members[self.at]
            ch = channel(addr)
            requests: queue.Queue[pb.WatchRequest | None] = queue.Queue()
            create = pb.WatchCreateRequest(
                key=self.prefix,
                range_end=prefix_end(self.prefix),
                start_revision=self.next_rev,
                prev_kv=True,
                progress_notify=True,
            )
            requests.put(pb.WatchRequest(create_request=create))

            def gen(requests: queue.Queue[pb.WatchRequest | None] = requests) -> Any:
                while True:
                    item = requests.get()
                    if item is None:
                        return
                    yield item

            pinger = threading.Thread(target=self._progress_requests, args=(requests,), daemon=True)
            try:
                self.call = rpc.WatchStub(ch).Watch(gen())
                pinger.start()
                for resp in self.call:
                    self._record(member, resp)
                    if resp.canceled:
                        raise RuntimeError(f"watch canceled: {resp.cancel_reason}")
            except (grpc.RpcError, RuntimeError) as e:
                why = e.code().name if isinstance(e, grpc.RpcError) else str(e)
                self.out.write(watch_line(WatchResponse(self.wid, member, time.monotonic_ns(), 0, broken=why)))
            finally:
                requests.put(None)
                ch.close()
            self.at = (self.at + 1) % len(self.members)
            if not self.stop.is_set():
                time.sleep(0.1)

    def _progress_requests(self, requests: queue.Queue[pb.WatchRequest | None]) -> None:
        while not self.stop.wait(PROGRESS_REQUEST_S):
            requests.put(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

    def _record(self, member: str, resp: pb.WatchResponse) -> None:
        now = time.monotonic_ns()
        if resp.created:
            self.out.write(
                watch_line(
                    WatchResponse(self.wid, member, now, resp.header.revision, created=True, start=self.next_rev)
                )
            )
            return
        events = [
            Event(
                "DELETE" if ev.type == kv_pb2.Event.DELETE else "PUT",
                ev.kv.key.decode(),
                ev.kv.value.decode(),
                ev.kv.mod_revision,
                (ev.prev_kv.value.decode(), ev.prev_kv.mod_revision) if ev.HasField("prev_kv") else None,
            )
            for ev in resp.events
        ]
        progress = not events and not resp.canceled and resp.compact_revision == 0 and resp.header.revision > 0
        if events:
            self.last = events[-1].mod_rev
            self.next_rev = self.last + 1
        self.out.write(watch_line(WatchResponse(self.wid, member, now, resp.header.revision, events, progress)))

    def close(self) -> None:
        if self.call is not None:
            self.call.cancel()


def wait_ready(members: list[tuple[str, str]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    for name, addr in members:
        while True:
            ch = channel(addr)
            try:
                rpc.KVStub(ch).Range(pb.RangeRequest(key=b"/robustness-ready"), timeout=2.0)
                break
            except grpc.RpcError as e:
                if time.monotonic() > deadline:
                    raise SystemExit(f"member {name} at {addr} not ready: {e}") from None
                time.sleep(0.2)
            finally:
                ch.close()


def first_put(addr: str, prefix: str) -> int:
    """The revision before the run's first write (retried: a member may still be settling)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        ch = channel(addr)
        try:
            put = pb.PutRequest(key=b"/robustness-start", value=prefix.encode())
            return int(rpc.KVStub(ch).Put(put, timeout=5).header.revision)
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        finally:
            ch.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.robustness.recorder")
    ap.add_argument("--members", required=True, help="name=host:port,...")
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--clients", type=int, default=2, help="client threads per member")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--prefix", default="")
    ap.add_argument("--ready-file", type=Path, default=None, help="touched once every member answered")
    ap.add_argument("--stop-file", type=Path, default=None, help="stop early when this file appears")
    args = ap.parse_args(argv)
    members = [(m.split("=", 1)[0], m.split("=", 1)[1]) for m in args.members.split(",")]
    prefix = args.prefix or f"/r/{args.seed}-{random.getrandbits(32):08x}/"
    wait_ready(members)
    out = Output(args.out)
    start_rev = first_put(members[0][1], prefix)
    stop = threading.Event()
    watch_stop = threading.Event()
    out.write(
        json.dumps(
            {
                "t": "start",
                "at": time.monotonic_ns(),
                "members": [m for m, _ in members],
                "prefix": prefix,
                "watch_from": start_rev + 1,
            }
        )
    )
    watchers = [Watcher(i, members, prefix, start_rev + 1, out, watch_stop) for i in range(len(members))]
    for w in watchers:
        w.start()
    clients = [
        Client(i * args.clients + j, name, addr, prefix, args.seed, out, stop)
        for i, (name, addr) in enumerate(members)
        for j in range(args.clients)
    ]
    for c in clients:
        c.start()
    if args.ready_file is not None:
        args.ready_file.touch()
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline and not (args.stop_file is not None and args.stop_file.exists()):
        time.sleep(0.1)
    stop.set()
    for c in clients:
        c.join(OP_TIMEOUT_S * 3)
    # The store's final revision, then every watcher must reach it.
    final = 0
    for _, addr in members:
        ch = channel(addr)
        try:
            final = max(final, rpc.KVStub(ch).Range(pb.RangeRequest(key=prefix.encode()), timeout=5).header.revision)
        except grpc.RpcError:
            pass
        finally:
            ch.close()
    wait_until = time.monotonic() + FINAL_WAIT_S
    while time.monotonic() < wait_until and any(w.last < final for w in watchers):
        time.sleep(0.1)
    watch_stop.set()
    for w in watchers:
        w.close()
    for w in watchers:
        w.join(5)
    out.write(json.dumps({"t": "end", "at": time.monotonic_ns(), "final": final, "ops": sum(c.ops for c in clients)}))
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
