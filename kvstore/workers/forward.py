"""The gRPC calls a front end passes on to the applier's process, as bytes.

Every etcd service method (and grpc.health.v1) is forwarded over one HTTP/2
connection on the applier's unix socket: request bytes, the caller's metadata
(the auth token) and deadline go in; response bytes, or the status code,
message and trailing metadata come back unchanged, so a forwarded call answers
exactly what the applier's servicers answer. Cancellation (a client that goes
away) cancels the forwarded call. `local` handlers replace the forwarding of
chosen unary methods (a serializable range answered from the front end's own view),
`local_streams` that of bidirectional ones (watches served from the front end's hub).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from kvstore.transport.cmux import FORWARDED_CN_METADATA, FORWARDED_SECRET_METADATA, PeerIdentities
from proto.etcdserverpb import rpc_pb2 as pb

# Metadata gRPC sets itself on every call: never copied onto the forwarded one.
RESERVED_METADATA_PREFIXES = (":", "grpc-")
RESERVED_METADATA_KEYS = frozenset({"user-agent", "content-type", "te"})
# What the front end may receive and send: the applier's own limits apply behind it.
FORWARD_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
]

LocalUnary = Callable[[bytes, Any, "Forwarder"], Awaitable[bytes]]
# A bidirectional call served in the front end: it writes its responses with context.write
# (messages or bytes), or relays Forwarder.forward_stream's.
LocalStream = Callable[[AsyncIterator[bytes], Any, "Forwarder"], Awaitable[None]]
Identity = Callable[[Any], tuple[tuple[str, str], ...]]


def certificate_identity(identities: PeerIdentities, secret: str) -> Identity:
    """The metadata that names a call's verified client certificate to the member (--client-cert-auth)."""

    def identity(context: Any) -> tuple[tuple[str, str], ...]:
        name = identities.common_name(context.peer())
        return ((FORWARDED_CN_METADATA, name), (FORWARDED_SECRET_METADATA, secret)) if name else ()

    return identity


def forwarded_metadata(context: Any, identity: Identity | None = None) -> tuple[tuple[str, Any], ...]:
    """The caller's metadata, and what `identity` vouches for (the client certificate's name)."""
    own = tuple(
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if key not in RESERVED_METADATA_KEYS
        and not key.startswith(RESERVED_METADATA_PREFIXES)
        and key not in (FORWARDED_CN_METADATA, FORWARDED_SECRET_METADATA)  # never the client's own claim
    )
    return own if identity is None else own + identity(context)


async def relay(call: Any, context: Any) -> AsyncIterator[bytes]:
    """The responses of a forwarded streaming call, then its status; the call is cancelled when
    the caller goes away."""
    try:
        async for response in call:
            yield response
    except grpc.aio.AioRpcError as err:
        await abort_as(context, err)
    finally:
        call.cancel()


async def abort_as(context: Any, err: grpc.aio.AioRpcError) -> None:
    await context.abort(err.code(), err.details() or "", err.trailing_metadata() or ())


def _as_bytes(response: Any) -> bytes:
    """A local stream writes messages, its forwarded form bytes."""
    return response if isinstance(response, bytes) else response.SerializeToString()


class Forwarder(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A generic handler for every method the applier serves."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        local: dict[str, LocalUnary] | None = None,
        identity: Identity | None = None,
        local_streams: dict[str, LocalStream] | None = None,
    ) -> None:
        self.channel = channel
        self.local = local or {}
        self.local_streams = local_streams or {}
        self.identity = identity
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._bidi: dict[str, Any] = {}  # the forwarding multi-callable of each bidirectional method
        services = [*pb.DESCRIPTOR.services_by_name.values(), health_pb2.DESCRIPTOR.services_by_name["Health"]]
        for service in services:
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                self._handlers[path] = self._handler(path, method.client_streaming, method.server_streaming)

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)

    def _handler(self, path: str, client_streaming: bool, server_streaming: bool) -> grpc.RpcMethodHandler:
        channel = self.channel
        if not client_streaming and not server_streaming:
            call_unary = channel.unary_unary(path)
            local = self.local.get(path)

            async def unary(request: bytes, context: Any) -> bytes:
                if local is not None:
                    return await local(request, context, self)
                return await self.unary(call_unary, request, context)

            return grpc.unary_unary_rpc_method_handler(unary)
        if not client_streaming:
            call_stream = channel.unary_stream(path)

            async def unary_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
                call = call_stream(request, metadata=self.metadata(context), timeout=context.time_remaining())
                async for response in relay(call, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(unary_stream)
        if not server_streaming:
            call_client_stream = channel.stream_unary(path)

            async def stream_unary(requests: AsyncIterator[bytes], context: Any) -> bytes:
                call = call_client_stream(requests, metadata=self.metadata(context),
                                          timeout=context.time_remaining())  # fmt: skip
                try:
                    response: bytes = await call
                    return response
                except grpc.aio.AioRpcError as err:
                    await abort_as(context, err)
                    raise
                finally:
                    call.cancel()

            return grpc.stream_unary_rpc_method_handler(stream_unary)
        local_stream = self.local_streams.get(path)
        if local_stream is not None:

            async def served(requests: AsyncIterator[bytes], context: Any) -> None:
                await local_stream(requests, context, self)

            return grpc.stream_stream_rpc_method_handler(served, response_serializer=_as_bytes)

        async def stream_stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
            async for response in self.forward_stream(path, requests, context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream)

    def forward_stream(self, path: str, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        """Forward one bidirectional call: its responses, then its status."""
        call_bidi = self._bidi.get(path)
        if call_bidi is None:
            call_bidi = self._bidi[path] = self.channel.stream_stream(path)
        call = call_bidi(requests, metadata=self.metadata(context), timeout=context.time_remaining())
        return relay(call, context)

    async def unary(self, call: Any, request: bytes, context: Any) -> bytes:
        """Forward one unary call: its answer, or its status."""
        try:
            response: bytes = await call(request, metadata=self.metadata(context),
                                         timeout=context.time_remaining())  # fmt: skip
            return response
        except grpc.aio.AioRpcError as err:
            await abort_as(context, err)
            raise

    def metadata(self, context: Any) -> tuple[tuple[str, Any], ...]:
        return forwarded_metadata(context, self.identity)

    def unary_call(self, path: str) -> Any:
        return self.channel.unary_unary(path)
