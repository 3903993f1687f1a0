"""etcd's JSON gateway: POST /v3/... with a JSON body, answered as etcd's grpc-gateway answers.

Unary calls answer one JSON object; streaming calls (Watch, LeaseKeepAlive,
Snapshot) read a stream of JSON objects from the request body as it arrives and
answer a chunked stream of `{"result": ...}` lines. Errors carry etcd 3.5's body
`{"error": msg, "code": grpc_code, "message": msg}` with grpc-gateway's HTTP status
for the code; an error after a stream has started is a last line
`{"error": {"grpc_code", "http_code", "message", "http_status"}}`.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import grpc

from kvstore.gateway import jsonpb
from kvstore.gateway.calls import CallFailed, Metadata, call_stream, call_unary
from kvstore.gateway.routes import ROUTES, Route

GRPC_OVERHEAD_BYTES = 512 * 1024  # etcd: gRPC MaxRecvMsgSize = --max-request-bytes + 512 KiB
BODY_PER_MESSAGE_BYTES_FACTOR = 4  # JSON (base64, field names) is never 4x its protobuf size

# grpc-gateway's runtime.HTTPStatusFromCode
HTTP_STATUS_OF_CODE = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 408,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

# etcd's watch server goes on sending after the client half-closes its side; the other
# streams end when their requests do.
KEEPS_STREAMING_AFTER_BODY = frozenset({("Watch", "Watch")})


def error_body(code: grpc.StatusCode, message: str) -> tuple[int, bytes]:
    number = code.value[0]
    return HTTP_STATUS_OF_CODE[code], jsonpb.dumps({"error": message, "code": number, "message": message})


def stream_error_line(code: grpc.StatusCode, message: str) -> bytes:
    status = HTTP_STATUS_OF_CODE[code]
    phrase = HTTPStatus(status).phrase
    err = {"grpc_code": code.value[0], "http_code": status, "message": message, "http_status": phrase}
    return jsonpb.dumps({"error": err}) + b"\n"


class Gateway:
    def __init__(self, servicers: dict[str, Any], max_request_bytes: int) -> None:
        self.servicers = servicers
        self.message_bytes_max = max_request_bytes + GRPC_OVERHEAD_BYTES
        self.body_bytes_max = self.message_bytes_max * BODY_PER_MESSAGE_BYTES_FACTOR

    @staticmethod
    def route(path: str) -> Route | None:
        return ROUTES.get(path)

    def too_large(self, size: int) -> CallFailed:
        return CallFailed(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"grpc: received message larger than max ({size} vs. {self.message_bytes_max})",
        )

    def _checked(self, message: Any) -> Any:
        size = message.ByteSize()
        if size > self.message_bytes_max:
            raise self.too_large(size)
        return message

    async def unary(self, route: Route, body: bytes, metadata: Metadata = ()) -> tuple[int, bytes]:
        """(HTTP status, JSON body) of a unary call."""
        try:
            request = self._checked(jsonpb.decode(body, route.request_type))
        except jsonpb.JsonError as err:
            return error_body(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except CallFailed as err:
            return error_body(err.code, err.message)
        try:
            response = await call_unary(self.servicers[route.service], route, request, metadata)
        except CallFailed as err:
            return error_body(err.code, err.message)
        return 200, jsonpb.encode(response)

    async def _requests(
        self, route: Route, chunks: AsyncIterator[bytes], hold_open: Any, failed: list[CallFailed]
    ) -> AsyncIterator[Any]:
        """The request messages in a body that is a stream of JSON objects. A bad one ends the
        requests (kept in `failed`: the call's answer if nothing was sent yet), as in etcd's
        gateway, where the request reader stops and the stream itself goes on."""
        sent = 0
        try:
            async for message in self._parse_requests(route, chunks):
                sent += 1
                yield message
        except CallFailed as err:
            failed.append(err)
        if sent and (route.service, route.method) in KEEPS_STREAMING_AFTER_BODY:
            await hold_open()

    async def _parse_requests(self, route: Route, chunks: AsyncIterator[bytes]) -> AsyncIterator[Any]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        text = ""
        ended = False
        chunk_iter = chunks.__aiter__()
        while True:
            stripped = text.lstrip(" \t\r\n")
            if stripped:
                try:
                    value, end = jsonpb.parse_value(stripped)
                except jsonpb.JsonError as err:
                    if str(err) == "unexpected EOF" and not ended:
                        value = None
                    else:
                        raise CallFailed(grpc.StatusCode.UNKNOWN, str(err)) from None
                else:
                    text = stripped[end:]
                    try:
                        message = jsonpb.from_value(value, route.request_type)
                    except jsonpb.JsonError as err:
                        raise CallFailed(grpc.StatusCode.UNKNOWN, str(err)) from None
                    yield self._checked(message)
                    continue
            elif ended:
                break
            try:
                chunk = await chunk_iter.__anext__()
            except StopAsyncIteration:
                ended = True
                text += decoder.decode(b"", final=True)
                continue
            text += decoder.decode(chunk)
            if len(text) > self.body_bytes_max:
                raise self.too_large(len(text))

    async def open_stream(
        self, route: Route, chunks: AsyncIterator[bytes], hold_open: Any, metadata: Metadata = ()
    ) -> tuple[int, bytes | None, AsyncIterator[bytes]]:
        """Start a streaming call. Until its first response an error is a plain error answer
        (status, body, nothing); after it, (200, None, the response lines)."""
        failed: list[CallFailed] = []
        if route.client_streaming:
            requests: Any = self._requests(route, chunks, hold_open, failed)
        else:
            body = b"".join([c async for c in chunks])
            try:
                requests = self._checked(jsonpb.decode(body, route.request_type))
            except jsonpb.JsonError as err:
                status, error = error_body(grpc.StatusCode.INVALID_ARGUMENT, str(err))
                return status, error, _nothing()
            except CallFailed as err:
                status, error = error_body(err.code, err.message)
                return status, error, _nothing()
        responses = call_stream(self.servicers[route.service], route, requests, metadata).__aiter__()
        try:
            first = await responses.__anext__()
        except StopAsyncIteration:
            if failed:
                status, error = error_body(failed[0].code, failed[0].message)
                return status, error, _nothing()
            return 200, None, _nothing()
        except CallFailed as err:
            status, error = error_body(err.code, err.message)
            return status, error, _nothing()

        async def lines() -> AsyncIterator[bytes]:
            try:
                yield jsonpb.dumps({"result": jsonpb.to_dict(first)}) + b"\n"
                async for response in responses:
                    yield jsonpb.dumps({"result": jsonpb.to_dict(response)}) + b"\n"
            except CallFailed as err:
                yield stream_error_line(err.code, err.message)
            finally:
                await responses.aclose()  # type: ignore[attr-defined]  # ends the call now, not at GC

        return 200, None, lines()


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator
