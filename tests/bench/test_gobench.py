"""The Go load driver (`kvstore bench go`) against our server: it builds, runs, counts, and fails loudly."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest

from bench.gobench import run_json
from bench.gobuild import go_missing
from bench.servers import Server, free_port, start_kvstore
from proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

pytestmark = pytest.mark.skipif(go_missing() is not None, reason=f"Go driver cannot be built: {go_missing()}")


@pytest.fixture(scope="module")
def kvstore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_kvstore(tmp_path_factory.mktemp("kvstore"))
    yield server
    server.stop()


def _keys(server: Server, prefix: bytes) -> list[rpc_pb2.KeyValue]:  # type: ignore[name-defined]
    with grpc.insecure_channel(server.endpoints[0].split("://", 1)[1]) as ch:
        resp = rpc_pb2_grpc.KVStub(ch).Range(
            rpc_pb2.RangeRequest(key=prefix, range_end=prefix[:-1] + bytes([prefix[-1] + 1])), timeout=10
        )
    return list(resp.kvs)


def test_put_writes_what_it_counts(kvstore: Server) -> None:
    args = ["--endpoints", kvstore.endpoints[0], "--prefix", "/gput/", "--key-space", "50"]
    r = run_json(["put", "--total", "300", "--clients", "4", "--conns", "2", "--val-size", "100", *args])
    assert (r["ops"], r["errors"], r["workload"]) == (300, 0, "put")
    assert r["ops_per_s"] > 0 and 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
    kvs = _keys(kvstore, b"/gput/")
    assert 0 < len(kvs) <= 50
    assert sum(kv.version for kv in kvs) == 300  # every counted put reached the server, once
    assert {len(kv.value) for kv in kvs} == {100}


@pytest.mark.parametrize("consistency", ["l", "s"])
def test_range_reads_the_populated_keys(kvstore: Server, consistency: str) -> None:
    r = run_json(
        ["range", "--endpoints", kvstore.endpoints[0], "--prefix", "/grange/", "--key-space", "40",
         "--seconds", "1", "--clients", "8", "--conns", "2", "--consistency", consistency]
    )  # fmt: skip
    # The driver counts a Range that misses its populated key (or its value) as an error.
    assert r["errors"] == 0, r.get("first_error")
    assert r["ops"] > 0 and r["consistency"] == consistency
    assert len(_keys(kvstore, b"/grange/")) == 40


def test_lease_keepalive_renews_one_lease_per_client(kvstore: Server) -> None:
    with grpc.insecure_channel(kvstore.endpoints[0].split("://", 1)[1]) as ch:
        before = set(_lease_ids(ch))
        r = run_json(["lease-keepalive", "--endpoints", kvstore.endpoints[0], "--total", "200", "--clients", "4",
                      "--conns", "2"])  # fmt: skip
        # The driver counts a renewal that answers another TTL than its grant's as an error.
        assert (r["ops"], r["errors"], r["workload"]) == (200, 0, "lease-keepalive"), r.get("first_error")
        granted = set(_lease_ids(ch)) - before
        assert len(granted) == 4
        ttls = [rpc_pb2_grpc.LeaseStub(ch).LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=i), timeout=10)
                for i in granted]  # fmt: skip
        assert {t.grantedTTL for t in ttls} == {100}


def _lease_ids(ch: grpc.Channel) -> list[int]:
    return [s.ID for s in rpc_pb2_grpc.LeaseStub(ch).LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=10).leases]


def test_procs_sets_gomaxprocs(kvstore: Server) -> None:
    args = ["put", "--endpoints", kvstore.endpoints[0], "--prefix", "/gprocs/", "--total", "20"]
    assert run_json([*args, "--procs", "1"])["procs"] == 1
    assert run_json(args)["procs"] == len(os.sched_getaffinity(0))  # Go's default: every usable core


def test_mutual_tls(tmp_path_factory: pytest.TempPathFactory) -> None:
    """--cacert/--cert/--key: the driver speaks to an https:// URL that wants a client certificate."""
    from tests.certs import make_pki
    from tests.servers import start_kvstore as start_kvstore_tls

    pki = make_pki(tmp_path_factory.mktemp("pki"))
    cert, key = pki.client("bench")
    flags = {"cert-file": pki.server_cert, "key-file": pki.server_key, "trusted-ca-file": pki.ca,
             "client-cert-auth": "true"}  # fmt: skip
    server = start_kvstore_tls("gobench-mtls", flags=flags, tls=(pki.ca, cert, key))
    try:
        url = f"https://{server.endpoint}"
        tls = ["--cacert", str(pki.ca), "--cert", str(cert), "--key", str(key)]
        r = run_json(["put", "--endpoints", url, "--total", "50", "--clients", "4", *tls])
        assert (r["ops"], r["errors"]) == (50, 0)
        with pytest.raises(RuntimeError, match="first request"):  # no client certificate: refused
            run_json(["put", "--endpoints", url, "--total", "5", "--cacert", str(pki.ca)])
    finally:
        server.stop()


def test_user_authenticates(tmp_path_factory: pytest.TempPathFactory) -> None:
    """--user name:password: with auth on, every call carries the token the driver was given."""
    server = start_kvstore(tmp_path_factory.mktemp("auth"))
    try:
        with grpc.insecure_channel(server.endpoints[0].split("://", 1)[1]) as ch:
            auth = rpc_pb2_grpc.AuthStub(ch)
            auth.UserAdd(rpc_pb2.AuthUserAddRequest(name="root", password="pw"), timeout=20)
            auth.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"), timeout=20)
            auth.AuthEnable(rpc_pb2.AuthEnableRequest(), timeout=20)
        args = ["put", "--endpoints", server.endpoints[0], "--prefix", "/gauth/", "--total", "30", "--clients", "4"]
        r = run_json([*args, "--user", "root:pw"])
        assert (r["ops"], r["errors"]) == (30, 0)
        with pytest.raises(RuntimeError, match="first request"):  # without a user: refused
            run_json(args)
    finally:
        server.stop()


def test_unreachable_endpoint_fails_fast() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kvstore", "bench", "go", "put", "--endpoints", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "first request" in proc.stderr


def test_bad_flags_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kvstore", "bench", "go", "put", "--total", "5", "--seconds", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "exclude each other" in proc.stderr
