"""The HTTP endpoints etcd serves beside gRPC on the client URL (/health, /version), compared.

etcd 3.5.1 has no /livez and /readyz (3.5.11+), so those are only checked on our server."""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.request
from typing import Any

import grpc
import pytest

from proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from tests.differential.harness import PairPool

HTTP_TIMEOUT_S = 5.0


def _get(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r:
            body = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        body, status = e.read(), e.code
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
        return {"error": type(e).__name__}
    try:
        return {"status": status, "json": json.loads(body)}
    except ValueError:
        return {"status": status, "body": body[:80].decode(errors="replace")}


def _health(base: str) -> dict[str, Any]:
    return {p: _get(base + p) for p in ("/health", "/health?serializable=true", "/health?exclude=NOSPACE")}


def _version_shape(base: str) -> Any:
    r = _get(base + "/version")
    if "json" not in r:
        return r
    return {"status": r["status"], "keys": sorted(k for k in r["json"] if k != "storage")}  # storage: 3.6 only


def test_health_and_version_on_the_client_url(diff_pool: PairPool) -> None:
    pair = diff_pool.shared()
    got = {s.kind + ("-ref" if s is pair.a else ""): (_health(s.client_url), _version_shape(s.client_url))
           for s in (pair.a, pair.b)}
    a, b = got.values()
    assert a == b, f"etcd serves these beside gRPC on the client URL:\n{json.dumps(got, indent=1)}"


def test_health_reports_the_nospace_alarm(diff_pool: PairPool) -> None:
    pair = diff_pool.fresh({"quota-backend-bytes": 100_000})
    try:
        out = []
        for s in (pair.a, pair.b):
            kv = rpc_pb2_grpc.KVStub(s.channel())
            with pytest.raises(grpc.RpcError):
                kv.Put(rpc_pb2.PutRequest(key=b"big", value=b"x" * 150_000), timeout=10)
            base = getattr(s, "metrics_url", s.client_url)  # where each serves HTTP today
            out.append(_health(base))
        assert out[0] == out[1], json.dumps(out, indent=1)
    finally:
        pair.stop()


def test_our_metrics_url_serves_health_livez_readyz(diff_pool: PairPool) -> None:
    b = diff_pool.shared().b
    if b.kind != "kvstore":
        pytest.skip("our server only")
    for path in ("/health", "/livez", "/readyz", "/version", "/metrics"):
        r = _get(b.metrics_url + path)  # type: ignore[attr-defined]
        assert r.get("status") == 200, (path, r)


def _metric_names(text: str) -> set[str]:
    names = set(re.findall(r"(?m)^# TYPE (\S+)", text))
    for n in re.findall(r"(?m)^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text):
        names.add(re.sub(r"_(bucket|sum|count)$", "", n) if n not in names else n)
    return names


# what etcd alerts and dashboards (etcd-mixin) and `etcdctl check datascale` read first
METRICS_EXPECTED = (
    "etcd_server_has_leader",
    "etcd_server_is_leader",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_quota_backend_bytes",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_debugging_mvcc_keys_total",
)


def test_metric_names_are_etcds(diff_pool: PairPool) -> None:
    """Every metric we expose carries a name etcd also exposes (or a process_/python_ one), and the ones
    monitoring reads first exist."""
    pair = diff_pool.shared()
    texts = []
    for s in (pair.a, pair.b):
        with urllib.request.urlopen(getattr(s, "metrics_url", s.client_url) + "/metrics", timeout=5) as r:
            texts.append(r.read().decode())
    etcd_names, ours = _metric_names(texts[0]), _metric_names(texts[1])
    foreign = sorted(n for n in ours - etcd_names if not n.startswith(("process_", "python_", "kvstore_")))
    missing = [n for n in METRICS_EXPECTED if n not in ours]
    assert not foreign and not missing, f"names etcd does not have: {foreign}; missing: {missing}"
