"""A replicated cluster end to end over TLS: three journal nodes with mutual TLS between them, two
members that reach the journal with their own certificate (--peer-* flags) and serve clients over
mutual TLS (https:// client URLs); etcdctl writes through one member and reads through the other.
A member without a valid journal certificate never becomes ready."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from tests.certs import PKI, make_pki
from tests.etcdctl.ctl import Ctl
from tests.servers import JournalNodes, ServerProcess, ServerStartError, make_temp_dir, start_kvstore


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("cluster-pki"))


def member_flags(pki: PKI, member_cert: tuple[object, object]) -> dict[str, object]:
    return {
        "cert-file": pki.server_cert,
        "key-file": pki.server_key,
        "trusted-ca-file": pki.ca,
        "client-cert-auth": "true",
        "peer-cert-file": member_cert[0],
        "peer-key-file": member_cert[1],
        "peer-trusted-ca-file": pki.ca,
    }


@pytest.fixture(scope="module")
def tls_cluster(pki: PKI) -> Iterator[tuple[JournalNodes, ServerProcess, ServerProcess]]:
    base = make_temp_dir("kvstore-tls-cluster-")
    nodes = JournalNodes(
        base,
        lambda node: [
            "--peer-cert-file", str(pki.server_cert), "--peer-key-file", str(pki.server_key),
            "--peer-trusted-ca-file", str(pki.ca), "--peer-client-cert-auth",
        ],
    )  # fmt: skip
    for n in "abc":
        nodes.start(n)
    members = []
    cert, key = pki.client("root")
    try:
        for name in ("m1", "m2"):
            members.append(
                start_kvstore(
                    name,
                    flags=member_flags(pki, pki.client(f"member-{name}")),
                    extra_args=["--journal-endpoints", nodes.endpoints],
                    tls=(pki.ca, cert, key),
                )
            )
        yield nodes, members[0], members[1]
    finally:
        for m in members:
            m.stop()
        nodes.stop_all()


def test_write_through_one_member_read_through_the_other(
    tls_cluster: tuple[JournalNodes, ServerProcess, ServerProcess],
) -> None:
    _, m1, m2 = tls_cluster
    assert Ctl(m1).run(["put", "/tls/k", "v1"]).as_tuple() == (0, "OK\n", "")
    assert Ctl(m2).run(["get", "/tls/k", "--print-value-only"]).as_tuple() == (0, "v1\n", "")
    resp = rpc.KVStub(m2.channel()).Put(pb.PutRequest(key=b"/tls/k", value=b"v2"), timeout=20)
    got = rpc.KVStub(m1.channel()).Range(pb.RangeRequest(key=b"/tls/k"), timeout=20)
    assert got.kvs[0].value == b"v2" and got.kvs[0].mod_revision == resp.header.revision


@pytest.mark.parametrize("journal_cert", ["none", "foreign"])
def test_member_without_a_valid_journal_certificate_is_refused(
    tls_cluster: tuple[JournalNodes, ServerProcess, ServerProcess], pki: PKI, journal_cert: str
) -> None:
    nodes, _, _ = tls_cluster
    flags: dict[str, object] = {"peer-trusted-ca-file": pki.ca}
    if journal_cert == "foreign":
        assert pki.untrusted is not None
        flags.update({"peer-cert-file": pki.untrusted[0], "peer-key-file": pki.untrusted[1]})
    with pytest.raises(ServerStartError):
        srv = start_kvstore(
            f"intruder-{journal_cert}",
            flags=flags,
            extra_args=["--journal-endpoints", nodes.endpoints],
            ready_timeout_s=8.0,
        )
        srv.stop()
