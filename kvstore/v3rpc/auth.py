"""Who a request runs as, and etcd's Auth service.

`Authenticator.info(context)` is etcd's AuthInfoFromCtx: a token in the
`token` (or `authorization`) metadata names the user, an unknown or expired
one is "invalid auth token"; without a token, the common name of a verified
client certificate is the user when --client-cert-auth is on. The Auth
service proposes every change through the journal; passwords are hashed here,
in the proposer (bcrypt, etcd's cost 10), so apply never hashes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import bcrypt
import msgpack

from kvstore import errors
from kvstore.auth.store import Authenticated, AuthInfo, StaleCheck
from kvstore.auth.tokens import new_simple_token_prefix
from kvstore.errors import fail
from kvstore.member import Member
from kvstore.statemachine import Kind
from kvstore.transport.cmux import PeerIdentities
from kvstore.v3rpc.common import fill, unary
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc

log = logging.getLogger(__name__)

BCRYPT_COST = 10  # etcd's default bcrypt cost
BCRYPT_PASSWORD_BYTES_MAX = 72  # bcrypt reads no further; etcd 3.5's Go bcrypt ignored the rest too
TOKEN_METADATA_KEYS = ("token", "authorization")  # etcd: TokenFieldNameGRPC, TokenFieldNameSwagger
AUTHENTICATE_ATTEMPTS_MAX = 16  # the password is checked again while auth changes under it


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode()[:BCRYPT_PASSWORD_BYTES_MAX], bcrypt.gensalt(BCRYPT_COST)).decode()


def password_matches(password: str, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password.encode()[:BCRYPT_PASSWORD_BYTES_MAX], hashed)
    except ValueError:  # not a bcrypt hash
        return False


def token_of(context: Any) -> str | None:
    """The call's auth token (etcd's TokenFieldNameGRPC or TokenFieldNameSwagger metadata), if any."""
    for key, value in context.invocation_metadata() or ():
        if key in TOKEN_METADATA_KEYS:
            return str(value)
    return None


class Authenticator:
    def __init__(self, member: Member, identities: PeerIdentities | None, client_cert_auth: bool) -> None:
        self.m = member
        self.identities = identities
        self.client_cert_auth = client_cert_auth

    def info(self, context: Any) -> AuthInfo | None:
        """etcd's AuthInfoFromCtx; raises "invalid auth token" for a token that names nobody."""
        token = token_of(context)
        auth = self.m.sm.auth
        if token is not None:
            if self.m.jwt is not None:
                claims = self.m.jwt.info(token)
                if claims is None:
                    raise fail(errors.INVALID_AUTH_TOKEN)
                return AuthInfo(claims[0], claims[1])
            username = self.m.auth_tokens.username(token)
            if username is None:
                raise fail(errors.INVALID_AUTH_TOKEN)  # the token itself is never logged
            return AuthInfo(username, auth.revision)
        if self.client_cert_auth and self.identities is not None:
            common_name = self.identities.common_name_of(context)
            if common_name:
                return AuthInfo(common_name, auth.revision)
        return None


class Auth(rpc.AuthServicer):
    def __init__(self, member: Member, authn: Authenticator) -> None:
        self.m = member
        self.authn = authn

    def _fill(self, resp: Any) -> Any:
        fill(self.m, resp.header)
        return resp

    async def _propose(self, method: str, request: Any, context: Any) -> Any:
        info = self.authn.info(context)
        payload = msgpack.packb([method, request.SerializeToString()], use_bin_type=True)
        return self._fill(await self.m.propose_payload(Kind.AUTH, payload, info))

    @unary
    async def AuthStatus(self, request: Any, context: Any) -> Any:
        # etcd 3.7 answers AuthStatus to any client, authenticated or not (3.5 and 3.6 wanted an admin), so a
        # client that mints its own JWTs can learn the auth revision; a token that is sent is still checked.
        self.authn.info(context)
        await self.m.linearizable_barrier()
        auth = self.m.sm.auth
        return self._fill(pb.AuthStatusResponse(enabled=auth.enabled, authRevision=auth.revision))

    @unary
    async def Authenticate(self, request: Any, context: Any) -> Any:
        await self.m.linearizable_barrier()
        for _ in range(AUTHENTICATE_ATTEMPTS_MAX):
            hashed, checked_revision = self.m.sm.auth.password_hash(request.name)
            if not await asyncio.to_thread(password_matches, request.password, hashed):
                log.info("authentication failed: invalid password for user %r", request.name)
                raise fail(errors.AUTH_FAILED)
            prefix = "" if self.m.jwt is not None else new_simple_token_prefix()
            payload = msgpack.packb([request.name, prefix, checked_revision], use_bin_type=True)
            result = await self.m.propose_payload(Kind.AUTHENTICATE, payload)
            if isinstance(result, StaleCheck):
                continue  # users or roles changed after the check: check again, as etcd does
            assert isinstance(result, Authenticated)
            token = result.token
            if self.m.jwt is not None:
                token = self.m.jwt.assign(result.username, result.revision)
            return self._fill(pb.AuthenticateResponse(token=token))
        raise fail(errors.AUTH_OLD_REVISION)

    async def _with_hashed_password(self, method: str, request: Any, context: Any, no_password: bool) -> Any:
        req = type(request)()
        req.CopyFrom(request)
        if not no_password:
            req.hashedPassword = await asyncio.to_thread(hash_password, req.password)
        req.password = ""  # never in the journal
        return await self._propose(method, req, context)

    @unary
    async def UserAdd(self, request: Any, context: Any) -> Any:
        return await self._with_hashed_password("UserAdd", request, context, request.options.no_password)

    @unary
    async def UserChangePassword(self, request: Any, context: Any) -> Any:
        return await self._with_hashed_password("UserChangePassword", request, context, False)


def _passthrough(method: str) -> Any:
    async def handler(self: Auth, request: Any, context: Any) -> Any:
        return await self._propose(method, request, context)

    handler.__name__ = method
    return unary(handler)


for _method in (
    "AuthEnable", "AuthDisable", "UserGet", "UserList", "UserDelete", "UserGrantRole", "UserRevokeRole",
    "RoleAdd", "RoleGet", "RoleList", "RoleDelete", "RoleGrantPermission", "RoleRevokePermission",
):  # fmt: skip
    setattr(Auth, _method, _passthrough(_method))
