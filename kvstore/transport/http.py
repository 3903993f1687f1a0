"""etcd's HTTP/1.1 endpoints: /health, /livez, /readyz, /version, /metrics (Prometheus text)
and, on client URLs, the JSON gateway under /v3/ (kvstore.gateway).

HTTP/1.1 itself is h11 (sans-IO) on asyncio streams, in kvstore/transport/http1.py: imported at the
first HTTP connection, not at start (gRPC does not need it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from kvstore.member import CLUSTER_VERSION, ETCD_VERSION, STORAGE_VERSION, Member
from proto.etcdserverpb import rpc_pb2 as pb

if TYPE_CHECKING:
    from kvstore.gateway import LazyGateway

REQUEST_HEAD_BYTES_MAX = 16 * 1024


def health(member: Member, query: dict[str, list[str]]) -> tuple[int, dict[str, str]]:
    excluded = set(query.get("exclude", []))
    active = [pb.AlarmType.Name(a) for _, a in sorted(member.sm.alarms) if pb.AlarmType.Name(a) not in excluded]
    if not member.ready.is_set():
        return 503, {"health": "false", "reason": "member not ready"}
    if active:
        return 503, {"health": "false", "reason": "ALARM " + ",".join(active)}
    if query.get("serializable", ["false"])[0] != "true" and not member.journal_reachable:
        # etcd's answer when raft has no leader; the journal's leader plays that part here.
        return 503, {"health": "false", "reason": "RAFT NO LEADER"}
    return 200, {"health": "true", "reason": ""}


def route(member: Member, path: str, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
    if path in ("/health", "/livez", "/readyz"):
        status, body = health(member, query)
        if path != "/health":
            return status, "text/plain", (b"ok\n" if status == 200 else b"not ok\n")
        return status, "application/json", json.dumps(body).encode()
    if path == "/version":
        body = {"etcdserver": ETCD_VERSION, "etcdcluster": CLUSTER_VERSION, "storage": STORAGE_VERSION}
        return 200, "application/json", json.dumps(body).encode()
    if path == "/metrics":
        return (200, *member.metrics.exposition())
    return 404, "text/plain", b"404 page not found\n"


def http_handler(
    member: Member, gateway: LazyGateway | None = None
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """The connection handler, shared by HTTP-only listeners and the client-URL multiplexer.
    With a gateway, /v3/... is etcd's JSON API (client URLs); without, only the endpoints above."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from kvstore.transport.http1 import serve_connection

        await serve_connection(member, gateway, reader, writer)

    return handle


async def serve_http(member: Member, host: str, port: int, gateway: LazyGateway | None = None) -> asyncio.Server:
    return await asyncio.start_server(http_handler(member, gateway), host, port, limit=REQUEST_HEAD_BYTES_MAX)
