"""Who a call answered in a front end runs as: the member's rule, in another process.

The member's Authenticator (kvstore/v3rpc/auth.py, etcd's AuthInfoFromCtx) names the user of a
call from its token, else from its verified client certificate. A front end can do the same for
everything but simple tokens, which live in the member's process: a JWT is verified with the
public key (--auth-token jwt), and the front end terminated the connection's TLS itself, so it
knows the certificate's common name. The reads, writes and watches it answers take their
credentials from here; a call it cannot name (a simple token) goes to the member.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvstore import errors
from kvstore.auth.store import AuthInfo
from kvstore.auth.tokens import JWTTokens
from kvstore.errors import fail
from kvstore.transport.cmux import PeerIdentities
from kvstore.v3rpc.auth import token_of


class FrontEndCredentials:
    """Who a call a front end answers runs as, as the member's Authenticator names it
    (kvstore/v3rpc/auth.py): a token's user, or without one, with --client-cert-auth, the common
    name of the connection's verified client certificate at the auth revision `auth_revision()`
    reads; otherwise no one. Only JWTs can be checked here (--auth-token jwt: the public key
    verifies them in any process); simple tokens live in the member's process, which answers
    the calls that carry one (`answers_here`)."""

    def __init__(
        self, identities: PeerIdentities | None, auth_revision: Callable[[], int], jwt: JWTTokens | None = None
    ) -> None:
        """identities: the front end's own (it terminates TLS); None without --client-cert-auth."""
        self.identities = identities
        self.auth_revision = auth_revision
        self.jwt = jwt

    def answers_here(self, context: Any) -> bool:
        return self.jwt is not None or token_of(context) is None

    def info(self, context: Any) -> AuthInfo | None:
        if self.jwt is None and self.identities is None:
            return None  # the common case, on every read: no credentials a front end could check
        token = token_of(context)
        if token is not None:
            assert self.jwt is not None, "a simple token's call is the member's"
            claims = self.jwt.info(token)
            if claims is None:
                raise fail(errors.INVALID_AUTH_TOKEN)
            return AuthInfo(*claims)
        if self.identities is None:
            return None
        name = self.identities.common_name(context.peer())
        return AuthInfo(name, self.auth_revision()) if name else None
