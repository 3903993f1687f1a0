"""Restart scenarios: both servers are stopped (or SIGKILLed) and started on the same data, then compared."""

from __future__ import annotations

from typing import Any

from tests.differential.harness import scenario
from tests.differential.normalize import LID, PREFIX_END, R
from tests.differential.session import Session
from tests.differential.steps import (
    compact,
    custom,
    delete,
    grant,
    op_put,
    put,
    range_,
    restart,
    revoke,
    txn,
    unary,
    watch_create,
    watch_open,
    watch_recv,
)


def _history() -> list:
    return [put("a", "1"), put("b", "1"), txn([], [op_put("a", "2"), op_put("c", "1")]), delete("b"),
            put("a", "3"), compact(R(2))]


def _after() -> list:
    return [range_("a", range_end="z"), range_("a", range_end="z", revision=R(3)), range_("a", revision=R(1)),
            put("a", "4"), range_("a"), compact(R(2)), compact(R(4)), range_("a", revision=R(4))]


@scenario(fresh=True, slow=True)
def sc_restart_revisions_continue() -> list:
    return [*_history(), restart(), *_after()]


@scenario(fresh=True)
def sc_kill9_restart_revisions_continue() -> list:
    return [*_history(), restart(kill=True), *_after()]


def _remaining_plausible(s: Session) -> Any:
    from proto.etcdserverpb import rpc_pb2

    r = s.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=s.value(LID(1))), timeout=10)
    return {"0 < remaining <= granted": 0 < r.TTL <= r.grantedTTL}


@scenario(fresh=True, note="etcd 3.5.1 (no lease checkpoint persisted) gives every lease its full TTL again on "
                           "restart; ours counts expiry from journal timestamps, so the remaining TTL carries "
                           "on: a deliberate difference, remaining TTLs are not compared after the restart")
def sc_restart_leases_survive() -> list:
    return [grant(600, LID(1)), grant(600, LID(2)), put("k1", "v", lease=LID(1)), put("k2", "v", lease=LID(1)),
            restart(kill=True),
            unary("LeaseTimeToLive", {"ID": LID(1), "keys": True}, drop=("TTL",)),
            unary("LeaseTimeToLive", {"ID": LID(2)}, drop=("TTL",)), custom("remaining TTL", _remaining_plausible),
            unary("LeaseLeases"), revoke(LID(1)), range_("k", range_end="l"), grant(600, LID(2))]


@scenario(fresh=True, slow=True)
def sc_restart_watch_resumes_from_revision() -> list:
    return [put("w/a", "1"), put("w/b", "1"), delete("w/a"), restart(kill=True),
            watch_open(), watch_create(key="w/", range_end=PREFIX_END, start_revision=R(2), prev_kv=True),
            watch_recv(n=2), put("w/c", "1"), watch_recv()]


def _ids(s: Session) -> Any:
    from proto.etcdserverpb import rpc_pb2

    h = s.kv.Range(rpc_pb2.RangeRequest(key=b"x"), timeout=10).header
    s.saved["ids"] = (h.cluster_id, h.member_id)  # type: ignore[assignment]
    return {"cluster_id_set": h.cluster_id != 0, "member_id_set": h.member_id != 0}


def _same_ids(s: Session) -> Any:
    from proto.etcdserverpb import rpc_pb2

    h = s.kv.Range(rpc_pb2.RangeRequest(key=b"x"), timeout=10).header
    return {"cluster_and_member_id_kept": s.saved["ids"] == (h.cluster_id, h.member_id),
            "raft_term_set": h.raft_term != 0}


@scenario(fresh=True)
def sc_restart_keeps_cluster_and_member_id() -> list:
    return [put("x", "1"), custom("ids", _ids), restart(kill=True), custom("ids after restart", _same_ids),
            restart(), custom("ids after a clean restart", _same_ids)]
