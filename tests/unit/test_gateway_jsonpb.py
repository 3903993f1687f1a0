"""The gateway's cores without a server: routes from the annotations, JSON both ways."""

from __future__ import annotations

import base64
import os

import pytest

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
