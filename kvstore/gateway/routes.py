"""The gateway's routing table, read from etcd's google.api.http annotations in the descriptors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.api import annotations_pb2

from proto.etcdserverpb import rpc_pb2 as pb


@dataclass(frozen=True)
class Route:
    service: str  # "KV", "Watch", ... (etcdserverpb service name)
    method: str  # "Range", ...
    request_type: Any
    response_type: Any
    client_streaming: bool
    server_streaming: bool


def _paths(method: Any) -> list[str]:
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    return [r.post for r in (rule, *rule.additional_bindings) if r.post]


def build_routes() -> dict[str, Route]:
    """POST path -> the call it names, for every method of every etcdserverpb service."""
    table: dict[str, Route] = {}
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            route = Route(
                service.name,
                method.name,
                getattr(pb, method.input_type.name),
                getattr(pb, method.output_type.name),
                method.client_streaming,
                method.server_streaming,
            )
            for path in _paths(method):
                table[path] = route
    return table


ROUTES = build_routes()
