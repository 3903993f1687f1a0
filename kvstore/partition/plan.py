"""Partition plans: which keys each partition owns, on which journal log, URLs and quota.

A plan is data, not code: a named list of partitions, each with the kube-apiserver
resources (``group/resource``) and key prefixes it owns, its journal log, its client
URLs and its quota. Every partition is a complete, independent etcd keyspace; the plan
only says where a client (kube-apiserver, the load tool) sends which keys. The partition
named ``default`` owns everything no other partition claims.

kube-apiserver's side of the mapping (kubernetes/kubernetes, pkg/kubeapiserver/
default_storage_factory_builder.go and staging/.../server/storage/storage_factory.go):

- a resource's keys live under ``<--etcd-prefix>/<resource prefix>/``, where the resource
  prefix is the lower-case resource name except for the SpecialDefaultResourcePrefixes
  (nodes are stored under ``minions``, services under ``services/specs``, ...);
- resources of different groups may *cohabit*: they share one storage location, the first
  of their group whose API group is enabled (core events and events.k8s.io events are one
  resource in etcd, ``/registry/events/``). An override applies to that chosen resource
  only, so a plan names every member of a cohabitation group (``resource_names``);
- ``--etcd-servers-overrides`` applies only to resources compiled into kube-apiserver:
  CRDs and aggregated APIs always use ``--etcd-servers``, i.e. the default partition.
"""

from __future__ import annotations

import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field, replace

DEFAULT_PARTITION = "default"
KUBE_ETCD_PREFIX = "/registry"  # kube-apiserver's --etcd-prefix default
PARTITION_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
PLAN_PARTITIONS_MAX = 64

# kube-apiserver's SpecialDefaultResourcePrefixes: group/resource -> key prefix under --etcd-prefix.
KUBE_RESOURCE_PREFIXES: dict[str, str] = {
    "/replicationcontrollers": "controllers",
    "/endpoints": "services/endpoints",
    "/nodes": "minions",
    "/services": "services/specs",
    "extensions/ingresses": "ingress",
    "networking.k8s.io/ingresses": "ingress",
}

# kube-apiserver's AddCohabitatingResources calls, in its priority order.
KUBE_COHABITATING: tuple[tuple[str, ...], ...] = (
    ("networking.k8s.io/networkpolicies", "extensions/networkpolicies"),
    ("apps/deployments", "extensions/deployments"),
    ("apps/daemonsets", "extensions/daemonsets"),
    ("apps/replicasets", "extensions/replicasets"),
    ("/events", "events.k8s.io/events"),
    ("/replicationcontrollers", "extensions/replicationcontrollers"),
    ("policy/podsecuritypolicies", "extensions/podsecuritypolicies"),
    ("networking.k8s.io/ingresses", "extensions/ingresses"),
)


class PlanError(ValueError):
    """A plan that cannot be served: the message says what and where."""


def check_resource(name: str) -> str:
    """A kube group/resource as --etcd-servers-overrides takes it: exactly one '/', core group empty."""
    parts = name.split("/")
    if len(parts) != 2 or not parts[1] or parts[1] != parts[1].lower() or any(c in name for c in "#;, "):
        raise PlanError(f"resource {name!r}: expected group/resource, e.g. /pods or coordination.k8s.io/leases")
    return name


def cohabitants(resource: str) -> tuple[str, ...]:
    """Every group/resource that kube-apiserver stores in the same place as this one (itself first)."""
    for group in KUBE_COHABITATING:
        if resource in group:
            return (resource, *(r for r in group if r != resource))
    return (resource,)


def resource_key_prefix(resource: str, etcd_prefix: str = KUBE_ETCD_PREFIX) -> bytes:
    """Where kube-apiserver keeps a resource's objects: every key of it starts with this."""
    stored = next((g[0] for g in KUBE_COHABITATING if resource in g), resource)
    prefix = KUBE_RESOURCE_PREFIXES.get(stored) or stored.split("/", 1)[1]
    return f"{etcd_prefix.rstrip('/')}/{prefix}/".encode()


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    resources: tuple[str, ...] = ()  # kube group/resource names (cohabitants implied)
    extra_prefixes: tuple[bytes, ...] = ()  # key prefixes owned beyond the resources' own
    log: str = ""  # journal log; "" means the partition's name
    client_urls: tuple[str, ...] = ()  # () means assigned from --listen-client-urls (see assign_urls)
    quota_backend_bytes: int | None = None  # None means --quota-backend-bytes

    @property
    def log_name(self) -> str:
        return self.log or self.name

    @property
    def resource_names(self) -> tuple[str, ...]:
        """Every group/resource to override so that all keys of this partition's resources land in it."""
        out: list[str] = []
        for r in self.resources:
            out += [c for c in cohabitants(r) if c not in out]
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    partitions: tuple[Partition, ...]  # the default partition first
    etcd_prefix: str = KUBE_ETCD_PREFIX
    _routes: tuple[tuple[bytes, str], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        validate(self)
        routes = [(p, part.name) for part in self.partitions for p in self.prefixes(part)]
        # Longest prefix first: the most specific owner wins.
        object.__setattr__(self, "_routes", tuple(sorted(routes, key=lambda r: -len(r[0]))))

    @property
    def default(self) -> Partition:
        return self.partitions[0]

    def get(self, name: str) -> Partition:
        for p in self.partitions:
            if p.name == name:
                return p
        raise KeyError(name)

    def prefixes(self, part: Partition) -> tuple[bytes, ...]:
        own = [resource_key_prefix(r, self.etcd_prefix) for r in part.resources]
        return tuple(dict.fromkeys([*own, *part.extra_prefixes]))

    def partition_for(self, key: bytes) -> Partition:
        """The partition kube-apiserver (or any client following the plan) sends this key to."""
        for prefix, name in self._routes:
            if key.startswith(prefix):
                return self.get(name)
        return self.default

    def with_urls(self, urls: dict[str, tuple[str, ...]]) -> Plan:
        return replace(self, partitions=tuple(replace(p, client_urls=urls[p.name]) for p in self.partitions))


def validate(plan: Plan) -> None:
    parts = plan.partitions
    if not parts:
        raise PlanError(f"plan {plan.name!r}: no partitions")
    if len(parts) > PLAN_PARTITIONS_MAX:
        raise PlanError(f"plan {plan.name!r}: at most {PLAN_PARTITIONS_MAX} partitions")
    if not plan.etcd_prefix.startswith("/"):
        raise PlanError(f"plan {plan.name!r}: etcd_prefix must start with '/'")
    if parts[0].name != DEFAULT_PARTITION or parts[0].resources or parts[0].extra_prefixes:
        raise PlanError(f"plan {plan.name!r}: the first partition must be {DEFAULT_PARTITION!r} and own no resources "
                        "(it owns everything the others do not)")  # fmt: skip
    seen: dict[str, str] = {}
    for kind, values in (("name", [p.name for p in parts]), ("log", [p.log_name for p in parts])):
        dup = {v for v in values if values.count(v) > 1}
        if dup:
            raise PlanError(f"plan {plan.name!r}: duplicate partition {kind} {sorted(dup)[0]!r}")
    owners: dict[bytes, str] = {}
    for p in parts:
        if not PARTITION_NAME_RE.match(p.name):
            raise PlanError(f"partition {p.name!r}: names are lower-case letters, digits and '-' (at most 63)")
        if p.name != DEFAULT_PARTITION and not (p.resources or p.extra_prefixes):
            raise PlanError(f"partition {p.name!r}: owns no resources and no prefixes")
        if p.quota_backend_bytes is not None and p.quota_backend_bytes < 0:
            raise PlanError(f"partition {p.name!r}: quota_backend_bytes must be >= 0")
        for r in p.resources:
            check_resource(r)
            for c in cohabitants(r):
                if seen.setdefault(c, p.name) != p.name:
                    raise PlanError(f"resource {c!r} is in partitions {seen[c]!r} and {p.name!r} "
                                    "(kube-apiserver stores cohabiting resources in one place)")  # fmt: skip
        for prefix in plan.prefixes(p):
            if not prefix:
                raise PlanError(f"partition {p.name!r}: empty prefix")
            if owners.setdefault(prefix, p.name) != p.name:
                raise PlanError(f"prefix {prefix!r} is owned by partitions {owners[prefix]!r} and {p.name!r}")
        for url in p.client_urls:
            check_url(url)


def check_url(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http" or parsed.hostname is None or parsed.port is None or any(c in url for c in "#;,"):
        raise PlanError(f"client URL {url!r}: expected http://host:port")
    return parsed.hostname, parsed.port


def shift_port(url: str, offset: int) -> str:
    parsed = urllib.parse.urlsplit(url)
    host, port = check_url(url)
    if not 0 < port + offset < 65536:
        raise PlanError(f"{url}: port {port} + {offset} is out of range")
    netloc = f"[{host}]" if ":" in host else host
    return urllib.parse.urlunsplit((parsed.scheme, f"{netloc}:{port + offset}", parsed.path, "", ""))


def assign_urls(plan: Plan, listen_client_urls: list[str]) -> Plan:
    """Client URLs for every partition: the default keeps --listen-client-urls; partition i
    (in plan order) gets each of those ports + i, unless the plan gives its URLs."""
    urls = {
        p.name: p.client_urls or tuple(shift_port(u, i) for u in listen_client_urls)
        for i, p in enumerate(plan.partitions)
    }
    owner: dict[str, str] = {}
    for name, us in urls.items():
        for u in us:
            host, port = check_url(u)
            hp = f"{host}:{port}"
            if owner.setdefault(hp, name) != name:
                raise PlanError(f"partitions {owner[hp]!r} and {name!r} would both listen on {hp}")
    return plan.with_urls(urls)


# ------------------------------------------------------------------ built-in plans and files


def kube_plan() -> Plan:
    """EKS's split of kube-apiserver's keyspace: the hot resource types each get their own store."""
    return Plan(
        "kube",
        (
            Partition(DEFAULT_PARTITION),
            Partition("events", resources=("/events",)),  # with events.k8s.io/events (cohabiting)
            Partition("leases", resources=("coordination.k8s.io/leases",)),
            Partition("pods", resources=("/pods",)),
            Partition("nodes", resources=("/nodes",)),  # stored under /registry/minions/
        ),
    )


BUILTIN_PLANS = {"kube": kube_plan}


def single_plan() -> Plan:
    """What `kvstore serve` without --partitions is: one partition that owns everything."""
    return Plan("single", (Partition(DEFAULT_PARTITION),))


def parse_plan_toml(text: str, where: str = "<plan>") -> Plan:
    """A plan file (TOML):

    name = "mine"                      # optional, default: the file's name
    etcd_prefix = "/registry"          # optional, kube-apiserver's --etcd-prefix

    [[partition]]
    name = "default"                   # first; owns everything the others do not

    [[partition]]
    name = "events"
    resources = ["/events"]            # kube group/resource; cohabitants are implied
    prefixes = ["/other/events/"]      # optional: more key prefixes
    log = "events"                     # optional, default: the name
    client_urls = ["http://127.0.0.1:2391"]   # optional, default: consecutive ports
    quota_backend_bytes = 8589934592   # optional, default: --quota-backend-bytes
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PlanError(f"{where}: {e}") from None
    known_top = {"name", "etcd_prefix", "partition"}
    known = {"name", "resources", "prefixes", "log", "client_urls", "quota_backend_bytes"}
    if set(doc) - known_top:
        raise PlanError(f"{where}: unknown keys {sorted(set(doc) - known_top)}")
    entries = doc.get("partition", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise PlanError(f"{where}: partitions are [[partition]] tables")
    parts = []
    for i, entry in enumerate(entries):
        at = f"{where}: partition {i + 1}"
        if set(entry) - known:
            raise PlanError(f"{at}: unknown keys {sorted(set(entry) - known)}")

        def strings(key: str, e: dict[str, object] = entry, at: str = at) -> tuple[str, ...]:
            v = e.get(key, [])
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise PlanError(f"{at}: {key} must be a list of strings")
            return tuple(v)

        name, log, quota = entry.get("name"), entry.get("log", ""), entry.get("quota_backend_bytes")
        if not isinstance(name, str) or not isinstance(log, str):
            raise PlanError(f"{at}: name (and log) must be strings")
        if quota is not None and (not isinstance(quota, int) or isinstance(quota, bool)):
            raise PlanError(f"{at}: quota_backend_bytes must be an integer")
        parts.append(Partition(
            name, strings("resources"), tuple(p.encode() for p in strings("prefixes")), log,
            strings("client_urls"), quota,
        ))  # fmt: skip
    name = doc.get("name", where.rsplit("/", 1)[-1].removesuffix(".toml"))
    prefix = doc.get("etcd_prefix", KUBE_ETCD_PREFIX)
    if not isinstance(name, str) or not isinstance(prefix, str):
        raise PlanError(f"{where}: name and etcd_prefix must be strings")
    try:
        return Plan(name, tuple(parts), prefix)
    except PlanError as err:
        raise PlanError(f"{where}: {err}") from None


def load_plan(spec: str) -> Plan:
    """A built-in plan by name (`kube`) or a TOML plan file."""
    if spec in BUILTIN_PLANS:
        return BUILTIN_PLANS[spec]()
    try:
        with open(spec, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise PlanError(f"--partitions {spec}: not a built-in plan ({', '.join(BUILTIN_PLANS)}) "
                        f"and not a readable file: {e.strerror}") from None  # fmt: skip
    return parse_plan_toml(text, spec)


# ------------------------------------------------------------------ kube-apiserver flags


def kube_apiserver_flags(plan: Plan) -> list[str]:
    """The two kube-apiserver flags for a plan with assigned URLs: --etcd-servers (the default
    partition) and --etcd-servers-overrides (group/resource#url;url, comma separated)."""
    overrides = [f"{r}#{';'.join(p.client_urls)}" for p in plan.partitions[1:] for r in p.resource_names]
    return [f"--etcd-servers={','.join(plan.default.client_urls)}", f"--etcd-servers-overrides={','.join(overrides)}"]
