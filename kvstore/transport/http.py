"""etcd's plain HTTP endpoints: /health, /livez, /readyz, /version and /metrics (Prometheus text).

A deliberately small HTTP/1.1 server on asyncio streams: GET only, one
request per connection read at a time, bounded header size.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.parse
from collections.abc import Awaitable, Callable

from kvstore.member import CLUSTER_VERSION, ETCD_VERSION, STORAGE_VERSION, Member
from proto.etcdserverpb import rpc_pb2 as pb

REQUEST_HEAD_BYTES_MAX = 16 * 1024
READ_TIMEOUT_S = 10.0


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


def http_handler(member: Member) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """The connection handler, shared by HTTP-only listeners and the client-URL multiplexer."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
                if len(head) > REQUEST_HEAD_BYTES_MAX:
                    break
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                parts = request_line.split(" ")
                if len(parts) != 3:
                    break
                method, target, _ = parts
                url = urllib.parse.urlsplit(target)
                if method not in ("GET", "HEAD"):
                    status, ctype, body = 405, "text/plain", b"method not allowed\n"
                else:
                    status, ctype, body = route(member, url.path, urllib.parse.parse_qs(url.query))
                reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
                head_out = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
                writer.write(head_out.encode() + (body if method == "GET" else b""))
                await writer.drain()
                if b"connection: close" in head.lower():
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return handle


async def serve_http(member: Member, host: str, port: int) -> asyncio.Server:
    return await asyncio.start_server(http_handler(member), host, port, limit=REQUEST_HEAD_BYTES_MAX)
