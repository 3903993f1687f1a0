"""What every servicer shares: etcd's errors as gRPC statuses, and full response headers."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from kvstore.auth.store import AuthInfo
from kvstore.errors import EtcdError
from kvstore.member import Member
from kvstore.statemachine import Kind

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def unary(handler: F) -> F:
    """Turn EtcdError into the gRPC status etcd sends."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except EtcdError as err:
            await context.abort(err.code, err.message)

    return wrapper  # type: ignore[return-value]


async def proposed(member: Member, kind: Kind, request: Any, auth: AuthInfo | None = None) -> Any:
    """Propose a request through the journal; answer with its applied result and a full header."""
    resp = await member.propose(kind, request, auth)
    fill(member, resp.header)
    return resp


def fill(member: Member, header: Any, *, with_revision: bool = True) -> None:
    """Complete a header the state machine left with only its revision."""
    header.cluster_id = member.cluster_id
    header.member_id = member.member_id
    header.raft_term = member.raft_term
    if with_revision and not header.revision:
        header.revision = member.store.revision
