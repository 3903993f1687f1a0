"""gRPC and HTTP/1.1 on one client URL, as etcd serves them (etcd uses cmux).

grpcio cannot share its listening socket, so the client port belongs to this
multiplexer: it looks at the first bytes of each connection; an HTTP/2
connection (gRPC) is piped to the gRPC server on a unix socket, anything else
is answered by the HTTP/1.1 handler in place. The pipe is two asyncio
protocols that hand each chunk to the other side's transport, with flow
control both ways. `--listen-client-http-urls` (etcd's flag) moves HTTP to its
own URL and lets gRPC own the client port with no pipe in between.

With TLS on the client URL (https://) this multiplexer terminates it, whether
or not HTTP shares the port: one TLS implementation for every flag etcd has
(CRL, cipher suites, versions, reload per handshake), and it sees the client
certificate. gRPC then sees each piped connection come from a unix socket
address of its own (an abstract name the multiplexer binds), and
`PeerIdentities` maps that address to the verified certificate's common name,
which auth takes as the user, as etcd does with --client-cert-auth.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, cast

from kvstore.transport.tls import ServerTLS, peer_common_name

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SNIFF_BYTES = 3  # "PRI" tells HTTP/2 from an HTTP/1.1 method
HTTP_HEAD_BYTES_MAX = 16 * 1024

TLS_HANDSHAKE_TIMEOUT_S = 10.0  # a client that connects and sends nothing (or plain text) is dropped

HttpHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# A call forwarded by a front end of `kvstore serve --workers` carries the client certificate's
# common name the front end verified, vouched for by a secret the member gave its front ends.
FORWARDED_CN_METADATA = "kvstore-forwarded-cn"
FORWARDED_SECRET_METADATA = "kvstore-forwarded-secret"


class PeerIdentities:
    """gRPC peer string of a piped connection -> common name of its verified client certificate.

    forward_secret: calls that carry it (from the member's own front ends) name their common name."""

    def __init__(self, forward_secret: str = "") -> None:
        self._names: dict[str, str] = {}
        self._prefix = f"kvstore-mux-{os.getpid()}-{os.urandom(6).hex()}-"
        self._ids = itertools.count(1)
        self._forward_secret = forward_secret

    def new_address(self) -> str:
        return f"{self._prefix}{next(self._ids)}"

    def add(self, address: str, common_name: str) -> None:
        self._names[f"unix-abstract:{address}"] = common_name

    def remove(self, address: str) -> None:
        self._names.pop(f"unix-abstract:{address}", None)

    def common_name(self, grpc_peer: str) -> str:
        return self._names.get(grpc_peer, "")

    def common_name_of(self, context: Any) -> str:
        """The common name of a gRPC call's client certificate ("" if none was verified)."""
        name = self.common_name(context.peer())
        if name or not self._forward_secret:
            return name
        metadata = dict(context.invocation_metadata() or ())
        secret = metadata.get(FORWARDED_SECRET_METADATA)
        if isinstance(secret, str) and hmac.compare_digest(secret, self._forward_secret):
            return str(metadata.get(FORWARDED_CN_METADATA, ""))
        return ""


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

    def __init__(
        self,
        grpc_socket_path: str,
        http_handler: HttpHandler | None,
        tls: ServerTLS | None = None,
        identities: PeerIdentities | None = None,
    ) -> None:
        self.grpc_socket_path = grpc_socket_path
        self.http_handler = http_handler
        self.tls = tls
        self.identities = identities
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.buffer = b""
        self.upstream: _Upstream | None = None
        self.upstream_address = ""
        self.common_name = ""
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None and self.tls is not None and self.tls.info.client_cert_auth:
            self.common_name = peer_common_name(sslobj.getpeercert())

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
        elif self.http_handler is None:
            self.transport.close()  # --listen-client-http-urls: the client URL serves gRPC only
        else:
            self._become_http()

    async def _connect_upstream(self) -> None:
        assert self.upstream is not None
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if self.identities is not None:
                # An address of its own, so that gRPC's peer string tells this connection apart.
                self.upstream_address = self.identities.new_address()
                sock.bind("\0" + self.upstream_address)
                if self.common_name:
                    self.identities.add(self.upstream_address, self.common_name)
            sock.setblocking(False)
            try:
                # A local listener accepts at once (uvloop's sock_connect refuses a bound unix socket).
                sock.connect(self.grpc_socket_path)
            except BlockingIOError:  # its backlog is full: wait for it
                await loop.sock_connect(sock, self.grpc_socket_path)
            await loop.create_unix_connection(lambda: self.upstream, sock=sock)  # type: ignore[type-var]
        except OSError:
            sock.close()
            self._forget_identity()
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

    def _forget_identity(self) -> None:
        if self.identities is not None and self.upstream_address:
            self.identities.remove(self.upstream_address)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._forget_identity()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()


async def serve_mux(
    host: str,
    port: int,
    grpc_socket_path: str,
    http_handler: HttpHandler | None,
    tls: ServerTLS | None = None,
    identities: PeerIdentities | None = None,
    *,
    reuse_port: bool = False,
) -> Any:
    """reuse_port: other processes listen on the same port too (kvstore serve --workers)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _ClientConnection(grpc_socket_path, http_handler, tls, identities),
        host,
        port,
        reuse_port=reuse_port or None,
        ssl=tls.listening_context() if tls is not None else None,
        ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S if tls is not None else None,
    )
