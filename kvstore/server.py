"""`kvstore serve`: run an etcd v3 compatible member.

With no flags it is an embedded single node: a local journal under
./default.etcd, state on tmpfs, and on 127.0.0.1:2379 etcd's gRPC API together
with its HTTP endpoints (/health, /livez, /readyz, /version, /metrics) and
the JSON gateway (POST /v3/...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import ssl
import sys
import urllib.parse
from typing import TYPE_CHECKING, Any

import grpc

from journal.api import Journal
from journal.gc_policy import freeze_start_up, tune_for_serving
from journal.logs import LOG_FORMATS, LOGGERS, setup_logging
from kvstore.auth.tokens import TokenConfigError, TokenOptions, parse_auth_token
from kvstore.flags import GO_BOOL, apply_env_defaults
from kvstore.gateway import LazyGateway
from kvstore.member import REQUEST_TIMEOUT_MS, Member, MemberConfig, parse_duration_s
from kvstore.member.config import PENDING_PROPOSALS_MAX
from kvstore.statemachine import StateMachine
from kvstore.transport.cmux import HttpHandler, PeerIdentities, serve_mux
from kvstore.transport.http import http_handler, serve_http
from kvstore.transport.tls import (
    ServerTLS,
    TLSConfigError,
    TLSInfo,
    build_client_context,
    parse_cipher_suites,
    self_signed,
)
from kvstore.v3rpc.servicers import add_servicers, read_snapshot_file
from kvstore.workers import member_socket_path
from kvstore.workers.cpus import AFFINITY_MODES, pin_process, worker_cpus

if TYPE_CHECKING:
    from journal.client import JournalClient
    from kvstore.workers.supervisor import FrontEnds

log = logging.getLogger("kvstore")

MAX_RECV_OVERHEAD_BYTES = 512 * 1024  # etcd: gRPC MaxRecvMsgSize = max-request-bytes + 512 KiB


def parse_size(text: str) -> int:
    return int(float(text))


def parse_urls(text: str) -> list[str]:
    return [u.strip() for u in text.split(",") if u.strip()]


def url_scheme(url: str) -> str:
    return urllib.parse.urlsplit(url if "://" in url else f"http://{url}").scheme


def host_port(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https", "unix", ""):
        raise SystemExit(f"kvstore: {url}: a client URL is http:// or https://")
    if parsed.hostname is None or parsed.port is None:
        raise SystemExit(f"kvstore: {url}: a URL needs a host and a port")
    return parsed.hostname, parsed.port


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvstore serve",
        description="Run an etcd v3 compatible member. Flags take etcd's names where etcd has them.",
    )
    p.add_argument("--name", default="default", help="human-readable name for this member (default: default)")
    p.add_argument("--data-dir", default=None, help="journal and identity directory (default: ${name}.etcd)")
    p.add_argument(
        "--state-dir",
        default="",
        help="where the state's LMDB file lives (default: a directory under /dev/shm/kvstore, tmpfs)",
    )
    p.add_argument(
        "--listen-client-urls",
        default="http://127.0.0.1:2379",
        help="URLs to serve etcd's gRPC API (and, unless --listen-client-http-urls, its HTTP endpoints) on",
    )
    p.add_argument("--advertise-client-urls", default=None, help="client URLs shown in MemberList (default: listen)")
    p.add_argument(
        "--listen-client-http-urls",
        default="",
        help="serve the HTTP endpoints (/health, /livez, /readyz, /version, /metrics, the /v3/ JSON gateway) "
        "only on these URLs; "
        "gRPC then owns the client URLs alone (no multiplexer in its path)",
    )
    p.add_argument(
        "--listen-metrics-urls",
        default="",
        help="additional URLs for /health, /livez, /readyz, /version, /metrics (no gateway), e.g. "
        "http://127.0.0.1:2381 as kubeadm probes ('none': none)",
    )
    p.add_argument(
        "--initial-advertise-peer-urls",
        default="",
        help="peer URLs this member advertises in MemberList (members do not talk to peers; "
        "a member started with URLs that MemberAdd registered takes the id MemberAdd gave)",
    )
    p.add_argument(
        "--member-liveness-ttl",
        default="10s",
        help="a member whose heartbeats through the journal stop leaves MemberList after this long",
    )
    tls = p.add_argument_group(
        "client TLS (etcd's flags; also ETCD_CERT_FILE, ... as for every flag)",
        "https:// client URLs are served with TLS; gRPC and HTTP share the port as without it.",
    )
    tls.add_argument("--cert-file", default="", help="path to the client server TLS cert file")
    tls.add_argument("--key-file", default="", help="path to the client server TLS key file")
    tls.add_argument(
        "--trusted-ca-file", default="", help="path to the client server TLS trusted CA cert file (client certificates)"
    )
    tls.add_argument(
        "--client-cert-auth",
        **GO_BOOL,
        help="require and verify client certificates; the certificate's CN is the auth user when no token is sent",
    )
    tls.add_argument("--client-crl-file", default="", help="refuse client certificates listed in this CRL (PEM)")
    tls.add_argument(
        "--auto-tls", **GO_BOOL, help="client TLS with a generated self-signed certificate (no --cert-file)"
    )
    tls.add_argument(
        "--cipher-suites",
        default="",
        help="comma-separated Go cipher suite names for TLS <= 1.2 (e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)",
    )
    tls.add_argument("--tls-min-version", default="TLS1.2", help="TLS1.2 (default) or TLS1.3")
    tls.add_argument("--tls-max-version", default="", help="TLS1.2 or TLS1.3 (default: the highest supported)")
    peer = p.add_argument_group(
        "journal TLS (etcd's peer flags: this member's connections to the journal nodes)",
    )
    peer.add_argument("--peer-cert-file", default="", help="client certificate presented to the journal nodes")
    peer.add_argument("--peer-key-file", default="", help="its key")
    peer.add_argument(
        "--peer-trusted-ca-file", default="", help="CA that the journal nodes' certificates must chain to"
    )
    peer.add_argument(
        "--peer-auto-tls",
        **GO_BOOL,
        help="talk TLS to the journal without verifying the nodes (they use --peer-auto-tls too)",
    )
    p.add_argument(
        "--auth-token",
        default="simple",
        help="simple (default), or jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256[,ttl=5m] as etcd",
    )
    p.add_argument(
        "--auth-token-ttl", type=int, default=300, help="seconds a simple token lives without use (default 300)"
    )
    p.add_argument("--initial-cluster-token", default="etcd-cluster", help="the cluster id derives from it")
    p.add_argument(
        "--quota-backend-bytes",
        type=parse_size,
        default=2 * 1024**3,
        help="raise NOSPACE when the state file (its real size) would grow beyond this; 20 GiB works (sparse map)",
    )
    p.add_argument("--max-request-bytes", type=parse_size, default=1_572_864, help="largest request accepted")
    p.add_argument("--max-txn-ops", type=int, default=128, help="most operations in one txn")
    p.add_argument(
        "--snapshot-count",
        type=int,
        default=100_000,
        help="journal entries between snapshots; the journal is trimmed below each",
    )
    p.add_argument(
        "--snapshot-catchup-entries",
        "--experimental-snapshot-catchup-entries",
        dest="snapshot_catchup_entries",
        type=int,
        default=5000,
        help="journal entries kept below a snapshot for members slightly behind (default 5000)",
    )
    p.add_argument("--auto-compaction-mode", choices=["periodic", "revision"], default="periodic")
    p.add_argument(
        "--auto-compaction-retention",
        default="0",
        help="periodic: hours (or a duration like 5m); revision: revisions to keep; 0 disables",
    )
    p.add_argument(
        "--watch-progress-notify-interval",
        "--experimental-watch-progress-notify-interval",
        dest="watch_progress_notify_interval",
        default="10m",
        help="period of progress notifications to watchers that asked for them (default 10m)",
    )
    p.add_argument(
        "--metrics",
        choices=["basic", "extensive"],
        default="basic",
        help="basic (default) or extensive: also gRPC handling-time histograms (grpc_server_handling_seconds)",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warn", "error", "panic", "fatal"], default="info")
    p.add_argument("--logger", choices=LOGGERS, default="zap", help="etcd's logger flag; zap is the only one")
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="console",
        help="console (default) or json: etcd's structured zap lines (level, ts, caller, msg, member, partition, "
        "journal-position where relevant)",
    )
    p.add_argument(
        "--journal-fsync",
        choices=["always", "batch", "never"],
        default="always",
        help="local journal durability: always fsync before acknowledging (default), batch, or never (UNSAFE)",
    )
    p.add_argument(
        "--journal-endpoints",
        default="",
        help="host:port list of journal nodes to use the replicated journal; empty for the local journal",
    )
    p.add_argument("--journal-log", default="default", help="the journal log (partition) this member serves")
    p.add_argument(
        "--partitions",
        default="",
        metavar="PLAN",
        help="serve a partitioned keyspace: one member process per partition of PLAN, the built-in 'kube' or a "
        "TOML plan file; the default partition keeps --listen-client-urls, the others take the next ports",
    )
    p.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)  # set by the partition supervisor
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that serve the client URLs: the member's own, which applies the journal, and N-1 front "
        "ends that answer ranges from the shared state file, propose puts, deletes and txns themselves, and "
        "forward every other call to it; 1 is the single-process member (default: the usable cores, the CPU "
        "affinity capped by a cgroup CPU quota, "
        f"{usable_cores()} here; with --partitions, the usable cores shared among the partitions; "
        "docs/workers.md)",
    )
    p.add_argument(
        "--worker-cpu-affinity",
        choices=AFFINITY_MODES,
        default="auto",
        help="auto: when --workers equals the CPUs this process may run on, pin the member's process and each "
        "front end to a CPU of its own (docs/workers.md); off: let the kernel place them (always with --partitions)",
    )
    p.add_argument("--front-end-index", type=int, default=0, help=argparse.SUPPRESS)  # set by --workers
    p.add_argument("--front-end-cpu", type=int, default=-1, help=argparse.SUPPRESS)  # set by --workers
    p.add_argument(
        "--restore-snapshot",
        default="",
        help="seed an empty data dir from a file saved with `etcdctl snapshot save` against this server "
        "(ignored once the data dir holds data)",
    )
    p.add_argument(
        "--import-etcd-snapshot",
        default="",
        help="seed a new, empty data dir and journal log from a real etcd's snapshot (the bbolt file "
        "`etcdctl snapshot save` writes, etcd 3.4-3.6): keys with their revisions and versions, leases, "
        "the current and compacted revisions; refuses a data dir that holds data",
    )
    return p


def client_tls(args: argparse.Namespace, data_dir: str, listen: list[str]) -> ServerTLS | None:
    """The client URLs' TLS from etcd's flags, or None when no URL is https://."""
    https = [u for u in listen if url_scheme(u) == "https"]
    info = TLSInfo(
        cert_file=args.cert_file,
        key_file=args.key_file,
        trusted_ca_file=args.trusted_ca_file,
        client_cert_auth=args.client_cert_auth,
        crl_file=args.client_crl_file,
        auto_tls=args.auto_tls,
        cipher_suites=parse_cipher_suites(args.cipher_suites),
        min_version=args.tls_min_version,
        max_version=args.tls_max_version,
    )
    if not https:
        if info.cert_file:
            log.warning("scheme is HTTP while key and cert files are present; ignoring key and cert files")
        return None
    if not info.cert_file and info.auto_tls:
        hosts = sorted({host_port(u)[0] for u in https})
        info.cert_file, info.key_file = self_signed(os.path.join(data_dir, "fixtures", "client"), hosts)
        log.warning("automatically generated a self-signed client TLS certificate (--auto-tls)")
    if not info.cert_file:
        raise SystemExit(
            f"kvstore: TLS key/cert (--cert-file, --key-file) must be provided for client url {https[0]} "
            "with HTTPS scheme"
        )
    try:
        return ServerTLS(info)
    except (TLSConfigError, OSError, ssl.SSLError) as err:
        raise SystemExit(f"kvstore: client TLS: {err}") from None


def journal_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """TLS for this member's journal connections (the --peer-* flags), or None for plain TCP."""
    info = TLSInfo(
        cert_file=args.peer_cert_file,
        key_file=args.peer_key_file,
        trusted_ca_file=args.peer_trusted_ca_file,
        auto_tls=args.peer_auto_tls,
        min_version=args.tls_min_version,
        max_version=args.tls_max_version,
    )
    if not (info.cert_file or info.trusted_ca_file or info.auto_tls):
        return None
    try:
        info.check()
        return build_client_context(info)
    except (TLSConfigError, OSError, ssl.SSLError) as err:
        raise SystemExit(f"kvstore: journal TLS: {err}") from None


def grpc_server_options(max_request_bytes: int, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    """The client gRPC server's channel options (bench.floor runs its do-nothing server with the same).
    reuse_port: the front ends of --workers share the client port (with --listen-client-http-urls)."""
    return [
        ("grpc.max_receive_message_length", max_request_bytes + MAX_RECV_OVERHEAD_BYTES),
        ("grpc.max_send_message_length", 2**31 - 1),
        # kube-apiserver pings every 30 s, also without active calls: accept it (etcd's MinTime is 5 s).
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.so_reuseport", int(reuse_port)),
    ]


def grpc_socket_path(state_dir: str) -> str:
    """Where gRPC listens behind the client-URL multiplexer: a unix socket in the temp dir,
    named after the state dir (one per member; the state dir holds only state)."""
    return member_socket_path(state_dir, "grpc")


async def open_client_listeners(
    args: argparse.Namespace,
    listen: list[str],
    server: grpc.aio.Server,
    grpc_socket: str,
    handler: HttpHandler,
    tls: ServerTLS | None,
    identities: PeerIdentities,
    *,
    reuse_port: bool,
) -> tuple[list[Any], list[str]]:
    """The client URLs' listeners (and gRPC's unix socket behind the multiplexer); the HTTP-only
    URLs of --listen-client-http-urls still to open. reuse_port: several processes share the URLs."""
    listeners = []
    with contextlib.suppress(FileNotFoundError):
        os.unlink(grpc_socket)
    if server.add_insecure_port(f"unix:{grpc_socket}") == 0:
        raise SystemExit(f"kvstore: cannot listen on unix:{grpc_socket}")
    if args.listen_client_http_urls:
        # etcd's split: gRPC alone on the client URLs, HTTP on its own. Plain ones are gRPC's own
        # port; https ones go through the multiplexer, which terminates TLS and pipes gRPC only.
        for url in listen:
            host, port = host_port(url)
            if url_scheme(url) == "https":
                listeners.append(await serve_mux(host, port, grpc_socket, None, tls, identities, reuse_port=reuse_port))
            elif server.add_insecure_port(f"{host}:{port}") == 0:
                raise SystemExit(f"kvstore: cannot listen on {url}")
        return listeners, parse_urls(args.listen_client_http_urls)
    # etcd's default: gRPC and HTTP/1.1 on the same client URLs, told apart per connection.
    for url in listen:
        host, port = host_port(url)
        url_tls = tls if url_scheme(url) == "https" else None
        listeners.append(await serve_mux(host, port, grpc_socket, handler, url_tls, identities, reuse_port=reuse_port))
    return listeners, []


PID_FILE = "kvstore.pid"  # in the data directory: the member's PID, and the lock that makes it the only one


def lock_data_dir(data_dir: str) -> int:
    """One process per data directory, as etcd locks its WAL: a second would append to the same
    journal and apply into the same state file. The lock lives as long as the process (the kernel
    drops it when the process dies, kill -9 included); the descriptor is not inherited.

    The locked file holds the PID of the member's process (its front ends' parent, which SIGTERM
    stops with them): the member's one PID file. A stale one after a kill -9 is not locked."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, PID_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise SystemExit(f"kvstore: data directory {data_dir} is in use by another process "
                         f"(pid {holder or '?'} holds {path})") from None  # fmt: skip
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def make_journal(args: argparse.Namespace, data_dir: str) -> Journal:
    if args.journal_endpoints:
        return remote_journal(args, "member")
    from journal.local import LocalJournal

    return LocalJournal(os.path.join(data_dir, "journal"), fsync=args.journal_fsync)


def remote_journal(args: argparse.Namespace, role: str) -> JournalClient:
    """A client of --journal-endpoints for one process of the member (role: member, front-end-N)."""
    from journal.client import JournalClient

    # A fresh client id per process: retries are deduplicated by (client id, sequence), and
    # the sequence restarts with the process.
    return JournalClient(
        parse_urls(args.journal_endpoints),
        client_id=f"{role}-{args.name}-{os.urandom(6).hex()}",
        request_timeout_ms=REQUEST_TIMEOUT_MS,
        ssl_context=journal_tls(args),
    )


def member_config(args: argparse.Namespace) -> MemberConfig:
    """The member's settings from its flags (the front ends of --workers build the same)."""
    data_dir = args.data_dir or f"{args.name}.etcd"
    listen = parse_urls(args.listen_client_urls)
    advertise = parse_urls(args.advertise_client_urls) if args.advertise_client_urls else listen
    return MemberConfig(
        name=args.name,
        data_dir=data_dir,
        state_dir=args.state_dir,
        advertise_client_urls=advertise,
        advertise_peer_urls=parse_urls(args.initial_advertise_peer_urls) if args.initial_advertise_peer_urls else [],
        member_liveness_ttl_s=parse_duration_s(args.member_liveness_ttl, 1.0),
        initial_cluster_token=args.initial_cluster_token,
        log_name=args.journal_log,
        quota_backend_bytes=args.quota_backend_bytes,
        max_request_bytes=args.max_request_bytes,
        max_txn_ops=args.max_txn_ops,
        snapshot_count=args.snapshot_count,
        snapshot_catchup_entries=args.snapshot_catchup_entries,
        auto_compaction_mode=args.auto_compaction_mode,
        auto_compaction_retention=args.auto_compaction_retention,
        progress_notify_interval_s=parse_duration_s(args.watch_progress_notify_interval, default_unit_s=1.0),
        metrics=args.metrics,
        auth_token_ttl_s=args.auth_token_ttl,
        journal_exclusive=not args.journal_endpoints,  # make_journal's local journal, locked to this process
        # etcd's "too many requests" is per member: --workers N processes admit a share each.
        pending_proposals_max=max(1, PENDING_PROPOSALS_MAX // (args.workers or 1)),
    )


def auth_token_options(args: argparse.Namespace) -> TokenOptions:
    """--auth-token, as the member and its front ends read it (a JWT's keys are read here)."""
    try:
        return parse_auth_token(args.auth_token, lambda text: parse_duration_s(text, default_unit_s=1.0))
    except (TokenConfigError, OSError, ValueError) as err:
        raise SystemExit(f"kvstore: --auth-token: {err}") from None


async def run(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or f"{args.name}.etcd"
    listen = parse_urls(args.listen_client_urls)
    config = member_config(args)
    token_options = auth_token_options(args)
    imported = read_import(args.import_etcd_snapshot) if args.import_etcd_snapshot else None  # before any write
    pid_file = lock_data_dir(data_dir)
    journal = make_journal(args, data_dir)
    member = Member(config, journal)
    member.jwt = token_options.jwt
    if args.restore_snapshot:
        await restore_snapshot(member, args.restore_snapshot)
    if imported is not None:
        await import_etcd_snapshot(member, args.import_etcd_snapshot, imported)
    await member.start()
    freeze_start_up()

    server = grpc.aio.server(
        options=grpc_server_options(config.max_request_bytes, reuse_port=args.workers > 1),
        interceptors=[member.metrics.grpc_interceptor()],
    )
    # With --workers, the front ends vouch for their clients' certificates with this secret.
    front_end_secret = os.urandom(16).hex() if args.workers > 1 else ""
    identities = PeerIdentities(forward_secret=front_end_secret)
    servicers = add_servicers(server, member, identities, client_cert_auth=bool(args.client_cert_auth))
    gateway = LazyGateway(servicers, config.max_request_bytes)  # etcd's JSON API on the client URLs

    tls = client_tls(args, data_dir, listen)
    grpc_socket = grpc_socket_path(member.state_dir)
    workers = args.workers
    front_ends: FrontEnds | None = None
    if workers > 1:
        from kvstore.workers.supervisor import FrontEnds

        front_ends = FrontEnds(args.argv, workers - 1, member, front_end_secret, cpus=args.worker_cpus)
    if front_ends is not None:
        await front_ends.listen(http_handler(member, gateway))  # the front ends' HTTP, notifications
    listeners, http_urls = await open_client_listeners(
        args, listen, server, grpc_socket, http_handler(member, gateway), tls, identities, reuse_port=workers > 1
    )
    await server.start()
    client_http_urls = set(http_urls)
    if args.listen_metrics_urls and args.listen_metrics_urls != "none":
        http_urls += parse_urls(args.listen_metrics_urls)
    for url in http_urls:
        host, port = host_port(url)
        if url_scheme(url) == "https":
            raise SystemExit(f"kvstore: {url}: HTTP endpoints outside the client URLs are plain http://")
        # etcd serves its JSON gateway on the client HTTP URLs, not on the metrics URLs.
        listeners.append(await serve_http(member, host, port, gateway if url in client_http_urls else None))
    log.info(
        "serving etcd v3 on %s%s (member %x, cluster %x)",
        ",".join(listen),
        f", HTTP also on {','.join(http_urls)}" if http_urls else "",
        member.member_id,
        member.cluster_id,
    )
    if front_ends is not None:  # once this process serves every URL: spawning them holds the event loop
        front_ends.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    removed = loop.create_task(member.removed.wait())
    stopped = loop.create_task(stop.wait())
    await asyncio.wait({removed, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for task in (removed, stopped):
        task.cancel()
    log.info("shutting down%s", " (removed from the cluster)" if member.removed.is_set() else "")
    for listener in listeners:
        listener.close()
    if front_ends is not None:
        await front_ends.stop()
    await server.stop(grace=1.0)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(grpc_socket)
    await member.stop()
    await journal.close()
    os.ftruncate(pid_file, 0)  # no PID to signal any more (the file stays: unlinking a lock file races)
    return 0


async def restore_snapshot(member: Member, path: str) -> None:
    """Seed a fresh journal with a snapshot's state so a new server starts from it."""
    status = await member.journal.status(member.log_name)
    if status.committed or await member.journal.snapshot_get(member.log_name) is not None:
        # Like etcd's --initial-* flags: it bootstraps an empty data dir and is ignored afterwards.
        log.warning("--restore-snapshot ignored: %s already holds data", member.config.data_dir)
        return
    # The restored state starts a new journal: it sits at position 0 of it, with a membership of its own
    # (as `etcdutl snapshot restore` starts a new cluster).
    await member.install_snapshot(read_snapshot_file(path), position=0)
    member.sm.reset_membership()
    await member.save_journal_snapshot()
    log.info("restored snapshot %s at revision %d", path, member.store.revision)


def read_import(path: str) -> StateMachine:
    """A real etcd's snapshot file as a state machine; exits with the reason if it cannot be read."""
    from kvstore.member import now_ms
    from kvstore.migrate.etcd_snapshot import EtcdSnapshotError, read_etcd_snapshot, to_state_machine

    try:
        with open(path, "rb") as f:
            data = f.read()
        return to_state_machine(read_etcd_snapshot(data), now_ms())
    except (OSError, EtcdSnapshotError) as err:
        raise SystemExit(f"kvstore: --import-etcd-snapshot {path}: {err}") from None


async def import_etcd_snapshot(member: Member, path: str, sm: StateMachine) -> None:
    """Seed a new journal log with an etcd snapshot's keys, revisions, leases and compaction:
    every member of the log starts from it (it is the log's snapshot at position 0)."""
    status = await member.journal.status(member.log_name)
    if status.committed or await member.journal.snapshot_get(member.log_name) is not None:
        sm.close()
        raise SystemExit(
            f"kvstore: --import-etcd-snapshot needs a new, empty data dir and journal log; "
            f"{member.config.data_dir} (log {member.log_name!r}) already holds data"
        )
    try:
        await member.install_snapshot(sm.snapshot_chunks(), position=0)
    finally:
        sm.close()
    member.sm.reset_membership()
    await member.save_journal_snapshot()
    store = member.store
    log.info(
        "imported etcd snapshot %s: revision %d, compacted at %d, %d keys, %d leases",
        path, store.revision, store.compact_revision, store.live_keys, len(store.leases),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    apply_env_defaults(parser, os.environ)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    check_workers(args)
    setup_logging(args.log_level, args.log_format, {"member": args.name, "partition": args.journal_log})
    if args.partitions:
        from kvstore.partition.plan import PlanError
        from kvstore.partition.supervisor import serve_partitions

        if args.restore_snapshot:
            raise SystemExit("kvstore: --restore-snapshot seeds one member; it cannot be used with --partitions")
        try:
            return serve_partitions(parser, args)
        except PlanError as e:
            raise SystemExit(f"kvstore: {e}") from None
    if args.parent_pid:
        from kvstore.partition.supervisor import set_parent_death_signal

        set_parent_death_signal(args.parent_pid)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    tune_for_serving()
    if args.front_end_index:
        if args.front_end_cpu >= 0:
            pin_process(args.front_end_cpu)
        from kvstore.workers.frontend import run_front_end

        return asyncio.run(run_front_end(args))
    args.worker_cpus = worker_cpus(args.workers, args.worker_cpu_affinity)
    if args.worker_cpus:
        pin_process(args.worker_cpus[0])
    return asyncio.run(run(args))


CGROUP_CPU_MAX_PATH = "/sys/fs/cgroup/cpu.max"  # cgroup v2: "<quota µs> <period µs>" or "max <period>"


def cgroup_cpu_limit(cpu_max: str) -> int | None:
    """Whole CPUs a cgroup v2 `cpu.max` line allows (at least 1), None without a quota."""
    fields = cpu_max.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota_us, period_us = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return max(1, quota_us // period_us) if period_us > 0 else None


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset and cpusets narrow it),
    capped by its cgroup's CPU quota (a container's --cpus, a Kubernetes CPU limit)."""
    cores = len(os.sched_getaffinity(0))
    try:
        with open(CGROUP_CPU_MAX_PATH) as f:
            limit = cgroup_cpu_limit(f.read())
    except OSError:  # cgroup v1 or no cgroup file system: the affinity alone
        limit = None
    return min(cores, limit) if limit is not None else cores


def check_workers(args: argparse.Namespace) -> None:
    """--workers given: at least 1. Not given: one process per usable core (the partition
    supervisor decides per partition, kvstore/partition/supervisor.py)."""
    if args.workers is None:
        if not args.partitions:
            args.workers = usable_cores()
    elif args.workers < 1:
        raise SystemExit(f"kvstore: --workers {args.workers}: at least 1")


if __name__ == "__main__":
    sys.exit(main())
