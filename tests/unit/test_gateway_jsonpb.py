"""The gateway's cores without a server: routes from the annotations, JSON both ways."""

from __future__ import annotations

import base64
import json
import os
import random
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from kvstore.gateway import jsonpb
from kvstore.gateway.routes import ROUTES
from proto.etcdserverpb import rpc_pb2 as pb


def test_every_method_but_rangestream_has_etcds_path() -> None:
    methods = {(s.name, m.name) for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods}
    routed = {(r.service, r.method) for r in ROUTES.values()}
    assert methods - routed == {("KV", "RangeStream")}  # etcd maps no gateway path for it
    assert ROUTES["/v3/kv/range"].method == "Range"
    assert ROUTES["/v3/kv/lease/revoke"] == ROUTES["/v3/lease/revoke"]  # additional_bindings
    assert ROUTES["/v3/watch"].client_streaming and ROUTES["/v3/watch"].server_streaming
    assert ROUTES["/v3/maintenance/transfer-leadership"].method == "MoveLeader"


def test_base64_fast_path_agrees_with_gos_decoder() -> None:
    for n in range(0, 40):
        raw = os.urandom(n)
        text = base64.b64encode(raw).decode()
        assert jsonpb._go_base64(text) == raw
    with pytest.raises(jsonpb.JsonError, match="input byte 4"):
        jsonpb._go_base64("Zg==Zg==")  # padding in the middle: Go stops there, so do we
    assert jsonpb._go_base64("Zm9v\r\nYmFy") == b"foobar"  # Go skips CR and LF


def test_encoding_is_etcds_compact_json() -> None:
    resp = pb.RangeResponse(count=1)
    resp.header.cluster_id = 2**63 + 5  # uint64 beyond int64
    resp.header.revision = 7
    resp.kvs.add(key=b"k", value=b"<&>", create_revision=7, mod_revision=7, version=1)
    assert jsonpb.encode(resp) == (
        b'{"header":{"cluster_id":"9223372036854775813","revision":"7"},'
        b'"kvs":[{"key":"aw==","create_revision":"7","mod_revision":"7","version":"1","value":"PCY+"}],"count":"1"}'
    )
    assert jsonpb.dumps({"name": "a<b>&c"}) == b'{"name":"a\\u003cb\\u003e\\u0026c"}'  # Go escapes HTML


def test_decoding_takes_both_names_and_numbers_as_strings() -> None:
    req = jsonpb.decode(b'{"key":"YQ==","rangeEnd":"Yg==","limit":"5","sort_order":"DESCEND","x":1}', pb.RangeRequest)
    assert (req.key, req.range_end, req.limit, req.sort_order) == (b"a", b"b", 5, pb.RangeRequest.DESCEND)
    assert jsonpb.decode(b"", pb.RangeRequest) == pb.RangeRequest()
    with pytest.raises(jsonpb.JsonError, match="unexpected EOF"):
        jsonpb.decode(b'{"key":', pb.RangeRequest)


# The direct paths (jsonpb._fill, jsonpb._dict_of) must give exactly what json_format gives: checked on
# random messages of every etcdserverpb type (seeded, so a failure repeats).
RANDOM_MESSAGES_PER_TYPE = 40
RANDOM_DEPTH_MAX = 3


def _random_scalar(rnd: random.Random, field: FieldDescriptor) -> Any:
    t = field.type
    if t == FieldDescriptor.TYPE_BOOL:
        return rnd.random() < 0.5
    if t == FieldDescriptor.TYPE_STRING:
        return "".join(rnd.choice("ab<>&\u00e9\u2028\U0001f600 ") for _ in range(rnd.randrange(6)))
    if t == FieldDescriptor.TYPE_BYTES:
        return rnd.randbytes(rnd.randrange(8))
    if t == FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return rnd.choice([*numbers, 99])  # 99: an unknown value of an open enum
    _, lo, hi = jsonpb._INT_TYPES[t]
    return rnd.choice([lo, hi, 0, 1, -1 if lo < 0 else 2, rnd.randint(lo, hi)])


def _random_message(rnd: random.Random, msg: Message, depth: int = 0) -> Message:
    for field in msg.DESCRIPTOR.fields:
        if rnd.random() < 0.4:
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= RANDOM_DEPTH_MAX:
                continue
            if field.is_repeated:
                for _ in range(rnd.randrange(3)):
                    _random_message(rnd, getattr(msg, field.name).add(), depth + 1)
            else:
                sub = getattr(msg, field.name)
                sub.SetInParent()
                _random_message(rnd, sub, depth + 1)
        elif field.is_repeated:
            getattr(msg, field.name).extend(_random_scalar(rnd, field) for _ in range(rnd.randrange(3)))
        else:
            setattr(msg, field.name, _random_scalar(rnd, field))  # a later oneof member replaces an earlier
    return msg


MESSAGE_TYPES = [getattr(pb, name) for name in sorted(pb.DESCRIPTOR.message_types_by_name)]


@pytest.mark.parametrize("message_type", MESSAGE_TYPES, ids=lambda t: t.DESCRIPTOR.name)
def test_direct_paths_agree_with_json_format(message_type: Any) -> None:
    rnd = random.Random(message_type.DESCRIPTOR.name)
    for _ in range(RANDOM_MESSAGES_PER_TYPE):
        msg = _random_message(rnd, message_type())
        want = json_format.MessageToDict(msg, preserving_proto_field_name=True)
        assert jsonpb.to_dict(msg) == want
        assert list(jsonpb.to_dict(msg)) == list(want)  # same field order: the same bytes
        # decoding what etcd would send (proto names, or JSON names) gives the message back
        for body in (jsonpb.encode(msg), json.dumps(json_format.MessageToDict(msg)).encode()):
            assert jsonpb.decode(body, message_type) == msg


def test_two_members_of_a_oneof_are_left_to_json_format() -> None:
    body = b'{"request_range":{"key":"YQ=="},"request_put":{"key":"YQ=="}}'
    with pytest.raises(json_format.ParseError, match="multiple"):
        json_format.ParseDict(json.loads(body), pb.RequestOp())
    with pytest.raises(json_format.ParseError, match="multiple"):
        jsonpb.decode(body, pb.RequestOp)
