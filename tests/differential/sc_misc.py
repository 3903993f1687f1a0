"""Compaction, maintenance, limits (request size, txn ops, quota) and malformed payloads."""

from __future__ import annotations

from typing import Any

import grpc

from tests.differential.harness import scenario
from tests.differential.normalize import LID, PREFIX_END, R, rpc_error
from tests.differential.session import Session
from tests.differential.steps import (
    Step,
    compact,
    custom,
    delete,
    expect36,
    grant,
    op_put,
    put,
    range_,
    txn,
    unary,
    watch_create,
    watch_open,
    watch_recv,
)

# ------------------------------------------------------------------------------------------------ compaction


@scenario()
def sc_compact_then_read_history() -> list:
    return [put("k", "1"), put("k", "2"), put("j", "1"), put("k", "3"), compact(R(3)),
            range_("k", revision=R(1)), range_("k", revision=R(2)), range_("k", revision=R(3)),
            range_("k", revision=R(4)), range_("j", revision=R(3)), range_("k")]


@scenario()
def sc_compact_same_revision_twice() -> list:
    return [put("k", "1"), put("k", "2"), compact(R(2)), compact(R(2)), compact(R(1)), compact(R(2), physical=True)]


@scenario()
def sc_compact_future_revision() -> list:
    return [put("k", "1"), compact(R(2)), compact(R(1000)), range_("k")]


@scenario()
def sc_compact_current_revision() -> list:
    # TestV3CompactCurrentRev
    return [put("k", "1"), put("k", "2"), put("k", "3"), compact(R(3)), range_("k"), range_("k", revision=R(3)),
            put("k", "4"), range_("k", revision=R(3))]


@scenario()
def sc_compact_physical() -> list:
    return [put("k", "1"), put("k", "2"), compact(R(2), physical=True), range_("k", revision=R(1)), range_("k")]


@scenario()
def sc_compact_keeps_deleted_key_tombstone_semantics() -> list:
    return [put("k", "1"), delete("k"), put("j", "1"), compact(R(2)), range_("k", revision=R(2)),
            range_("k", revision=R(3)), put("k", "2"), range_("k")]


@scenario()
def sc_compact_range_options_after() -> list:
    return [put("a", "1"), put("b", "1"), put("a", "2"), put("c", "1"), compact(R(3)),
            range_("a", range_end="z", revision=R(3), count_only=True),
            range_("a", range_end="z", revision=R(3), sort_order="DESCEND"),
            range_("a", range_end="z", revision=R(2))]


@scenario(fresh=True)
def sc_compact_fresh_store_revisions() -> list:
    return [compact(0), compact(1), compact(2), put("k", "1"), compact(0), compact(1), compact(2), compact(2),
            range_("k", revision=1), range_("k", revision=2)]


@scenario(fresh=True)
def sc_hashkv_revision_errors() -> list:
    # hash values differ by design (etcd hashes its bbolt pages); revisions and errors are comparable
    return [put("k", "1"), put("k", "2"), put("k", "3"), unary("Compact", {"revision": 3}),
            unary("HashKV", {"revision": 2}), unary("HashKV", {"revision": 100}),
            expect36(unary("HashKV", {"revision": 3}, drop=("hash", "hash_revision")),
                     {"header": {"revision": 4}, "compact_revision": 3},
                     "3.5 refuses HashKV at the compact revision (rev <= compactRev); 3.6 hashByRev allows it"),
            unary("HashKV", {"revision": 0}, drop=("hash", "hash_revision"))]


# ------------------------------------------------------------------------------------------------ maintenance


@scenario()
def sc_status_header_revision() -> list:
    return [put("k", "1"), unary("Status")]


@scenario()
def sc_defragment() -> list:
    return [put("k", "1"), unary("Defragment"), range_("k")]


@scenario()
def sc_alarm_get_none() -> list:
    return [unary("Alarm", {"action": "GET"})]


def _member_list(s: Session) -> Any:
    from proto.etcdserverpb import rpc_pb2

    try:
        resp = s.cluster.MemberList(rpc_pb2.MemberListRequest(), timeout=10)
    except grpc.RpcError as e:
        return rpc_error(e)
    # names, ids and URLs differ by server; compare the shape and that the client URL is the one we dial
    endpoint = f"http://{s.server.endpoint}" if s.server is not None else ""
    return {
        "header": s.norm(resp)["header"],
        "members": [{"id_set": m.ID != 0, "has_name": bool(m.name), "clientURLs_is_endpoint":
                     list(m.clientURLs) == [endpoint], "isLearner": m.isLearner} for m in resp.members],
    }


@scenario()
def sc_member_list() -> list:
    return [put("k", "1"), custom("MemberList", _member_list)]


@scenario()
def sc_move_leader_to_unknown_member() -> list:
    return [unary("MoveLeader", {"targetID": 12345})]


# ------------------------------------------------------------------------------------------------ limits


@scenario(flags={"max-txn-ops": 4})
def sc_max_txn_ops_flag() -> list:
    return [txn([], [op_put(f"k{i}", "v") for i in range(4)]), txn([], [op_put(f"k{i}", "v") for i in range(5)]),
            range_("k", range_end=PREFIX_END, count_only=True)]


def _code_only(step: Step) -> Step:
    """Compare only the gRPC code: the message comes from the gRPC library, which differs (Go vs Python)."""
    inner = step.run

    def run(s: Session) -> Any:
        out = inner(s)
        if isinstance(out, dict) and "error" in out:
            return {"error": {"code": out["error"]["code"]}}
        return out

    step.run = run
    step.label += " (code only)"
    return step


@scenario(flags={"max-request-bytes": 4096})
def sc_request_too_large() -> list:
    return [put("ok", "v" * 3000), put("big", "v" * 5000), range_("big"),
            txn([], [op_put(f"t{i}", "v" * 1000) for i in range(5)]),
            txn([], [op_put(f"t{i}", "v" * 500) for i in range(5)]),
            _code_only(put("huge", "v" * (4096 + 600 * 1024))),
            range_("ok", keys_only=True), put("after", "1")]


@scenario(flags={"quota-backend-bytes": 100_000},
          note="db size accounting differs (etcd: bbolt file size, updated at backend commit); the scenario uses "
               "one request whose own cost exceeds the quota, which trips both")
def sc_nospace_quota() -> list:
    return [put("small", "1"),
            put("big", "x" * 150_000),
            unary("Alarm", {"action": "GET"}),
            put("small", "2"),
            txn([], [op_put("t", "1")]),
            txn([], [], [op_put("t", "1")]),
            grant(60, LID(1)),
            range_("small"),
            delete("small"),
            txn([], [{"request_range": {"key": "small"}}]),
            compact(R(1)),
            unary("Defragment"),
            unary("Alarm", {"action": "DEACTIVATE", "memberID": 0, "alarm": "NOSPACE"}),
            unary("Alarm", {"action": "GET"}),
            put("small", "3"),
            grant(60, LID(2))]


# ------------------------------------------------------------------------------------------------ malformed


def _raw(method: str, payload: bytes) -> Step:
    """Send raw bytes to a unary method through a generic channel; compare the code (messages come from the
    gRPC library), or the decoded response when it parses."""

    def run(s: Session) -> Any:
        fn = s.channel.unary_unary(method)
        try:
            fn(payload, timeout=10)
            return {"ok": True}
        except grpc.RpcError as e:
            return {"error": {"code": e.code().name}}

    return Step(f"raw {method} {payload[:24]!r}", run)


def _raw_with_message(method: str, payload: bytes) -> Step:
    def run(s: Session) -> Any:
        try:
            s.channel.unary_unary(method)(payload, timeout=10)
            return {"ok": True}
        except grpc.RpcError as e:
            return rpc_error(e)

    return Step(f"raw {method} {payload[:24]!r}", run)


@scenario(note="a payload that does not parse: etcd (grpc-go) answers INTERNAL 'grpc: error unmarshalling "
               "request: ...'; only the code is compared")
def sc_malformed_truncated_payloads() -> list:
    return [put("k", "v"),
            _raw("/etcdserverpb.KV/Range", b"\x0a\xff"),
            _raw("/etcdserverpb.KV/Put", b"\x0a\x05ab"),
            _raw("/etcdserverpb.KV/Txn", b"\x12\xff\xff\xff\xff\x0f"),
            _raw("/etcdserverpb.KV/DeleteRange", b"\xff\xff\xff\xff"),
            _raw("/etcdserverpb.Lease/LeaseGrant", b"\x08"),
            _raw("/etcdserverpb.Maintenance/Status", b"\x0a\xff"),
            range_("k")]


@scenario(note="a field with the wrong wire type: grpc-go (gogoproto) rejects the message (INTERNAL), "
               "upb skips it as an unknown field")
def sc_malformed_wrong_wire_type() -> list:
    return [put("k", "v"),
            _raw("/etcdserverpb.KV/Range", b"\x08\x01"),
            _raw("/etcdserverpb.KV/Put", b"\x0a\x01k\x10\x05"),
            range_("k")]


@scenario()
def sc_malformed_unknown_fields_ignored() -> list:
    key = b"/diff/malformed_unknown_fields_ignored/k"
    range_req = b"\x0a" + bytes([len(key)]) + key + b"\xa0\x06\x01"  # key + unknown field 100 (varint)
    return [put("k", "v"), _raw_with_message("/etcdserverpb.KV/Range", range_req),
            _raw_with_message("/etcdserverpb.KV/Range", b"\xa0\x06\x01"), range_("k")]


@scenario(note="method names are part of the wire format; only the code is compared")
def sc_unknown_method() -> list:
    # (KV/RangeStream was unknown here until we served etcd 3.7's; tests/differential/test_rangestream.py)
    return [_raw("/etcdserverpb.KV/RangeAll", b""), _raw("/etcdserverpb.Nope/Nope", b""),
            _raw("/etcdserverpb.KV/range", b""), put("k", "v"), range_("k")]


def _raw_watch(s: Session) -> Any:
    """Malformed bytes on the Watch stream: the stream ends with an error; the server keeps serving."""
    call = s.channel.stream_stream("/etcdserverpb.Watch/Watch")(iter([b"\x0a\xff\xff"]), timeout=10)
    try:
        got = list(call)
        return {"ok": len(got)}
    except grpc.RpcError as e:
        return {"error": {"code": e.code().name}}


@scenario()
def sc_malformed_watch_stream() -> list:
    return [custom("raw bytes on Watch", _raw_watch), put("k", "v"), range_("k"), watch_open(),
            watch_create(key="k"), watch_recv(), put("k", "2"), watch_recv()]


@scenario()
def sc_empty_key_errors() -> list:
    return [range_(b""), put(b"", "v"), delete(b""), txn([{"key": b"", "target": "VERSION", "result": "EQUAL"}]),
            unary("Range", {"key": b"", "range_end": b"\0"})]


@scenario(note="member changes on a single node: only requests that cannot change etcd's membership are sent "
               "(an added member would cost the reference its quorum)",
          deliberate="issue 3: member calls give clear errors until multi-member support exists")
def sc_member_change_errors() -> list:
    return [unary("MemberAdd", {"peerURLs": ["not a url"]}),
            unary("MemberAdd", {"peerURLs": []}),
            unary("MemberRemove", {"ID": 12345}),
            unary("MemberUpdate", {"ID": 12345, "peerURLs": ["http://127.0.0.1:1"]}),
            unary("MemberPromote", {"ID": 12345}),
            put("k", "v")]


@scenario(deliberate="issue 3: Downgrade answers honestly that it is not supported")
def sc_downgrade_errors() -> list:
    return [unary("Downgrade", {"action": "VALIDATE", "version": "not-a-version"}),
            unary("Downgrade", {"action": "CANCEL"}),
            put("k", "v")]


@scenario(flags={"max-request-bytes": 4096},
          note="etcd compares the size of the marshalled raft request (the Put plus a small header with a "
               "request id) with --max-request-bytes; with a 1-byte key etcd accepts values up to 4073 bytes")
def sc_request_size_boundary() -> list:
    return [put(b"k", "x" * 4000), put(b"k", "x" * 4060), put(b"k", "x" * 4070), put(b"k", "x" * 4090),
            txn([], [op_put(b"t", "x" * 4060)]), range_(b"k", keys_only=True)]


def _health(s: Session) -> Any:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        r = health_pb2_grpc.HealthStub(s.channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return {"status": health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)}
    except grpc.RpcError as e:
        return rpc_error(e)


@scenario()
def sc_grpc_health_service() -> list:
    return [custom("grpc.health.v1.Health/Check", _health)]


@scenario(note="responses are not limited by the request limit (etcd: MaxSendMsgSize = MaxInt32)")
def sc_large_range_response() -> list:
    values = [put(f"big/{i}", chr(ord("a") + i) * 1_000_000) for i in range(6)]
    return [*values, range_("big/", range_end=PREFIX_END, keys_only=True),
            range_("big/", range_end=PREFIX_END), delete("big/", range_end=PREFIX_END, prev_kv=True)]
