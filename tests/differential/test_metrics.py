"""/metrics compared with etcd's: the same requests leave the same gRPC series (names, types,
labels, counts), and the histograms etcd dashboards read are histograms on both servers."""

from __future__ import annotations

import re
import urllib.request

import grpc
import pytest

from proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from tests.differential.harness import PairPool

GRPC_FAMILIES = ("grpc_server_started_total", "grpc_server_handled_total", "grpc_server_handling_seconds_count")


def _scrape(server: object) -> str:
    base = getattr(server, "metrics_url", getattr(server, "client_url", ""))
    with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return str(r.read().decode())


def _samples(text: str, family: str, service: str) -> dict[str, float]:
    """family{labels} -> value, for one gRPC service (label order normalised)."""
    out = {}
    for labels, value in re.findall(rf"(?m)^{family}\{{([^}}]*)\}} (\S+)$", text):
        pairs = sorted(re.findall(r'(\w+)="([^"]*)"', labels))
        if ("grpc_service", service) in pairs:
            out[",".join(f"{k}={v}" for k, v in pairs)] = float(value)
    return out


def _types(text: str) -> dict[str, str]:
    return dict(re.findall(r"(?m)^# TYPE (\S+) (\S+)$", text))


def test_grpc_server_metrics_match_etcds(diff_pool: PairPool) -> None:
    pair = diff_pool.fresh({"metrics": "extensive"})
    try:
        texts = []
        for s in (pair.a, pair.b):
            kv = rpc_pb2_grpc.KVStub(s.channel())
            kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"v"), timeout=10)
            kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"v2"), timeout=10)
            kv.Range(rpc_pb2.RangeRequest(key=b"k"), timeout=10)
            kv.Compact(rpc_pb2.CompactionRequest(revision=3), timeout=10)
            with pytest.raises(grpc.RpcError) as err:  # OutOfRange: compacted
                kv.Range(rpc_pb2.RangeRequest(key=b"k", revision=2), timeout=10)
            assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
            with pytest.raises(grpc.RpcError) as err:  # InvalidArgument: empty key
                kv.Put(rpc_pb2.PutRequest(key=b"", value=b"v"), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            texts.append(_scrape(s))
        for family in GRPC_FAMILIES:
            etcd, ours = (_samples(t, family, "etcdserverpb.KV") for t in texts)
            # etcd 3.5.1 has no KV.RangeStream (3.7): its series are ours alone.
            ours = {labels: v for labels, v in ours.items() if "grpc_method=RangeStream," not in labels}
            assert etcd == ours, (family, etcd, ours)
        etcd_types, our_types = _types(texts[0]), _types(texts[1])
        # Every family both servers have is of the same type (counter, gauge, histogram).
        differ = {n: (etcd_types[n], t) for n, t in our_types.items() if n in etcd_types and etcd_types[n] != t}
        assert not differ, differ
        for name in ("grpc_server_handling_seconds", "etcd_disk_wal_fsync_duration_seconds",
                     "etcd_disk_backend_commit_duration_seconds"):  # fmt: skip
            assert our_types.get(name) == "histogram", name
    finally:
        pair.stop()


def test_basic_metrics_have_no_handling_time_histogram(diff_pool: PairPool) -> None:
    """etcd's default --metrics basic: no grpc_server_handling_seconds (it costs a histogram per method)."""
    pair = diff_pool.shared()
    for s in (pair.a, pair.b):
        rpc_pb2_grpc.KVStub(s.channel()).Range(rpc_pb2.RangeRequest(key=b"k"), timeout=10)
    texts = [_scrape(s) for s in (pair.a, pair.b)]
    assert ["grpc_server_handling_seconds" in t for t in texts] == [False, False]
    assert all("grpc_server_handled_total{" in t for t in texts)
