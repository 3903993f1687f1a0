"""etcd's auth store as a deterministic core: users, roles, permissions, enable/disable, auth revision.

It mirrors etcd's server/auth/store.go (3.5): the same checks in the same
order, the same errors, and the same auth revision, which every change to
users, roles or permissions raises by one. Passwords arrive here already
hashed (bcrypt, by the proposing member): nothing here hashes, reads a clock
or draws a random number, so every member applying the same journal holds
the same auth state. Tokens are not state: simple tokens live in each
member's memory as in etcd (see kvstore.auth.tokens).

`to_state()`/`from_state()` give the whole store as plain msgpack-able
values, like the lease table, so a storage backend can persist it as one blob.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from kvstore import errors
from kvstore.auth.permcache import READ, WRITE, UnifiedPermissions
from kvstore.errors import fail
from proto.etcdserverpb import rpc_pb2 as pb

ROOT_USER = "root"
ROOT_ROLE = "root"
STATE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class AuthInfo:
    """Who a request runs as: the user and the auth revision its credentials were checked at."""

    username: str = ""
    revision: int = 0


NO_AUTH_INFO = AuthInfo()


@dataclass(slots=True)
class User:
    name: str
    password_hash: bytes  # bcrypt; b"" for a user added with no_password
    roles: list[str] = field(default_factory=list)  # sorted
    no_password: bool = False


@dataclass(slots=True)
class Role:
    name: str
    perms: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (type, key, range_end), sorted by key


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The applied outcome of an Authenticate entry."""

    username: str
    revision: int
    token: str  # the simple token, "" when tokens are JWTs (signed by the proposer)


@dataclass(frozen=True, slots=True)
class StaleCheck:
    """The auth store changed after the proposer checked the password: check again (as etcd retries)."""


class AuthStore:
    def __init__(self) -> None:
        self.enabled = False
        self.revision = 1  # etcd commits revision 1 when it creates the auth store
        self.users: dict[str, User] = {}
        self.roles: dict[str, Role] = {}
        self._perms: dict[str, UnifiedPermissions] = {}

    # ------------------------------------------------------------ checks

    def _refresh(self) -> None:
        """etcd's refreshRangePermCache: rebuilt for every user after each change."""
        self._perms = {}
        for name, user in self.users.items():
            merged: list[tuple[int, bytes, bytes]] = []
            for role_name in user.roles:
                role = self.roles.get(role_name)
                if role is not None:
                    merged.extend(role.perms)
            self._perms[name] = UnifiedPermissions.merge(merged)

    def _commit(self) -> None:
        self.revision += 1
        self._refresh()

    def has_root_role(self, user: User) -> bool:
        return ROOT_ROLE in user.roles

    def _op_permitted(self, info: AuthInfo | None, key: bytes, range_end: bytes, perm_type: int) -> None:
        if not self.enabled:
            return
        info = info or NO_AUTH_INFO
        if info.revision == 0:
            raise fail(errors.USER_EMPTY)
        if info.revision < self.revision:
            raise fail(errors.AUTH_OLD_REVISION)
        user = self.users.get(info.username)
        if user is None:
            raise fail(errors.PERMISSION_DENIED)
        if self.has_root_role(user):
            return
        perms = self._perms.get(info.username)
        if perms is not None and perms.permits(key, range_end, perm_type):
            return
        raise fail(errors.PERMISSION_DENIED)

    def check_range(self, info: AuthInfo | None, key: bytes, range_end: bytes) -> None:
        self._op_permitted(info, key, range_end, READ)

    def check_put(self, info: AuthInfo | None, key: bytes) -> None:
        self._op_permitted(info, key, b"", WRITE)

    def check_delete_range(self, info: AuthInfo | None, key: bytes, range_end: bytes) -> None:
        self._op_permitted(info, key, range_end, WRITE)

    def check_admin(self, info: AuthInfo | None) -> None:
        """etcd's IsAdminPermitted."""
        if not self.enabled:
            return
        if info is None or not info.username:
            raise fail(errors.USER_EMPTY)
        user = self.users.get(info.username)
        if user is None:
            raise fail(errors.USER_NOT_FOUND)
        if not self.has_root_role(user):
            raise fail(errors.PERMISSION_DENIED)

    def check_txn(self, info: AuthInfo | None, req: Any) -> None:
        """etcd's CheckTxnAuth: compares, then both branches, whichever runs. Nested txns are checked
        the same way (both of their branches), so no branch that can run escapes the check."""
        if not self.enabled:
            return
        for c in req.compare:
            self.check_range(info, c.key, c.range_end)
        for ops in (req.success, req.failure):
            for op in ops:
                kind = op.WhichOneof("request")
                if kind == "request_range":
                    self.check_range(info, op.request_range.key, op.request_range.range_end)
                elif kind == "request_put":
                    self.check_put(info, op.request_put.key)
                elif kind == "request_delete_range":
                    d = op.request_delete_range
                    if d.prev_kv:
                        self.check_range(info, d.key, d.range_end)
                    self.check_delete_range(info, d.key, d.range_end)
                elif kind == "request_txn":
                    self.check_txn(info, op.request_txn)

    def check_lease_keys(self, info: AuthInfo | None, keys: list[bytes]) -> None:
        """etcd's checkLeasePuts: a lease is the user's to revoke or reuse only if it may write all its keys."""
        for key in keys:
            self.check_put(info, key)

    def has_role(self, username: str, role: str) -> bool:
        user = self.users.get(username)
        return user is not None and role in user.roles

    # ------------------------------------------------------- password check

    def password_hash(self, name: str) -> tuple[bytes, int]:
        """What the proposer needs to check a password (etcd's CheckPassword before the bcrypt compare)."""
        if not self.enabled:
            raise fail(errors.AUTH_NOT_ENABLED)
        user = self.users.get(name)
        if user is None or user.no_password:
            raise fail(errors.AUTH_FAILED)
        return user.password_hash, self.revision

    # ------------------------------------------------------------- applying

    def authenticate(self, name: str, token_prefix: str, checked_revision: int, position: int) -> Any:
        if not self.enabled:
            raise fail(errors.AUTH_NOT_ENABLED)
        user = self.users.get(name)
        if user is None or user.no_password:
            raise fail(errors.AUTH_FAILED)
        if checked_revision != self.revision:
            return StaleCheck()
        token = f"{token_prefix}.{position}" if token_prefix else ""
        return Authenticated(name, self.revision, token)

    def apply(self, method: str, req: Any, info: AuthInfo | None) -> Any:
        """Apply one auth management request (etcd's authApplierV3 + authStore); returns its response."""
        if method in _ADMIN_ONLY:
            self.check_admin(info)
        handler = getattr(self, "_" + method)
        resp: Any = handler(req, info)
        return resp

    def _AuthEnable(self, req: Any, info: AuthInfo | None) -> Any:
        if not self.enabled:
            root = self.users.get(ROOT_USER)
            if root is None:
                raise fail(errors.ROOT_USER_NOT_EXIST)
            if not self.has_root_role(root):
                raise fail(errors.ROOT_ROLE_NOT_EXIST)
            self.enabled = True
            self._refresh()
        return pb.AuthEnableResponse()

    def _AuthDisable(self, req: Any, info: AuthInfo | None) -> Any:
        if self.enabled:
            self.enabled = False
            self.revision += 1  # etcd commits a revision on disable (not on enable)
        return pb.AuthDisableResponse()

    def _UserAdd(self, req: Any, info: AuthInfo | None) -> Any:
        if not req.name:
            raise fail(errors.USER_EMPTY)
        if req.name in self.users:
            raise fail(errors.USER_ALREADY_EXIST)
        no_password = req.options.no_password
        hashed = b"" if no_password else req.hashedPassword.encode()
        self.users[req.name] = User(req.name, hashed, [], no_password)
        self._commit()
        return pb.AuthUserAddResponse()

    def _UserDelete(self, req: Any, info: AuthInfo | None) -> Any:
        if self.enabled and req.name == ROOT_USER:
            raise fail(errors.INVALID_AUTH_MGMT)
        if req.name not in self.users:
            raise fail(errors.USER_NOT_FOUND)
        del self.users[req.name]
        self._commit()
        return pb.AuthUserDeleteResponse()

    def _UserChangePassword(self, req: Any, info: AuthInfo | None) -> Any:
        user = self.users.get(req.name)
        if user is None:
            raise fail(errors.USER_NOT_FOUND)
        user.password_hash = b"" if user.no_password else req.hashedPassword.encode()
        self._commit()
        return pb.AuthUserChangePasswordResponse()

    def _UserGrantRole(self, req: Any, info: AuthInfo | None) -> Any:
        user = self.users.get(req.user)
        if user is None:
            raise fail(errors.USER_NOT_FOUND)
        if req.role != ROOT_ROLE and req.role not in self.roles:
            raise fail(errors.ROLE_NOT_FOUND)
        i = bisect.bisect_left(user.roles, req.role)
        if i < len(user.roles) and user.roles[i] == req.role:
            return pb.AuthUserGrantRoleResponse()  # already granted: no change, no new revision
        user.roles.insert(i, req.role)
        self._commit()
        return pb.AuthUserGrantRoleResponse()

    def _UserGet(self, req: Any, info: AuthInfo | None) -> Any:
        # etcd lets a user read itself without the root role.
        if not (info is not None and info.username == req.name and self.enabled):
            self.check_admin(info)
        user = self.users.get(req.name)
        if user is None:
            raise fail(errors.USER_NOT_FOUND)
        return pb.AuthUserGetResponse(roles=list(user.roles))

    def _UserList(self, req: Any, info: AuthInfo | None) -> Any:
        return pb.AuthUserListResponse(users=sorted(self.users, key=str.encode))

    def _UserRevokeRole(self, req: Any, info: AuthInfo | None) -> Any:
        if self.enabled and req.name == ROOT_USER and req.role == ROOT_ROLE:
            raise fail(errors.INVALID_AUTH_MGMT)
        user = self.users.get(req.name)
        if user is None:
            raise fail(errors.USER_NOT_FOUND)
        if req.role not in user.roles:
            raise fail(errors.ROLE_NOT_GRANTED)
        user.roles.remove(req.role)
        self._commit()
        return pb.AuthUserRevokeRoleResponse()

    def _RoleAdd(self, req: Any, info: AuthInfo | None) -> Any:
        if not req.name:
            raise fail(errors.ROLE_EMPTY)
        if req.name in self.roles:
            raise fail(errors.ROLE_ALREADY_EXIST)
        self.roles[req.name] = Role(req.name)
        self._commit()
        return pb.AuthRoleAddResponse()

    def _RoleGet(self, req: Any, info: AuthInfo | None) -> Any:
        # etcd lets a user read the roles it has without the root role.
        if not (info is not None and self.enabled and self.has_role(info.username, req.role)):
            self.check_admin(info)
        role = self.roles.get(req.role)
        if role is None:
            raise fail(errors.ROLE_NOT_FOUND)
        resp = pb.AuthRoleGetResponse()
        for perm_type, key, range_end in role.perms:
            resp.perm.add(permType=perm_type, key=key, range_end=range_end)
        return resp

    def _RoleList(self, req: Any, info: AuthInfo | None) -> Any:
        return pb.AuthRoleListResponse(roles=sorted(self.roles, key=str.encode))

    def _RoleDelete(self, req: Any, info: AuthInfo | None) -> Any:
        if self.enabled and req.role == ROOT_ROLE:
            raise fail(errors.INVALID_AUTH_MGMT)
        if req.role not in self.roles:
            raise fail(errors.ROLE_NOT_FOUND)
        del self.roles[req.role]
        for user in self.users.values():
            if req.role in user.roles:
                user.roles.remove(req.role)
        self._commit()
        return pb.AuthRoleDeleteResponse()

    def _RoleGrantPermission(self, req: Any, info: AuthInfo | None) -> Any:
        if not req.HasField("perm"):
            raise fail(errors.PERMISSION_NOT_GIVEN)
        perm = req.perm
        # etcd 3.5.1 takes any range here, inverted or empty ones included (later versions check them
        # with isValidPermissionRange, kept in permcache): they then permit nothing, or what etcd's
        # interval tree makes of them, which permcache reproduces.
        role = self.roles.get(req.name)
        if role is None:
            raise fail(errors.ROLE_NOT_FOUND)
        keys = [k for _, k, _ in role.perms]
        i = bisect.bisect_left(keys, perm.key)
        if i < len(role.perms) and role.perms[i][1] == perm.key and role.perms[i][2] == perm.range_end:
            role.perms[i] = (perm.permType, perm.key, perm.range_end)
        else:
            role.perms.append((perm.permType, perm.key, perm.range_end))
            role.perms.sort(key=lambda p: p[1])  # stable, as Go's sort for the few permissions of a role
        self._commit()
        return pb.AuthRoleGrantPermissionResponse()

    def _RoleRevokePermission(self, req: Any, info: AuthInfo | None) -> Any:
        role = self.roles.get(req.role)
        if role is None:
            raise fail(errors.ROLE_NOT_FOUND)
        kept = [p for p in role.perms if not (p[1] == req.key and p[2] == req.range_end)]
        if len(kept) == len(role.perms):
            raise fail(errors.PERMISSION_NOT_GRANTED)
        role.perms = kept
        self._commit()
        return pb.AuthRoleRevokePermissionResponse()

    # ---------------------------------------------------------- persistence

    def to_state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "enabled": self.enabled,
            "revision": self.revision,
            "users": [[u.name, u.password_hash, list(u.roles), u.no_password] for u in self.users.values()],
            "roles": [[r.name, [list(p) for p in r.perms]] for r in self.roles.values()],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> AuthStore:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown auth state format {state.get('format')!r}")
        store = cls()
        store.enabled = bool(state["enabled"])
        store.revision = int(state["revision"])
        for name, password_hash, roles, no_password in state["users"]:
            store.users[name] = User(name, bytes(password_hash), list(roles), bool(no_password))
        for name, perms in state["roles"]:
            store.roles[name] = Role(name, [(int(t), bytes(k), bytes(e)) for t, k, e in perms])
        store._refresh()
        return store


# etcd's needAdminPermission (UserGet and RoleGet check for themselves: a user may read itself and its roles).
_ADMIN_ONLY = frozenset(
    {
        "AuthEnable",
        "AuthDisable",
        "UserAdd",
        "UserDelete",
        "UserChangePassword",
        "UserGrantRole",
        "UserRevokeRole",
        "UserList",
        "RoleAdd",
        "RoleGrantPermission",
        "RoleRevokePermission",
        "RoleDelete",
        "RoleList",
    }
)

# Auth management requests that go through the journal, by gRPC method name.
REQUEST_TYPES: dict[str, Any] = {
    "AuthEnable": pb.AuthEnableRequest,
    "AuthDisable": pb.AuthDisableRequest,
    "UserAdd": pb.AuthUserAddRequest,
    "UserDelete": pb.AuthUserDeleteRequest,
    "UserChangePassword": pb.AuthUserChangePasswordRequest,
    "UserGrantRole": pb.AuthUserGrantRoleRequest,
    "UserGet": pb.AuthUserGetRequest,
    "UserList": pb.AuthUserListRequest,
    "UserRevokeRole": pb.AuthUserRevokeRoleRequest,
    "RoleAdd": pb.AuthRoleAddRequest,
    "RoleGet": pb.AuthRoleGetRequest,
    "RoleList": pb.AuthRoleListRequest,
    "RoleDelete": pb.AuthRoleDeleteRequest,
    "RoleGrantPermission": pb.AuthRoleGrantPermissionRequest,
    "RoleRevokePermission": pb.AuthRoleRevokePermissionRequest,
}
