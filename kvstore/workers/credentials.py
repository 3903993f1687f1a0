"""Who a call answered in a front end runs as: the member's rule, in another process.

The member's Authenticator (kvstore/v3rpc/auth.py, etcd's AuthInfoFromCtx) names the user of a
call from its token, else from its verified client certificate. A front end does the same: a
JWT is verified with the public key (--auth-token jwt); a simple token is looked up in the
front end's mirror of the member's tokens (kvstore/auth/tokens.py MirroredTokens, fed over the
notification channel); and the front end terminated the connection's TLS itself, so it knows
the certificate's common name. The reads, writes and watches it answers take their credentials
from here; a call with a token the mirror does not hold (yet) goes to the member, which answers
it as it would any call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvstore import errors
from kvstore.auth.store import AuthInfo
from kvstore.auth.tokens import JWTTokens, MirroredTokens
from kvstore.errors import fail
from kvstore.transport.cmux import PeerIdentities
from kvstore.v3rpc.auth import token_of


class FrontEndCredentials:
    """Who a call a front end answers runs as, as the member's Authenticator names it
    (kvstore/v3rpc/auth.py): a token's user, or without one, with --client-cert-auth, the common
    name of the connection's verified client certificate at the auth revision `auth_revision()`
    reads; otherwise no one. A JWT is checked here (--auth-token jwt: the public key verifies it
    in any process), a simple token in the mirror of the member's tokens, at the mirror's auth
    revision (the member's own when it last told the mirror); a call with a simple token the
    mirror does not hold is the member's to answer (`answers_here`)."""

    def __init__(
        self,
        identities: PeerIdentities | None,
        auth_revision: Callable[[], int],
        jwt: JWTTokens | None = None,
        tokens: MirroredTokens | None = None,
    ) -> None:
        """identities: the front end's own (it terminates TLS); None without --client-cert-auth.
        tokens: the mirror of the member's simple tokens (unused with a jwt)."""
        self.identities = identities
        self.auth_revision = auth_revision
        self.jwt = jwt
        self.tokens = tokens if jwt is None else None

    def answers_here(self, context: Any) -> bool:
        if self.jwt is not None:
            return True
        token = token_of(context)
        return token is None or (self.tokens is not None and self.tokens.user(token) is not None)

    def info(self, context: Any) -> AuthInfo | None:
        token = token_of(context)
        if token is not None:
            if self.jwt is not None:
                claims = self.jwt.info(token)
                if claims is None:
                    raise fail(errors.INVALID_AUTH_TOKEN)
                return AuthInfo(*claims)
            # Held when the call was taken (answers_here); gone since: revoked or expired.
            if self.tokens is None or (username := self.tokens.user(token)) is None:
                raise fail(errors.INVALID_AUTH_TOKEN)
            return AuthInfo(username, self.tokens.revision)
        if self.identities is None:
            return None
        name = self.identities.common_name(context.peer())
        return AuthInfo(name, self.auth_revision()) if name else None
