"""The JSON gateway (POST /v3/...) against a real etcd's: same status, same JSON, same error bodies.

etcd 3.5.1 serves grpc-gateway v1. Where etcd 3.6 (grpc-gateway v2) differs, the error body is
`{"code":N,"message":"...","details":[]}` (no "error" key); the success bodies and paths are the same.
Headers that name the member (cluster_id, member_id, raft_term) are masked; everything else,
revisions included, is compared byte for byte after parsing.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.differential.harness import Pair, PairPool
from tests.servers import free_port, start_kvstore

HTTP_TIMEOUT_S = 10.0
MASKED = ("cluster_id", "member_id", "raft_term")
MAX_REQUEST_BYTES = 4096
ETCD_36_ONLY = {"dbSizeQuota", "storageVersion"}  # StatusResponse fields etcd 3.5.1 does not have


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _mask(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: ("<masked>" if k in MASKED else _mask(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_mask(v) for v in obj]
    return obj


def post(
    base: str, path: str, body: bytes | str, conn: http.client.HTTPConnection | None = None, token: str = ""
) -> dict[str, Any]:
    data = body.encode() if isinstance(body, str) else body
    own = conn is None
    host = base.split("//", 1)[1]
    c = conn or http.client.HTTPConnection(host, timeout=HTTP_TIMEOUT_S)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = token
    try:
        c.request("POST", path, body=data, headers=headers)
        r = c.getresponse()
        raw = r.read()
        out: dict[str, Any] = {"status": r.status, "type": r.getheader("Content-Type")}
        try:
            out["json"] = _mask(json.loads(raw))
        except ValueError:
            out["body"] = raw.decode(errors="replace")
        return out
    finally:
        if own:
            c.close()


@pytest.fixture(scope="module")
def pair(diff_pool: PairPool) -> Iterator[Pair]:
    p = diff_pool.fresh({"max-request-bytes": MAX_REQUEST_BYTES})
    yield p
    p.stop()


def both(pair: Pair, path: str, body: bytes | str) -> tuple[dict[str, Any], dict[str, Any]]:
    return post(pair.a.client_url, path, body), post(pair.b.client_url, path, body)


def assert_same(pair: Pair, calls: list[tuple[str, str]]) -> None:
    diffs = []
    for path, body in calls:
        a, b = both(pair, path, body)
        if a != b:
            diffs.append({"call": [path, body[:200]], "etcd": a, "ours": b})
    assert not diffs, json.dumps(diffs, indent=1)


def test_kv_calls_answer_etcds_json(pair: Pair) -> None:
    k, k2, p = b64("/gw/kv/a"), b64("/gw/kv/b"), b64("/gw/kv/")
    end = b64("/gw/kv0")
    assert_same(pair, [
        ("/v3/kv/put", json.dumps({"key": k, "value": b64("one")})),
        ("/v3/kv/put", json.dumps({"key": k2, "value": b64("two"), "prev_kv": True})),
        ("/v3/kv/put", json.dumps({"key": k, "value": b64("uno"), "prev_kv": True})),
        ("/v3/kv/range", json.dumps({"key": k})),
        ("/v3/kv/range", json.dumps({"key": p, "range_end": end})),
        ("/v3/kv/range", json.dumps({"key": p, "range_end": end, "limit": 1, "sort_order": "DESCEND"})),
        ("/v3/kv/range", json.dumps({"key": p, "range_end": end, "keys_only": True, "sort_target": "MOD"})),
        ("/v3/kv/range", json.dumps({"key": p, "range_end": end, "count_only": True})),
        ("/v3/kv/range", json.dumps({"key": p, "rangeEnd": end, "sortOrder": 2, "limit": "1"})),  # JSON names
        ("/v3/kv/range", json.dumps({"key": k, "revision": 2})),
        ("/v3/kv/range", json.dumps({"key": k, "revision": 1000})),
        ("/v3/kv/range", json.dumps({"key": b64("/gw/none")})),
        ("/v3/kv/txn", json.dumps({
            "compare": [{"key": k, "result": "EQUAL", "target": "VALUE", "value": b64("uno")}],
            "success": [{"request_put": {"key": k, "value": b64("tres")}}, {"request_range": {"key": k}}],
            "failure": [{"request_delete_range": {"key": k}}],
        })),
        ("/v3/kv/txn", json.dumps({
            "compare": [{"key": k, "target": "VERSION", "result": "GREATER", "version": 100}],
            "failure": [{"request_range": {"key": p, "range_end": end}}],
        })),
        ("/v3/kv/deleterange", json.dumps({"key": k2, "prev_kv": True})),
        ("/v3/kv/deleterange", json.dumps({"key": k2})),
        ("/v3/kv/compaction", json.dumps({"revision": 3})),
        ("/v3/kv/range", json.dumps({"key": k, "revision": 2})),
        ("/v3/kv/compaction", json.dumps({"revision": 3})),
        ("/v3/kv/range", "{}"),
        ("/v3/kv/put", json.dumps({"key": ""})),
        ("/v3/kv/range", ""),
        ("/v3/kv/range", "null"),
    ])


BAD_BODIES = [
    '{"key":',
    '{"key":"Zm9v"',
    '{"key":"Zm9v',
    '{"key":5}',
    '{"key":["Zm9v"]}',
    '{"key":"Zm9v!"}',
    '{"key":"Zm9"}',
    '{"key":"Zg="}',
    '{"key":"Zm 9v"}',
    '{"key":"Zm9v","bogus":1}',
    '{"key":"Zm9v","limit":"abc"}',
    '{"key":"Zm9v","limit":"0x10"}',
    '{"key":"Zm9v","limit":""}',
    '{"key":"Zm9v","limit":1.5}',
    '{"key":"Zm9v","limit":1e3}',
    '{"key":"Zm9v","limit":99999999999999999999}',
    '{"key":"Zm9v","limit":true}',
    '{"key":"Zm9v","limit":[1]}',
    '{"key":"Zm9v","limit":{}}',
    '{"key":"Zm9v","limit":null}',
    '{"key":"Zm9v","keys_only":1}',
    '{"key":"Zm9v","count_only":"true"}',
    '{"key":"Zm9v","sort_order":"BOGUS"}',
    '{"key":"Zm9v","sort_order":"descend"}',
    '{"key":"Zm9v","sort_order":true}',
    '{"key":"Zm9v","sort_order":1.5}',
    # '{"key":"Zm9v","sort_order":7}': 3.5.1 ranges; 3.6 (whose checks we keep) says "invalid sort option"
    '[1]',
    '"x"',
    '{"key":"Zm9v"} trailing',
    '{"key" "Zm9v"}',
    '{"key":"Zm9v" "a":1}',
    '{key:1}',
    '{"key":"Zm9v",}',
    '{"key":"Zm9v\\x"}',
    'nope',
    'tru',
    'falsy',
]

BAD_TXNS = [
    '{"compare":{"key":"Zm9v"}}',
    '{"compare":[{"key":"Zm9v","result":"BAD"}]}',
    '{"compare":[5]}',
    '{"compare":[1 2]}',
    '{"success":[{"request_put":"x"}]}',
]


def test_bad_json_gets_etcds_status_and_error_body(pair: Pair) -> None:
    calls = [("/v3/kv/range", b) for b in BAD_BODIES] + [("/v3/kv/txn", b) for b in BAD_TXNS]
    calls += [("/v3/lease/grant", '{"TTL":"x"}'), ("/v3/auth/user/add", '{"name":5}'),
              ("/v3/cluster/member/add", '{"peerURLs":"x"}')]
    assert_same(pair, calls)


def test_oversized_bodies_are_refused_as_etcd_refuses_them(pair: Pair) -> None:
    just_over = json.dumps({"key": b64("/gw/big"), "value": "A" * (2 * MAX_REQUEST_BYTES)})  # server's limit
    past_grpc = json.dumps({"key": b64("/gw/big"), "value": "A" * 800_000})  # gRPC's message limit
    assert_same(pair, [("/v3/kv/put", just_over), ("/v3/kv/put", past_grpc)])
    a, b = both(pair, "/v3/kv/range", json.dumps({"key": b64("/gw/big")}))
    assert a == b and "kvs" not in a["json"], (a, b)


def test_unknown_paths_and_methods(pair: Pair) -> None:
    out = []
    for s in (pair.a, pair.b):
        c = http.client.HTTPConnection(s.client_url.split("//")[1], timeout=HTTP_TIMEOUT_S)
        got = []
        for method, path in (("POST", "/v3/nope"), ("GET", "/v3/kv/range"), ("PUT", "/v3/kv/range")):
            c.request(method, path, body=b"{}")
            r = c.getresponse()
            got.append((method, path, r.status, r.read()))
        c.close()
        out.append(got)
    assert out[0] == out[1], out


def test_lease_maintenance_cluster_auth(pair: Pair) -> None:
    assert_same(pair, [
        ("/v3/lease/grant", '{"TTL":30,"ID":7001}'),
        ("/v3/lease/grant", '{"TTL":30,"ID":7001}'),
        ("/v3/kv/put", json.dumps({"key": b64("/gw/lease/k"), "value": b64("v"), "lease": 7001})),
        ("/v3/lease/leases", "{}"),
        ("/v3/kv/lease/leases", "{}"),
        ("/v3/lease/revoke", '{"ID":7001}'),
        ("/v3/kv/lease/revoke", '{"ID":7001}'),
        ("/v3/lease/timetolive", '{"ID":7001}'),
        ("/v3/kv/range", json.dumps({"key": b64("/gw/lease/k")})),
        ("/v3/maintenance/alarm", '{"action":"GET"}'),
        ("/v3/auth/authenticate", '{"name":"a","password":"b"}'),
    ])
    # values that name the server differ; the fields present do not
    for path in ("/v3/maintenance/status", "/v3/cluster/member/list"):
        a, b = both(pair, path, "{}")
        assert a["status"] == b["status"] == 200, (path, a, b)
        assert sorted(a["json"]) == sorted(set(b["json"]) - ETCD_36_ONLY), (path, a, b)
    # etcd 3.5.1's gateway has no /v3/maintenance/hashkv (404); 3.6's has, and so do we
    ours = post(pair.b.client_url, "/v3/maintenance/hashkv", "{}")
    assert ours["status"] == 200 and {"hash", "compact_revision", "hash_revision"} <= set(ours["json"]), ours
    a, b = both(pair, "/v3/cluster/member/list", "{}")
    # a member that advertises no peer URLs (ours, with no --initial-advertise-peer-urls) omits the field
    assert [sorted(set(m) - {"peerURLs"}) for m in a["json"]["members"]] == [
        sorted(set(m) - {"peerURLs"}) for m in b["json"]["members"]], (a, b)


def test_keep_alive_serves_many_requests_on_one_connection(pair: Pair) -> None:
    for s in (pair.a, pair.b):
        c = http.client.HTTPConnection(s.client_url.split("//")[1], timeout=HTTP_TIMEOUT_S)
        for i in range(5):
            r = post(s.client_url, "/v3/kv/put", json.dumps({"key": b64(f"/gw/ka/{i}"), "value": b64("v")}), c)
            assert r["status"] == 200, r
        r = post(s.client_url, "/v3/kv/range", '{"key":', c)  # an error answer keeps the connection too
        assert r["status"] == 400, r
        r = post(s.client_url, "/v3/kv/range",
                 json.dumps({"key": b64("/gw/ka/"), "range_end": b64("/gw/ka0"), "count_only": True}), c)
        assert r["json"]["count"] == "5", r
        c.close()


def stream_lines(base: str, path: str, body: str, want: int, then: Any = None) -> list[Any]:
    """POST a streaming call, read `want` JSON lines of its chunked answer (calling then() after the
    first), and close."""
    host, port = base.split("//")[1].split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=HTTP_TIMEOUT_S)
    try:
        c.request("POST", path, body=body.encode(), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            return [{"status": r.status, "json": _mask(json.loads(r.read()))}]
        out = []
        while len(out) < want:
            line = r.readline()
            if not line:
                break
            out.append(_mask(json.loads(line)))
            if then is not None and len(out) == 1:
                then()
        return out
    except TimeoutError as e:
        return [{"timeout": repr(e)}]
    finally:
        c.close()


def test_watch_streams_json_objects(pair: Pair) -> None:
    k = b64("/gw/w/k")
    got = []
    for s in (pair.a, pair.b):
        post(s.client_url, "/v3/kv/put", json.dumps({"key": k, "value": b64("before")}))
    rev = int(post(pair.a.client_url, "/v3/kv/range", json.dumps({"key": k}))["json"]["kvs"][0]["mod_revision"])
    body = json.dumps({"create_request": {"key": k, "start_revision": rev}}) + json.dumps(
        {"create_request": {"key": b64("/gw/w/"), "range_end": b64("/gw/w0"), "prev_kv": True}})
    for s in (pair.a, pair.b):
        def write(url: str = s.client_url) -> None:
            time.sleep(0.3)
            post(url, "/v3/kv/put", json.dumps({"key": k, "value": b64("after")}))
        got.append(stream_lines(s.client_url, "/v3/watch", body, 5, then=write))
    # the write after the watches lands in both, in either order of the two watchers: compare as sets
    norm = [sorted(json.dumps(x, sort_keys=True) for x in g) for g in got]
    assert norm[0] == norm[1], json.dumps(got, indent=1)
    bad = [stream_lines(s.client_url, "/v3/watch", '{"create_request":{"key":5}}', 1) for s in (pair.a, pair.b)]
    assert bad[0] == bad[1], bad


def test_lease_keepalive_streams_and_ends_with_the_body(pair: Pair) -> None:
    for s in (pair.a, pair.b):
        post(s.client_url, "/v3/lease/grant", '{"TTL":60,"ID":7002}')
    got = []
    for s in (pair.a, pair.b):
        lines = stream_lines(s.client_url, "/v3/lease/keepalive", '{"ID":7002}{"ID":7003}', 3)
        got.append(lines)
    assert got[0] == got[1], got
    assert len(got[0]) == 2, got  # the stream ends when the requests do


def _watchers(metrics_url: str) -> int:
    with urllib.request.urlopen(metrics_url + "/metrics", timeout=HTTP_TIMEOUT_S) as r:
        text = r.read().decode()
    return int(re.search(r"(?m)^etcd_debugging_mvcc_watcher_total (\d+)", text).group(1))  # type: ignore[union-attr]


def test_a_gateway_watch_ends_when_its_client_goes(pair: Pair) -> None:
    ours = pair.b
    if ours.kind != "kvstore":
        pytest.skip("our server only")
    before = _watchers(ours.metrics_url)  # type: ignore[attr-defined]
    host, port = ours.client_url.split("//")[1].split(":")
    conns = []
    for _ in range(3):
        c = http.client.HTTPConnection(host, int(port), timeout=HTTP_TIMEOUT_S)
        c.request("POST", "/v3/watch", body=b'{"create_request":{"key":"Zm9v"}}')
        r = c.getresponse()
        assert json.loads(r.readline())["result"]["created"] is True
        conns.append(c)
    assert _watchers(ours.metrics_url) == before + 3  # type: ignore[attr-defined]
    for c in conns:
        c.close()
    deadline = time.monotonic() + HTTP_TIMEOUT_S
    while _watchers(ours.metrics_url) != before and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)
    assert _watchers(ours.metrics_url) == before  # type: ignore[attr-defined]


def test_gateway_on_client_http_urls_and_not_on_metrics_urls() -> None:
    http_port = free_port()
    ours = start_kvstore("gw-http-urls", extra_args=[f"--listen-client-http-urls=http://127.0.0.1:{http_port}"])
    try:
        r = post(f"http://127.0.0.1:{http_port}", "/v3/kv/put", json.dumps({"key": b64("k"), "value": b64("v")}))
        assert r["status"] == 200 and r["json"]["header"]["revision"], r
        m = post(ours.metrics_url, "/v3/kv/range", json.dumps({"key": b64("k")}))  # type: ignore[attr-defined]
        assert m["status"] == 405 or m["status"] == 404, m  # etcd's metrics URLs serve no gateway
    finally:
        ours.stop()


def test_maintenance_snapshot_streams_the_file_as_json(pair: Pair) -> None:
    """Each server's own snapshot format differs; the stream's shape and its checksum trailer do not."""
    import hashlib

    for s in (pair.a, pair.b):
        lines = stream_lines(s.client_url, "/v3/maintenance/snapshot", "{}", 10_000)
        results = [line["result"] for line in lines]
        assert results and all(set(r) <= {"header", "remaining_bytes", "blob", "version"} for r in results), lines[:2]
        data = b"".join(base64.b64decode(r.get("blob", "")) for r in results)
        assert "remaining_bytes" not in results[-1]  # 0: omitted
        assert hashlib.sha256(data[:-32]).digest() == data[-32:], s.kind


def test_calls_under_auth_carry_the_token_in_the_authorization_header(diff_pool: PairPool) -> None:
    """etcd's gateway hands the Authorization header to the call as its token: with it a user's
    permissions apply, without it the call is refused as an anonymous one."""
    pair = diff_pool.fresh()
    try:
        setup = [
            ("/v3/auth/user/add", '{"name":"root","password":"rootpw"}'),
            ("/v3/auth/user/grant", '{"user":"root","role":"root"}'),
            ("/v3/auth/role/add", '{"name":"root"}'),
            ("/v3/auth/user/grant", '{"user":"root","role":"root"}'),
            ("/v3/auth/user/add", '{"name":"alice","password":"alicepw"}'),
            ("/v3/auth/role/add", '{"name":"gw"}'),
            ("/v3/auth/role/grant", json.dumps(
                {"name": "gw", "perm": {"permType": "READWRITE", "key": b64("/gw/a/"), "range_end": b64("/gw/a0")}})),
            ("/v3/auth/user/grant", '{"user":"alice","role":"gw"}'),
            ("/v3/auth/enable", "{}"),
        ]  # fmt: skip
        for path, body in setup:
            post(pair.a.client_url, path, body)
            post(pair.b.client_url, path, body)
        answers = []
        for server in (pair.a, pair.b):
            auth = post(server.client_url, "/v3/auth/authenticate", '{"name":"alice","password":"alicepw"}')
            token = auth.get("json", {}).get("token", "")
            assert token, auth
            calls = []
            for path, body, with_token in (
                ("/v3/kv/put", json.dumps({"key": b64("/gw/a/k"), "value": b64("v")}), True),
                ("/v3/kv/range", json.dumps({"key": b64("/gw/a/k")}), True),
                ("/v3/kv/put", json.dumps({"key": b64("/gw/b/k"), "value": b64("v")}), True),
                ("/v3/kv/range", json.dumps({"key": b64("/gw/a/k")}), False),
                ("/v3/kv/range", json.dumps({"key": b64("/gw/a/k")}), "not-a-token"),
            ):
                sent = token if with_token is True else (with_token or "")
                answer = post(server.client_url, path, body, token=sent)
                answer.get("json", {}).pop("header", None)
                calls.append(answer)
            answers.append(calls)
        assert answers[0] == answers[1], json.dumps(answers, indent=1)
        # The token made a difference: alice's own prefix works with it, nothing works without it.
        assert [a["status"] for a in answers[1]] == [200, 200, 403, 400, 401], answers[1]
    finally:
        pair.stop()
