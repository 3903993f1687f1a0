"""The committed generated code must match the .proto files, and the wire names must be etcd's."""

from __future__ import annotations

from proto import generate
from proto.etcdserverpb import rpc_pb2
from proto.mvccpb import kv_pb2


def test_generated_code_is_up_to_date() -> None:
    assert generate.main(["--check"]) == 0, "run: python -m proto.generate"


def test_wire_names_and_field_numbers_are_etcds() -> None:
    services = rpc_pb2.DESCRIPTOR.services_by_name
    assert services["KV"].full_name == "etcdserverpb.KV"
    assert services["Watch"].methods_by_name["Watch"].full_name == "etcdserverpb.Watch.Watch"
    fields = {f.name: f.number for f in rpc_pb2.Compare.DESCRIPTOR.fields}
    assert fields["range_end"] == 64 and fields["lease"] == 8
    assert {f.name: f.number for f in rpc_pb2.WatchResponse.DESCRIPTOR.fields}["events"] == 11
    assert kv_pb2.KeyValue.DESCRIPTOR.full_name == "mvccpb.KeyValue"
