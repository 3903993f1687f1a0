"""One scenario on one server: its channel and stubs, the placeholders resolved, its open streams."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message

from bench.workloads import prefix_end
from proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from proto.mvccpb import kv_pb2
from tests.differential.normalize import (
    FROM_KEY,
    KEYED_MESSAGES,
    LID,
    PREFIX_END,
    Lease,
    LeaseNames,
    R,
    to_dict,
)

RPC_TIMEOUT_S = 10.0
STREAM_RECV_TIMEOUT_S = 5.0


# ---------------------------------------------------------------------------------------------------
# streams over sync grpc


class Stream:
    """A bidi stream: requests go through a bounded queue, a thread drains responses into another."""

    QUEUE_MAX = 10_000

    def __init__(self, method: Callable[..., Any], metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._out: queue.Queue[Message | None] = queue.Queue(self.QUEUE_MAX)
        self._in: queue.Queue[Any] = queue.Queue(self.QUEUE_MAX)
        self._call = method(self._requests(), timeout=600, metadata=metadata or None)
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        self.closed_with: dict[str, Any] | None = None

    def _requests(self) -> Iterator[Message]:
        while True:
            item = self._out.get()
            if item is None:
                return
            yield item

    def _pump(self) -> None:
        try:
            for resp in self._call:
                self._in.put(resp)
            self._in.put(("end", None))
        except grpc.RpcError as e:
            self._in.put(("error", e))

    def send(self, req: Message) -> None:
        self._out.put(req, timeout=RPC_TIMEOUT_S)

    def recv(self, timeout_s: float) -> Any:
        """A response, ("end", None), ("error", e), or None on timeout."""
        try:
            return self._in.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self._out.put_nowait(None)
        self._call.cancel()


# ---------------------------------------------------------------------------------------------------
# sessions: one per (scenario, server)


@dataclass
class Session:
    channel: grpc.Channel
    prefix: bytes
    base_rev: int
    lease_base: int
    label: str = ""
    leases: LeaseNames = field(default_factory=LeaseNames)
    saved: dict[str, int] = field(default_factory=dict)
    streams: dict[str, Stream] = field(default_factory=dict)
    granted: list[int] = field(default_factory=list)
    server: Any = None  # the ServerProcess, for steps that restart it

    def __post_init__(self) -> None:
        self.rebind(self.channel)

    def rebind(self, channel: grpc.Channel) -> None:
        """Use a new channel (after the server restarted); open streams died with the old process."""
        for st in self.streams.values():
            st.close()
        self.streams.clear()
        self.channel = channel
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.watch = rpc_pb2_grpc.WatchStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
        self.maint = rpc_pb2_grpc.MaintenanceStub(self.channel)
        self.cluster = rpc_pb2_grpc.ClusterStub(self.channel)

    # -- placeholder resolution ----------------------------------------------------------------------
    def key(self, k: Any) -> bytes:
        if isinstance(k, str):
            return self.prefix + k.encode()
        assert isinstance(k, bytes), k
        return k

    def resolve(self, cls: type[Message], spec: dict[str, Any] | Message) -> Message:
        if isinstance(spec, Message):
            return spec
        msg = cls()
        tname = cls.DESCRIPTOR.name
        fields = cls.DESCRIPTOR.fields_by_name
        for name, v in spec.items():
            fd = fields[name]
            if name in ("key", "range_end") and tname in KEYED_MESSAGES:
                if v is PREFIX_END:
                    v = prefix_end(self.key(spec["key"]))
                elif v is FROM_KEY:
                    v = b"\0"
                else:
                    v = self.key(v)
                setattr(msg, name, v)
                continue
            if fd.type == fd.TYPE_MESSAGE:
                sub_cls = _message_class(fd.message_type.full_name)
                if fd.is_repeated:
                    getattr(msg, name).extend(self.resolve(sub_cls, s) for s in v)
                else:
                    getattr(msg, name).CopyFrom(self.resolve(sub_cls, v))
                continue
            if fd.is_repeated:
                getattr(msg, name).extend(self.value(x, fd) for x in v)
            else:
                setattr(msg, name, self.value(v, fd))
        return msg

    def value(self, v: Any, fd: Any = None) -> Any:
        if isinstance(v, R):
            return self.base_rev + v.n
        if isinstance(v, LID):
            return self.lease_base + v.n
        if isinstance(v, Lease):
            return self.saved[v.name]
        if isinstance(v, str) and fd is not None and fd.type == fd.TYPE_BYTES:
            return v.encode()
        if isinstance(v, str) and fd is not None and fd.type == fd.TYPE_ENUM:
            return fd.enum_type.values_by_name[v].number
        return v

    def norm(self, msg: Message) -> dict[str, Any]:
        return to_dict(msg, self.leases)

    def close(self) -> None:
        for s in self.streams.values():
            s.close()
        self.streams.clear()


_CLASSES: dict[str, type[Message]] = {}
for _mod in (rpc_pb2, kv_pb2):
    for _name in dir(_mod):
        _obj = getattr(_mod, _name)
        if isinstance(_obj, type) and issubclass(_obj, Message):
            _CLASSES[_obj.DESCRIPTOR.full_name] = _obj
            for _nested in _obj.DESCRIPTOR.nested_types:
                _CLASSES[_nested.full_name] = getattr(_obj, _nested.name)


def _message_class(full_name: str) -> type[Message]:
    return _CLASSES[full_name]
