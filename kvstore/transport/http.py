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


def metrics(member: Member) -> str:
    store = member.store
    c = member.counters
    lines = [
        ("etcd_server_has_leader", int(member.journal_reachable)),
        ("etcd_server_is_leader", 1),
        ("etcd_server_proposals_committed_total", member.sm.applied_position),
        ("etcd_server_proposals_applied_total", member.sm.applied_position),
        ("etcd_server_proposals_pending", len(member._pending)),
        ("etcd_server_proposals_failed_total", c["proposals_failed"]),
        ("etcd_server_quota_backend_bytes", member.config.quota_backend_bytes),
        ("etcd_mvcc_db_total_size_in_bytes", member.db_size_bytes),
        ("etcd_mvcc_db_total_size_in_use_in_bytes", member.db_size_in_use_bytes),
        ("etcd_mvcc_put_total", c["puts"]),
        ("etcd_mvcc_delete_total", c["deletes"]),
        ("etcd_mvcc_range_total", c["ranges"]),
        ("etcd_mvcc_txn_total", c["txns"]),
        ("etcd_debugging_mvcc_current_revision", store.revision),
        ("etcd_debugging_mvcc_compact_revision", max(store.compact_revision, 0)),
        ("etcd_debugging_mvcc_watcher_total", member.hub.watcher_count),
        ("etcd_debugging_mvcc_watch_stream_total", len(member.hub.streams)),
        ("etcd_debugging_mvcc_keys_total", store.live_keys),
    ]
    out = [f'etcd_server_version{{server_version="{ETCD_VERSION}"}} 1']
    out += [f"{name} {value}" for name, value in lines]
    return "\n".join(out) + "\n"


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
        return 200, "text/plain; version=0.0.4", metrics(member).encode()
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
