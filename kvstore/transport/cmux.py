"""gRPC and HTTP/1.1 on one client URL, as etcd serves them (etcd uses cmux).

grpcio cannot share its listening socket, so the client port belongs to this
multiplexer: it looks at the first bytes of each connection; an HTTP/2
connection (gRPC) is piped to the gRPC server on a unix socket, anything else
is answered by the HTTP/1.1 handler in place. The pipe is two asyncio
protocols that hand each chunk to the other side's transport, with flow
control both ways. `--listen-client-http-urls` (etcd's flag) moves HTTP to its
own URL and lets gRPC own the client port with no pipe in between.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SNIFF_BYTES = 3  # "PRI" tells HTTP/2 from an HTTP/1.1 method
HTTP_HEAD_BYTES_MAX = 16 * 1024

HttpHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class _Upstream(asyncio.Protocol):
    """The gRPC server's side of a piped connection."""

    def __init__(self, client: _ClientConnection) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()

    def pause_writing(self) -> None:
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.transport.resume_reading()


class _ClientConnection(asyncio.Protocol):
    """One accepted client connection, until it is known to be gRPC or HTTP/1.1."""

    def __init__(self, grpc_socket_path: str, http_handler: HttpHandler) -> None:
        self.grpc_socket_path = grpc_socket_path
        self.http_handler = http_handler
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.buffer = b""
        self.upstream: _Upstream | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.write(data)
            return
        self.buffer += data
        if self.upstream is not None:
            return  # still connecting upstream: the buffer goes out once connected
        if len(self.buffer) < SNIFF_BYTES:
            return
        if self.buffer.startswith(HTTP2_PREFACE[:SNIFF_BYTES]):
            self.upstream = _Upstream(self)
            self.transport.pause_reading()
            asyncio.get_running_loop().create_task(self._connect_upstream())
        else:
            self._become_http()

    async def _connect_upstream(self) -> None:
        assert self.upstream is not None
        try:
            await asyncio.get_running_loop().create_unix_connection(lambda: self.upstream, self.grpc_socket_path)
        except OSError:
            self.transport.close()
            return
        if self.closed:
            self.upstream.transport.close()  # type: ignore[union-attr]
            return
        self.upstream.transport.write(self.buffer)  # type: ignore[union-attr]
        self.buffer = b""
        self.transport.resume_reading()

    def _become_http(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=HTTP_HEAD_BYTES_MAX, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, self.http_handler, loop=loop)
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        protocol.data_received(self.buffer)
        self.buffer = b""

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()


async def serve_mux(host: str, port: int, grpc_socket_path: str, http_handler: HttpHandler) -> Any:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _ClientConnection(grpc_socket_path, http_handler), host, port)
