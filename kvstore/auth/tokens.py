"""etcd's auth token providers: simple tokens and JWT (--auth-token, --auth-token-ttl).

Simple tokens are not replicated state in etcd either: every member learns a
token when it applies the Authenticate entry that issued it, keeps it in
memory, and forgets it after --auth-token-ttl seconds without use (each use
restarts the TTL), when its user is deleted or changes password, when auth is
disabled, and on restart. That bookkeeping reads the member's clock, so it
lives here, outside the state machine. JWTs carry the user and the auth
revision, signed with the configured key; any member holding the public key
verifies them.

Tokens are secrets: nothing here logs one.
"""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SIMPLE_TOKEN_PREFIX_CHARS = 16  # etcd's defaultSimpleTokenLength
AUTH_TOKEN_TTL_S_DEFAULT = 300  # etcd's --auth-token-ttl
JWT_TTL_S_DEFAULT = 300  # etcd's jwt ttl option default (5m)
JWT_SIGN_METHODS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_LETTERS = string.ascii_letters


class TokenConfigError(ValueError):
    pass


def new_simple_token_prefix() -> str:
    """etcd's genTokenPrefix: 16 random letters (the proposer draws them, never apply)."""
    return "".join(secrets.choice(_LETTERS) for _ in range(SIMPLE_TOKEN_PREFIX_CHARS))


# What SimpleTokens tells its listeners (the front ends of --workers mirror the member's tokens):
TOKEN_REGISTERED = 0  # (TOKEN_REGISTERED, token, username)
TOKENS_REMOVED = 1  # (TOKENS_REMOVED, [token, ...]): expired, or revoked with their user or auth
TokenChange = tuple[int, Any] | tuple[int, Any, Any]


class SimpleTokens:
    def __init__(self, ttl_s: float = AUTH_TOKEN_TTL_S_DEFAULT, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (user, deadline)
        self.listeners: list[Callable[[TokenChange], None]] = []

    def register(self, token: str, username: str) -> None:
        self.expire()
        self._tokens[token] = (username, self._clock() + self.ttl_s)
        self._tell((TOKEN_REGISTERED, token, username))

    def username(self, token: str) -> str | None:
        """The token's user, restarting its TTL; None when it is unknown or expired."""
        entry = self._tokens.get(token)
        now = self._clock()
        if entry is None:
            return None
        if entry[1] <= now:
            self._remove([token])
            return None
        self._tokens[token] = (entry[0], now + self.ttl_s)
        return entry[0]

    def table(self) -> dict[str, str]:
        """Every token not expired, and its user."""
        now = self._clock()
        return {t: user for t, (user, deadline) in self._tokens.items() if deadline > now}

    def invalidate_user(self, username: str) -> None:
        self._remove([t for t, (u, _) in self._tokens.items() if u == username])

    def clear(self) -> None:
        self._remove(list(self._tokens))

    def __len__(self) -> int:
        return len(self._tokens)

    def expire(self) -> None:
        """Forget the tokens whose TTL ran out (etcd's TTL keeper does it every second)."""
        now = self._clock()
        self._remove([t for t, (_, deadline) in self._tokens.items() if deadline <= now])

    def _remove(self, tokens: list[str]) -> None:
        if not tokens:
            return
        for token in tokens:
            del self._tokens[token]
        self._tell((TOKENS_REMOVED, tokens))

    def _tell(self, change: TokenChange) -> None:
        for listener in self.listeners:
            listener(change)


class JWTTokens:
    def __init__(self, sign_method: str, public_key: bytes, private_key: bytes | None, ttl_s: float) -> None:
        import jwt

        self._jwt = jwt
        self.sign_method = sign_method
        self.public_key = public_key
        self.private_key = private_key
        self.ttl_s = ttl_s

    def assign(self, username: str, revision: int) -> str:
        if self.private_key is None:
            raise TokenConfigError("jwt: no private key given (priv-key): this member only verifies tokens")
        claims = {"username": username, "revision": revision, "exp": int(time.time() + self.ttl_s)}
        token: str = self._jwt.encode(claims, self.private_key, algorithm=self.sign_method)
        return token

    def info(self, token: str) -> tuple[str, int] | None:
        try:
            claims: dict[str, Any] = self._jwt.decode(token, self.public_key, algorithms=[self.sign_method])
        except Exception:  # any malformed, forged or expired token is simply invalid
            return None
        username, revision = claims.get("username"), claims.get("revision")
        if not isinstance(username, str) or not isinstance(revision, int | float):
            return None
        return username, int(revision)


@dataclass(frozen=True, slots=True)
class TokenOptions:
    kind: str  # "simple" | "jwt"
    jwt: JWTTokens | None = None


def parse_auth_token(text: str, parse_duration_s: Callable[[str], float]) -> TokenOptions:
    """--auth-token: "simple", or "jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256[,ttl=5m]" as etcd
    (parse_duration_s reads a Go duration such as 5m)."""
    kind, _, rest = text.partition(",")
    kind = kind.strip()
    if kind == "simple":
        return TokenOptions("simple")
    if kind != "jwt":
        raise TokenConfigError(f"unknown token type: {kind!r}")
    opts: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise TokenConfigError(f"jwt: option {key!r} needs a value")
        opts[key] = value
    for key in opts:
        if key not in ("pub-key", "priv-key", "sign-method", "ttl"):
            raise TokenConfigError(f"jwt: unknown option {key!r}")
    method = opts.get("sign-method", "")
    if method not in JWT_SIGN_METHODS:
        raise TokenConfigError(f"jwt: invalid or missing sign-method {method!r}")
    if "pub-key" not in opts:
        raise TokenConfigError("jwt: pub-key is required")
    with open(opts["pub-key"], "rb") as f:
        public_key = f.read()
    private_key = None
    if "priv-key" in opts:
        with open(opts["priv-key"], "rb") as f:
            private_key = f.read()
    ttl_s = parse_duration_s(opts["ttl"]) if "ttl" in opts else JWT_TTL_S_DEFAULT
    return TokenOptions("jwt", JWTTokens(method, public_key, private_key, ttl_s))


class MirroredTokens:
    """A front end's copy of its member's simple tokens (--workers: kvstore/workers/notify.py feeds
    it). The member's process decides which tokens exist: it registers them when it applies an
    Authenticate, revokes them with their user or auth, and expires them; each change reaches the
    front ends before the APPLIED notification of the batch that made it. The uses a front end
    answers are reported back (`take_touched`), so each use restarts the token's TTL in the
    member, as a use in etcd restarts it."""

    def __init__(self) -> None:
        self.revision = 0  # the auth revision the table is as of: the member's own at that point
        self._users: dict[str, str] = {}
        self._touched: set[str] = set()

    def reset(self, revision: int, table: dict[str, str]) -> None:
        self.revision = revision
        self._users = dict(table)
        self._touched.clear()

    def change(self, revision: int, changes: list[Any]) -> None:
        self.revision = revision
        for change in changes:
            if change[0] == TOKEN_REGISTERED:
                self._users[change[1]] = change[2]
            else:
                for token in change[1]:
                    self._users.pop(token, None)
                    self._touched.discard(token)

    def user(self, token: str) -> str | None:
        """The token's user (a use: it is touched), or None when the member has not told of it."""
        username = self._users.get(token)
        if username is not None:
            self._touched.add(token)
        return username

    def take_touched(self) -> list[str]:
        touched, self._touched = list(self._touched), set()
        return touched

    def __len__(self) -> int:
        return len(self._users)
