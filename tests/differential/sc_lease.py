"""Lease scenarios: grant (given or chosen id), revoke, TimeToLive, Leases, KeepAlive, expiry."""

from __future__ import annotations

from tests.differential.harness import scenario
from tests.differential.normalize import LID, PREFIX_END, Lease
from tests.differential.steps import (
    delete,
    grant,
    keepalive_open,
    keepalive_send,
    op_put,
    put,
    range_,
    revoke,
    sleep,
    ttl,
    txn,
    unary,
    watch_create,
    watch_open,
    watch_quiet,
    watch_recv,
)


@scenario()
def sc_lease_grant_with_id() -> list:
    return [grant(60, LID(1)), ttl(LID(1)), revoke(LID(1)), ttl(LID(1))]


@scenario()
def sc_lease_grant_server_chosen_id() -> list:
    return [grant(60, save="a"), grant(60, save="b"), ttl(Lease("a")), put("k", "v", lease=Lease("b")),
            range_("k"), ttl(Lease("b"), keys=True), revoke(Lease("a")), revoke(Lease("b")), range_("k")]


@scenario()
def sc_lease_grant_existing_id() -> list:
    return [grant(60, LID(1)), grant(30, LID(1)), ttl(LID(1))]


@scenario()
def sc_lease_grant_min_ttl() -> list:
    # TTLs below the minimum (ceil(1.5 x election timeout) = 2 s with etcd's defaults) are raised
    return [grant(1, LID(1)), grant(0, LID(2)), grant(-5, LID(3)), ttl(LID(1))]


@scenario()
def sc_lease_grant_too_large_ttl() -> list:
    return [grant(9_000_000_001, LID(1)), grant(9_000_000_000, LID(2)), ttl(LID(2))]


_NEG = -77_000_000_001  # client-chosen ids may be negative (TestV3LeaseNegativeID); unique to this scenario


@scenario()
def sc_lease_negative_id() -> list:
    return [grant(60, _NEG), ttl(_NEG), put("k", "v", lease=_NEG), range_("k"), ttl(_NEG, keys=True),
            revoke(_NEG), range_("k")]


@scenario()
def sc_lease_revoke_unknown() -> list:
    return [revoke(LID(5)), revoke(0)]


@scenario()
def sc_lease_timetolive_unknown() -> list:
    return [ttl(LID(5)), ttl(LID(5), keys=True), ttl(0)]


@scenario()
def sc_lease_timetolive_keys() -> list:
    return [grant(100, LID(1)), put("c", "1", lease=LID(1)), put("a", "1", lease=LID(1)), put("b", "1"),
            txn([], [op_put("d", "1", lease=LID(1)), op_put("b", "2", lease=LID(1))]), ttl(LID(1), keys=True),
            ttl(LID(1))]


@scenario()
def sc_lease_revoke_deletes_keys_one_revision() -> list:
    return [grant(60, LID(1)), put("b", "1", lease=LID(1)), put("a", "1", lease=LID(1)), put("z", "1"),
            revoke(LID(1)), range_("a", range_end="zz"), revoke(LID(1))]


@scenario()
def sc_lease_revoke_without_keys() -> list:
    return [put("x"), grant(60, LID(1)), revoke(LID(1)), range_("x")]


@scenario()
def sc_lease_switch() -> list:
    return [grant(60, LID(1)), grant(60, LID(2)), put("k", "v", lease=LID(1)), put("k", "v", lease=LID(2)),
            ttl(LID(1), keys=True), ttl(LID(2), keys=True), revoke(LID(1)), range_("k"), revoke(LID(2)),
            range_("k")]


@scenario()
def sc_lease_key_deleted_then_revoke() -> list:
    return [grant(60, LID(1)), put("k", "v", lease=LID(1)), delete("k"), ttl(LID(1), keys=True), revoke(LID(1)),
            range_("k")]


@scenario()
def sc_lease_revoke_watch_events() -> list:
    return [grant(60, LID(1)), put("p/2", "x", lease=LID(1)), put("p/1", "y", lease=LID(1)),
            watch_open(), watch_create(key="p/", range_end=PREFIX_END, prev_kv=True), watch_recv(),
            revoke(LID(1)), watch_recv(), watch_quiet()]


@scenario(fresh=True)
def sc_lease_leases_list() -> list:
    return [unary("LeaseLeases"), grant(60, LID(1)), grant(60, LID(2)), grant(60, save="c"), unary("LeaseLeases"),
            revoke(LID(2)), unary("LeaseLeases")]


@scenario()
def sc_lease_keepalive() -> list:
    return [grant(60, LID(1)), keepalive_open(), keepalive_send("ka", LID(1)), watch_recv("ka"),
            keepalive_send("ka", LID(1)), keepalive_send("ka", LID(1)), watch_recv("ka", n=2), ttl(LID(1))]


@scenario()
def sc_lease_keepalive_unknown() -> list:
    return [keepalive_open(), keepalive_send("ka", LID(9)), watch_recv("ka"), grant(60, LID(1)),
            keepalive_send("ka", LID(1)), watch_recv("ka")]


@scenario()
def sc_lease_keepalive_after_revoke() -> list:
    return [grant(60, LID(1)), keepalive_open(), keepalive_send("ka", LID(1)), watch_recv("ka"), revoke(LID(1)),
            keepalive_send("ka", LID(1)), watch_recv("ka")]


@scenario()
def sc_lease_keepalive_server_chosen_id() -> list:
    return [grant(30, save="a"), keepalive_open(), keepalive_send("ka", Lease("a")), watch_recv("ka")]


@scenario()
def sc_lease_put_ignore_lease_keeps_it() -> list:
    return [grant(60, LID(1)), put("k", "1", lease=LID(1)), put("k", "2", ignore_lease=True),
            ttl(LID(1), keys=True), revoke(LID(1)), range_("k")]


@scenario()
def sc_lease_many_keys_revoke() -> list:
    keys = [put(f"m/{i:02d}", str(i), lease=LID(1)) for i in range(20)]
    return [grant(60, LID(1)), *keys, ttl(LID(1), keys=True), revoke(LID(1)),
            range_("m/", range_end=PREFIX_END, count_only=True)]


@scenario(fresh=True, note="lease expiry is time-based: the DELETE events and revision are compared, timing is not")
def sc_lease_expiry() -> list:
    return [grant(2, LID(1)), put("b", "1", lease=LID(1)), put("a", "2", lease=LID(1)), put("c", "3"),
            watch_open(), watch_create(key="a", range_end="z", prev_kv=True), watch_recv(),
            watch_recv(timeout_s=8.0), range_("a", range_end="z"), ttl(LID(1)), unary("LeaseLeases")]


@scenario(fresh=True)
def sc_lease_keepalive_extends() -> list:
    return [grant(2, LID(1)), put("k", "v", lease=LID(1)), keepalive_open(),
            sleep(1.2), keepalive_send("ka", LID(1)), watch_recv("ka"),
            sleep(1.2), keepalive_send("ka", LID(1)), watch_recv("ka"), range_("k", count_only=True)]
