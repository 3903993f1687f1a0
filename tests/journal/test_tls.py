"""Journal nodes over TLS (etcd's --peer-* flags): replication between nodes and a client over mutual TLS;
a TLS node refuses plain connections and certificates from an unknown CA."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.journal_procs import ProcCluster
from journal.api import JournalError
from journal.client import JournalClient
from kvstore.transport.tls import TLSInfo, build_client_context
from tests.certs import PKI, make_pki


def peer_flags(pki: PKI) -> list[str]:
    return [
        "--peer-cert-file", str(pki.server_cert), "--peer-key-file", str(pki.server_key),
        "--peer-trusted-ca-file", str(pki.ca), "--peer-client-cert-auth", "--peer-crl-file", str(pki.crl),
    ]  # fmt: skip


def client_ctx(pki: PKI, pair: tuple[Path, Path] | None) -> ssl.SSLContext:
    cert, key = pair if pair else ("", "")
    return build_client_context(TLSInfo(cert_file=str(cert), key_file=str(key), trusted_ca_file=str(pki.ca)))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("journal-pki"))


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[ProcCluster]:
    cluster = ProcCluster(tmp_path_factory.mktemp("journal-tls"), extra_args=peer_flags(pki))
    cluster.start()
    yield cluster
    cluster.stop()


async def test_replicated_append_and_read_over_mutual_tls(tls_cluster: ProcCluster, pki: PKI) -> None:
    client = JournalClient(tls_cluster.endpoints, ssl_context=client_ctx(pki, pki.client("member")))
    try:
        first = (await client.append("tls", [b"a", b"b", b"c"]))[0].position
        assert await client.barrier("tls") >= first + 2  # committed: a second AZ took them, over TLS
        got: list[bytes] = []
        async for batch in client.read("tls", first):
            got += [e.data for e in batch]
            if len(got) >= 3:
                break
        assert got == [b"a", b"b", b"c"]
    finally:
        await client.close()


@pytest.mark.parametrize("which", ["plain", "no-cert", "foreign", "revoked"])
async def test_tls_node_refuses(tls_cluster: ProcCluster, pki: PKI, which: str) -> None:
    ctx: ssl.SSLContext | None
    if which == "plain":
        ctx = None
    elif which == "no-cert":
        ctx = client_ctx(pki, None)
    elif which == "foreign":
        assert pki.untrusted is not None
        ctx = client_ctx(pki, pki.untrusted)
    else:
        assert pki.revoked is not None
        ctx = client_ctx(pki, pki.revoked)
    client = JournalClient(tls_cluster.endpoints[:1], ssl_context=ctx, request_timeout_ms=2000, rpc_timeout_ms=500)
    try:
        with pytest.raises((JournalError, OSError, TimeoutError)):
            await client.append("refused", [b"x"])
    finally:
        await client.close()
    # the node keeps serving members with a good certificate
    good = JournalClient(tls_cluster.endpoints, ssl_context=client_ctx(pki, pki.client("member")))
    try:
        await good.append("tls", [b"after-refusal"])
    finally:
        await good.close()


async def test_peer_auto_tls(tmp_path: Path) -> None:
    """--peer-auto-tls: self-signed certificates, encrypted and unverified, as etcd's; plain text refused."""
    cluster = ProcCluster(tmp_path, extra_args=["--peer-auto-tls"])
    cluster.start()
    try:
        auto = build_client_context(TLSInfo(auto_tls=True))
        client = JournalClient(cluster.endpoints, ssl_context=auto)
        try:
            first = (await client.append("auto", [b"x"]))[0].position
            assert await client.barrier("auto") >= first
        finally:
            await client.close()
        for node in cluster.nodes.values():
            assert (node.data_dir / "fixtures" / "peer" / "cert.pem").exists()
        plain = JournalClient(cluster.endpoints[:1], request_timeout_ms=2000, rpc_timeout_ms=500)
        try:
            with pytest.raises((JournalError, OSError, TimeoutError)):
                await plain.append("auto", [b"y"])
        finally:
            await plain.close()
    finally:
        cluster.stop()
