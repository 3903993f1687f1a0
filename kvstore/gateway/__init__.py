"""etcd's JSON gateway (grpc-gateway) over the gRPC servicers: routes, JSON codec, in-process calls."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvstore.gateway.gateway import Gateway


class LazyGateway:
    """The gateway of a member's client URLs, made at its first request: its routing table and JSON
    mapping are not needed to serve gRPC, so a restarted member answers sooner without them."""

    def __init__(self, servicers: dict[str, Any], max_request_bytes: int) -> None:
        self.servicers = servicers
        self.max_request_bytes = max_request_bytes
        self._gateway: Gateway | None = None

    def get(self) -> Gateway:
        if self._gateway is None:
            from kvstore.gateway.gateway import Gateway

            self._gateway = Gateway(self.servicers, self.max_request_bytes)
        return self._gateway
