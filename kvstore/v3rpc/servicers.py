"""The etcd v3 gRPC servicers: requests in, member calls, responses with etcd's headers and errors out."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from grpc_health.v1 import health, health_pb2_grpc

from kvstore import errors
from kvstore.errors import EtcdError, fail
from kvstore.member import ETCD_VERSION, STORAGE_VERSION, Member, now_ms
from kvstore.membership import as_pb
from kvstore.mvcc.rangestream import CHUNK_KEYS_INITIAL, RangeStreamer, next_chunk_keys
from kvstore.mvcc.txn import execute_txn, read_only_txn_is_serializable, txn_has_writes
from kvstore.statemachine import LEASE_GRANT_QUOTA_COST_BYTES, Kind, put_quota_cost, txn_quota_cost
from kvstore.transport.cmux import PeerIdentities
from kvstore.v3rpc import validate
from kvstore.v3rpc.auth import Auth, Authenticator
from kvstore.v3rpc.common import fill, proposed, unary
from kvstore.watch import WatchStream
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc

SNAPSHOT_CHUNK_BYTES = 32 * 1024  # etcd's snapshot stream chunk
SNAPSHOT_ALIGN_BYTES = 512  # etcdctl requires (size - 32) % 512 == 0

class KV(rpc.KVServicer):
    def __init__(self, member: Member, authn: Authenticator) -> None:
        self.m = member
        self.authn = authn

    @unary
    async def Range(self, request: Any, context: Any) -> Any:
        validate.check_range(request)
        if not request.serializable:
            await self.m.linearizable_barrier()
        self.m.sm.auth.check_range(self.authn.info(context), request.key, request.range_end)
        self.m.counters["ranges"] += 1
        header = pb.ResponseHeader()
        fill(self.m, header, with_revision=False)
        return self.m.store.range_encoded(request, header)  # wire bytes: see _passthrough

    async def RangeStream(self, request: Any, context: Any) -> AsyncIterator[Any]:
        """etcd 3.7's RangeStream: chunks sized towards --max-request-bytes, at one pinned revision."""
        try:
            validate.check_range(request)
            if not request.serializable:
                await self.m.linearizable_barrier()
            self.m.counters["ranges"] += 1
            streamer = RangeStreamer(self.m.store, request)
            keys = CHUNK_KEYS_INITIAL
            target = self.m.config.max_request_bytes
            while not streamer.done:
                chunk = streamer.next_chunk(keys)
                if streamer.done:
                    fill(self.m, chunk.header)
                else:
                    keys = next_chunk_keys(keys, chunk.ByteSize(), target)
                yield pb.RangeStreamResponse(range_response=chunk)
        except EtcdError as err:
            await context.abort(err.code, err.message)

    @unary
    async def Put(self, request: Any, context: Any) -> Any:
        validate.check_put(request)
        validate.check_size(request, self.m.config.max_request_bytes)
        await self.m.check_quota(put_quota_cost(request))
        resp = await proposed(self.m, Kind.PUT, request, self.authn.info(context))
        self.m.counters["puts"] += 1
        return resp

    @unary
    async def DeleteRange(self, request: Any, context: Any) -> Any:
        validate.check_delete(request)
        validate.check_size(request, self.m.config.max_request_bytes)
        resp = await proposed(self.m, Kind.DELETE_RANGE, request, self.authn.info(context))
        self.m.counters["deletes"] += 1
        return resp

    @unary
    async def Txn(self, request: Any, context: Any) -> Any:
        validate.check_txn(request, self.m.config.max_txn_ops)
        if not txn_has_writes(request):
            self.m.counters["txns"] += 1
            # etcd answers read-only txns without consensus, after a read barrier unless all reads are serializable.
            if not read_only_txn_is_serializable(request):
                await self.m.linearizable_barrier()
            self.m.sm.auth.check_txn(self.authn.info(context), request)
            store = self.m.store
            txn = store.begin()
            resp = execute_txn(store, request, txn)
            txn.end()
            resp.header.revision = store.revision
            fill(self.m, resp.header)
            return resp
        validate.check_size(request, self.m.config.max_request_bytes)
        await self.m.check_quota(txn_quota_cost(request))
        # Counted once past the gates, as etcd's store counts only what reaches it (and a front end
        # hands a txn near the quota to the member's process, which counts it then).
        self.m.counters["txns"] += 1
        return await proposed(self.m, Kind.TXN, request, self.authn.info(context))

    @unary
    async def Compact(self, request: Any, context: Any) -> Any:
        resp = await proposed(self.m, Kind.COMPACT, request, self.authn.info(context))
        if request.physical:  # etcd answers once the compacted records are gone from the backend
            await self.m.wait_compacted()
        return resp


WATCH_WRITE_BATCH_MAX = 256  # queued responses looked at together before writing


def _plain_events(resp: Any) -> bool:
    return bool(resp.events) and not (resp.created or resp.canceled or resp.fragment or resp.compact_revision)


def merge_event_responses(responses: list[Any], limit_bytes: int) -> list[Any]:
    """Coalesce the queued event responses of each watcher: one write per watcher, not per revision.

    Only when the client reads slower than events arrive (or a journal batch applied several
    revisions at once): the queue holds them revision by revision, every watcher's in turn, and
    each write is a round trip through gRPC's completion thread, so writing them one by one is
    what let a loaded stream fall further behind. Within a run of plain event responses, each
    watcher's are merged in revision order (its events are never reordered, a revision is never
    split, a merged response stays under limit_bytes); responses of different watchers may change
    places, which etcd does not order either. A created, cancel, progress or fragment response is
    never merged and nothing moves across it, so a progress notification cannot overtake an event.
    """
    out: list[Any] = []
    run: dict[int, list[list[Any]]] = {}  # watch_id -> chunks of its responses, in order
    sizes: dict[int, int] = {}  # bytes of the watcher's last chunk (a bound: the sum of its parts)

    def flush_run() -> None:
        for chunks in run.values():
            for chunk in chunks:
                if len(chunk) == 1:
                    out.append(chunk[0])
                    continue
                last = chunk[-1]
                merged = pb.WatchResponse(header=last.header, watch_id=last.watch_id)
                for resp in chunk:
                    merged.events.extend(resp.events)
                out.append(merged)
        run.clear()
        sizes.clear()

    for resp in responses:
        if not _plain_events(resp):
            flush_run()
            out.append(resp)
            continue
        chunks = run.get(resp.watch_id)
        if chunks is None:
            run[resp.watch_id] = [[resp]]  # sized only if a second one comes (the common case is one)
            continue
        last = sizes.get(resp.watch_id)
        if last is None:
            last = chunks[-1][0].ByteSize()
        size = resp.ByteSize()
        if last + size < limit_bytes:
            chunks[-1].append(resp)
            size += last
        else:
            chunks.append([resp])
        sizes[resp.watch_id] = size
    flush_run()
    return out


class Watch(rpc.WatchServicer):
    def __init__(self, member: Member, authn: Authenticator) -> None:
        self.m = member
        self.authn = authn
        self.limit_bytes = member.config.max_request_bytes

    def _permitted(self, context: Any, create: Any) -> bool:
        """etcd's isWatchPermitted: a bad token or a range the user may not read refuses the watch."""
        try:
            self.m.sm.auth.check_range(self.authn.info(context), create.key, create.range_end)
        except EtcdError:
            return False
        return True

    async def Watch(self, request_iterator: AsyncIterator[Any], context: Any) -> None:
        stream = WatchStream(self.m.hub)
        done = object()

        async def read_requests() -> None:
            try:
                async for req in request_iterator:
                    if req.HasField("create_request") and not self._permitted(context, req.create_request):
                        stream.queue.put_nowait(
                            pb.WatchResponse(
                                header=self.m.header(self.m.store.revision),
                                watch_id=req.create_request.watch_id,
                                created=True,
                                canceled=True,
                                cancel_reason=errors.WATCH_PERMISSION_DENIED,
                            )
                        )
                        continue
                    stream.handle(req)
            finally:
                stream.queue.put_nowait(done)

        reader = asyncio.get_running_loop().create_task(read_requests())
        try:
            while True:
                backlog = [await stream.queue.get()]
                while not stream.queue.empty() and len(backlog) < WATCH_WRITE_BATCH_MAX:
                    backlog.append(stream.queue.get_nowait())
                finished = done in backlog
                for resp in merge_event_responses([r for r in backlog if r is not done], self.limit_bytes):
                    await context.write(resp)
                if finished:
                    break
        finally:
            reader.cancel()
            stream.close()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader


class Lease(rpc.LeaseServicer):
    def __init__(self, member: Member, authn: Authenticator) -> None:
        self.m = member
        self.authn = authn

    @unary
    async def LeaseGrant(self, request: Any, context: Any) -> Any:
        await self.m.check_quota(LEASE_GRANT_QUOTA_COST_BYTES)
        req = pb.LeaseGrantRequest()
        req.CopyFrom(request)
        if req.ID == 0:
            req.ID = self.m.new_lease_id()
        return await proposed(self.m, Kind.LEASE_GRANT, req, self.authn.info(context))

    @unary
    async def LeaseRevoke(self, request: Any, context: Any) -> Any:
        return await proposed(self.m, Kind.LEASE_REVOKE, request, self.authn.info(context))

    async def LeaseKeepAlive(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for req in request_iterator:
            try:
                resp = await self.m.propose(Kind.LEASE_KEEPALIVE, pb.LeaseKeepAliveRequest(ID=req.ID))
            except EtcdError as err:
                await context.abort(err.code, err.message)
            fill(self.m, resp.header)
            yield resp

    @unary
    async def LeaseTimeToLive(self, request: Any, context: Any) -> Any:
        await self.m.linearizable_barrier()
        resp = lease_time_to_live(self.m.store, request)
        fill(self.m, resp.header)
        return resp

    @unary
    async def LeaseLeases(self, request: Any, context: Any) -> Any:
        await self.m.linearizable_barrier()
        resp = lease_leases(self.m.store)
        fill(self.m, resp.header)
        return resp


def lease_time_to_live(store: Any, request: Any) -> Any:
    """LeaseTimeToLive's answer from the store (the member's, or a front end's view), header to fill."""
    resp = pb.LeaseTimeToLiveResponse(ID=request.ID)
    lease = store.leases.get(request.ID)
    if lease is None:
        resp.TTL = -1
    else:
        resp.TTL = lease.remaining_s(now_ms())
        resp.grantedTTL = lease.ttl_s
        if request.keys:
            resp.keys.extend(sorted(lease.keys))
    return resp


def lease_leases(store: Any) -> Any:
    """LeaseLeases's answer from the store, header to fill."""
    return pb.LeaseLeasesResponse(leases=[pb.LeaseStatus(ID=i) for i in store.leases.ids()])


class Cluster(rpc.ClusterServicer):
    """Membership from the journal (kvstore/membership.py): every member registered in this log."""

    def __init__(self, member: Member) -> None:
        self.m = member

    def _members(self) -> list[Any]:
        return [as_pb(r) for r in self.m.sm.members.listed()]

    def _answer(self, resp: Any) -> Any:
        fill(self.m, resp.header, with_revision=False)  # cluster calls carry no revision
        return resp

    @unary
    async def MemberList(self, request: Any, context: Any) -> Any:
        if request.linearizable:
            await self.m.linearizable_barrier()
        return self._answer(pb.MemberListResponse(members=self._members()))

    @unary
    async def MemberAdd(self, request: Any, context: Any) -> Any:
        if request.isLearner:
            raise EtcdError(errors.Code.UNIMPLEMENTED, "kvstore: members never vote; learners are not supported")
        validate.check_member_urls(request.peerURLs)
        added = pb.Member(ID=self.m.new_member_id(), peerURLs=request.peerURLs)
        return self._answer(await self.m.propose(Kind.MEMBER_ADD, added))

    @unary
    async def MemberRemove(self, request: Any, context: Any) -> Any:
        return self._answer(await self.m.propose(Kind.MEMBER_REMOVE, request))

    @unary
    async def MemberUpdate(self, request: Any, context: Any) -> Any:
        validate.check_member_urls(request.peerURLs)
        return self._answer(await self.m.propose(Kind.MEMBER_UPDATE, request))

    async def MemberPromote(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "kvstore: members never vote; there are no learners")


class Maintenance(rpc.MaintenanceServicer):
    def __init__(self, member: Member, authn: Authenticator) -> None:
        self.m = member
        self.authn = authn

    def _admin(self, context: Any) -> None:
        """etcd's authMaintenanceServer: root only, except Status and Alarm. etcd 3.5 returns the auth
        package's own error there, not its gRPC form: code Unknown, "auth: permission denied"."""
        try:
            self.m.sm.auth.check_admin(self.authn.info(context))
        except EtcdError as err:
            raise EtcdError(grpc.StatusCode.UNKNOWN, "auth: " + err.message.removeprefix("etcdserver: ")) from None

    def _alarms(self) -> list[Any]:
        return [pb.AlarmMember(memberID=m, alarm=a) for m, a in sorted(self.m.sm.alarms)]

    @unary
    async def Alarm(self, request: Any, context: Any) -> Any:
        if request.action != pb.AlarmRequest.GET:
            return await proposed(self.m, Kind.ALARM, request)
        resp = pb.AlarmResponse(alarms=self._alarms())
        fill(self.m, resp.header)
        return resp

    @unary
    async def Status(self, request: Any, context: Any) -> Any:
        m = self.m
        resp = pb.StatusResponse(
            version=ETCD_VERSION,
            dbSize=m.db_size_bytes,
            dbSizeInUse=m.db_size_in_use_bytes,
            leader=m.member_id,
            raftIndex=max(m.committed_position, m.sm.applied_position),
            raftTerm=m.raft_term,
            raftAppliedIndex=m.sm.applied_position,
            storageVersion=STORAGE_VERSION,
            dbSizeQuota=m.config.quota_backend_bytes,
            errors=[f"memberID:{mid} alarm:{pb.AlarmType.Name(a)} " for mid, a in sorted(m.sm.alarms)],
        )
        fill(m, resp.header)
        return resp

    @unary
    async def Defragment(self, request: Any, context: Any) -> Any:
        self._admin(context)
        await self.m.defragment()
        return pb.DefragmentResponse()  # etcd sends no header here

    @unary
    async def Hash(self, request: Any, context: Any) -> Any:
        self._admin(context)
        store = self.m.store
        resp = pb.HashResponse(hash=await self.m.read_in_thread(store.hash_kv_reader(store.revision)))
        fill(self.m, resp.header)
        return resp

    @unary
    async def HashKV(self, request: Any, context: Any) -> Any:
        self._admin(context)
        store = self.m.store
        store.check_revision(request.revision)
        rev = request.revision or store.revision
        compact_revision = store.compact_revision
        hash_kv = await self.m.read_in_thread(store.hash_kv_reader(rev))
        resp = pb.HashKVResponse(hash=hash_kv, compact_revision=compact_revision, hash_revision=rev)
        fill(self.m, resp.header)
        return resp

    async def Snapshot(self, request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            self._admin(context)
        except EtcdError as err:
            await context.abort(err.code, err.message)
        # Streamed as it is read from one LMDB read transaction, never whole in memory. The
        # total is not known up front: remaining_bytes counts down from the in-use size
        # (etcdctl only prints it) and is 0 on the last message, the SHA-256 trailer.
        header = self.m.header(self.m.store.revision)
        remaining = self.m.db_size_in_use_bytes
        digest = hashlib.sha256()
        async for piece in snapshot_image(self.m.snapshot_stream()):
            digest.update(piece)
            for offset in range(0, len(piece), SNAPSHOT_CHUNK_BYTES):
                chunk = piece[offset : offset + SNAPSHOT_CHUNK_BYTES]
                remaining = max(remaining - len(chunk), 1)
                yield pb.SnapshotResponse(
                    header=header, remaining_bytes=remaining, blob=chunk, version=STORAGE_VERSION
                )
        yield pb.SnapshotResponse(header=header, remaining_bytes=0, blob=digest.digest(), version=STORAGE_VERSION)

    @unary
    async def MoveLeader(self, request: Any, context: Any) -> Any:
        self._admin(context)
        if request.targetID != self.m.member_id:
            raise fail(errors.BAD_LEADER_TRANSFEREE)
        resp = pb.MoveLeaderResponse()
        fill(self.m, resp.header)
        return resp

    @unary
    async def Downgrade(self, request: Any, context: Any) -> Any:
        self._admin(context)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "kvstore: cluster downgrade is not supported")


async def snapshot_image(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The snapshot file body: the state stream (self-delimiting), zero padding to a multiple of
    512 bytes (etcdctl tells a file with a SHA-256 trailer by its size)."""
    size = 0
    async for chunk in stream:
        size += len(chunk)
        yield chunk
    if size % SNAPSHOT_ALIGN_BYTES:
        yield b"\0" * (-size % SNAPSHOT_ALIGN_BYTES)


SNAPSHOT_READ_BYTES = 1 << 20


def read_snapshot_file(path: str) -> Iterator[bytes]:
    """The state stream of a file written by `etcdctl snapshot save` against this server, in
    chunks; the file's SHA-256 trailer is checked first (one pass, a chunk at a time)."""
    size = os.path.getsize(path)
    if size < 32 or (size - 32) % SNAPSHOT_ALIGN_BYTES:
        raise ValueError("not a snapshot file: its size is not a multiple of 512 plus a 32-byte checksum")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        left = size - 32
        while left:
            chunk = f.read(min(SNAPSHOT_READ_BYTES, left))
            digest.update(chunk)
            left -= len(chunk)
        if digest.digest() != f.read(32):
            raise ValueError("snapshot checksum mismatch")

    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as f:
            left = size - 32
            while left:
                chunk = f.read(min(SNAPSHOT_READ_BYTES, left))
                left -= len(chunk)
                yield chunk

    return chunks()


class Malformed:
    """A request payload that did not parse; the handler answers as grpc-go does for etcd."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def abort(self, context: Any) -> None:
        await context.abort(grpc.StatusCode.INTERNAL, f"grpc: error unmarshalling request: {self.reason}")


def strict_parser(message_type: Any) -> Callable[[bytes], Any]:
    """Parse like etcd's gogoproto: a known field with the wrong wire type is an error (upb would
    keep it as an unknown field); truly unknown fields are ignored."""
    known = set(message_type.DESCRIPTOR.fields_by_number)

    def parse(data: bytes) -> Any:
        try:
            msg = message_type.FromString(data)
        except DecodeError as err:
            return Malformed(str(err))
        msg.DiscardUnknownFields()
        # One size, not one before and one after the discard (each costs an encode): a message that
        # re-encodes to other bytes lost unknown fields, or was sent non-canonically; look closer then.
        if msg.ByteSize() != len(data):
            wrong = [f.field_number for f in UnknownFieldSet(message_type.FromString(data)) if f.field_number in known]
            if wrong:
                return Malformed(f"proto: wrong wireType for field number {wrong[0]}")
        return msg

    return parse


def _unary(behavior: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(request: Any, context: Any) -> Any:
        if isinstance(request, Malformed):
            await request.abort(context)
        return await behavior(request, context)

    return handler


def _request_stream(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    # grpc.aio tells a handler that writes through the context (a coroutine) from one that
    # yields responses (an async generator) by the function's kind: keep the kind.
    async def checked(request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for request in request_iterator:
            if isinstance(request, Malformed):
                await request.abort(context)
            yield request

    if inspect.isasyncgenfunction(behavior):

        async def generator(request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async for response in behavior(checked(request_iterator, context), context):
                yield response

        return generator

    async def coroutine(request_iterator: AsyncIterator[Any], context: Any) -> Any:
        return await behavior(checked(request_iterator, context), context)

    return coroutine


def _unary_stream(behavior: Callable[[Any, Any], AsyncIterator[Any]]) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def handler(request: Any, context: Any) -> AsyncIterator[Any]:
        if isinstance(request, Malformed):
            await request.abort(context)
        async for response in behavior(request, context):
            yield response

    return handler


def _passthrough(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """A response serializer that sends a handler's bytes as they are (a Range built from the
    stored records) and serializes messages."""

    def encode(response: Any) -> bytes:
        return response if isinstance(response, bytes) else serialize(response)

    return encode


def _register(server: grpc.aio.Server, servicer: Any, service_name: str) -> None:
    """Register every method of an etcdserverpb service, with strict request parsing."""
    service = pb.DESCRIPTOR.services_by_name[service_name]
    handlers = {}
    for method in service.methods:
        behavior = getattr(servicer, method.name)
        parse = strict_parser(getattr(pb, method.input_type.name))
        serialize = _passthrough(getattr(pb, method.output_type.name).SerializeToString)
        if method.client_streaming and method.server_streaming:
            handler = grpc.stream_stream_rpc_method_handler(_request_stream(behavior), parse, serialize)
        elif method.server_streaming:
            handler = grpc.unary_stream_rpc_method_handler(_unary_stream(behavior), parse, serialize)
        else:
            handler = grpc.unary_unary_rpc_method_handler(_unary(behavior), parse, serialize)
        handlers[method.name] = handler
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def servicers_for(
    member: Member, identities: PeerIdentities | None = None, client_cert_auth: bool = False
) -> dict[str, Any]:
    """One servicer per etcdserverpb service, by service name: what gRPC and the JSON gateway call.

    client_cert_auth: a verified client certificate's CN is the user of a request without a token."""
    authn = Authenticator(member, identities, client_cert_auth)
    return {
        "KV": KV(member, authn),
        "Watch": Watch(member, authn),
        "Lease": Lease(member, authn),
        "Cluster": Cluster(member),
        "Maintenance": Maintenance(member, authn),
        "Auth": Auth(member, authn),
    }


def add_servicers(
    server: grpc.aio.Server,
    member: Member,
    identities: PeerIdentities | None = None,
    client_cert_auth: bool = False,
) -> dict[str, Any]:
    servicers = servicers_for(member, identities, client_cert_auth)
    for name, servicer in servicers.items():
        _register(server, servicer, name)
    # grpc.health.v1: the overall service "" answers SERVING, as etcd's does.
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    return servicers
