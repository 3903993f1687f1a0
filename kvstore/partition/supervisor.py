"""`kvstore serve --partitions PLAN`: one member process per partition of a plan, on one machine.

Each child is a plain `kvstore serve` for one partition: its own client URL, data dir
(``<data-dir>/<partition>``), journal log and quota; every other flag is passed through.
The supervisor restarts a child that dies (with backoff), stops all of them on SIGTERM or
SIGINT, and leaves none running if it dies itself: the children run in their own process
group (a terminal's Ctrl-C reaches only the supervisor, which stops the group), and each
child asks the kernel for SIGTERM when its parent goes away (PR_SET_PDEATHSIG, see
set_parent_death_signal).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from kvstore.partition.plan import (
    DEFAULT_PARTITION,
    Partition,
    Plan,
    PlanError,
    assign_urls,
    check_url,
    load_plan,
    shift_port,
)

log = logging.getLogger("kvstore.partition")

PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_TIMEOUT_S = 10.0
RESTART_BACKOFF_S_MIN = 0.5
RESTART_BACKOFF_S_MAX = 30.0
STABLE_RUN_S = 30.0  # a child that ran this long starts the backoff over
POLL_INTERVAL_S = 0.2

# serve flags the supervisor sets per partition; every other flag is passed through unchanged.
PER_PARTITION_DESTS = frozenset({
    "name", "data_dir", "state_dir", "listen_client_urls", "advertise_client_urls", "listen_client_http_urls",
    "listen_metrics_urls", "journal_log", "quota_backend_bytes", "initial_cluster_token", "partitions", "parent_pid",
    "workers", "worker_cpu_affinity",
})  # fmt: skip


def set_parent_death_signal(parent_pid: int) -> None:
    """In a child: SIGTERM when the parent dies; exit now if it already has (the prctl came too late)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent_pid:
        raise SystemExit(f"kvstore: parent {parent_pid} is gone; not starting")


def plan_for(args: argparse.Namespace) -> Plan:
    from kvstore.server import parse_urls

    return assign_urls(load_plan(args.partitions), parse_urls(args.listen_client_urls))


def passthrough_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The serve flags the user gave that are the same for every partition, as command-line text."""
    out: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest in PER_PARTITION_DESTS or action.dest == "help":
            continue
        value = getattr(args, action.dest, None)
        if value is None or value == action.default:
            continue
        if action.nargs == 0:
            out.append(action.option_strings[0])
        else:
            out.append(f"{action.option_strings[0]}={value}")
    return out


def _shifted(urls: str, offset: int) -> str:
    from kvstore.server import parse_urls

    return ",".join(shift_port(u, offset) for u in parse_urls(urls))


def partition_workers(args: argparse.Namespace, plan: Plan) -> int:
    """--workers of each partition's member: as given, else the usable cores shared among the
    partitions (at least one each): the member processes together use the cores, not P times them."""
    from kvstore.server import usable_cores

    return args.workers if args.workers is not None else max(1, usable_cores() // len(plan.partitions))


def partition_args(args: argparse.Namespace, plan: Plan, index: int) -> list[str]:
    """The per-partition flags of child `index` (plan order): identity, URLs, data, log, quota, workers."""
    part = plan.partitions[index]
    data_dir = args.data_dir or f"{args.name}.etcd"
    quota = args.quota_backend_bytes if part.quota_backend_bytes is None else part.quota_backend_bytes
    out = [
        # Member names: the partition's, prefixed with --name when one was given.
        f"--name={part.name if args.name == 'default' else f'{args.name}-{part.name}'}",
        f"--data-dir={os.path.join(data_dir, part.name)}",
        f"--listen-client-urls={','.join(part.client_urls)}",
        f"--journal-log={part.log_name}",
        f"--quota-backend-bytes={quota}",
        # Each partition is its own etcd cluster (its own cluster id); the default one keeps the token.
        f"--initial-cluster-token={args.initial_cluster_token}"
        + ("" if part.name == DEFAULT_PARTITION else f"-{part.name}"),
        f"--workers={partition_workers(args, plan)}",
        # Every member would pin its processes to the same first CPUs: the kernel places them.
        "--worker-cpu-affinity=off",
    ]
    if args.state_dir:
        out.append(f"--state-dir={os.path.join(args.state_dir, part.name)}")
    if args.advertise_client_urls:
        out.append(f"--advertise-client-urls={_shifted(args.advertise_client_urls, index)}")
    # HTTP-only listeners move with the partition's index (they cannot be shared).
    if args.listen_client_http_urls:
        out.append(f"--listen-client-http-urls={_shifted(args.listen_client_http_urls, index)}")
    if args.listen_metrics_urls and args.listen_metrics_urls != "none":
        out.append(f"--listen-metrics-urls={_shifted(args.listen_metrics_urls, index)}")
    return out


WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def check_listeners(argvs: list[list[str]], plan: Plan) -> None:
    """Refuse a plan whose partitions would listen on the same address (client, HTTP or metrics
    URLs: e.g. --listen-metrics-urls :2381 next to client ports 2379.. of a 5-partition plan)."""
    taken: dict[tuple[str, int], str] = {}
    for part, argv in zip(plan.partitions, argvs, strict=True):
        for arg in argv:
            flag, _, value = arg.partition("=")
            if flag not in ("--listen-client-urls", "--listen-client-http-urls", "--listen-metrics-urls"):
                continue
            for url in value.split(","):
                host, port = check_url(url.strip())
                for (h, p), owner in taken.items():
                    if p == port and (h == host or h in WILDCARD_HOSTS or host in WILDCARD_HOSTS):
                        raise PlanError(
                            f"partition {part.name!r} ({flag} {url}) and {owner} would listen on port {port}; "
                            "move --listen-metrics-urls (or the plan's URLs) apart"
                        )
                taken[(host, port)] = f"partition {part.name!r} ({flag} {url})"


class StartFailed(Exception):
    """A member exited before it ever served."""


@dataclass
class Child:
    partition: Partition
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = RESTART_BACKOFF_S_MIN
    restart_at: float | None = None
    restarts: int = 0
    up: bool = False  # it answered on its client URL once (it started)


def serving(url: str) -> bool:
    """The member on url answers etcd's Maintenance.Status (not merely: something listens there)."""
    import grpc

    from proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    host, port = check_url(url)
    host = "127.0.0.1" if host in WILDCARD_HOSTS else f"[{host}]" if ":" in host else host
    with grpc.insecure_channel(f"{host}:{port}") as ch:
        try:
            rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=0.5)
            return True
        except grpc.RpcError:
            return False


class Supervisor:
    def __init__(self, plan: Plan, argvs: list[list[str]]) -> None:
        self.plan = plan
        self.children = [Child(p, argv) for p, argv in zip(plan.partitions, argvs, strict=True)]
        self.pgid = 0  # the children's process group (the first child's pid)
        self.stopping = False

    def _start(self, child: Child) -> None:
        argv = [*child.argv, f"--parent-pid={os.getpid()}"]
        try:
            child.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, process_group=self.pgid)
        except (OSError, subprocess.SubprocessError):  # the group is gone (every child died): a new one
            self.pgid = 0
            child.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, process_group=0)
        if self.pgid == 0:
            self.pgid = child.proc.pid
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("partition %s: pid %d on %s (log %r)", child.partition.name, child.proc.pid,
                 ",".join(child.partition.client_urls), child.partition.log_name)  # fmt: skip

    def run(self) -> int:
        def on_signal(signum: int, frame: object) -> None:
            self.stopping = True

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)
        try:
            for child in self.children:
                self._start(child)
            while not self.stopping:
                self._watch()
                time.sleep(POLL_INTERVAL_S)
        except StartFailed as e:
            log.error("%s; stopping every partition", e)
            return 1
        finally:
            self.stop()
        return 0

    def _watch(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.proc is not None and not child.up and child.proc.poll() is None:
                child.up = serving(child.partition.client_urls[0])
            if child.proc is not None and child.proc.poll() is not None and not child.up:
                # It never started (a port in use, a bad flag): fail as a single `kvstore serve` would.
                raise StartFailed(f"partition {child.partition.name}: member exited with {child.proc.returncode} "
                                  "before it served")  # fmt: skip
            if child.proc is not None and child.proc.poll() is not None:
                ran_s = now - child.started_at
                if ran_s > STABLE_RUN_S:
                    child.backoff_s = RESTART_BACKOFF_S_MIN
                log.error("partition %s: member exited with %s after %.1f s; restarting in %.1f s",
                          child.partition.name, child.proc.returncode, ran_s, child.backoff_s)  # fmt: skip
                child.proc = None
                child.restart_at = now + child.backoff_s
                child.backoff_s = min(RESTART_BACKOFF_S_MAX, child.backoff_s * 2)
            if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._start(child)

    def stop(self) -> None:
        """SIGTERM to the members (their whole process group), wait, then SIGKILL any that did not stop."""
        self.stopping = True
        live = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        if live and self.pgid:
            # The whole group: also anything a child started. (The group is ours while a child lives.)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGTERM)
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for p in live:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop in %.0f s: killing it", p.pid, STOP_TIMEOUT_S)
                p.kill()
                p.wait()


def serve_partitions(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """`kvstore serve --partitions ...`: check the plan, then run one member per partition."""
    plan = plan_for(args)
    common = passthrough_args(parser, args)
    argvs = [
        [sys.executable, "-m", "kvstore", "serve", *common, *partition_args(args, plan, i)]
        for i in range(len(plan.partitions))
    ]
    check_listeners([partition_args(args, plan, i) for i in range(len(plan.partitions))], plan)
    log.info("plan %s: %d partitions on %s", plan.name, len(plan.partitions),
             "the journal at " + args.journal_endpoints if args.journal_endpoints else "local journals")  # fmt: skip
    return Supervisor(plan, argvs).run()
