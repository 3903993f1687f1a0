"""A front-end process of `kvstore serve --workers N`.

It listens on the member's client URLs beside the member's own process
(SO_REUSEPORT: the kernel spreads new connections over the listeners) and:

- answers ranges, read-only txns and lease reads from its read-only view of
  the state file (kvstore/workers/reads.py): a serializable one at once
  (what the applier committed before the request arrived), a linearizable one
  after a barrier shared by the front end's reads (kvstore/workers/notify.py);
- proposes Put, DeleteRange, Txn with writes, Compact, LeaseGrant,
  LeaseRevoke and each LeaseKeepAlive itself and answers with the applier's
  result (kvstore/workers/writes.py);
- serves watch streams with the member's own hub, fed from the view after each
  applied batch (kvstore/workers/watches.py);
- runs each of those calls as the member would (a JWT's user; a simple token's
  user from its mirror of the member's tokens; with --client-cert-auth the
  certificate's common name): the applier, or the read, checks its permissions;
- forwards every other gRPC call to the member's process over its unix socket
  (kvstore/workers/forward.py): a physical compaction, calls with a simple token its mirror
  does not hold, auth, maintenance and cluster calls answer exactly as the
  member answers them;
- pipes HTTP/1.1 connections (/health, /metrics, the JSON gateway) to the
  member's HTTP endpoints, so the member stays one unit for its users.

Response headers carry the member's ids and raft term, which the front end
learns from the member's Status (again every IDENTITY_REFRESH_S).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from typing import Any

import grpc

from kvstore.member import default_state_dir
from kvstore.mvcc.backend import STATE_FILE, map_size_for
from kvstore.server import (
    auth_token_options,
    client_tls,
    grpc_server_options,
    grpc_socket_path,
    host_port,
    member_config,
    open_client_listeners,
    parse_urls,
    remote_journal,
)
from kvstore.transport.cmux import PeerIdentities
from kvstore.workers import member_socket_path
from kvstore.workers.forward import FORWARD_CHANNEL_OPTIONS, Forwarder, certificate_identity
from kvstore.workers.metrics import FrontEndMetrics
from kvstore.workers.notify import MemberNotifications, notify_socket_path
from kvstore.workers.reads import LocalReads
from kvstore.workers.supervisor import FRONT_END_SECRET_ENV
from kvstore.workers.view import StateView
from kvstore.workers.watches import LocalWatches, ViewFeed
from kvstore.workers.writes import FrontEndMember, LocalWrites
from proto.etcdserverpb import rpc_pb2 as pb

log = logging.getLogger("kvstore.workers")

MAINTENANCE_STATUS = "/etcdserverpb.Maintenance/Status"
IDENTITY_REFRESH_S = 0.5  # as the member follows the journal's epoch
MEMBER_WAIT_S = 30.0  # the member's socket answers within this at start, or the front end gives up
HTTP_PIPE_CHUNK_BYTES = 64 * 1024


async def _member_status(channel: grpc.aio.Channel) -> Any:
    raw = await channel.unary_unary(MAINTENANCE_STATUS)(pb.StatusRequest().SerializeToString(), timeout=5.0)
    return pb.StatusResponse.FromString(raw)


async def _wait_for_member(channel: grpc.aio.Channel) -> Any:
    async with asyncio.timeout(MEMBER_WAIT_S):
        while True:
            try:
                return await _member_status(channel)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)


async def _follow_identity(channel: grpc.aio.Channel, reads: LocalReads, writer: FrontEndMember) -> None:
    while True:
        await asyncio.sleep(IDENTITY_REFRESH_S)
        with contextlib.suppress(grpc.aio.AioRpcError):
            status = await _member_status(channel)
            reads.header = writer.identity = _identity(status.header)


def _identity(header: Any) -> Any:
    return pb.ResponseHeader(cluster_id=header.cluster_id, member_id=header.member_id, raft_term=header.raft_term)


def pipe_http_to(socket_path: str) -> Any:
    """An HTTP/1.1 connection handler that pipes the connection to the member's HTTP socket."""

    async def copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, half_close: bool) -> None:
        try:
            while data := await reader.read(HTTP_PIPE_CHUNK_BYTES):
                writer.write(data)
                await writer.drain()
            if half_close and writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()
        except (ConnectionError, OSError):
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(socket_path)
        except OSError:
            writer.close()
            return
        upstream = asyncio.get_running_loop().create_task(copy(reader, up_writer, half_close=True))
        try:
            await copy(up_reader, writer, half_close=False)
        finally:
            upstream.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await upstream
            up_writer.close()
            writer.close()

    return handle


async def run_front_end(args: Any) -> int:
    index = args.front_end_index
    data_dir = args.data_dir or f"{args.name}.etcd"
    state_dir = args.state_dir or default_state_dir(data_dir)
    listen = parse_urls(args.listen_client_urls)
    channel = grpc.aio.insecure_channel(f"unix:{grpc_socket_path(state_dir)}", options=FORWARD_CHANNEL_OPTIONS)
    status = await _wait_for_member(channel)
    view = StateView(os.path.join(state_dir, STATE_FILE), map_size_for(args.quota_backend_bytes))
    metrics = FrontEndMetrics(args.metrics)
    notifications = MemberNotifications(notify_socket_path(state_dir))
    identities = PeerIdentities()
    own_identities = identities if args.client_cert_auth else None  # who a call runs as (auth)
    jwt = auth_token_options(args).jwt  # a JWT is checked in any process that has the public key
    reads = LocalReads(view, metrics, notifications, max_txn_ops=args.max_txn_ops, identities=own_identities,
                       jwt=jwt)  # fmt: skip
    reads.header = _identity(status.header)
    # A remote journal takes the front end's appends itself: no hop through the member's process.
    journal = remote_journal(args, f"front-end-{index}") if args.journal_endpoints else None
    writer = FrontEndMember(member_config(args), view, notifications, metrics, journal)
    writer.identity = reads.header
    writes = LocalWrites(writer, metrics, reads.read_only_txn, own_identities, jwt)
    feed = ViewFeed(view, writer.config, lambda: writer.identity)
    watches = LocalWatches(feed, notifications, own_identities, jwt)
    identity = certificate_identity(identities, os.environ.get(FRONT_END_SECRET_ENV, "")) if args.client_cert_auth \
        else None  # fmt: skip
    local = {**reads.handlers(), **writes.handlers()}
    local_streams = {**watches.handlers(), **writes.stream_handlers()}
    server = grpc.aio.server(
        options=grpc_server_options(args.max_request_bytes, reuse_port=True),
        handlers=[Forwarder(channel, local, identity, local_streams)],
    )
    own_socket = member_socket_path(state_dir, f"grpc-{index}")
    listeners, _ = await open_client_listeners(
        args, listen, server, own_socket, pipe_http_to(member_socket_path(state_dir, "http")),
        client_tls(args, data_dir, listen), identities, reuse_port=True,
    )  # fmt: skip
    await server.start()
    # A restarted member's front end binds the same path while this one may still be stopping:
    # at exit remove the socket only if it is still the one this process bound.
    own_inode = _inode(own_socket)
    loop = asyncio.get_running_loop()
    follower = loop.create_task(_follow_identity(channel, reads, writer))
    notified = loop.create_task(notifications.run())
    progress = loop.create_task(feed.progress_loop())
    gauges = loop.create_task(feed.report_loop(metrics))
    log.info("front end %d serving %s (member %x)", index, ",".join(f"{h}:{p}" for h, p in map(host_port, listen)),
             status.header.member_id)  # fmt: skip
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    reads.stopping = writes.stopping = watches.stopping = True
    follower.cancel()
    notified.cancel()
    progress.cancel()
    gauges.cancel()
    for listener in listeners:
        listener.close()
    await server.stop(grace=1.0)
    writer.proposer.stop()
    if journal is not None:
        await journal.close()
    await channel.close()
    if own_inode is not None and _inode(own_socket) == own_inode:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(own_socket)
    view.close()
    return 0


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None
