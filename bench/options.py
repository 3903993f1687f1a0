"""The load tool's options: one picklable value that every load process receives."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

WORKLOADS = ("put", "range", "txn-put", "delete", "watch", "lease", "kube")

# Hard limits: a typo must not start a run that cannot end or exhausts the machine.
CLIENTS_MAX = 10_000
CONNS_MAX = 1_000
PROCS_MAX = 64
WATCHERS_MAX = 100_000
KEY_SPACE_MAX = 10_000_000
VAL_SIZE_MAX = 8 << 20  # above etcd's 1.5 MiB request limit on purpose: probing limits is a use
DURATION_S_MAX = 24 * 3600.0
TOTAL_MAX = 1_000_000_000


@dataclass
class Options:
    workload: str
    endpoints: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2379"])
    conns: int = 1
    clients: int = 16
    total: int | None = None  # operations over all clients and processes
    duration_s: float | None = None
    rate: float | None = None  # operations per second over all clients and processes
    key_size: int = 32
    val_size: int = 256
    key_space: int = 10_000
    seq_keys: bool = False  # walk the key space in order instead of picking keys at random
    procs: int = 1
    seed: int = 1
    prefix: str = "/bench"
    run_id: str = "run"
    timeout_s: float = 10.0  # per RPC
    # range
    consistency: str = "l"  # "l" linearizable, "s" serializable
    range_keys: int = 1  # 1: single-key gets over the key space; N > 1: ranges over a prefix of N keys
    # txn-put: "cached" revisions (kube's watch cache), or read the key "always" before the txn
    txn_read: str = "cached"
    # watch
    watchers: int = 10
    watch_streams: int = 1  # per process
    drain_timeout_s: float = 10.0
    # lease
    lease_mode: str = "grant"  # "grant" or "keepalive"
    lease_ttl_s: int = 60
    # kube
    kube_nodes: int = 100
    kube_pods: int = 1000
    page_limit: int = 500
    # A partition plan (`kube` or a TOML file, as `kvstore serve --partitions`): every key goes to its
    # partition, as kube-apiserver would send it; --endpoints are the default partition's URLs and the
    # others' follow the plan (consecutive ports unless it gives URLs). "" = everything to --endpoints.
    partitions: str = ""
    progress: bool = True
    server_pids: list[int] = field(default_factory=list)  # processes whose CPU is reported (the server's)
    # TLS for https:// endpoints (etcdctl's flag names): CA bundle, client certificate and key
    cacert: str = ""
    cert: str = ""
    key: str = ""

    def validate(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(what)

        need(self.workload in WORKLOADS, f"unknown workload {self.workload!r}; one of {', '.join(WORKLOADS)}")
        need(bool(self.endpoints), "at least one endpoint")
        need((self.total is None) != (self.duration_s is None), "give exactly one of --total or --duration")
        need(self.total is None or 0 < self.total <= TOTAL_MAX, f"--total in 1..{TOTAL_MAX}")
        need(self.duration_s is None or 0 < self.duration_s <= DURATION_S_MAX, "--duration in (0, 1 day]")
        need(self.rate is None or self.rate > 0, "--rate must be positive")
        need(1 <= self.conns <= CONNS_MAX, f"--conns in 1..{CONNS_MAX}")
        need(1 <= self.clients <= CLIENTS_MAX, f"--clients in 1..{CLIENTS_MAX}")
        need(1 <= self.procs <= PROCS_MAX, f"--procs in 1..{PROCS_MAX}")
        need(self.procs <= self.clients, "--procs must not exceed --clients (each process runs at least one client)")
        need(1 <= self.key_space <= KEY_SPACE_MAX, f"--key-space in 1..{KEY_SPACE_MAX}")
        need(1 <= self.key_size <= 4096, "--key-size in 1..4096")
        need(8 <= self.val_size <= VAL_SIZE_MAX, f"--val-size in 8..{VAL_SIZE_MAX} (values carry an 8-byte timestamp)")
        need(self.consistency in ("l", "s"), "--consistency is l or s")
        need(self.txn_read in ("cached", "always"), "--txn-read is cached or always")
        need(1 <= self.range_keys <= KEY_SPACE_MAX, "--range-keys in 1..key space max")
        need(1 <= self.watchers <= WATCHERS_MAX, f"--watchers in 1..{WATCHERS_MAX}")
        need(self.watchers >= self.procs or self.workload != "watch", "--watchers must be >= --procs")
        need(1 <= self.watch_streams <= 1000, "--watch-streams in 1..1000")
        need(self.lease_mode in ("grant", "keepalive"), "--lease-mode is grant or keepalive")
        need(1 <= self.lease_ttl_s <= 9_000_000_000, "--lease-ttl positive")
        need(1 <= self.kube_nodes <= 1_000_000 and 0 <= self.kube_pods <= 1_000_000, "kube sizes")
        need(1 <= self.page_limit <= 100_000, "--page-limit in 1..100000")
        need(0 < self.timeout_s <= 3600, "--timeout in (0, 3600]")
        need(self.prefix.startswith("/") and not self.prefix.endswith("/"), "--prefix like /bench")
        if self.partitions:
            from bench.routing import Routes
            from kvstore.partition.plan import PlanError

            try:
                Routes(self)
            except PlanError as e:
                need(False, f"--partitions: {e}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
