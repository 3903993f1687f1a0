"""`kvstore journal ...`: run a journal node.

    kvstore journal serve --id a --az a --listen 127.0.0.1:7001 \\
        --peers b=127.0.0.1:7002,c=127.0.0.1:7003 --data-dir /var/lib/journal/a --fsync always
    kvstore journal status --endpoints 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 --log pods
    kvstore journal health --endpoint 127.0.0.1:7001 --log pods   # exit 0: the node answers, a leader is known

A peer is ``id=host:port`` (its AZ is then its id) or ``id/az=host:port``.

TLS takes etcd's peer flags: --peer-cert-file/--peer-key-file make the port
TLS only (and are the certificate this node shows its peers);
--peer-trusted-ca-file is the CA that peers' and clients' certificates must
chain to; --peer-client-cert-auth refuses connections without such a
certificate; --peer-auto-tls generates a self-signed certificate and does not
verify peers (as etcd).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import sys

from journal.gc_policy import tune_for_serving
from journal.logs import LOG_FORMATS, LOGGERS, announce, setup_logging
from journal.node import JournalNode, NodeConfig, PeerSpec
from journal.segments import FSYNC_POLICIES
from kvstore.flags import GO_BOOL
from kvstore.transport.tls import TLSConfigError, TLSInfo, build_client_context, build_server_context, self_signed

log = logging.getLogger("journal")


def parse_peers(text: str) -> tuple[PeerSpec, ...]:
    peers: list[PeerSpec] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        ident, sep, addr = item.partition("=")
        if not sep or not addr:
            raise argparse.ArgumentTypeError(f"peer must be id=host:port or id/az=host:port, not {item!r}")
        node_id, _, az = ident.partition("/")
        peers.append(PeerSpec(node_id, az or node_id, addr))
    return tuple(peers)


def add_peer_tls_flags(p: argparse.ArgumentParser, *, server: bool) -> None:
    p.add_argument("--peer-cert-file", default="", help="this node's TLS certificate (the port then speaks TLS only)")
    p.add_argument("--peer-key-file", default="", help="its key")
    p.add_argument("--peer-trusted-ca-file", default="", help="CA for the certificates of peers and clients")
    p.add_argument("--peer-auto-tls", **GO_BOOL, help="TLS with a self-signed certificate; peers unverified")
    if server:
        p.add_argument(
            "--peer-client-cert-auth",
            **GO_BOOL,
            help="refuse connections without a certificate from --peer-trusted-ca-file",
        )
        p.add_argument("--peer-crl-file", default="", help="refuse peer and client certificates listed in this CRL")


def peer_tls(args: argparse.Namespace, data_dir: str = "") -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(server context, client context) from the --peer-* flags; (None, None) for plain TCP."""
    info = TLSInfo(
        cert_file=args.peer_cert_file,
        key_file=args.peer_key_file,
        trusted_ca_file=args.peer_trusted_ca_file,
        client_cert_auth=getattr(args, "peer_client_cert_auth", False),
        crl_file=getattr(args, "peer_crl_file", ""),
        auto_tls=args.peer_auto_tls,
    )
    if not (info.cert_file or info.trusted_ca_file or info.auto_tls):
        return None, None
    info.check()
    if data_dir and not info.cert_file and info.auto_tls:
        host = args.listen.rpartition(":")[0] or "127.0.0.1"
        info.cert_file, info.key_file = self_signed(os.path.join(data_dir, "fixtures", "peer"), [host])
    server_ctx = build_server_context(info) if data_dir and info.cert_file else None
    return server_ctx, build_client_context(info)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvstore journal")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run a journal node (one per availability zone)")
    s.add_argument("--id", required=True, help="this node's id")
    s.add_argument("--az", default=None, help="this node's availability zone (default: its id)")
    s.add_argument("--listen", required=True, help="host:port for clients and peers")
    s.add_argument("--advertise", default="",
                   help="host:port clients are sent to for this node (default: --listen; needed when that is 0.0.0.0)")
    s.add_argument("--peers", type=parse_peers, default=(), help="id[/az]=host:port,... (the other nodes)")
    s.add_argument("--data-dir", required=True)
    s.add_argument("--fsync", choices=FSYNC_POLICIES, default="always",
                   help="always (default): fsync before acknowledging; batch: fsync at most every "
                   "--fsync-interval-ms, acknowledgements wait for it; never: UNSAFE, no fsync")  # fmt: skip
    s.add_argument("--fsync-interval-ms", type=int, default=2)
    s.add_argument("--tick-ms", type=int, default=50)
    s.add_argument("--election-ticks", type=int, default=10)
    s.add_argument("--segment-bytes-max", type=int, default=64 * 1024 * 1024)
    s.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop implementation")
    s.add_argument("--log-level", default="WARNING", help="debug, info, warn (default), error")
    s.add_argument("--logger", choices=LOGGERS, default="zap", help="accepted for etcd's command lines")
    s.add_argument("--log-format", choices=LOG_FORMATS, default="console",
                   help="console (default) or json: etcd's structured lines (level, ts, caller, msg, fields)")
    s.add_argument("--listen-metrics-urls", default="",
                   help="http://host:port,... serving Prometheus metrics (/metrics) for this node")  # fmt: skip
    add_peer_tls_flags(s, server=True)
    st = sub.add_parser("status", help="print each node's view of a log")
    st.add_argument("--endpoints", required=True, help="host:port,... of the journal nodes")
    st.add_argument("--log", required=True)
    add_peer_tls_flags(st, server=False)
    h = sub.add_parser("health", help="exit 0 if a node answers and knows a leader for the log (a health check)")
    h.add_argument("--endpoint", required=True, help="host:port of one journal node")
    h.add_argument("--log", default="default")
    h.add_argument("--timeout-ms", type=int, default=2000)
    add_peer_tls_flags(h, server=False)
    return p


async def _health(endpoint: str, log_name: str, timeout_ms: int, ssl_context: ssl.SSLContext | None = None) -> int:
    """etcd's /health answer, for one journal node: healthy when it answers and a leader is known."""
    from journal.client import JournalClient

    one = JournalClient([endpoint], request_timeout_ms=timeout_ms, rpc_timeout_ms=timeout_ms, ssl_context=ssl_context)
    try:
        answer = await one._leader_call(log_name, "status", {"log": log_name})
        ok = answer["role"] == "leader" or bool(answer["leader"])
        reason = "" if ok else "no leader"
    except Exception as e:
        ok, reason = False, f"unreachable: {e}"
    finally:
        await one.close()
    print(json.dumps({"health": str(ok).lower(), "reason": reason}))
    return 0 if ok else 1


async def _status(endpoints: list[str], log_name: str, ssl_context: ssl.SSLContext | None = None) -> int:
    from journal.client import JournalClient

    worst = 0
    for addr in endpoints:
        one = JournalClient([addr], request_timeout_ms=2000, rpc_timeout_ms=1000, ssl_context=ssl_context)
        try:
            answer = await one._leader_call(log_name, "status", {"log": log_name})
            leader = answer["leader"] or "-"
            print(
                f"{addr}: node {answer['node']} {answer['role']} epoch {answer['epoch']} "
                f"committed {answer['committed']} readable {answer['readable']} leader {leader}"
            )
        except Exception as e:  # report every node, reachable or not
            print(f"{addr}: unreachable ({e})")
            worst = 1
        finally:
            await one.close()
    return worst


async def _serve(cfg: NodeConfig, metrics_urls: list[str]) -> None:
    node = JournalNode(cfg)
    await node.start()
    sampler = asyncio.create_task(node.metrics.sample_forever(node))
    node.metrics.serve(metrics_urls)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    announce(log, f"journal node {cfg.node_id} (az {cfg.az}) listening on {cfg.listen}",
             metrics_urls=",".join(metrics_urls))  # fmt: skip
    try:
        await stop.wait()
    finally:
        sampler.cancel()
        await node.close()


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        server_ssl, client_ssl = peer_tls(args, args.data_dir if args.command == "serve" else "")
    except (TLSConfigError, OSError, ssl.SSLError) as e:
        print(f"kvstore journal: TLS: {e}", file=sys.stderr)
        return 2
    if args.command == "status":
        return asyncio.run(_status(args.endpoints.split(","), args.log, client_ssl))
    if args.command == "health":
        return asyncio.run(_health(args.endpoint, args.log, args.timeout_ms, client_ssl))
    setup_logging(args.log_level, args.log_format, {"journal_node": args.id, "az": args.az or args.id})
    metrics_urls = [u.strip() for u in args.listen_metrics_urls.split(",") if u.strip()]
    cfg = NodeConfig(
        node_id=args.id,
        az=args.az or args.id,
        listen=args.listen,
        advertise=args.advertise,
        peers=args.peers,
        data_dir=args.data_dir,
        fsync=args.fsync,
        fsync_interval_ms=args.fsync_interval_ms,
        tick_ms=args.tick_ms,
        election_ticks=args.election_ticks,
        segment_bytes_max=args.segment_bytes_max,
        server_ssl=server_ssl,
        client_ssl=client_ssl,
    )
    try:
        cfg.validate()
    except ValueError as e:
        print(f"kvstore journal: {e}", file=sys.stderr)
        return 2
    tune_for_serving()
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            print("kvstore journal: uvloop is not installed; using asyncio", file=sys.stderr)
        else:
            uvloop.run(_serve(cfg, metrics_urls))
            return 0
    asyncio.run(_serve(cfg, metrics_urls))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
