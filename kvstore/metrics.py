"""A member's Prometheus metrics, under etcd's names, types and labels.

Two kinds of family:

- read from the member when scraped (gauges and counters the member keeps
  anyway: revisions, sizes, proposal counts), by a collector;
- observed as things happen: gRPC calls (the server interceptor, as etcd's
  go-grpc-prometheus does), the durable write of proposals to the journal
  (etcd's WAL fsync), the LMDB write transaction of an applied batch (etcd's backend commit) and the
  journal snapshot (etcd's backend snapshot).

Each member has its own registry (several members may share a process in
tests). ``--metrics extensive`` adds ``grpc_server_handling_seconds``, as etcd.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from kvstore.member import Member

# No *_created series: etcd's client library does not expose them, and dashboards do not read them.
disable_created_metrics()  # type: ignore[no-untyped-call]

METRICS_LEVELS = ("basic", "extensive")

# etcd's buckets (server/storage/wal/metrics.go, mvcc/backend/metrics.go): 1 ms .. 8 s, doubling.
DISK_BUCKETS_S = tuple(0.001 * 2**i for i in range(14))
# go-grpc-prometheus's default (Prometheus' DefBuckets).
GRPC_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# grpc-go's code names (codes.Code.String()), as etcd's labels carry them.
GRPC_CODE_NAMES = {code: "".join(part.capitalize() for part in code.name.split("_")) for code in grpc.StatusCode} | {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
}

GRPC_TYPES = {
    (False, False): "unary",
    (True, False): "client_stream",
    (False, True): "server_stream",
    (True, True): "bidi_stream",
}


class MemberMetrics:
    def __init__(self, member: Member, level: str = "basic") -> None:
        if level not in METRICS_LEVELS:
            raise ValueError(f"--metrics must be one of {METRICS_LEVELS}, not {level!r}")
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        r.register(_MemberCollector(member))
        self.wal_fsync = Histogram(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL (here: a batch of proposals made durable "
            "in the journal, two AZs).",
            buckets=DISK_BUCKETS_S,
            registry=r,
        )
        self.backend_commit = Histogram(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend (here: one applied batch's LMDB transaction).",
            buckets=DISK_BUCKETS_S,
            registry=r,
        )
        self.backend_snapshot = Histogram(
            "etcd_disk_backend_snapshot_duration_seconds",
            "The latency distribution of backend snapshots (here: a state snapshot stored in the journal).",
            buckets=tuple(0.01 * 2**i for i in range(17)),
            registry=r,
        )
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self.grpc_started = Counter(
            "grpc_server_started_total", "Total number of RPCs started on the server.", labels, registry=r
        )
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*labels, "grpc_code"),
            registry=r,
        )
        self.grpc_handling: Histogram | None = None
        if level == "extensive":
            self.grpc_handling = Histogram(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by "
                "the server.",
                labels,
                buckets=GRPC_BUCKETS_S,
                registry=r,
            )
        self.client_requests = Counter(
            "etcd_server_client_requests_total",
            "The total number of client requests per client version.",
            ("type", "client_api_version"),
            registry=r,
        )

        # Other processes' counts to add (kvstore/workers/metrics.py, with --workers).
        self.collect_with: Callable[[CollectorRegistry], Any] | None = None
        # Made at the first scrape, not at start (some 800 series, 15 ms before the first answer):
        # a call counted before then makes its own series, and every scrape sees them all.
        self._grpc_series_made = False

    def _init_grpc_series(self) -> None:
        """Every method's series, at zero, as go-grpc-prometheus's InitializeMetrics."""
        if self._grpc_series_made:
            return
        self._grpc_series_made = True
        from grpc_health.v1 import health_pb2

        from proto.etcdserverpb import rpc_pb2

        services = [*rpc_pb2.DESCRIPTOR.services_by_name.values(), health_pb2.DESCRIPTOR.services_by_name["Health"]]
        for service in services:
            for method in service.methods:
                labels = (GRPC_TYPES[(method.client_streaming, method.server_streaming)], service.full_name,
                          method.name)  # fmt: skip
                self.grpc_started.labels(*labels)
                if self.grpc_handling is not None:
                    self.grpc_handling.labels(*labels)
                for code_name in GRPC_CODE_NAMES.values():
                    self.grpc_handled.labels(*labels, code_name)

    def exposition(self) -> tuple[str, bytes]:
        """The content type and body of a /metrics answer (Prometheus text format 0.0.4)."""
        self._init_grpc_series()
        source = self.registry if self.collect_with is None else self.collect_with(self.registry)
        return CONTENT_TYPE_LATEST, generate_latest(source)

    def grpc_interceptor(self) -> grpc.aio.ServerInterceptor:
        return _GrpcMetricsInterceptor(self)


class _MemberCollector(Collector):
    """Reads the member's own counts and sizes when scraped (on the event loop, as /metrics is served)."""

    def __init__(self, member: Member) -> None:
        self.member = member

    def collect(self) -> Iterator[Metric]:
        from kvstore.member import ETCD_VERSION

        m = self.member
        store = m.store
        c = m.counters

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        version = GaugeMetricFamily(
            "etcd_server_version", "Which version is running. 1 for 'server_version' label with current version.",
            labels=["server_version"],
        )  # fmt: skip
        version.add_metric([ETCD_VERSION], 1)
        yield version
        server_id = GaugeMetricFamily(
            "etcd_server_id", "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            labels=["server_id"],
        )  # fmt: skip
        server_id.add_metric([f"{m.member_id:x}"], 1)
        yield server_id
        # Every member serves writes (the journal orders them): each is its own "leader",
        # while its journal answers.
        yield gauge("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.",
                    1 if m.ready.is_set() and m.journal_reachable else 0)  # fmt: skip
        yield gauge("etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise.", 1)
        # (etcd's *_committed_total and *_applied_total are gauges.)
        yield gauge("etcd_server_proposals_committed_total", "The total number of consensus proposals committed.",
                      max(m.committed_position, m.sm.applied_position))  # fmt: skip
        yield gauge("etcd_server_proposals_applied_total", "The total number of consensus proposals applied.",
                      m.sm.applied_position)  # fmt: skip
        yield gauge("etcd_server_proposals_pending", "The current number of pending proposals to commit.",
                    len(m.proposer.pending))  # fmt: skip
        yield counter("etcd_server_proposals_failed_total", "The total number of failed proposals seen.",
                      c["proposals_failed"])  # fmt: skip
        yield gauge("etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.",
                    m.config.quota_backend_bytes)  # fmt: skip
        yield gauge("etcd_mvcc_db_total_size_in_bytes",
                    "Total size of the underlying database physically allocated in bytes.",
                    m.db_size_bytes)  # fmt: skip
        yield gauge("etcd_mvcc_db_total_size_in_use_in_bytes",
                    "Total size of the underlying database logically in use in bytes.",
                    m.db_size_in_use_bytes)  # fmt: skip
        yield counter("etcd_mvcc_put_total", "Total number of puts seen by this member.", c["puts"])
        yield counter("etcd_mvcc_delete_total", "Total number of deletes seen by this member.", c["deletes"])
        yield counter("etcd_mvcc_range_total", "Total number of ranges seen by this member.", c["ranges"])
        yield counter("etcd_mvcc_txn_total", "Total number of txns seen by this member.", c["txns"])
        yield gauge("etcd_debugging_mvcc_current_revision", "The current revision of store.", store.revision)
        yield gauge("etcd_debugging_mvcc_compact_revision", "The revision of the last compaction in store.",
                    max(store.compact_revision, 0))  # fmt: skip
        yield gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers.", m.hub.watcher_count)
        yield gauge("etcd_debugging_mvcc_watch_stream_total", "Total number of watch streams.", len(m.hub.streams))
        yield gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.", store.live_keys)
        # The journal as this member sees it (not etcd's: etcd has no journal).
        for name, doc, value in (
            ("kvstore_member_journal_committed_position", "The journal's committed position this member knows.",
             m.committed_position),
            ("kvstore_member_journal_applied_position", "The journal position this member has applied.",
             m.sm.applied_position),
            ("kvstore_member_journal_epoch", "The journal epoch (reported to clients as raft_term).", m.raft_term),
        ):  # fmt: skip
            family = GaugeMetricFamily(name, doc, labels=["partition"])
            family.add_metric([m.log_name], value)
            yield family


class _GrpcMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """go-grpc-prometheus's server metrics: started, handled (by status code) and, with
    ``--metrics extensive``, the handling time."""

    def __init__(self, metrics: MemberMetrics) -> None:
        self.metrics = metrics
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None:
            return handler
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        m = self.metrics
        service, _, name = full_method.lstrip("/").rpartition("/")
        grpc_type = GRPC_TYPES[(handler.request_streaming, handler.response_streaming)]
        labels = (grpc_type, service, name)
        started = m.grpc_started.labels(*labels)
        handled: dict[grpc.StatusCode, Any] = {}
        handling = m.grpc_handling.labels(*labels) if m.grpc_handling is not None else None
        requests = m.client_requests.labels("unary" if grpc_type == "unary" else "stream", "3.6")

        def begin() -> float:
            started.inc()
            requests.inc()
            return time.perf_counter()

        def end(t0: float, context: Any, error: BaseException | None) -> None:
            code = status_code(context, error)
            counter = handled.get(code)
            if counter is None:
                counter = handled[code] = m.grpc_handled.labels(*labels, GRPC_CODE_NAMES[code])
            counter.inc()
            if handling is not None:
                handling.observe(time.perf_counter() - t0)

        def around(behavior: Callable[..., Any]) -> Callable[..., Any]:
            if inspect.isasyncgenfunction(behavior):

                async def generator(request: Any, context: Any) -> AsyncIterator[Any]:
                    t0 = begin()
                    error: BaseException | None = None
                    try:
                        async for response in behavior(request, context):
                            yield response
                    except BaseException as e:
                        error = e
                        raise
                    finally:
                        end(t0, context, error)

                return generator

            async def coroutine(request: Any, context: Any) -> Any:
                t0 = begin()
                error: BaseException | None = None
                try:
                    return await behavior(request, context)
                except BaseException as e:
                    error = e
                    raise
                finally:
                    end(t0, context, error)

            return coroutine

        kinds = {
            (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
            (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
            (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
            (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
        }
        attr, make = kinds[(handler.request_streaming, handler.response_streaming)]
        return make(
            around(getattr(handler, attr)),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def status_code(context: Any, error: BaseException | None) -> grpc.StatusCode:
    """The status a call ended with (error: what its handler raised, if anything)."""
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # grpc.aio keeps the cygrpc integer once aborted
        for sc in grpc.StatusCode:
            if sc.value[0] == code:
                return sc
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.OK
