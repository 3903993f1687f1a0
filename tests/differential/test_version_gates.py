"""The etcd version we report (3.7.0) and every feature a client turns on because of it.

Clients read the version from Maintenance.Status (kube-apiserver's storage/feature FeatureSupportChecker,
per endpoint) or /version. What they gate on it, as far as the kubernetes and etcd sources say:
- kube-apiserver: RequestWatchProgress from 3.4.31 and 3.5.13 (consistent reads from its watch cache);
- kube-apiserver 1.37 (EtcdRangeStream, KEP-5966): KV.RangeStream from 3.7, falling back to Range on
  UNIMPLEMENTED;
- etcd 3.7 itself: AuthStatus answers any client (3.5 and 3.6 wanted an admin).
Each is checked here on our server: the gate opens on the reported version, and the feature behind it works.
"""

from __future__ import annotations

import json
import queue
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc
from tests.servers import ServerProcess, start_kvstore

REPORTED = "3.7.0"
ROOT_PW = "rootpw"


def semver(v: str) -> tuple[int, int, int]:
    major, minor, patch = v.split("-", 1)[0].split(".")
    return int(major), int(minor), int(patch)


def kube_supports_request_watch_progress(version: str) -> bool:
    """kube-apiserver's endpointSupportsRequestWatchProgress (storage/feature/feature_support_checker.go)."""
    v = semver(version)
    return not (v < (3, 4, 31) or (3, 5, 0) <= v < (3, 5, 13))


def kube_supports_range_stream(version: str) -> bool:
    """KEP-5966: "gate on + etcd 3.7 or newer: uses RangeStream"."""
    return semver(version) >= (3, 7, 0)


@pytest.fixture(scope="module")
def ours() -> Iterator[ServerProcess]:
    srv = start_kvstore("version-gates")
    yield srv
    srv.stop()


def test_the_reported_version_is_3_7_everywhere(ours: ServerProcess) -> None:
    status = rpc_pb2_grpc.MaintenanceStub(ours.channel()).Status(pb.StatusRequest(), timeout=10)
    assert (status.version, status.storageVersion) == (REPORTED, REPORTED)
    with urllib.request.urlopen(ours.client_url + "/version", timeout=10) as r:  # HTTP shares the client port
        assert json.loads(r.read()) == {"etcdserver": REPORTED, "etcdcluster": REPORTED, "storage": REPORTED}
    assert kube_supports_request_watch_progress(status.version)
    assert kube_supports_range_stream(status.version)
    # the gate functions themselves, on the versions they were written for
    assert not kube_supports_request_watch_progress("3.5.12") and kube_supports_request_watch_progress("3.5.13")
    assert not kube_supports_range_stream("3.6.9")


def test_request_watch_progress_is_earned(ours: ServerProcess) -> None:
    """A progress request answers with the current revision once every event up to it was sent (what kube's
    watch cache relies on; the exact property is tests/differential/test_progress_property.py)."""
    kv = rpc_pb2_grpc.KVStub(ours.channel())
    rev = kv.Put(pb.PutRequest(key=b"/gate/w", value=b"1"), timeout=10).header.revision
    requests: queue.Queue[pb.WatchRequest | None] = queue.Queue()
    requests.put(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"/gate/w", start_revision=rev)))

    def feed() -> Iterator[pb.WatchRequest]:
        while (r := requests.get()) is not None:
            yield r

    stream = rpc_pb2_grpc.WatchStub(ours.channel()).Watch(feed(), timeout=20)
    got: list[pb.WatchResponse] = []
    try:
        for resp in stream:
            got.append(resp)
            if resp.created:
                continue
            if resp.events:
                requests.put(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
                continue
            break  # the progress notification: no events, not created, not canceled
    finally:
        requests.put(None)
        stream.cancel()
    events = [e for r in got for e in r.events]
    assert [e.kv.mod_revision for e in events] == [rev]
    progress = got[-1]
    assert not progress.events and not progress.canceled and progress.watch_id == -1
    assert progress.header.revision == rev


def test_range_stream_is_earned(ours: ServerProcess) -> None:
    kv = rpc_pb2_grpc.KVStub(ours.channel())
    txn = pb.TxnRequest(success=[
        pb.RequestOp(request_put=pb.PutRequest(key=b"/gate/r/%03d" % i, value=b"v" * 100)) for i in range(100)
    ])  # fmt: skip
    kv.Txn(txn, timeout=10)
    req = pb.RangeRequest(key=b"/gate/r/", range_end=b"/gate/r0")
    want = kv.Range(req, timeout=10)
    merged = pb.RangeResponse()
    for chunk in kv.RangeStream(req, timeout=10):
        merged.MergeFrom(chunk.range_response)
    assert merged == want and merged.count == 100


def test_auth_status_answers_any_client(ours: ServerProcess) -> None:
    auth = rpc_pb2_grpc.AuthStub(ours.channel())
    auth.UserAdd(pb.AuthUserAddRequest(name="root", password=ROOT_PW), timeout=10)
    auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=10)
    auth.AuthEnable(pb.AuthEnableRequest(), timeout=10)
    anonymous = auth.AuthStatus(pb.AuthStatusRequest(), timeout=10)
    assert anonymous.enabled and anonymous.authRevision > 0
    token = auth.Authenticate(pb.AuthenticateRequest(name="root", password=ROOT_PW), timeout=10).token
    as_root = auth.AuthStatus(pb.AuthStatusRequest(), metadata=[("token", token)], timeout=10)
    assert (as_root.enabled, as_root.authRevision) == (True, anonymous.authRevision)
    with pytest.raises(grpc.RpcError) as bad:  # a token that is sent is still checked
        auth.AuthStatus(pb.AuthStatusRequest(), metadata=[("token", "forged")], timeout=10)
    assert bad.value.details() == "etcdserver: invalid auth token"
    with pytest.raises(grpc.RpcError) as denied:  # everything else still wants a user
        rpc_pb2_grpc.KVStub(ours.channel()).Range(pb.RangeRequest(key=b"/gate/r/000"), timeout=10)
    assert denied.value.details() == "etcdserver: user name is empty"
    auth.AuthDisable(pb.AuthDisableRequest(), metadata=[("token", token)], timeout=10)
