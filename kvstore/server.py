"""`kvstore serve`: run an etcd v3 compatible member.

With no flags it is an embedded single node: a local journal under
./default.etcd, state on tmpfs, and on 127.0.0.1:2379 etcd's gRPC API together
with its HTTP endpoints (/health, /livez, /readyz, /version, /metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import sys
import tempfile
import urllib.parse

import grpc

from journal.api import Journal
from kvstore.member import Member, MemberConfig, parse_duration_s
from kvstore.v3rpc.servicers import add_servicers, read_snapshot_file

log = logging.getLogger("kvstore")

MAX_RECV_OVERHEAD_BYTES = 512 * 1024  # etcd: gRPC MaxRecvMsgSize = max-request-bytes + 512 KiB


def parse_size(text: str) -> int:
    return int(float(text))


def parse_urls(text: str) -> list[str]:
    return [u.strip() for u in text.split(",") if u.strip()]


def host_port(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "unix", ""):
        raise SystemExit(f"kvstore: {url}: only http:// client URLs are supported (TLS is not built yet)")
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
        help="serve the HTTP endpoints (/health, /livez, /readyz, /version, /metrics) only on these URLs; "
        "gRPC then owns the client URLs alone (no multiplexer in its path)",
    )
    p.add_argument(
        "--listen-metrics-urls",
        default="",
        help="additional URLs for the HTTP endpoints, e.g. http://127.0.0.1:2381 as kubeadm probes ('none': none)",
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
    p.add_argument("--log-level", choices=["debug", "info", "warn", "error", "panic", "fatal"], default="info")
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
        "--restore-snapshot",
        default="",
        help="seed an empty data dir from a file saved with `etcdctl snapshot save` against this server "
        "(ignored once the data dir holds data)",
    )
    return p


def grpc_socket_path(state_dir: str) -> str:
    """Where gRPC listens behind the client-URL multiplexer: a unix socket in the temp dir,
    named after the state dir (one per member; the state dir holds only state)."""
    digest = hashlib.sha256(os.path.abspath(state_dir).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"kvstore-grpc-{digest}.sock")


def make_journal(args: argparse.Namespace, data_dir: str) -> Journal:
    if args.journal_endpoints:
        from journal.client import JournalClient

        # A fresh client id per process: retries are deduplicated by (client id, sequence), and
        # the sequence restarts with the process.
        return JournalClient(parse_urls(args.journal_endpoints), client_id=f"member-{args.name}-{os.urandom(6).hex()}")
    from journal.local import LocalJournal

    return LocalJournal(os.path.join(data_dir, "journal"), fsync=args.journal_fsync)


async def run(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or f"{args.name}.etcd"
    listen = parse_urls(args.listen_client_urls)
    advertise = parse_urls(args.advertise_client_urls) if args.advertise_client_urls else listen
    config = MemberConfig(
        name=args.name,
        data_dir=data_dir,
        state_dir=args.state_dir,
        advertise_client_urls=advertise,
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
    )
    journal = make_journal(args, data_dir)
    member = Member(config, journal)
    if args.restore_snapshot:
        await restore_snapshot(member, args.restore_snapshot)
    await member.start()

    options = [
        ("grpc.max_receive_message_length", config.max_request_bytes + MAX_RECV_OVERHEAD_BYTES),
        ("grpc.max_send_message_length", 2**31 - 1),
        # kube-apiserver pings every 30 s, also without active calls: accept it (etcd's MinTime is 5 s).
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options)
    add_servicers(server, member)
    from kvstore.transport.http import http_handler, serve_http

    listeners = []
    grpc_socket = ""
    if args.listen_client_http_urls:
        # etcd's split: gRPC alone on the client URLs, HTTP on its own.
        for url in listen:
            host, port = host_port(url)
            if server.add_insecure_port(f"{host}:{port}") == 0:
                raise SystemExit(f"kvstore: cannot listen on {url}")
        http_urls = parse_urls(args.listen_client_http_urls)
    else:
        # etcd's default: gRPC and HTTP/1.1 on the same client URLs, told apart per connection.
        from kvstore.transport.cmux import serve_mux

        grpc_socket = grpc_socket_path(member.state_dir)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(grpc_socket)
        if server.add_insecure_port(f"unix:{grpc_socket}") == 0:
            raise SystemExit(f"kvstore: cannot listen on unix:{grpc_socket}")
        handler = http_handler(member)
        for url in listen:
            host, port = host_port(url)
            listeners.append(await serve_mux(host, port, grpc_socket, handler))
        http_urls = []
    await server.start()
    if args.listen_metrics_urls and args.listen_metrics_urls != "none":
        http_urls += parse_urls(args.listen_metrics_urls)
    for url in http_urls:
        host, port = host_port(url)
        listeners.append(await serve_http(member, host, port))
    log.info(
        "serving etcd v3 on %s%s (member %x, cluster %x)",
        ",".join(listen),
        f", HTTP also on {','.join(http_urls)}" if http_urls else "",
        member.member_id,
        member.cluster_id,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    for listener in listeners:
        listener.close()
    await server.stop(grace=1.0)
    if grpc_socket:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(grpc_socket)
    await member.stop()
    await journal.close()
    return 0


async def restore_snapshot(member: Member, path: str) -> None:
    """Seed a fresh journal with a snapshot's state so a new server starts from it."""
    status = await member.journal.status(member.log_name)
    if status.committed or await member.journal.snapshot_get(member.log_name) is not None:
        # Like etcd's --initial-* flags: it bootstraps an empty data dir and is ignored afterwards.
        log.warning("--restore-snapshot ignored: %s already holds data", member.config.data_dir)
        return
    # The restored state starts a new journal: it sits at position 0 of it.
    await member.install_snapshot(read_snapshot_file(path), position=0)
    await member.save_journal_snapshot()
    log.info("restored snapshot %s at revision %d", path, member.store.revision)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = {"warn": "WARNING", "panic": "CRITICAL", "fatal": "CRITICAL"}.get(args.log_level, args.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
