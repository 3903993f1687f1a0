"""etcd auth over gRPC, the same calls against a real etcd 3.5.1 and the server under test: token expiry,
JWT tokens, tokens of deleted users, malformed tokens, a 1 MiB password, unknown users, inverted and
empty permission ranges, watches refused, the auth revision after every change."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf.json_format import MessageToDict

from proto.authpb import auth_pb2 as authpb
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from tests.differential.harness import Pair, PairPool

ROOT_PW = "rootpw"
ALICE_PW = "alicepw"


def outcome(call: Callable[[], Any]) -> Any:
    """A response without the ids that differ by server, or the error's code and message."""
    try:
        resp = call()
    except grpc.RpcError as err:
        return ("error", err.code().name, err.details())
    if hasattr(resp, "token"):  # tokens differ by server: compare that there is one
        resp.token = "<token>" if resp.token else ""
    d = MessageToDict(resp, preserving_proto_field_name=True)
    header = d.pop("header", {})
    d["revision"] = header.get("revision")
    return d


class Side:
    def __init__(self, server: Any) -> None:
        self.server = server
        ch = server.channel()
        self.auth = rpc.AuthStub(ch)
        self.kv = rpc.KVStub(ch)
        self.watch = rpc.WatchStub(ch)

    def token(self, name: str, password: str) -> str:
        resp = self.auth.Authenticate(pb.AuthenticateRequest(name=name, password=password), timeout=20)
        return str(resp.token)


def md(token: str) -> list[tuple[str, str]]:
    return [("token", token)]


class Both:
    def __init__(self, pair: Pair) -> None:
        self.a, self.b = Side(pair.a), Side(pair.b)
        self.diffs: list[str] = []

    def same(self, label: str, call: Callable[[Side], Any]) -> Any:
        ra, rb = outcome(lambda: call(self.a)), outcome(lambda: call(self.b))
        if ra != rb:
            self.diffs.append(f"{label}\n  etcd: {ra!r}\n  ours: {rb!r}")
        return ra

    def setup(self) -> None:
        steps: list[tuple[str, Callable[[Side], Any]]] = [
            ("add root", lambda s: s.auth.UserAdd(pb.AuthUserAddRequest(name="root", password=ROOT_PW), timeout=20)),
            ("role root", lambda s: s.auth.RoleAdd(pb.AuthRoleAddRequest(name="root"), timeout=20)),
            ("grant root", lambda s: s.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"))),
            ("add alice", lambda s: s.auth.UserAdd(pb.AuthUserAddRequest(name="alice", password=ALICE_PW))),
            ("role r", lambda s: s.auth.RoleAdd(pb.AuthRoleAddRequest(name="r"))),
            (
                "grant r",
                lambda s: s.auth.RoleGrantPermission(
                    pb.AuthRoleGrantPermissionRequest(
                        name="r",
                        perm=authpb.Permission(permType=authpb.Permission.READWRITE, key=b"/a/", range_end=b"/a0"),
                    )
                ),
            ),
            ("alice r", lambda s: s.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="alice", role="r"))),
            ("enable", lambda s: s.auth.AuthEnable(pb.AuthEnableRequest(), timeout=20)),
        ]
        for label, call in steps:
            self.same(label, call)

    def report(self) -> str:
        return f"{len(self.diffs)} difference(s):\n" + "\n".join(self.diffs)


TOKEN_TTL_S = 5


@pytest.fixture
def both(diff_pool: PairPool) -> Iterator[Both]:
    pair = diff_pool.fresh({"auth-token-ttl": 300})
    yield Both(pair)
    pair.stop()


@pytest.fixture
def short_ttl(diff_pool: PairPool) -> Iterator[Both]:
    pair = diff_pool.fresh({"auth-token-ttl": TOKEN_TTL_S})
    yield Both(pair)
    pair.stop()


def test_simple_tokens_expire_and_die_with_their_user(short_ttl: Both) -> None:
    both = short_ttl
    both.setup()
    root = {id(s): s.token("root", ROOT_PW) for s in (both.a, both.b)}
    alice = {id(s): s.token("alice", ALICE_PW) for s in (both.a, both.b)}

    def get(s: Side, token: str, key: bytes = b"/a/1") -> Any:
        return s.kv.Range(pb.RangeRequest(key=key), metadata=md(token), timeout=20)

    both.same("alice reads", lambda s: get(s, alice[id(s)]))
    both.same("alice reads outside", lambda s: get(s, alice[id(s)], b"/b"))
    both.same(
        "alice's password changes",
        lambda s: s.auth.UserChangePassword(
            pb.AuthUserChangePasswordRequest(name="alice", password="new"),
            metadata=md(s.token("root", ROOT_PW)),  # a fresh token: a busy machine may outwait a short TTL
        ),
    )
    both.same("alice's old token", lambda s: get(s, alice[id(s)]))
    alice = {id(s): s.token("alice", "new") for s in (both.a, both.b)}
    both.same("alice's new token", lambda s: get(s, alice[id(s)]))
    # use keeps a simple token alive: root's is used every second, for longer than its TTL
    root = {id(s): s.token("root", ROOT_PW) for s in (both.a, both.b)}
    for _ in range(TOKEN_TTL_S + 3):
        time.sleep(1)
        both.same("root in use", lambda s: get(s, root[id(s)]))
    time.sleep(TOKEN_TTL_S + 3)  # alice's, unused, has expired (etcd checks each second)
    both.same("alice's expired token", lambda s: get(s, alice[id(s)]))
    both.same(
        "delete alice",
        lambda s: s.auth.UserDelete(
            pb.AuthUserDeleteRequest(name="alice"), metadata=md(s.token("root", ROOT_PW)), timeout=20
        ),
    )
    both.same("status", lambda s: s.auth.AuthStatus(pb.AuthStatusRequest(), metadata=md(s.token("root", ROOT_PW))))
    assert not both.diffs, both.report()
    assert_no_secrets(both.b.server, [ROOT_PW, ALICE_PW, "new", root[id(both.b)], alice[id(both.b)]])


def assert_no_secrets(server: Any, secrets: list[str]) -> None:
    """Passwords and tokens appear neither in the server's log nor in /metrics."""
    import urllib.request

    log = server.log_path.read_text(errors="replace")
    with urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    for secret in secrets:
        if len(secret) > 3:  # ("new" is a word the log may hold for other reasons)
            assert secret not in log, "a secret in the server log"
            assert secret not in metrics, "a secret in /metrics"


def test_bad_input(both: Both) -> None:
    both.setup()
    root = {id(s): s.token("root", ROOT_PW) for s in (both.a, both.b)}
    for label, token in [
        ("garbage", "garbage"),
        ("simple-looking", "abcdefghijklmnop.1"),
        ("jwt-looking", "eyJhbGciOiJSUzI1NiJ9.eyJ1c2VybmFtZSI6InJvb3QifQ.c2ln"),
        ("long", "x" * 4096),
    ]:
        both.same(f"token {label}", lambda s, t=token: s.kv.Range(pb.RangeRequest(key=b"k"), metadata=md(t)))
        both.same(
            f"token {label} put", lambda s, t=token: s.kv.Put(pb.PutRequest(key=b"k", value=b"v"), metadata=md(t))
        )
    both.same("no token", lambda s: s.kv.Range(pb.RangeRequest(key=b"k")))
    big = "p" * (1 << 20)
    both.same(
        "1 MiB password",
        lambda s: s.auth.UserAdd(pb.AuthUserAddRequest(name="big", password=big), metadata=md(root[id(s)]), timeout=30),
    )
    both.same("authenticate with it", lambda s: s.auth.Authenticate(pb.AuthenticateRequest(name="big", password=big)))
    both.same("a wrong one", lambda s: s.auth.Authenticate(pb.AuthenticateRequest(name="big", password="p" * 10)))
    both.same("unknown user", lambda s: s.auth.Authenticate(pb.AuthenticateRequest(name="ghost", password="x")))
    both.same("empty user", lambda s: s.auth.Authenticate(pb.AuthenticateRequest(name="", password="")))
    for label, req in [
        ("get ghost", lambda s: s.auth.UserGet(pb.AuthUserGetRequest(name="ghost"), metadata=md(root[id(s)]))),
        ("add empty user", lambda s: s.auth.UserAdd(pb.AuthUserAddRequest(name=""), metadata=md(root[id(s)]))),
        ("add empty role", lambda s: s.auth.RoleAdd(pb.AuthRoleAddRequest(name=""), metadata=md(root[id(s)]))),
        (
            "grant ghost",
            lambda s: s.auth.UserGrantRole(
                pb.AuthUserGrantRoleRequest(user="ghost", role="r"), metadata=md(root[id(s)])
            ),
        ),
    ]:
        both.same(label, req)
    for label, perm in [
        ("inverted", authpb.Permission(key=b"z", range_end=b"a")),
        ("empty key", authpb.Permission(key=b"", range_end=b"")),
        ("equal ends", authpb.Permission(key=b"a", range_end=b"a")),
        ("from key", authpb.Permission(key=b"a", range_end=b"\0")),
        ("all keys", authpb.Permission(key=b"\0", range_end=b"\0")),
        ("point", authpb.Permission(permType=authpb.Permission.WRITE, key=b"p")),
    ]:
        both.same(
            f"grant {label}",
            lambda s, p=perm: s.auth.RoleGrantPermission(
                pb.AuthRoleGrantPermissionRequest(name="r", perm=p), metadata=md(root[id(s)])
            ),
        )
    both.same(
        "grant without perm",
        lambda s: s.auth.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(name="r"), metadata=md(root[id(s)])),
    )
    both.same("role r", lambda s: s.auth.RoleGet(pb.AuthRoleGetRequest(role="r"), metadata=md(root[id(s)])))
    alice = {id(s): s.token("alice", ALICE_PW) for s in (both.a, both.b)}
    for label, key, end in [
        ("inverted range", b"/a/z", b"/a/a"),
        ("inside", b"/a/a", b"/a/z"),
        ("across", b"/a/a", b"/b"),
        ("from key", b"a", b"\0"),
        ("point p", b"p", b""),
    ]:
        both.same(
            f"alice range {label}",
            lambda s, k=key, e=end: s.kv.Range(pb.RangeRequest(key=k, range_end=e), metadata=md(alice[id(s)])),
        )
    both.same("status", lambda s: s.auth.AuthStatus(pb.AuthStatusRequest(), metadata=md(root[id(s)])))
    assert not both.diffs, both.report()


def test_watch_refused_under_auth(both: Both) -> None:
    both.setup()
    alice = {id(s): s.token("alice", ALICE_PW) for s in (both.a, both.b)}

    def first_response(s: Side, key: bytes, token: str | None) -> Any:
        reqs = iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, range_end=b""))])
        stream = s.watch.Watch(reqs, metadata=md(token) if token is not None else None, timeout=20)
        try:
            return next(stream)
        finally:
            stream.cancel()

    both.same("alice allowed", lambda s: first_response(s, b"/a/1", alice[id(s)]))
    both.same("alice refused", lambda s: first_response(s, b"/b", alice[id(s)]))
    both.same("no user", lambda s: first_response(s, b"/a/1", None))
    both.same("bad token", lambda s: first_response(s, b"/a/1", "nope"))
    assert not both.diffs, both.report()


def _rsa_keys(directory: Path, stem: str) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv, pub = directory / f"{stem}.key", directory / f"{stem}.pub"
    priv.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return priv, pub


def test_jwt_tokens(diff_pool: PairPool, tmp_path: Path) -> None:
    import jwt

    priv, pub = _rsa_keys(tmp_path, "signer")
    other_priv, _ = _rsa_keys(tmp_path, "forger")
    pair = diff_pool.fresh({"auth-token": f"jwt,pub-key={pub},priv-key={priv},sign-method=RS256,ttl=10m"})
    both = Both(pair)
    try:
        both.setup()
        tokens = {id(s): s.token("alice", ALICE_PW) for s in (both.a, both.b)}
        for token in tokens.values():
            claims = jwt.decode(token, pub.read_bytes(), algorithms=["RS256"])
            assert claims["username"] == "alice" and isinstance(claims["revision"], int)
        both.same("alice jwt", lambda s: s.kv.Range(pb.RangeRequest(key=b"/a/1"), metadata=md(tokens[id(s)])))
        forged = jwt.encode({"username": "root", "revision": 100, "exp": int(time.time()) + 600},
                            other_priv.read_bytes(), algorithm="RS256")  # fmt: skip
        both.same("forged jwt", lambda s: s.kv.Range(pb.RangeRequest(key=b"/a/1"), metadata=md(forged)))
        expired = jwt.encode({"username": "alice", "revision": 100, "exp": int(time.time()) - 60},
                             priv.read_bytes(), algorithm="RS256")  # fmt: skip
        both.same("expired jwt", lambda s: s.kv.Range(pb.RangeRequest(key=b"/a/1"), metadata=md(expired)))
        root = {id(s): s.token("root", ROOT_PW) for s in (both.a, both.b)}
        both.same("a new role", lambda s: s.auth.RoleAdd(pb.AuthRoleAddRequest(name="new"), metadata=md(root[id(s)])))
        # alice's token carries the auth revision it was issued at: now it is old
        both.same("alice's old jwt", lambda s: s.kv.Range(pb.RangeRequest(key=b"/a/1"), metadata=md(tokens[id(s)])))
        both.same(
            "alice's old jwt put",
            lambda s: s.kv.Put(pb.PutRequest(key=b"/a/1", value=b"v"), metadata=md(tokens[id(s)])),
        )
        assert not both.diffs, both.report()
    finally:
        pair.stop()


def test_auth_state_survives_restart() -> None:
    """Users, roles and the enabled flag are state-machine state: a restarted member (checkpoint, then
    the journal's tail) enforces them; its simple tokens are gone, as etcd's are."""
    from tests.servers import start_kvstore

    srv = start_kvstore("auth-restart")
    try:
        side = Side(srv)
        for method, req in (
            ("UserAdd", pb.AuthUserAddRequest(name="root", password=ROOT_PW)),
            ("UserGrantRole", pb.AuthUserGrantRoleRequest(user="root", role="root")),
            ("UserAdd", pb.AuthUserAddRequest(name="alice", password=ALICE_PW)),
            ("AuthEnable", pb.AuthEnableRequest()),
        ):
            getattr(side.auth, method)(req, timeout=20)
        old_token = side.token("root", ROOT_PW)
        srv.kill()  # no goodbye: the tail after the last checkpoint is replayed
        srv.start()
        side = Side(srv)
        with pytest.raises(grpc.RpcError) as err:
            side.kv.Range(pb.RangeRequest(key=b"k"), metadata=md(old_token), timeout=20)
        assert err.value.details() == "etcdserver: invalid auth token"
        with pytest.raises(grpc.RpcError) as err:
            side.kv.Put(pb.PutRequest(key=b"k", value=b"v"), metadata=md(side.token("alice", ALICE_PW)))
        assert err.value.details() == "etcdserver: permission denied"
        side.kv.Put(pb.PutRequest(key=b"k", value=b"v"), metadata=md(side.token("root", ROOT_PW)), timeout=20)
        status = side.auth.AuthStatus(pb.AuthStatusRequest(), metadata=md(side.token("root", ROOT_PW)))
        assert status.enabled
    finally:
        srv.stop()


def _reader_alice(side: Side) -> None:
    """/a/1 = v, then root, and alice who may read /a/ only, and auth on."""
    side.kv.Put(pb.PutRequest(key=b"/a/1", value=b"v"), timeout=20)
    for method, req in (
        ("UserAdd", pb.AuthUserAddRequest(name="root", password=ROOT_PW)),
        ("UserGrantRole", pb.AuthUserGrantRoleRequest(user="root", role="root")),
        ("UserAdd", pb.AuthUserAddRequest(name="alice", password=ALICE_PW)),
        ("RoleAdd", pb.AuthRoleAddRequest(name="reader")),
        ("RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
            name="reader", perm=authpb.Permission(permType=authpb.Permission.READ, key=b"/a/", range_end=b"/a0"))),
        ("UserGrantRole", pb.AuthUserGrantRoleRequest(user="alice", role="reader")),
        ("AuthEnable", pb.AuthEnableRequest()),
    ):  # fmt: skip
        getattr(side.auth, method)(req, timeout=20)


def test_jwt_checked_in_front_ends(tmp_path: Path) -> None:
    """--auth-token jwt with --workers 2: a front end checks a JWT itself (the public key verifies it
    in any process), so it answers a token's reads with the member's process stopped: the token's
    own, permission denied, or an invalid token, as the member would."""
    import jwt

    from tests.servers import start_kvstore

    priv, pub = _rsa_keys(tmp_path, "signer")
    flags = {"auth-token": f"jwt,pub-key={pub},priv-key={priv},sign-method=RS256,ttl=10m"}
    srv = start_kvstore("jwt-front-ends", flags=flags, extra_args=["--workers=2"])
    try:
        side = Side(srv)
        _reader_alice(side)
        alice = side.token("alice", ALICE_PW)
        forged = jwt.encode({"username": "root", "revision": 100, "exp": int(time.time()) + 600},
                            _rsa_keys(tmp_path, "forger")[0].read_bytes(), algorithm="RS256")  # fmt: skip

        def ranges(key: bytes, token: str) -> list[str]:
            def call(ch: grpc.Channel) -> str:
                resp = rpc.KVStub(ch).Range(pb.RangeRequest(key=key, serializable=True), metadata=md(token), timeout=3)
                return f"ok {[kv.value for kv in resp.kvs]}"

            return srv.while_member_paused(call)

        # each on a connection of its own (tests/servers.py PAUSED_CONNECTIONS)
        assert "ok [b'v']" in ranges(b"/a/1", alice)
        assert "PERMISSION_DENIED etcdserver: permission denied" in ranges(b"/b", alice)
        assert "UNAUTHENTICATED etcdserver: invalid auth token" in ranges(b"/a/1", forged)
        # and what the member itself answers, when it runs again
        with pytest.raises(grpc.RpcError) as err:
            side.kv.Range(pb.RangeRequest(key=b"/a/1"), metadata=md(forged), timeout=20)
        assert (err.value.code(), err.value.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                                           "etcdserver: invalid auth token")  # fmt: skip
    finally:
        srv.stop()


def test_simple_tokens_checked_in_front_ends() -> None:
    """--workers 2 with etcd's default simple tokens: each front end holds the member's tokens
    (told over the notification channel), so it answers a token's reads with the member's
    process stopped; a token the member revoked (a new password) or has never issued, it leaves
    to the member. With the member's process stopped, what a connection to it (or forwarded to
    it) is answered is DEADLINE_EXCEEDED."""
    from tests.servers import start_kvstore

    srv = start_kvstore("simple-token-front-ends", extra_args=["--workers=2"])
    try:
        side = Side(srv)
        _reader_alice(side)
        alice = side.token("alice", ALICE_PW)
        root = side.token("root", ROOT_PW)

        def ranges(key: bytes, token: str) -> list[str]:
            def call(ch: grpc.Channel) -> str:
                resp = rpc.KVStub(ch).Range(pb.RangeRequest(key=key, serializable=True), metadata=md(token), timeout=3)
                return f"ok {[kv.value for kv in resp.kvs]}"

            return srv.while_member_paused(call)

        waited = "DEADLINE_EXCEEDED Deadline Exceeded"

        def answered_here(answers: list[str], answer: str) -> bool:
            """Some connections answered `answer` (a front end decided), the others waited."""
            return answer in answers and set(answers) <= {answer, waited}

        time.sleep(0.5)  # the front ends read the batch's token changes (sent before the answer)
        # each on a connection of its own (tests/servers.py PAUSED_CONNECTIONS)
        assert answered_here(ranges(b"/a/1", alice), "ok [b'v']")
        assert answered_here(ranges(b"/b", alice), "PERMISSION_DENIED etcdserver: permission denied")
        assert set(ranges(b"/a/1", "nobody.7")) == {waited}
        side.auth.UserChangePassword(pb.AuthUserChangePasswordRequest(name="alice", password="new"),
                                     metadata=md(root), timeout=20)  # fmt: skip
        time.sleep(0.5)
        assert set(ranges(b"/a/1", alice)) == {waited}, "revoked in every front end"
        # and what the member itself answers, when it runs again
        with pytest.raises(grpc.RpcError) as err:
            side.kv.Range(pb.RangeRequest(key=b"/a/1"), metadata=md(alice), timeout=20)
        assert (err.value.code(), err.value.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                                           "etcdserver: invalid auth token")  # fmt: skip
        renewed = side.token("alice", "new")
        time.sleep(0.5)
        assert answered_here(ranges(b"/a/1", renewed), "ok [b'v']")
    finally:
        srv.stop()
