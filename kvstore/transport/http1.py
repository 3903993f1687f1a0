"""One HTTP/1.1 connection of etcd's HTTP endpoints (kvstore/transport/http.py): h11 (sans-IO) on
asyncio streams, keep-alive, chunked request and response bodies, bounded request heads and bodies.

Imported at the first HTTP connection, and the JSON gateway at the first /v3/ request: neither is
needed to serve gRPC, so a restarted member answers its first get without them (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
import urllib.parse
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import h11

from kvstore.transport.http import REQUEST_HEAD_BYTES_MAX, route

if TYPE_CHECKING:
    from kvstore.gateway import LazyGateway
    from kvstore.gateway.calls import Metadata
    from kvstore.gateway.gateway import Gateway
    from kvstore.member import Member

READ_TIMEOUT_S = 10.0  # a request head, or an idle keep-alive connection
READ_BYTES = 64 * 1024
STREAM_CHUNKS_QUEUED_MAX = 16  # request body chunks read ahead of a streaming call
DRAIN_BYTES_MAX = 1024 * 1024  # an unread body past this closes the connection instead
# what etcd's gateway adds to every answer
CORS_HEADERS = [
    (b"access-control-allow-headers", b"accept, content-type, authorization"),
    (b"access-control-allow-methods", b"POST, GET, OPTIONS, PUT, DELETE"),
    (b"access-control-allow-origin", b"*"),
]


_date_cache: list[Any] = [0, b""]  # [second, its Date header value]: formatted once a second, not per answer


def _http_date() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, email.utils.formatdate(now, usegmt=True).encode()]
    value: bytes = _date_cache[1]
    return value


def _reason(status: int) -> bytes:
    return HTTPStatus(status).phrase.encode()


class _Connection:
    """One HTTP/1.1 connection: h11's state machine between an asyncio reader and writer."""

    def __init__(
        self, member: Member, gateway: LazyGateway | None, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.member = member
        self.gateway = gateway
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=REQUEST_HEAD_BYTES_MAX)

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.conn.they_are_waiting_for_100_continue:
                await self.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue"))
            self.conn.receive_data(await self.reader.read(READ_BYTES))

    async def send(self, *events: Any) -> None:
        # One write for all the events (a response's head, body and end): one send() per answer, not three.
        data = b"".join(filter(None, (self.conn.send(event) for event in events)))
        if data:
            self.writer.write(data)
        await self.writer.drain()

    async def respond(
        self,
        status: int,
        content_type: str,
        body: bytes,
        *,
        head_only: bool = False,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"date", _http_date()),
            *(extra or []),
        ]
        events: list[Any] = [h11.Response(status_code=status, headers=headers, reason=_reason(status))]
        if body and not head_only:
            events.append(h11.Data(data=body))
        await self.send(*events, h11.EndOfMessage())

    async def serve(self) -> None:
        while True:
            async with asyncio.timeout(READ_TIMEOUT_S):  # no task per event, as wait_for would make
                event = await self.next_event()
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed, or the client went away between requests
            await self.handle(event)
            if self.conn.their_state is h11.SEND_BODY and self.conn.our_state is h11.DONE:
                # answered without reading the body (404, 405, ...): drain it to keep the connection
                if await self.read_body(DRAIN_BYTES_MAX) is None:
                    return
            if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is not h11.DONE:
                return
            self.conn.start_next_cycle()

    async def read_body(self, limit_bytes: int) -> bytes | None:
        """The whole request body, or None once it grows past limit_bytes."""
        parts: list[bytes] = []
        size = 0
        while True:
            async with asyncio.timeout(READ_TIMEOUT_S):
                event = await self.next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit_bytes:
                    return None
                parts.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            else:
                raise ConnectionError("connection closed inside a request body")

    async def handle(self, request: Any) -> None:
        method = request.method.decode("latin-1")
        url = urllib.parse.urlsplit(request.target.decode("latin-1"))
        if self.gateway is not None and url.path.startswith("/v3/"):
            from kvstore.gateway.calls import gateway_metadata

            await self.handle_gateway(self.gateway.get(), method, url.path, gateway_metadata(request.headers))
            return
        if method not in ("GET", "HEAD"):
            await self.respond(405, "text/plain", b"method not allowed\n")
            return
        status, ctype, body = route(self.member, url.path, urllib.parse.parse_qs(url.query))
        await self.respond(status, ctype, body, head_only=method == "HEAD")

    async def handle_gateway(self, gateway: Gateway, method: str, path: str, metadata: Metadata) -> None:
        from kvstore.gateway.gateway import error_body

        gw_route = gateway.route(path)
        text = "text/plain; charset=utf-8"
        nosniff = [(b"x-content-type-options", b"nosniff"), *CORS_HEADERS]
        if gw_route is None:
            await self.respond(404, text, b"Not Found\n", extra=nosniff)
            return
        if method != "POST":
            await self.respond(405, text, b"Method Not Allowed\n", extra=nosniff)
            return
        if gw_route.client_streaming or gw_route.server_streaming:
            await self.handle_stream(gateway, gw_route, metadata)
            return
        body = await self.read_body(gateway.body_bytes_max)
        if body is None:
            too_large = gateway.too_large(gateway.body_bytes_max)
            status, answer = error_body(too_large.code, too_large.message)
            await self.respond(status, "application/json", answer, extra=[*CORS_HEADERS, (b"connection", b"close")])
            return
        status, answer = await gateway.unary(gw_route, body, metadata)
        ok = [(b"grpc-metadata-content-type", b"application/grpc")] if status == 200 else []
        await self.respond(status, "application/json", answer, extra=[*CORS_HEADERS, *ok])

    async def handle_stream(self, gateway: Gateway, gw_route: Any, metadata: Metadata) -> None:
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=STREAM_CHUNKS_QUEUED_MAX)  # backpressure
        disconnected = asyncio.Event()

        async def read() -> None:
            try:
                while True:
                    event = await self.next_event()
                    if isinstance(event, h11.Data):
                        await chunks.put(event.data)
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        raise ConnectionError
                await chunks.put(None)
                # Body done: watch the socket for the client going away (data is kept for the next request).
                while data := await self.reader.read(READ_BYTES):
                    self.conn.receive_data(data)
            except (ConnectionError, h11.RemoteProtocolError):
                pass
            disconnected.set()  # first: the call is cancelled even if nobody takes the end marker
            with contextlib.suppress(asyncio.QueueFull):
                chunks.put_nowait(None)

        async def body() -> AsyncIterator[bytes]:
            while (chunk := await chunks.get()) is not None:
                yield chunk

        async def answer() -> None:
            status, error, lines = await gateway.open_stream(gw_route, body(), disconnected.wait, metadata)
            if error is not None:
                await self.respond(status, "application/json", error, extra=CORS_HEADERS)
                return
            headers = [
                (b"content-type", b"application/json"),
                (b"date", _http_date()),
                *CORS_HEADERS,
                (b"grpc-metadata-content-type", b"application/grpc"),
            ]
            await self.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
            try:
                async for line in lines:
                    await self.send(h11.Data(data=line))
            finally:
                await lines.aclose()  # type: ignore[attr-defined]
            await self.send(h11.EndOfMessage())

        loop = asyncio.get_running_loop()
        reader, answering = loop.create_task(read()), loop.create_task(answer())
        gone = loop.create_task(disconnected.wait())
        try:
            await asyncio.wait({answering, gone}, return_when=asyncio.FIRST_COMPLETED)
            if answering.done():
                answering.result()
            else:
                raise ConnectionError("client went away")
        finally:
            for task in (answering, gone, reader):
                task.cancel()
            for task in (answering, gone, reader):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


async def serve_connection(
    member: Member, gateway: LazyGateway | None, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Every request of one connection, answered in turn; the connection closed at the end."""
    connection = _Connection(member, gateway, reader, writer)
    try:
        await connection.serve()
    except h11.RemoteProtocolError as err:
        with contextlib.suppress(Exception):
            if connection.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await connection.respond(err.error_status_hint, "text/plain", b"bad request\n")
    except (
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
        TimeoutError,
        ConnectionError,
        h11.LocalProtocolError,
    ):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
