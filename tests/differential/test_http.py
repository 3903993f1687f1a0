"""The HTTP endpoints etcd serves beside gRPC on the client URL (/health, /version), compared.

etcd 3.5.1 has no /livez and /readyz (3.5.11+), so those are only checked on our server."""

from __future__ import annotations

import http.client
import json
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
