"""Calling the gRPC servicers in-process, as etcd's gateway calls its own gRPC server.

The servicers talk to their caller through two context methods: `abort` (a gRPC
status ends the call) and `write` (the watch stream's responses). The gateway's
context turns an abort into CallFailed and hands writes to a queue, so a gateway
call runs exactly the code a gRPC call runs, without the network in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from kvstore.gateway.routes import Route


class CallFailed(Exception):
    """The call ended with a gRPC status other than OK."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


Metadata = tuple[tuple[str, str], ...]
# HTTP headers the gateway hands to the call as gRPC metadata, as grpc-gateway does for etcd:
# `Authorization` carries an auth token (etcd reads it as "authorization" or "token").
FORWARDED_HEADERS = (b"authorization", b"token")


def gateway_metadata(headers: Any) -> Metadata:
    """The call's metadata from an HTTP request's headers (name, value byte pairs)."""
    return tuple(
        (n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in headers if n.lower() in FORWARDED_HEADERS
    )


class _Context:
    def __init__(self, queue: asyncio.Queue[Any] | None = None, metadata: Metadata = ()) -> None:
        self.queue = queue
        self.metadata = metadata

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise CallFailed(code, details)

    async def write(self, message: Any) -> None:
        assert self.queue is not None, "write on a unary call"
        await self.queue.put(message)

    def invocation_metadata(self) -> Metadata:
        return self.metadata

    def peer(self) -> str:
        return ""


async def call_unary(servicer: Any, route: Route, request: Any, metadata: Metadata = ()) -> Any:
    handler = getattr(servicer, route.method)
    response = await handler(request, _Context(metadata=metadata))
    if isinstance(response, bytes):  # a handler that answers in wire form (Range: the stored records)
        return route.response_type.FromString(response)
    return response


_END = object()


async def call_stream(servicer: Any, route: Route, requests: Any, metadata: Metadata = ()) -> AsyncIterator[Any]:
    """The responses of a streaming call; `requests` is an async iterator for a client stream,
    a message otherwise. Raises CallFailed when the call ends with an error."""
    handler = getattr(servicer, route.method)
    if inspect.isasyncgenfunction(handler):
        async for response in handler(requests, _Context(metadata=metadata)):
            yield response
        return
    # A handler that writes through its context (Watch): run it, relay what it writes.
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
    outcome: list[BaseException] = []

    async def run() -> None:
        try:
            await handler(requests, _Context(queue, metadata))
        except Exception as err:
            outcome.append(err)
        finally:
            await queue.put(_END)

    task = asyncio.get_running_loop().create_task(run())
    try:
        while (item := await queue.get()) is not _END:
            yield item
        if outcome:
            raise outcome[0]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
