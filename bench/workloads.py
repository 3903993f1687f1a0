"""The workloads: what each client does for one operation, and the set-up each needs.

A workload object lives in one load process. `populate` runs once, before any load process
starts (it writes the keys a workload reads or updates); `prepare` runs in each process before
the start barrier (watch streams, leases); `op` is one measured operation; `finish` runs inside
the measured window after the clients stop (watch drain); `cleanup` runs after it.

Every value written starts with the 8-byte CLOCK_MONOTONIC time of its send, so a watcher in any
process of the machine can measure delivery latency from put to event.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence

import grpc

from bench.options import Options
from bench.recorder import Recorder
from bench.routing import Routes
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc

TS = struct.Struct(">Q")
TXN_OPS_MAX = 100  # etcd's --max-txn-ops defaults to 128
POPULATE_INFLIGHT_MAX = 8
LIST_PAGES_MAX = 100_000
EVENT_LEASE_OBJECTS_MAX = 1000  # kube-apiserver reuses one lease for at most 1000 objects
PUT_ACKS_KEPT_NS = 60 * 10**9  # an event later than this after its put is not timed from the ack


class Exhausted(Exception):
    """The workload has nothing left to do (every key deleted): the client stops early."""


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix"."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\x00"


def endpoint_target(endpoint: str) -> str:
    for scheme in ("http://", "https://", "grpc://"):
        if endpoint.startswith(scheme):
            endpoint = endpoint[len(scheme) :]
    return endpoint.rstrip("/")


class Conn:
    """One gRPC connection (its own TCP connection, not shared with other channels)."""

    def __init__(self, endpoint: str, tls: tuple[str, str, str] | None = None) -> None:
        """tls: (CA bundle, client cert, client key) file paths for an https:// endpoint ("" for none)."""
        self.endpoint = endpoint
        options = [
            ("grpc.use_local_subchannel_pool", 1),  # else channels to one target share a socket
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 16 << 20),
        ]
        if endpoint.startswith("https://"):
            ca, cert, key = tls or ("", "", "")

            def read(path: str) -> bytes | None:
                if not path:
                    return None
                with open(path, "rb") as f:
                    return f.read()

            creds = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
            self.channel = grpc.aio.secure_channel(endpoint_target(endpoint), creds, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(endpoint_target(endpoint), options=options)
        self.kv = rpc.KVStub(self.channel)
        self.watch = rpc.WatchStub(self.channel)
        self.lease = rpc.LeaseStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()


class Client:
    """One closed-loop client: issues its next operation when the previous one finished."""

    def __init__(
        self,
        gindex: int,
        conn: Conn,
        seed: int,
        routes: Routes | None = None,
        by_partition: dict[str, Conn] | None = None,
    ) -> None:
        self.gindex = gindex  # unique across all processes
        self.conn = conn  # to the default partition (the only one without --partitions)
        self.kv = conn.kv
        self.rng = random.Random(seed * 1_000_003 + gindex)
        self.n = 0  # per-client sequence number for unique key names
        self.routes = routes
        self.by_partition = by_partition or {}

    def conn_for(self, key: bytes) -> Conn:
        """The connection to the partition that owns key (with --partitions), else the client's one."""
        if self.routes is None or self.routes.plan is None:
            return self.conn
        return self.by_partition.get(self.routes.partition_of(key), self.conn)


def share(total: int, parts: int, index: int) -> int:
    """index's part of `total` split as evenly as possible over `parts`."""
    return total // parts + (1 if index < total % parts else 0)


def now_ns() -> int:
    return time.monotonic_ns()


class Workload:
    name = ""

    def __init__(self, opts: Options, proc_index: int, rec: Recorder) -> None:
        self.opts = opts
        self.proc_index = proc_index
        self.rec = rec
        self.timeout_s = opts.timeout_s
        self.pad = b"x" * (opts.val_size - TS.size)
        self.base = f"{opts.prefix}/{self.name}/".encode()
        width = max(len(str(opts.key_space - 1)), opts.key_size - len(self.base))
        self.key_fmt = "{:0" + str(width) + "d}"
        self.seq_next = proc_index  # --seq-keys: this process's next key index
        self.routes = Routes(opts)
        self.partition_conns: dict[str, list[Conn]] = {}  # set by the runner; empty without --partitions

    def conns_for(self, key: bytes, conns: Sequence[Conn]) -> Sequence[Conn]:
        """The connections to key's partition (conns, the default partition's, without a plan)."""
        return self.partition_conns.get(self.routes.partition_of(key)) or conns

    def key(self, i: int) -> bytes:
        return self.base + self.key_fmt.format(i).encode()

    def pick(self, c: Client) -> int:
        """The key index of c's next operation: uniform at random, or (--seq-keys) the next key in
        order; process p of P takes keys p, p + P, p + 2P, ... so together they walk the key space."""
        if self.opts.seq_keys:
            i = self.seq_next
            self.seq_next += self.opts.procs
            return i % self.opts.key_space
        return c.rng.randrange(self.opts.key_space)

    def value(self) -> bytes:
        return TS.pack(now_ns()) + self.pad

    def populate_keys(self) -> Sequence[bytes]:
        return ()

    async def populate(self, conns: Sequence[Conn]) -> None:
        by_partition: dict[str, list[bytes]] = {}
        for k in self.populate_keys():
            by_partition.setdefault(self.routes.partition_of(k), []).append(k)
        for keys in by_partition.values():
            await put_many(self.conns_for(keys[0], conns), keys, self.value, self.timeout_s)

    async def prepare(self, conns: Sequence[Conn], clients: Sequence[Client]) -> None:
        pass

    async def op(self, c: Client, start_ns: int) -> None:
        raise NotImplementedError

    async def finish(self, conns: Sequence[Conn]) -> None:
        pass

    async def cleanup(self, conns: Sequence[Conn]) -> None:
        pass


async def put_many(conns: Sequence[Conn], keys: Sequence[bytes], value: Callable[[], bytes], timeout_s: float) -> None:
    """Write keys in Txn batches, a few batches in flight (set-up, not measured)."""
    if not keys:
        return
    val_bytes = len(value())
    batch = max(1, min(TXN_OPS_MAX, 1_000_000 // (val_bytes + len(keys[0]) + 16)))
    sem = asyncio.Semaphore(POPULATE_INFLIGHT_MAX)

    async def one(i: int, chunk: Sequence[bytes]) -> None:
        async with sem:
            ops = [pb.RequestOp(request_put=pb.PutRequest(key=k, value=value())) for k in chunk]
            await conns[i % len(conns)].kv.Txn(pb.TxnRequest(success=ops), timeout=timeout_s)

    await asyncio.gather(*(one(n, keys[i : i + batch]) for n, i in enumerate(range(0, len(keys), batch))))


async def list_paged(
    kv: rpc.KVStub, prefix: bytes, page_limit: int, timeout_s: float, on_page: Callable[[int], None] | None = None
) -> tuple[int, int]:
    """List every key under prefix as kube-apiserver's GetList does: pages of page_limit, the first at
    the current revision, the next from the last key + NUL at the first page's revision. (pages, items);
    on_page gets each page's latency in microseconds."""
    key, end, rev = prefix, prefix_end(prefix), 0
    pages = items = 0
    while pages < LIST_PAGES_MAX:
        t = now_ns()
        r = await kv.Range(pb.RangeRequest(key=key, range_end=end, limit=page_limit, revision=rev), timeout=timeout_s)
        if on_page is not None:
            on_page((now_ns() - t) // 1000)
        pages += 1
        items += len(r.kvs)
        if rev == 0:
            rev = r.header.revision
        if not r.more or not r.kvs:
            break
        key = r.kvs[-1].key + b"\x00"
    return pages, items


def txn_update(key: bytes, rev: int, value: bytes, lease: int = 0) -> pb.TxnRequest:
    """kube-apiserver's GuaranteedUpdate (OptimisticPut with GetOnFailure)."""
    return pb.TxnRequest(
        compare=[pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.MOD, key=key, mod_revision=rev)],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))],
        failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
    )


def txn_create(key: bytes, value: bytes, lease: int = 0) -> pb.TxnRequest:
    """kube-apiserver's Create (OptimisticPut with rev 0, empty failure branch)."""
    return pb.TxnRequest(
        compare=[pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.MOD, key=key, mod_revision=0)],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))],
    )


def txn_delete(key: bytes, rev: int) -> pb.TxnRequest:
    """kube-apiserver's Delete (OptimisticDelete with GetOnFailure)."""
    return pb.TxnRequest(
        compare=[pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.MOD, key=key, mod_revision=rev)],
        success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))],
        failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
    )


def failure_rev(resp: pb.TxnResponse) -> int:
    """The current mod_revision from a failed GuaranteedUpdate's Range (0: key gone)."""
    kvs = resp.responses[0].response_range.kvs if resp.responses else ()
    return kvs[0].mod_revision if kvs else 0


class Put(Workload):
    name = "put"

    async def op(self, c: Client, start_ns: int) -> None:
        key = self.key(self.pick(c))
        await c.kv.Put(pb.PutRequest(key=key, value=self.value()), timeout=self.timeout_s)
        self.rec.record("put", (now_ns() - start_ns) // 1000)


class Range(Workload):
    """Single-key gets over the key space, or (--range-keys N) whole-prefix ranges of N keys."""

    name = "range"

    def __init__(self, opts: Options, proc_index: int, rec: Recorder) -> None:
        super().__init__(opts, proc_index, rec)
        self.serializable = opts.consistency == "s"
        self.label = "range-s" if self.serializable else "range-l"
        if opts.range_keys > 1:
            self.base = f"{opts.prefix}/range-{opts.range_keys}/".encode()
            self.label += f"-prefix{opts.range_keys}"
        self.base_end = prefix_end(self.base)

    def populate_keys(self) -> Sequence[bytes]:
        n = self.opts.range_keys if self.opts.range_keys > 1 else self.opts.key_space
        return [self.key(i) for i in range(n)]

    async def op(self, c: Client, start_ns: int) -> None:
        if self.opts.range_keys > 1:
            req = pb.RangeRequest(key=self.base, range_end=self.base_end, serializable=self.serializable)
            expect = self.opts.range_keys
        else:
            req = pb.RangeRequest(key=self.key(self.pick(c)), serializable=self.serializable)
            expect = 1
        resp = await c.kv.Range(req, timeout=self.timeout_s)
        self.rec.record(self.label, (now_ns() - start_ns) // 1000)
        if len(resp.kvs) != expect:
            self.rec.counters["range-wrong-count"] += 1  # the populated keys must all be there


class TxnPut(Workload):
    """Compare mod_revision then put, with a per-process cache of revisions, as kube-apiserver does
    from its watch cache: a stale revision is a conflict whose failure Range refreshes the cache."""

    name = "txn-put"

    def __init__(self, opts: Options, proc_index: int, rec: Recorder) -> None:
        super().__init__(opts, proc_index, rec)
        self.revs: dict[bytes, int] = {}

    def populate_keys(self) -> Sequence[bytes]:
        return [self.key(i) for i in range(self.opts.key_space)]

    async def op(self, c: Client, start_ns: int) -> None:
        key = self.key(self.pick(c))
        rev = self.revs.get(key) if self.opts.txn_read == "cached" else None
        if rev is None:  # cache miss (or --txn-read always): read first, timed separately
            r = await c.kv.Range(pb.RangeRequest(key=key), timeout=self.timeout_s)
            t = now_ns()
            self.rec.record("get", (t - start_ns) // 1000)
            start_ns = t
            rev = r.kvs[0].mod_revision if r.kvs else 0
        resp = await c.kv.Txn(txn_update(key, rev, self.value()), timeout=self.timeout_s)
        self.rec.record("txn-put", (now_ns() - start_ns) // 1000)
        if resp.succeeded:
            self.revs[key] = resp.header.revision  # a Txn with one Put sets mod_revision = header.revision
        else:
            self.rec.counters["conflicts"] += 1
            self.revs[key] = failure_rev(resp)


class Delete(Workload):
    """Deletes distinct, populated keys; stops when this process's share of the key space is gone."""

    name = "delete"

    def __init__(self, opts: Options, proc_index: int, rec: Recorder) -> None:
        super().__init__(opts, proc_index, rec)
        self.next = proc_index  # this process deletes keys proc_index, proc_index + procs, ...

    def populate_keys(self) -> Sequence[bytes]:
        return [self.key(i) for i in range(self.opts.key_space)]

    async def op(self, c: Client, start_ns: int) -> None:
        i = self.next
        if i >= self.opts.key_space:
            raise Exhausted
        self.next += self.opts.procs
        resp = await c.kv.DeleteRange(pb.DeleteRangeRequest(key=self.key(i)), timeout=self.timeout_s)
        self.rec.record("delete", (now_ns() - start_ns) // 1000)
        if resp.deleted != 1:
            self.rec.counters["delete-missing"] += 1


class PutAcks:
    """When this process's puts were acknowledged, by the send time their value carries: what
    `watch-after-ack` measures an event from (the watch path alone, without the put's own commit)."""

    def __init__(self) -> None:
        self.acked: dict[int, int] = {}  # send time -> ack time (0: sent, not acknowledged yet)
        self._order: deque[int] = deque()

    def sent(self, ts: int) -> None:
        self.acked[ts] = 0
        self._order.append(ts)
        horizon = ts - PUT_ACKS_KEPT_NS
        while self._order[0] < horizon:
            self.acked.pop(self._order.popleft(), None)

    def ack(self, ts: int, t: int) -> None:
        if ts in self.acked:
            self.acked[ts] = t


class WatchStreams:
    """Watch streams that record delivery latency of every PUT event (value starts with its send time)."""

    def __init__(self, rec: Recorder, check_prev_kv: bool, sentinel: bytes = b"", acks: PutAcks | None = None) -> None:
        self.rec = rec
        self.check_prev_kv = check_prev_kv
        self.sentinel = sentinel
        self.acks = acks
        self.calls: list[grpc.aio.StreamStreamCall] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.sentinels_seen: dict[tuple[int, int], int] = {}
        self.sentinels_needed = 0
        self.watchers = 0
        self.complete = 0
        self.all_complete = asyncio.Event()

    async def open(self, conn: Conn, creates: list[pb.WatchCreateRequest], timeout_s: float) -> None:
        call = conn.watch.Watch()
        self.calls.append(call)
        for cr in creates:
            await call.write(pb.WatchRequest(create_request=cr))
        created = 0
        async with asyncio.timeout(timeout_s):
            while created < len(creates):
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise RuntimeError("watch stream ended before every watcher was created")
                if resp.canceled:
                    raise RuntimeError(f"watch create canceled: {resp.cancel_reason}")
                if resp.created:
                    created += 1
        stream = len(self.calls) - 1
        self.watchers += len(creates)
        self.tasks.append(asyncio.create_task(self._read(stream, call)))

    async def _read(self, stream: int, call: grpc.aio.StreamStreamCall) -> None:
        rec = self.rec
        counters = rec.counters
        hist_name = "watch-delivery"
        sentinel = self.sentinel
        acked = self.acks.acked if self.acks is not None else None
        try:
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    return
                if resp.canceled:
                    counters["watch-canceled"] += 1
                    return
                t = now_ns()
                counted = counters["watch-events"]
                for ev in resp.events:
                    kv = ev.kv
                    if sentinel and kv.key.startswith(sentinel):
                        self._sentinel(stream, resp.watch_id)
                        continue
                    counters["watch-events"] += 1
                    if ev.type == ev.PUT:
                        if len(kv.value) >= TS.size:
                            sent = TS.unpack_from(kv.value)[0]
                            rec.record(hist_name, (t - sent) // 1000)
                            if acked is not None:
                                ack = acked.get(sent)
                                if ack is not None:  # a put of this process
                                    if ack == 0:  # the event came before the put's answer
                                        counters["watch-event-before-ack"] += 1
                                    rec.record("watch-after-ack", max(0, t - ack) // 1000 if ack else 0)
                        if self.check_prev_kv and kv.create_revision != kv.mod_revision and not ev.HasField("prev_kv"):
                            counters["watch-missing-prev-kv"] += 1
                    elif self.check_prev_kv and not ev.HasField("prev_kv"):
                        counters["watch-missing-prev-kv"] += 1
                if counters["watch-events"] > counted:  # events per response: how much the server coalesced
                    counters["watch-responses"] += 1
        except asyncio.CancelledError:
            pass
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                counters[f"watch-stream-error-{e.code().name}"] += 1

    def _sentinel(self, stream: int, watch_id: int) -> None:
        k = (stream, watch_id)
        n = self.sentinels_seen.get(k, 0) + 1
        self.sentinels_seen[k] = n
        if n == self.sentinels_needed:
            self.complete += 1
            if self.complete == self.watchers:
                self.all_complete.set()

    async def close(self) -> None:
        for call in self.calls:
            call.cancel()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class Watch(Workload):
    """N watchers on a prefix (spread over processes and streams); clients put keys under it.

    Measures delivery latency (event receive time - put send time) and fan-out throughput (events
    received / wall time). After the clients stop, each process puts a sentinel key; the run ends
    when every watcher has seen every process's sentinel, so no event in flight is left uncounted.
    """

    name = "watch"

    def __init__(self, opts: Options, proc_index: int, rec: Recorder) -> None:
        super().__init__(opts, proc_index, rec)
        self.sentinel_base = self.base + b"~end/" + opts.run_id.encode() + b"/"
        self.acks = PutAcks()
        self.streams = WatchStreams(rec, check_prev_kv=False, sentinel=self.sentinel_base, acks=self.acks)
        self.streams.sentinels_needed = opts.procs

    async def prepare(self, conns: Sequence[Conn], clients: Sequence[Client]) -> None:
        mine = share(self.opts.watchers, self.opts.procs, self.proc_index)
        nstreams = min(self.opts.watch_streams, mine)
        end = prefix_end(self.base)
        for s in range(nstreams):
            n = share(mine, nstreams, s)
            creates = [pb.WatchCreateRequest(key=self.base, range_end=end) for _ in range(n)]
            await self.streams.open(conns[s % len(conns)], creates, self.timeout_s)

    async def op(self, c: Client, start_ns: int) -> None:
        key = self.key(self.pick(c))
        value = self.value()
        sent = TS.unpack_from(value)[0]
        self.acks.sent(sent)
        await c.kv.Put(pb.PutRequest(key=key, value=value), timeout=self.timeout_s)
        t = now_ns()
        self.acks.ack(sent, t)
        self.rec.record("put", (t - start_ns) // 1000)

    async def finish(self, conns: Sequence[Conn]) -> None:
        key = self.sentinel_base + str(self.proc_index).encode()
        await conns[0].kv.Put(pb.PutRequest(key=key, value=self.value()), timeout=self.timeout_s)
        try:
            async with asyncio.timeout(self.opts.drain_timeout_s):
                await self.streams.all_complete.wait()
        except TimeoutError:
            self.rec.counters["watch-drain-timeout"] += 1
        await self.streams.close()


class Lease(Workload):
    """`grant`: LeaseGrant per op (leases revoked after the measured window).
    `keepalive`: each client holds one lease and one LeaseKeepAlive stream; an op is one round trip."""

    name = "lease"

    def __init__(self, opts: Options, proc_index: int, rec: Recorder) -> None:
        super().__init__(opts, proc_index, rec)
        self.granted: list[int] = []
        self.streams: dict[int, tuple[grpc.aio.StreamStreamCall, int]] = {}

    async def prepare(self, conns: Sequence[Conn], clients: Sequence[Client]) -> None:
        if self.opts.lease_mode != "keepalive":
            return
        for c in clients:
            r = await c.conn.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=self.opts.lease_ttl_s), timeout=self.timeout_s)
            self.granted.append(r.ID)
            self.streams[c.gindex] = (c.conn.lease.LeaseKeepAlive(), r.ID)

    async def op(self, c: Client, start_ns: int) -> None:
        if self.opts.lease_mode == "grant":
            r = await c.conn.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=self.opts.lease_ttl_s), timeout=self.timeout_s)
            self.rec.record("lease-grant", (now_ns() - start_ns) // 1000)
            self.granted.append(r.ID)
            return
        call, lease_id = self.streams[c.gindex]
        await call.write(pb.LeaseKeepAliveRequest(ID=lease_id))
        async with asyncio.timeout(self.timeout_s):
            resp = await call.read()
        if resp is grpc.aio.EOF:
            raise RuntimeError("keepalive stream ended")
        self.rec.record("lease-keepalive", (now_ns() - start_ns) // 1000)
        if resp.TTL <= 0:
            self.rec.counters["lease-expired"] += 1

    async def cleanup(self, conns: Sequence[Conn]) -> None:
        for call, _ in self.streams.values():
            call.cancel()
        sem = asyncio.Semaphore(POPULATE_INFLIGHT_MAX * 4)

        async def revoke(i: int, lease_id: int) -> None:
            async with sem:
                try:
                    await conns[i % len(conns)].lease.LeaseRevoke(
                        pb.LeaseRevokeRequest(ID=lease_id), timeout=self.timeout_s
                    )
                except grpc.aio.AioRpcError:
                    pass  # already expired: cleanup only

        await asyncio.gather(*(revoke(i, lid) for i, lid in enumerate(self.granted)))


KUBE_MIX: tuple[tuple[str, int], ...] = (
    # (operation, weight): node lease renewals dominate a real control plane's writes,
    # then pod status updates and events; full lists are rare and heavy.
    ("lease-renew", 35),
    ("pod-update", 25),
    ("event-create", 15),
    ("pod-create", 10),
    ("pod-delete", 8),
    ("get", 6),
    ("list", 1),
)


class Kube(Workload):
    """A mixed load shaped like kube-apiserver's traffic to etcd (see KUBE_MIX and docs/benchmarks.md)."""

    name = "kube"

    def __init__(self, opts: Options, proc_index: int, rec: Recorder) -> None:
        super().__init__(opts, proc_index, rec)
        self.nodes_base = b"/registry/leases/kube-node-lease/"
        self.pods_base = b"/registry/pods/"
        self.events_base = b"/registry/events/"
        self.static_base = self.pods_base + b"bench-static/"
        self.revs: dict[bytes, int] = {}
        self.client_nodes: dict[int, list[bytes]] = {}
        self.client_pods: dict[int, list[bytes]] = {}
        self.pods_per_client_max = 4
        self.event_lease = 0
        self.event_lease_uses = 0
        self.event_leases: list[int] = []  # every lease this process granted, revoked at cleanup
        self.event_lease_lock = asyncio.Lock()
        self.watches = WatchStreams(rec, check_prev_kv=True)
        total = sum(w for _, w in KUBE_MIX)
        acc = 0
        self.cumulative: list[tuple[float, str]] = []
        for name, w in KUBE_MIX:
            acc += w
            self.cumulative.append((acc / total, name))

    def node_key(self, j: int) -> bytes:
        return self.nodes_base + f"node-{j:05d}".encode()

    def populate_keys(self) -> Sequence[bytes]:
        nodes = [self.node_key(j) for j in range(self.opts.kube_nodes)]
        pods = [self.static_base + f"pod-{i:06d}".encode() for i in range(self.opts.kube_pods)]
        return nodes + pods

    async def prepare(self, conns: Sequence[Conn], clients: Sequence[Client]) -> None:
        total_clients = self.opts.clients
        self.pods_per_client_max = max(4, self.opts.kube_pods // total_clients)
        for c in clients:
            own = [self.node_key(j) for j in range(c.gindex, self.opts.kube_nodes, total_clients)]
            self.client_nodes[c.gindex] = own or [self.node_key(c.gindex % self.opts.kube_nodes)]
            self.client_pods[c.gindex] = []
        # One watch stream per connection, as kube-apiserver has one client per storage backend.
        streams: dict[int, tuple[Conn, list[pb.WatchCreateRequest]]] = {}
        for p in (self.pods_base, self.nodes_base, self.events_base):
            conn = self.conns_for(p, conns)[0]
            streams.setdefault(id(conn), (conn, []))[1].append(
                pb.WatchCreateRequest(key=p, range_end=prefix_end(p), prev_kv=True)
            )
        for conn, creates in streams.values():
            await self.watches.open(conn, creates, self.timeout_s)

    async def op(self, c: Client, start_ns: int) -> None:
        x = c.rng.random()
        what = next(name for bound, name in self.cumulative if x <= bound)
        pods = self.client_pods[c.gindex]
        if what == "pod-create" and len(pods) >= self.pods_per_client_max:
            what = "pod-delete"
        if what in ("pod-update", "pod-delete") and not pods:
            what = "pod-create"
        if what == "lease-renew":
            nodes = self.client_nodes[c.gindex]
            await self._update(c, nodes[c.n % len(nodes)], start_ns, "lease-renew")
        elif what == "pod-update":
            await self._update(c, pods[c.rng.randrange(len(pods))], start_ns, "pod-update")
        elif what == "pod-create":
            key = self.pod_key(c)
            resp = await c.conn_for(key).kv.Txn(txn_create(key, self.value()), timeout=self.timeout_s)
            self.rec.record("pod-create", (now_ns() - start_ns) // 1000)
            if resp.succeeded:
                pods.append(key)
                self.revs[key] = resp.header.revision
            else:
                self.rec.counters["create-exists"] += 1
        elif what == "pod-delete":
            key = pods.pop(c.rng.randrange(len(pods)))
            rev = self.revs.pop(key)
            resp = await c.conn_for(key).kv.Txn(txn_delete(key, rev), timeout=self.timeout_s)
            self.rec.record("pod-delete", (now_ns() - start_ns) // 1000)
            if not resp.succeeded:
                self.rec.counters["conflicts"] += 1
        elif what == "event-create":
            lease = await self._event_lease(c)
            key = self.events_base + f"bench/{self.opts.run_id}-{c.gindex}-{c.n}".encode()
            resp = await c.conn_for(key).kv.Txn(txn_create(key, self.value(), lease), timeout=self.timeout_s)
            self.rec.record("event-create", (now_ns() - start_ns) // 1000)
            if not resp.succeeded:
                self.rec.counters["create-exists"] += 1
        elif what == "get":
            key = self.static_base + f"pod-{c.rng.randrange(max(1, self.opts.kube_pods)):06d}".encode()
            await c.conn_for(key).kv.Range(pb.RangeRequest(key=key, limit=1), timeout=self.timeout_s)
            self.rec.record("get", (now_ns() - start_ns) // 1000)
        else:
            await self._list(c, start_ns)
        c.n += 1

    async def _update(self, c: Client, key: bytes, start_ns: int, label: str) -> None:
        rev = self.revs.get(key)
        kv = c.conn_for(key).kv
        if rev is None:
            r = await kv.Range(pb.RangeRequest(key=key), timeout=self.timeout_s)
            t = now_ns()
            self.rec.record("get", (t - start_ns) // 1000)
            start_ns = t
            rev = r.kvs[0].mod_revision if r.kvs else 0
        resp = await kv.Txn(txn_update(key, rev, self.value()), timeout=self.timeout_s)
        self.rec.record(label, (now_ns() - start_ns) // 1000)
        if resp.succeeded:
            self.revs[key] = resp.header.revision
        else:
            self.rec.counters["conflicts"] += 1
            self.revs[key] = failure_rev(resp)

    async def _event_lease(self, c: Client) -> int:
        async with self.event_lease_lock:  # one grant in flight; others reuse it
            if self.event_lease == 0 or self.event_lease_uses >= EVENT_LEASE_OBJECTS_MAX:
                t = now_ns()
                ttl = 3600 + 60  # kube: --event-ttl 1h plus min(60 s, 5%)
                # Leases belong to a partition: kube-apiserver grants an event's on the events storage.
                lease_conn = c.conn_for(self.events_base)
                r = await lease_conn.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=ttl), timeout=self.timeout_s)
                self.rec.record("lease-grant", (now_ns() - t) // 1000)
                self.event_lease, self.event_lease_uses = r.ID, 0
                self.event_leases.append(r.ID)
            self.event_lease_uses += 1
            return self.event_lease

    async def _list(self, c: Client, start_ns: int) -> None:
        """A paginated list of every pod at one revision, as kube-apiserver's GetList does."""

        def page(latency_us: int) -> None:
            self.rec.record("list-page", latency_us)

        kv = c.conn_for(self.pods_base).kv
        pages, items = await list_paged(kv, self.pods_base, self.opts.page_limit, self.timeout_s, page)
        self.rec.record("list", (now_ns() - start_ns) // 1000)
        self.rec.counters["list-pages"] += pages
        self.rec.counters["list-items"] += items

    def pod_key(self, c: Client) -> bytes:
        return self.pods_base + f"bench/{self.opts.run_id}-{c.gindex}-{c.n}".encode()

    async def finish(self, conns: Sequence[Conn]) -> None:
        await self.watches.close()

    async def cleanup(self, conns: Sequence[Conn]) -> None:
        """Delete this run's pods and (by revoking their leases) events, so that runs do not pile up."""
        for gindex in self.client_pods:
            prefix = self.pods_base + f"bench/{self.opts.run_id}-{gindex}-".encode()
            req = pb.DeleteRangeRequest(key=prefix, range_end=prefix_end(prefix))
            pod_conns = self.conns_for(prefix, conns)
            await pod_conns[gindex % len(pod_conns)].kv.DeleteRange(req, timeout=self.timeout_s)
        for lease_id in self.event_leases:
            req_revoke = pb.LeaseRevokeRequest(ID=lease_id)
            await self.conns_for(self.events_base, conns)[0].lease.LeaseRevoke(req_revoke, timeout=self.timeout_s)


WORKLOAD_CLASSES: dict[str, type[Workload]] = {w.name: w for w in (Put, Range, TxnPut, Delete, Watch, Lease, Kube)}
