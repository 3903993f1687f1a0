"""`kvstore kube-flags` and `kvstore partitions status`: both take `kvstore serve`'s options,
so the same command line that serves a plan also describes it."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass

import grpc

from kvstore.partition.plan import Plan, PlanError, assign_urls, kube_apiserver_flags, load_plan, single_plan
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc

STATUS_TIMEOUT_S_DEFAULT = 5.0


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    from kvstore.server import build_parser

    p = build_parser()
    p.prog, p.description = prog, description
    return p


def resolve_plan(args: argparse.Namespace, advertised: bool = False) -> Plan:
    """The plan serve's options describe; advertised: the URLs clients use (--advertise-client-urls)."""
    from kvstore.server import parse_urls

    plan = load_plan(args.partitions) if args.partitions else single_plan()
    urls = args.advertise_client_urls if advertised and args.advertise_client_urls else args.listen_client_urls
    return assign_urls(plan, parse_urls(urls))


def kube_flags_main(argv: list[str]) -> int:
    p = _parser(
        "kvstore kube-flags",
        "Print the kube-apiserver flags (--etcd-servers, --etcd-servers-overrides) for what `kvstore serve` "
        "with the same options serves. CRDs and other non-built-in resources always use --etcd-servers.",
    )
    args = p.parse_args(argv)
    try:
        plan = resolve_plan(args, advertised=True)
    except PlanError as e:
        print(f"kvstore kube-flags: {e}", file=sys.stderr)
        return 2
    print("\n".join(kube_apiserver_flags(plan)))
    return 0


@dataclass
class Row:
    partition: str
    url: str
    revision: int | None = None
    position: int | None = None
    db_size: int | None = None
    db_quota: int | None = None
    alarms: str = ""
    members: str = ""
    error: str = ""


ALARM_NAMES = {pb.AlarmType.NOSPACE: "NOSPACE", pb.AlarmType.CORRUPT: "CORRUPT"}


async def status_row(partition: str, url: str, timeout_s: float) -> Row:
    row = Row(partition, url)
    target = url.split("://", 1)[-1]
    async with grpc.aio.insecure_channel(target) as ch:
        try:
            st = await rpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=timeout_s)
            alarms = await rpc.MaintenanceStub(ch).Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET), timeout=timeout_s)
            members = await rpc.ClusterStub(ch).MemberList(pb.MemberListRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as e:
            row.error = f"{e.code().name}: {e.details()}"
            return row
    row.revision, row.position = st.header.revision, st.raftIndex
    row.db_size, row.db_quota = st.dbSize, st.dbSizeQuota
    row.alarms = ",".join(sorted({ALARM_NAMES.get(a.alarm, str(a.alarm)) for a in alarms.alarms})) or "-"
    row.members = ",".join(m.name for m in members.members)
    return row


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


async def gather_status(plan: Plan, timeout_s: float) -> list[Row]:
    return list(await asyncio.gather(*(status_row(p.name, p.client_urls[0], timeout_s) for p in plan.partitions)))


def status_main(argv: list[str]) -> int:
    p = _parser(
        "kvstore partitions status",
        "One row per partition of the plan that `kvstore serve` with the same options serves: URL, revision, "
        "journal position, db size / quota, alarms, members (from each partition's Status, AlarmList and "
        "MemberList).",
    )
    p.add_argument("--timeout", type=float, default=STATUS_TIMEOUT_S_DEFAULT, help="seconds per RPC")
    args = p.parse_args(argv)
    try:
        plan = resolve_plan(args)
    except PlanError as e:
        print(f"kvstore partitions status: {e}", file=sys.stderr)
        return 2
    rows = asyncio.run(gather_status(plan, args.timeout))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"plan {plan.name}", title_justify="left")
    for col in ("partition", "URL", "revision", "journal position", "db size / quota", "alarms", "members"):
        table.add_column(col, justify="right" if col in ("revision", "journal position") else "left")
    for r in rows:
        if r.error:
            table.add_row(r.partition, r.url, "-", "-", "-", f"unreachable ({r.error})", "-")
        else:
            table.add_row(r.partition, r.url, str(r.revision), str(r.position), f"{_size(r.db_size)} / "
                          f"{_size(r.db_quota)}", r.alarms, r.members)  # fmt: skip
    Console(width=200).print(table)
    return 1 if any(r.error for r in rows) else 0


def partitions_main(argv: list[str]) -> int:
    if argv and argv[0] == "status":
        return status_main(argv[1:])
    print("usage: kvstore partitions status [kvstore serve options]", file=sys.stderr)
    return 0 if argv and argv[0] in ("-h", "--help") else 2
