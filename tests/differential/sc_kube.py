"""The request shapes kube-apiserver sends (kubernetes/apiserver pkg/storage/etcd3), end to end."""

from __future__ import annotations

from tests.differential.harness import scenario
from tests.differential.normalize import LID, PREFIX_END, R
from tests.differential.steps import (
    cmp,
    compact,
    grant,
    op_del,
    op_put,
    op_range,
    range_,
    txn,
    unary,
    watch_create,
    watch_open,
    watch_progress,
    watch_quiet,
    watch_recv,
)

PODS = "/registry/pods/ns/"


def _create(name: str, value: str = "{}", lease: object = 0) -> object:
    key = PODS + name
    return txn([cmp(key, "MOD", "EQUAL", 0)], [op_put(key, value, lease=lease)])


@scenario()
def sc_kube_list_pagination() -> list:
    pods = [_create(f"p{i}") for i in range(7)]
    return [*pods,
            range_(PODS, range_end=PREFIX_END, limit=3),
            range_(PODS + "p2\0", range_end=PODS[:-1] + "0", limit=3, revision=R(7)),
            range_(PODS + "p5\0", range_end=PODS[:-1] + "0", limit=3, revision=R(7)),
            range_(PODS, range_end=PREFIX_END, count_only=True),
            range_(PODS, range_end=PREFIX_END, keys_only=True, limit=10000),
            compact(R(7)),
            range_(PODS + "p2\0", range_end=PODS[:-1] + "0", limit=3, revision=R(6))]


@scenario()
def sc_kube_current_revision_and_health() -> list:
    return [_create("a"), range_("/registry/health"), range_(PODS, range_end=PREFIX_END, limit=1)]


@scenario()
def sc_kube_list_and_watch() -> list:
    return [_create("a", "v1"), _create("b", "v1"),
            range_(PODS, range_end=PREFIX_END, limit=500),
            watch_open(),
            watch_create(key=PODS, range_end=PREFIX_END, start_revision=R(3), prev_kv=True, progress_notify=True),
            watch_recv(),
            txn([cmp(PODS + "a", "MOD", "EQUAL", R(1))], [op_put(PODS + "a", "v2")], [op_range(PODS + "a")]),
            watch_recv(),
            txn([cmp(PODS + "b", "MOD", "EQUAL", R(2))], [op_del(PODS + "b")], [op_range(PODS + "b")]),
            watch_recv(),
            watch_progress(), watch_recv(),
            _create("c"), watch_recv(), watch_quiet()]


@scenario()
def sc_kube_watch_from_resource_version_in_the_past() -> list:
    return [_create("a", "v1"), _create("b", "v1"),
            txn([cmp(PODS + "a", "MOD", "EQUAL", R(1))], [op_put(PODS + "a", "v2")], [op_range(PODS + "a")]),
            watch_open(),
            watch_create(key=PODS, range_end=PREFIX_END, start_revision=R(2), prev_kv=True, progress_notify=True),
            watch_recv(n=2), watch_progress(), watch_recv()]


@scenario()
def sc_kube_watch_too_old_resource_version() -> list:
    return [_create("a", "v1"),
            txn([cmp(PODS + "a", "MOD", "EQUAL", R(1))], [op_put(PODS + "a", "v2")], [op_range(PODS + "a")]),
            compact(R(2)),
            watch_open(),
            watch_create(key=PODS, range_end=PREFIX_END, start_revision=R(1), prev_kv=True, progress_notify=True),
            watch_recv(n=2)]


@scenario()
def sc_kube_event_ttl_lease() -> list:
    # events: one lease (ttl + min(60, 5% of ttl)) reused by many objects
    return [grant(3660, LID(1)), _create("e1", lease=LID(1)), _create("e2", lease=LID(1)),
            range_(PODS, range_end=PREFIX_END), unary("LeaseTimeToLive", {"ID": LID(1), "keys": True})]


@scenario()
def sc_kube_guaranteed_update_conflict() -> list:
    key = PODS + "x"
    return [_create("x", "v1"),
            txn([cmp(key, "MOD", "EQUAL", R(1))], [op_put(key, "v2")], [op_range(key)]),
            txn([cmp(key, "MOD", "EQUAL", R(1))], [op_put(key, "v3")], [op_range(key)]),
            txn([cmp(key, "MOD", "EQUAL", R(2))], [op_put(key, "v3")], [op_range(key)]),
            txn([cmp(key, "MOD", "EQUAL", R(3))], [op_del(key)], [op_range(key)]),
            txn([cmp(key, "MOD", "EQUAL", R(3))], [op_del(key)], [op_range(key)])]


@scenario(note="kube-apiserver sets `hasleader: true` on every watch (WithRequireLeader), and `source: cache` "
               "on cacher requests in some versions")
def sc_kube_watch_stream_metadata() -> list:
    md = (("hasleader", "true"), ("source", "cache"))
    return [_create("m", "v1"), watch_open("k", metadata=md),
            watch_create("k", key=PODS, range_end=PREFIX_END, start_revision=R(1), prev_kv=True,
                         progress_notify=True),
            watch_recv("k", n=2), watch_progress("k"), watch_recv("k"),
            txn([cmp(PODS + "m", "MOD", "EQUAL", R(1))], [op_put(PODS + "m", "v2")], [op_range(PODS + "m")]),
            watch_recv("k")]
