"""Client TLS on `kvstore serve`, with certificates the test makes: mutual TLS with etcdctl and grpcio,
refused client certificates (missing, expired, revoked, foreign CA), plain text to a TLS port,
certificate reload, ETCD_* variables, and the same behaviour from a real etcd where it applies."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from proto.authpb import auth_pb2 as authpb
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from tests.certs import PKI, make_pki
from tests.etcdctl.ctl import Ctl
from tests.servers import ServerProcess, ServerStartError, make_temp_dir, start_etcd, start_kvstore


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def mtls_flags(pki: PKI, **extra: object) -> dict[str, object]:
    flags: dict[str, object] = {
        "cert-file": pki.server_cert,
        "key-file": pki.server_key,
        "trusted-ca-file": pki.ca,
        "client-cert-auth": "true",
        "client-crl-file": pki.crl,
    }
    flags.update(extra)
    return flags


@pytest.fixture(scope="module", params=["kvstore", "etcd"])
def mtls_server(request: pytest.FixtureRequest, pki: PKI) -> ServerProcess:
    cert, key = pki.client("root")
    start = start_kvstore if request.param == "kvstore" else start_etcd
    srv = start(f"tls-{request.param}", flags=mtls_flags(pki), tls=(pki.ca, cert, key))
    yield srv
    srv.stop()


def call_status(srv: ServerProcess, creds: grpc.ChannelCredentials) -> pb.StatusResponse:
    with grpc.secure_channel(srv.endpoint, creds) as ch:
        return rpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=5)


def creds_for(pki: PKI, pair: tuple[Path, Path] | None, ca: Path | None = None) -> grpc.ChannelCredentials:
    ca_bytes = (ca or pki.ca).read_bytes()
    if pair is None:
        return grpc.ssl_channel_credentials(ca_bytes)
    return grpc.ssl_channel_credentials(ca_bytes, pair[1].read_bytes(), pair[0].read_bytes())


def test_grpc_mtls_put_get(mtls_server: ServerProcess, pki: PKI) -> None:
    kv = rpc.KVStub(mtls_server.channel())
    kv.Put(pb.PutRequest(key=b"tls/a", value=b"1"), timeout=5)
    resp = kv.Range(pb.RangeRequest(key=b"tls/a"), timeout=5)
    assert [(kv.key, kv.value) for kv in resp.kvs] == [(b"tls/a", b"1")]


def test_etcdctl_mtls(mtls_server: ServerProcess) -> None:
    ctl = Ctl(mtls_server)
    assert ctl.run(["put", "tls/ctl", "v"]).as_tuple() == (0, "OK\n", "")
    assert ctl.run(["get", "tls/ctl", "--print-value-only"]).as_tuple() == (0, "v\n", "")


@pytest.mark.parametrize("which", ["missing", "expired", "revoked", "foreign"])
def test_bad_client_certificates_refused(mtls_server: ServerProcess, pki: PKI, which: str) -> None:
    pair = {"missing": None, "expired": pki.expired, "revoked": pki.revoked, "foreign": pki.untrusted}[which]
    with pytest.raises(grpc.RpcError) as info:
        call_status(mtls_server, creds_for(pki, pair))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # and the server goes on serving good clients
    assert call_status(mtls_server, creds_for(pki, pki.client("root"))).header.member_id


def test_etcdctl_without_client_cert_fails(mtls_server: ServerProcess, pki: PKI) -> None:
    p = Ctl(mtls_server).run_raw(
        ["--endpoints", f"https://{mtls_server.endpoint}", "--cert=", "--key=", "--dial-timeout=2s", "get", "x"],
        timeout_s=30,
    )
    assert p.returncode != 0


def test_plain_text_to_tls_port_fails_cleanly(mtls_server: ServerProcess, pki: PKI) -> None:
    with grpc.insecure_channel(mtls_server.endpoint) as ch, pytest.raises(grpc.RpcError) as info:
        rpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=3)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with socket.create_connection(("127.0.0.1", mtls_server.port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert b'"health"' not in data  # no answer in plain text
    assert call_status(mtls_server, creds_for(pki, pki.client("root"))).header.member_id


def test_http_endpoints_over_tls(mtls_server: ServerProcess, pki: PKI) -> None:
    cert, key = pki.client("root")
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(cert), str(key))
    with urllib.request.urlopen(f"https://{mtls_server.endpoint}/health", context=ctx, timeout=10) as r:
        assert r.status == 200 and json.loads(r.read())["health"] == "true"


def test_server_only_tls_and_env_vars(pki: PKI, tmp_path: Path) -> None:
    """ETCD_CERT_FILE/ETCD_KEY_FILE instead of flags; no client certificate needed without --client-cert-auth."""
    env = {"ETCD_CERT_FILE": str(pki.server_cert), "ETCD_KEY_FILE": str(pki.server_key)}
    srv = start_kvstore("tls-env", env=env, tls=(pki.ca, None, None))
    try:
        assert call_status(srv, creds_for(pki, None)).header.member_id
        assert Ctl(srv).run(["put", "k", "v"]).as_tuple() == (0, "OK\n", "")
    finally:
        srv.stop()


def test_https_url_without_certificate_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="must be provided for client url"):
        start_kvstore("tls-nocert", tls=(tmp_path / "none", None, None))


def test_auto_tls() -> None:
    """--auto-tls: a self-signed certificate under <data-dir>/fixtures/client, as etcd makes it."""
    data = make_temp_dir("kvstore-autotls-")
    generated = data / "fixtures" / "client" / "cert.pem"
    srv = start_kvstore(
        "tls-auto", flags={"auto-tls": "true"}, extra_args=[f"--data-dir={data}"], tls=(generated, None, None)
    )
    try:
        assert generated.exists() and (data / "fixtures" / "client" / "key.pem").stat().st_mode & 0o077 == 0
        assert Ctl(srv).run(["put", "k", "v"]).as_tuple() == (0, "OK\n", "")
    finally:
        srv.stop()
        shutil.rmtree(data, ignore_errors=True)


def test_certificate_reload(pki: PKI, tmp_path: Path) -> None:
    """A renewed server certificate is served from the next handshake on, without a restart."""
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    srv = start_kvstore("tls-reload", flags={"cert-file": cert, "key-file": key}, tls=(pki.ca, None, None))
    try:
        assert call_status(srv, creds_for(pki, None)).header.member_id
        other = make_pki(tmp_path / "renewed")  # a new CA: clients trusting only the old one now fail
        shutil.copy(other.server_cert, cert)
        shutil.copy(other.server_key, key)
        time.sleep(0.05)
        assert call_status(srv, creds_for(other, None)).header.member_id
        with pytest.raises(grpc.RpcError):
            call_status(srv, creds_for(pki, None))
    finally:
        srv.stop()


def test_bad_tls_flags(pki: PKI) -> None:
    flags = {"cert-file": pki.server_cert, "key-file": pki.server_key, "cipher-suites": "TLS_NOT_A_SUITE"}
    with pytest.raises(ServerStartError, match="unexpected TLS cipher suite"):
        start_kvstore("tls-badcipher", flags=flags, tls=(pki.ca, None, None))


def test_tls_versions_and_ciphers(pki: PKI) -> None:
    flags = {
        "cert-file": pki.server_cert,
        "key-file": pki.server_key,
        "tls-max-version": "TLS1.2",
        "cipher-suites": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    }
    srv = start_kvstore("tls-ver", flags=flags, tls=(pki.ca, None, None))
    try:
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        with (
            socket.create_connection(("127.0.0.1", srv.port)) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
        ):
            assert s.version() == "TLSv1.2"
            assert s.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
        ctx13 = ssl.create_default_context(cafile=str(pki.ca))
        ctx13.minimum_version = ssl.TLSVersion.TLSv1_3
        with socket.create_connection(("127.0.0.1", srv.port)) as raw, pytest.raises(ssl.SSLError):
            ctx13.wrap_socket(raw, server_hostname="127.0.0.1")
    finally:
        srv.stop()


def enable_auth_alice_reads_a(auth: rpc.AuthStub) -> None:
    """Users root (the root role) and alice (may read /a/), then auth on; `auth` speaks as root."""
    for method, request in (
        ("UserAdd", pb.AuthUserAddRequest(name="root", password="pw")),
        ("RoleAdd", pb.AuthRoleAddRequest(name="root")),
        ("UserGrantRole", pb.AuthUserGrantRoleRequest(user="root", role="root")),
        ("UserAdd", pb.AuthUserAddRequest(name="alice", password="pw")),
        ("RoleAdd", pb.AuthRoleAddRequest(name="r")),
        ("RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
            name="r", perm=authpb.Permission(permType=authpb.Permission.READ, key=b"/a/", range_end=b"/a0"))),
        ("UserGrantRole", pb.AuthUserGrantRoleRequest(user="alice", role="r")),
        ("AuthEnable", pb.AuthEnableRequest()),
    ):  # fmt: skip
        getattr(auth, method)(request, timeout=20)


def test_client_cert_common_name_is_the_auth_user(pki: PKI) -> None:
    """With --client-cert-auth, a request without a token runs as its certificate's CN, as etcd does;
    a token, when sent, wins. Same answers from a real etcd."""
    from google.protobuf.json_format import MessageToDict

    root_cert = pki.client("root")
    results = []
    for start in (start_etcd, start_kvstore):
        srv = start(f"tls-cn-{start.__name__}", flags=mtls_flags(pki), tls=(pki.ca, *root_cert))
        try:
            auth = rpc.AuthStub(srv.channel())
            enable_auth_alice_reads_a(auth)
            seen = []
            for cn in ("root", "alice", "nobody"):
                with grpc.secure_channel(srv.endpoint, creds_for(pki, pki.client(cn))) as ch:
                    kv = rpc.KVStub(ch)
                    for key in (b"/a/1", b"/b"):
                        try:
                            resp = kv.Put(pb.PutRequest(key=key, value=cn.encode()), timeout=20)
                            seen.append((cn, key, "ok", MessageToDict(resp).get("header", {}).get("revision")))
                        except grpc.RpcError as err:
                            seen.append((cn, key, err.code().name, err.details()))
                    try:
                        rpc.AuthStub(ch).UserList(pb.AuthUserListRequest(), timeout=20)
                        seen.append((cn, "user list", "ok"))
                    except grpc.RpcError as err:
                        seen.append((cn, "user list", err.code().name, err.details()))
            # a token wins over the certificate: alice's token on root's connection
            token = auth.Authenticate(pb.AuthenticateRequest(name="alice", password="pw"), timeout=20).token
            try:
                rpc.KVStub(srv.channel()).Put(pb.PutRequest(key=b"/b", value=b"x"), metadata=[("token", token)])
                seen.append(("token", "ok"))
            except grpc.RpcError as err:
                seen.append(("token", err.code().name, err.details()))
            results.append(seen)
        finally:
            srv.stop()
    assert results[0] == results[1]
    assert ("nobody", b"/a/1", "PERMISSION_DENIED", "etcdserver: permission denied") in results[1]


def test_tls_client_url_with_http_elsewhere(pki: PKI) -> None:
    """--listen-client-http-urls: the https:// client URL serves gRPC only (over TLS), HTTP is elsewhere."""
    from tests.servers import free_port

    http_port = free_port()
    flags = {
        "cert-file": pki.server_cert,
        "key-file": pki.server_key,
        "listen-client-http-urls": f"http://127.0.0.1:{http_port}",
    }
    srv = start_kvstore("tls-split", flags=flags, tls=(pki.ca, None, None))
    try:
        assert Ctl(srv).run(["put", "k", "v"]).as_tuple() == (0, "OK\n", "")
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=10) as r:
            assert json.loads(r.read())["health"] == "true"
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        with pytest.raises((OSError, urllib.error.URLError)):
            urllib.request.urlopen(f"https://{srv.endpoint}/health", context=ctx, timeout=10)
    finally:
        srv.stop()


def _watch_created(ch: grpc.Channel, key: bytes) -> tuple[Any, ...]:
    """The first response to one watch create: created, or canceled with etcd's reason."""
    sent = threading.Event()

    def requests() -> Iterator[pb.WatchRequest]:
        yield pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, range_end=key[:-1] + b"0"))
        sent.wait(20)

    call = rpc.WatchStub(ch).Watch(requests(), timeout=20)
    try:
        first = next(call)
        return (first.created, first.canceled, first.cancel_reason)
    finally:
        sent.set()
        call.cancel()


def _answers_as(ch: grpc.Channel) -> dict[str, tuple[Any, ...]]:
    """Range (both consistencies), read-only txn, put and watch of /a/1 and /b: what each answers."""
    kv = rpc.KVStub(ch)

    def range_(key: bytes, serializable: bool) -> tuple[Any, ...]:
        return tuple(x.value for x in kv.Range(pb.RangeRequest(key=key, serializable=serializable), timeout=20).kvs)

    def txn(key: bytes) -> tuple[Any, ...]:
        resp = kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=key))]), timeout=20)
        return (resp.responses[0].response_range.count,)

    def put(key: bytes) -> tuple[Any, ...]:
        return (kv.Put(pb.PutRequest(key=key, value=b"v"), timeout=20).header.revision > 0,)

    answers: dict[str, tuple[Any, ...]] = {}
    for key in (b"/a/1", b"/b"):
        calls: dict[str, Callable[[bytes], tuple[Any, ...]]] = {
            "range": lambda k: range_(k, False),
            "range s": lambda k: range_(k, True),
            "txn": txn,
            "put": put,
            "watch": lambda k: _watch_created(ch, k),
        }
        for what, call in calls.items():
            try:
                answers[f"{what} {key.decode()}"] = ("ok", *call(key))
            except grpc.RpcError as err:
                answers[f"{what} {key.decode()}"] = (err.code().name, err.details())
    return answers


def _serializable_range(key: bytes) -> Callable[[grpc.Channel], str]:
    def call(ch: grpc.Channel) -> str:
        rpc.KVStub(ch).Range(pb.RangeRequest(key=key, serializable=True), timeout=3)
        return "ok"

    return call


def test_client_cert_user_in_every_process(pki: PKI) -> None:
    """With --client-cert-auth and auth on, ranges (serializable and linearizable), read-only txns,
    watches and puts run as the certificate's common name in every process of `--workers 2` (each
    connection lands on one of them), and answer as a real etcd answers them."""
    root_cert = pki.client("root")
    results = []
    for start, extra in ((start_etcd, ()), (start_kvstore, ("--workers=2",))):
        srv = start(f"tls-cnw-{start.__name__}", flags=mtls_flags(pki), tls=(pki.ca, *root_cert), extra_args=extra)
        try:
            for key in (b"/a/1", b"/b"):
                rpc.KVStub(srv.channel()).Put(pb.PutRequest(key=key, value=b"v"), timeout=20)
            enable_auth_alice_reads_a(rpc.AuthStub(srv.channel()))
            seen: dict[tuple[str, str], set[tuple[Any, ...]]] = {}
            for cn in ("root", "alice", "nobody"):
                for _ in range(6):  # connections of their own: the kernel spreads them over the processes
                    options = [("grpc.use_local_subchannel_pool", 1)]
                    with grpc.secure_channel(srv.endpoint, creds_for(pki, pki.client(cn)), options) as ch:
                        for what, answer in _answers_as(ch).items():
                            seen.setdefault((cn, what), set()).add(answer)
            results.append(seen)
            if start is start_kvstore:
                alice = creds_for(pki, pki.client("alice"))
                answered = srv.while_member_paused(_serializable_range(b"/a/1"), alice)
                assert "ok" in answered, answered
                refused = srv.while_member_paused(_serializable_range(b"/b"), alice)
                assert "PERMISSION_DENIED etcdserver: permission denied" in refused, refused
        finally:
            srv.stop()
    etcd, ours = results
    denied = "etcdserver: permission denied"
    assert ours == etcd
    assert all(len(answers) == 1 for answers in ours.values()), ours  # every process answered alike
    assert ours[("alice", "range s /a/1")] == {("ok", b"v")}
    assert ours[("alice", "range s /b")] == {("PERMISSION_DENIED", denied)}
    assert ours[("alice", "put /a/1")] == {("PERMISSION_DENIED", denied)}
    assert ours[("nobody", "watch /a/1")] == {("ok", True, True, f"rpc error: code = PermissionDenied desc = {denied}")}
