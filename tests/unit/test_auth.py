"""The auth core: permission cache semantics, store operations and revisions, persistence, and auth
checks where the state machine applies entries."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from kvstore import errors
from kvstore.auth.permcache import READ, READWRITE, WRITE, UnifiedPermissions, valid_permission_range
from kvstore.auth.store import Authenticated, AuthInfo, AuthStore, StaleCheck
from kvstore.auth.tokens import (
    TOKEN_REGISTERED,
    MirroredTokens,
    SimpleTokens,
    new_simple_token_prefix,
    parse_auth_token,
)
from kvstore.errors import EtcdError
from kvstore.statemachine import Kind, StateMachine, encode_entry
from proto.authpb import auth_pb2 as authpb
from proto.etcdserverpb import rpc_pb2 as pb


def perms(*items: tuple[int, bytes, bytes]) -> UnifiedPermissions:
    return UnifiedPermissions.merge(list(items))


def test_permission_intervals() -> None:
    p = perms((READ, b"/a/", b"/a0"), (WRITE, b"k", b""), (READWRITE, b"/f", b"\0"))
    assert p.permits(b"/a/x", b"", READ)
    assert not p.permits(b"/a/x", b"", WRITE)
    assert p.permits(b"/a/", b"/a0", READ)
    assert p.permits(b"/a/b", b"/a/c", READ)
    assert not p.permits(b"/a/", b"/b", READ)  # past the permitted end
    assert p.permits(b"k", b"", WRITE) and not p.permits(b"/e", b"", WRITE)
    assert not perms((WRITE, b"k", b"")).permits(b"k\0", b"", WRITE)  # a single key is just that key
    assert p.permits(b"/f", b"\0", WRITE)  # from key, open-ended
    assert p.permits(b"/zzz", b"", READ)
    assert not p.permits(b"/e", b"\0", READ)


def test_adjacent_permissions_cover_a_range_together() -> None:
    p = perms((READ, b"a", b"c"), (READ, b"c", b"e"))
    assert p.permits(b"a", b"e", READ)
    q = perms((READ, b"a", b"c"), (READ, b"d", b"e"))
    assert not q.permits(b"a", b"e", READ)  # a gap at [c, d)


def test_valid_permission_range() -> None:
    assert valid_permission_range(b"a", b"")
    assert valid_permission_range(b"a", b"b")
    assert valid_permission_range(b"a", b"\0")
    assert not valid_permission_range(b"b", b"a")
    assert not valid_permission_range(b"", b"")


def apply(store: AuthStore, method: str, req: object, info: AuthInfo | None = None) -> object:
    return store.apply(method, req, info)


def test_store_operations_and_revision() -> None:
    s = AuthStore()
    assert (s.enabled, s.revision) == (False, 1)
    with pytest.raises(EtcdError) as e:
        apply(s, "AuthEnable", pb.AuthEnableRequest())
    assert (e.value.code, e.value.message) == errors.ROOT_USER_NOT_EXIST
    apply(s, "UserAdd", pb.AuthUserAddRequest(name="root", hashedPassword="$2b$hash"))
    with pytest.raises(EtcdError) as e:
        apply(s, "AuthEnable", pb.AuthEnableRequest())
    assert e.value.message == errors.ROOT_ROLE_NOT_EXIST[1]
    apply(s, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="root", role="root"))  # root role need not exist
    rev = s.revision
    apply(s, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="root", role="root"))
    assert s.revision == rev  # granted already: no new revision
    apply(s, "RoleAdd", pb.AuthRoleAddRequest(name="r"))
    perm = authpb.Permission(permType=authpb.Permission.READ, key=b"/a/", range_end=b"/a0")
    apply(s, "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(name="r", perm=perm))
    apply(s, "UserAdd", pb.AuthUserAddRequest(name="alice", hashedPassword="h"))
    apply(s, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="alice", role="r"))
    apply(s, "AuthEnable", pb.AuthEnableRequest())
    root, alice = AuthInfo("root", s.revision), AuthInfo("alice", s.revision)
    s.check_range(alice, b"/a/1", b"")
    with pytest.raises(EtcdError, match="permission denied"):
        s.check_put(alice, b"/a/1")
    with pytest.raises(EtcdError, match="user name is empty"):
        s.check_range(None, b"/a/1", b"")
    with pytest.raises(EtcdError, match="permission denied"):
        apply(s, "UserList", pb.AuthUserListRequest(), alice)
    assert list(apply(s, "UserGet", pb.AuthUserGetRequest(name="alice"), alice).roles) == ["r"]  # itself
    assert len(apply(s, "RoleGet", pb.AuthRoleGetRequest(role="r"), alice).perm) == 1  # its own role
    with pytest.raises(EtcdError, match="invalid auth management"):
        apply(s, "UserDelete", pb.AuthUserDeleteRequest(name="root"), root)
    apply(s, "RoleAdd", pb.AuthRoleAddRequest(name="other"), root)
    with pytest.raises(EtcdError, match="revision in header is old"):
        s.check_range(alice, b"/a/1", b"")  # credentials checked before the change
    assert list(apply(s, "UserList", pb.AuthUserListRequest(), AuthInfo("root", s.revision)).users) == [
        "alice",
        "root",
    ]
    before = s.revision
    apply(s, "AuthDisable", pb.AuthDisableRequest(), AuthInfo("root", s.revision))
    assert (s.enabled, s.revision) == (False, before + 1)
    s.check_put(None, b"anything")  # disabled: everything is allowed


def test_state_round_trip() -> None:
    s = AuthStore()
    apply(s, "UserAdd", pb.AuthUserAddRequest(name="root", hashedPassword="h"))
    apply(s, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="root", role="root"))
    apply(s, "UserAdd", pb.AuthUserAddRequest(name="np", options=authpb.UserAddOptions(no_password=True)))
    apply(s, "RoleAdd", pb.AuthRoleAddRequest(name="r"))
    perm = authpb.Permission(permType=authpb.Permission.WRITE, key=b"k", range_end=b"\0")
    apply(s, "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(name="r", perm=perm))
    apply(s, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="np", role="r"))
    apply(s, "AuthEnable", pb.AuthEnableRequest())
    blob = msgpack.packb(s.to_state(), use_bin_type=True)
    t = AuthStore.from_state(msgpack.unpackb(blob, raw=False))
    assert t.to_state() == s.to_state()
    t.check_put(AuthInfo("np", t.revision), b"kz")  # the permission cache is rebuilt
    with pytest.raises(EtcdError, match="authentication failed"):
        t.password_hash("np")  # no_password users cannot authenticate


def entry(kind: Kind, seq: int, payload: bytes, auth: AuthInfo | None = None) -> bytes:
    return encode_entry(kind, 1, seq, payload, auth)


def auth_entry(seq: int, method: str, req: object, auth: AuthInfo | None = None) -> bytes:
    payload = msgpack.packb([method, req.SerializeToString()], use_bin_type=True)  # type: ignore[attr-defined]
    return entry(Kind.AUTH, seq, payload, auth)


def test_state_machine_applies_auth_entries_deterministically() -> None:
    entries = [
        auth_entry(1, "UserAdd", pb.AuthUserAddRequest(name="root", hashedPassword="h")),
        auth_entry(2, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="root", role="root")),
        auth_entry(3, "UserAdd", pb.AuthUserAddRequest(name="alice", hashedPassword="h")),
        auth_entry(4, "AuthEnable", pb.AuthEnableRequest()),
        entry(Kind.PUT, 5, pb.PutRequest(key=b"k", value=b"v").SerializeToString()),  # no credentials
        entry(Kind.PUT, 6, pb.PutRequest(key=b"k", value=b"v").SerializeToString(), AuthInfo("alice", 4)),
        entry(Kind.PUT, 7, pb.PutRequest(key=b"k", value=b"v").SerializeToString(), AuthInfo("root", 4)),
        entry(Kind.PUT, 8, pb.PutRequest(key=b"k", value=b"v").SerializeToString(), AuthInfo("root", 3)),  # old
        entry(Kind.AUTHENTICATE, 9, msgpack.packb(["alice", "prefix", 4], use_bin_type=True)),
        entry(Kind.AUTHENTICATE, 10, msgpack.packb(["alice", "prefix", 3], use_bin_type=True)),
    ]
    results = []
    for _ in range(2):
        sm = StateMachine()
        out = [sm.apply(i + 1, 1000, data).result for i, data in enumerate(entries)]
        results.append((sm.dumps(), out))
    assert results[0][0] == results[1][0]
    out = results[0][1]
    assert isinstance(out[4], EtcdError) and out[4].message == errors.USER_EMPTY[1]
    assert isinstance(out[5], EtcdError) and out[5].message == errors.PERMISSION_DENIED[1]
    assert out[6].header.revision == 2
    assert isinstance(out[7], EtcdError) and out[7].message == errors.AUTH_OLD_REVISION[1]
    assert out[8] == Authenticated("alice", 4, "prefix.9")
    assert isinstance(out[9], StaleCheck)
    restored = StateMachine.loads(results[0][0])
    assert restored.auth.enabled and restored.auth.revision == 4


def test_simple_tokens_expire_unless_used() -> None:
    now = [0.0]
    tokens = SimpleTokens(ttl_s=10, clock=lambda: now[0])
    tokens.register("t1", "alice")
    tokens.register("t2", "bob")
    now[0] = 8
    assert tokens.username("t1") == "alice"  # use restarts the TTL
    now[0] = 12
    assert tokens.username("t1") == "alice"
    assert tokens.username("t2") is None
    tokens.invalidate_user("alice")
    assert tokens.username("t1") is None
    prefix = new_simple_token_prefix()
    assert len(prefix) == 16 and prefix.isalpha()


def test_a_mirror_follows_the_member_tokens_changes() -> None:
    """What a front end holds (MirroredTokens) is what the member's SimpleTokens told it, in order;
    a use in the front end is a touch the member's TTL restarts with."""
    now = [0.0]
    tokens = SimpleTokens(ttl_s=10, clock=lambda: now[0])
    changes: list[Any] = []
    tokens.listeners.append(changes.append)
    mirror = MirroredTokens()
    mirror.reset(3, tokens.table())
    tokens.register("t1", "alice")
    tokens.register("t2", "alice")
    tokens.register("t3", "bob")
    mirror.change(3, changes)
    changes.clear()
    assert (mirror.user("t1"), mirror.user("t3"), mirror.user("nope")) == ("alice", "bob", None)
    now[0] = 8
    for token in mirror.take_touched():  # the front end's touches, as the member handles them
        tokens.username(token)
    assert mirror.take_touched() == []
    now[0] = 12
    tokens.expire()  # t2 was not used: expired; t1 and t3 were, in the front end
    tokens.invalidate_user("bob")
    mirror.change(4, changes)
    changes.clear()
    assert (mirror.user("t1"), mirror.user("t2"), mirror.user("t3"), mirror.revision) == ("alice", None, None, 4)
    mirror.change(4, [(TOKEN_REGISTERED, "t1", "alice")])  # sent again after a reset: no harm
    tokens.clear()
    mirror.change(5, changes)
    assert len(mirror) == 0 and len(tokens) == 0


def test_auth_token_option_parsing(tmp_path: object) -> None:
    assert parse_auth_token("simple", float).kind == "simple"
    for bad in ("nope", "jwt", "jwt,sign-method=RS256", "jwt,pub-key=/nonexistent,sign-method=XX", "jwt,foo"):
        with pytest.raises((ValueError, OSError)):
            parse_auth_token(bad, float)
