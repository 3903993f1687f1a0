"""KV scenarios: Range (every option), Put, DeleteRange."""

from __future__ import annotations

from tests.differential.harness import scenario
from tests.differential.normalize import FROM_KEY, LID, PREFIX_END, R
from tests.differential.steps import delete, expect36, grant, put, range_, ttl, unary


def _abc() -> list:
    return [put("a", "1"), put("b", "2"), put("c", "3")]


# ------------------------------------------------------------------------------------------------ Range


@scenario()
def sc_range_missing_key() -> list:
    return [range_("nope"), range_("nope", count_only=True)]


@scenario()
def sc_range_single_key() -> list:
    return [put("a", "1"), put("ab", "2"), range_("a"), range_("ab")]


@scenario()
def sc_range_half_open() -> list:
    return [*_abc(), put("d", "4"), range_("a", range_end="c"), range_("b", range_end="d"),
            range_("a", range_end="a\0")]


@scenario()
def sc_range_end_below_key() -> list:
    return [*_abc(), range_("c", range_end="a"), range_("c", range_end="a", count_only=True)]


@scenario()
def sc_range_end_equal_key() -> list:
    return [*_abc(), range_("b", range_end="b")]


@scenario()
def sc_range_prefix() -> list:
    return [put("p/1", "x"), put("p/2", "y"), put("p0", "z"), put("p/", "w"), range_("p/", range_end=PREFIX_END)]


@scenario()
def sc_range_prefix_ff() -> list:
    return [
        put(b"\xfe\xff\xffdiffk", "1"),
        put(b"\xfe\xff\xff", "2"),
        range_(b"\xfe\xff\xff", range_end=PREFIX_END),
        delete(b"\xfe\xff\xff", range_end=PREFIX_END, prev_kv=True),
    ]


@scenario(fresh=True)
def sc_range_from_key() -> list:
    return [*_abc(), range_("b", range_end=FROM_KEY), range_("0", range_end=FROM_KEY, count_only=True)]


@scenario(fresh=True)
def sc_range_all_keys() -> list:
    return [*_abc(), put(b"\x00\x01", "lo"), put(b"\xff", "hi"), range_(b"\0", range_end=b"\0"),
            range_(b"\0", range_end=b"\0", limit=2), range_(b"\0"), range_(b"\xff", range_end=FROM_KEY)]


@scenario(fresh=True)
def sc_fresh_store_starts_at_revision_1() -> list:
    return [range_("x"), put("x", "1"), range_("x")]


@scenario()
def sc_range_limit_more_count() -> list:
    return [*_abc(), *(range_("a", range_end="d", limit=n) for n in (1, 2, 3, 4, 0))]


@scenario()
def sc_range_limit_negative() -> list:
    return [*_abc(), range_("a", range_end="d", limit=-1)]


@scenario()
def sc_range_limit_with_count_only() -> list:
    return [*_abc(), range_("a", range_end="d", limit=1, count_only=True)]


@scenario()
def sc_range_historical_revisions() -> list:
    steps = [put("k", "v1"), put("k", "v2"), delete("k"), put("k", "v3")]
    steps += [range_("k", revision=R(n)) for n in range(0, 5)]
    return steps


@scenario()
def sc_range_future_revision() -> list:
    return [put("k", "v"), range_("k", revision=R(1)), range_("k", revision=R(2)), range_("k", revision=R(100))]


@scenario()
def sc_range_negative_revision() -> list:
    return [put("k", "v"), range_("k", revision=-1)]


@scenario()
def sc_range_sort_key() -> list:
    return [
        put("b", "1"), put("a", "2"), put("c", "0"),
        range_("a", range_end="d", sort_order="ASCEND"),
        range_("a", range_end="d", sort_order="DESCEND"),
        range_("a", range_end="d", sort_order="DESCEND", limit=2),
    ]


@scenario()
def sc_range_sort_create_none_means_ascend() -> list:
    # TestV3RangeRequest: keys put as b, a, c, d, c sorted by CREATE with order NONE -> b, a, c, d
    return [put("b"), put("a"), put("c"), put("d"), put("c"),
            range_("a", range_end="z", sort_target="CREATE"),
            range_("a", range_end="z", sort_target="CREATE", sort_order="DESCEND"),
            range_("a", range_end="z", sort_target="CREATE", limit=2)]


@scenario()
def sc_range_sort_mod() -> list:
    return [put("a"), put("b"), put("c"), put("a", "again"),
            range_("a", range_end="z", sort_target="MOD", sort_order="ASCEND"),
            range_("a", range_end="z", sort_target="MOD", sort_order="DESCEND", limit=1)]


@scenario()
def sc_range_sort_version() -> list:
    return [put("a"), put("b"), put("b"), put("c"), put("c"), put("c"),
            range_("a", range_end="z", sort_target="VERSION", sort_order="DESCEND"),
            range_("a", range_end="z", sort_target="VERSION", sort_order="ASCEND", limit=2)]


@scenario()
def sc_range_sort_value() -> list:
    return [put("a", "zz"), put("b", "aa"), put("c", "mm"), put("d", ""),
            range_("a", range_end="z", sort_target="VALUE", sort_order="ASCEND"),
            range_("a", range_end="z", sort_target="VALUE", sort_order="DESCEND"),
            range_("a", range_end="z", sort_target="VALUE", keys_only=True)]


@scenario()
def sc_range_sort_ties() -> list:
    # many keys with the same version: tie order is unspecified, the harness compares ties as sets
    steps = [put(f"k{i:02d}", str(i % 3)) for i in range(15)]
    return [*steps,
            range_("k", range_end=PREFIX_END, sort_target="VERSION", sort_order="ASCEND"),
            range_("k", range_end=PREFIX_END, sort_target="VALUE", sort_order="DESCEND"),
            range_("k", range_end=PREFIX_END, sort_target="VALUE", sort_order="ASCEND", limit=7)]


_INVALID_SORT = [{"error": {"code": "INVALID_ARGUMENT", "message": "etcdserver: invalid sort option"}}]


@scenario(note="etcd 3.5.1 has no sort option check: it answers an unknown sort_order and crashes (Go panic) on "
               "an unknown sort_target; 3.6 answers InvalidArgument 'etcdserver: invalid sort option'")
def sc_range_invalid_sort_option() -> list:
    note = "etcd 3.5.1 panics on this request"
    return [put("a"),
            expect36(range_("a", sort_order=7), _INVALID_SORT[0], note),
            expect36(range_("a", sort_target=9), _INVALID_SORT[0], note),
            range_("a")]


@scenario()
def sc_range_keys_only() -> list:
    return [*_abc(), range_("a", range_end="z", keys_only=True), range_("a", range_end="z", keys_only=True, limit=1)]


@scenario()
def sc_range_count_only() -> list:
    return [*_abc(), range_("a", range_end="z", count_only=True), range_("a", count_only=True, keys_only=True)]


@scenario()
def sc_range_min_max_mod_revision() -> list:
    # TestV3RangeRequest: MinModRevision=3 over keys modified at 2..6 returns 4 keys, count 5
    steps = [put(k) for k in ("a", "b", "c", "d", "e")]
    return [*steps,
            range_("a", range_end="z", min_mod_revision=R(2)),
            range_("a", range_end="z", max_mod_revision=R(3)),
            range_("a", range_end="z", min_mod_revision=R(2), max_mod_revision=R(4)),
            range_("a", range_end="z", min_mod_revision=R(2), limit=2),
            range_("a", range_end="z", max_mod_revision=R(0))]


@scenario()
def sc_range_min_max_create_revision() -> list:
    steps = [put("a"), put("b"), put("c"), put("a", "2"), put("d")]
    return [*steps,
            range_("a", range_end="z", min_create_revision=R(2)),
            range_("a", range_end="z", max_create_revision=R(2)),
            range_("a", range_end="z", min_create_revision=R(2), max_create_revision=R(3), count_only=True),
            range_("a", range_end="z", min_create_revision=R(2), limit=1, sort_order="DESCEND")]


@scenario()
def sc_range_serializable() -> list:
    return [put("a", "1"), range_("a", serializable=True), range_("a", serializable=True, revision=R(1))]


@scenario()
def sc_range_deleted_key_history() -> list:
    return [put("k", "1"), put("k", "2"), delete("k"), range_("k"), range_("k", revision=R(2)),
            range_("k", revision=R(3)), put("k", "3"), range_("k"), range_("k", revision=R(3))]


@scenario()
def sc_range_empty_key() -> list:
    return [range_(b""), range_(b"", range_end="z")]


@scenario()
def sc_range_count_ignores_filters() -> list:
    return [*_abc(), put("a", "x"),
            range_("a", range_end="z", min_mod_revision=R(4), count_only=True),
            range_("a", range_end="z", max_create_revision=R(1))]


@scenario()
def sc_range_historical_with_options() -> list:
    return [*_abc(), put("d"), delete("b"),
            range_("a", range_end="z", revision=R(3), limit=2, sort_order="DESCEND"),
            range_("a", range_end="z", revision=R(4), count_only=True),
            range_("a", range_end="z", revision=R(5), keys_only=True)]


# ------------------------------------------------------------------------------------------------ Put


@scenario()
def sc_put_new_and_overwrite() -> list:
    return [put("k", "1"), put("k", "2"), put("k", "2"), range_("k")]


@scenario()
def sc_put_prev_kv() -> list:
    return [put("k", "1", prev_kv=True), put("k", "2", prev_kv=True), delete("k"), put("k", "3", prev_kv=True)]


@scenario()
def sc_put_empty_value() -> list:
    return [put("k", ""), range_("k"), put("k", "", prev_kv=True)]


@scenario()
def sc_put_empty_key() -> list:
    return [put(b"", "v"), put(b"", "")]


@scenario()
def sc_put_ignore_value() -> list:
    return [put("k", "orig"), put("k", ignore_value=True, prev_kv=True), range_("k")]


@scenario()
def sc_put_ignore_value_missing_key() -> list:
    return [put("nokey", ignore_value=True), range_("nokey")]


@scenario()
def sc_put_ignore_value_with_value() -> list:
    return [put("k", "v"), put("k", "x", ignore_value=True)]


@scenario()
def sc_put_ignore_lease() -> list:
    return [grant(60, LID(1)), put("k", "v", lease=LID(1)), put("k", "v2", ignore_lease=True), range_("k"),
            ttl(LID(1), keys=True)]


@scenario()
def sc_put_ignore_lease_with_lease() -> list:
    return [grant(60, LID(1)), put("k", "v"), put("k", "v", lease=LID(1), ignore_lease=True)]


@scenario()
def sc_put_ignore_lease_missing_key() -> list:
    return [put("nokey", "v", ignore_lease=True)]


@scenario()
def sc_put_ignore_both() -> list:
    return [grant(60, LID(1)), put("k", "v", lease=LID(1)), put("k", ignore_value=True, ignore_lease=True,
                                                               prev_kv=True), range_("k")]


@scenario()
def sc_put_unknown_lease() -> list:
    return [put("k", "v", lease=LID(7)), range_("k")]


@scenario()
def sc_put_binary() -> list:
    return [put(b"\x00bin", b"\x00\xff\x01"), put("k\xe9", b"\xff" * 5),
            range_(b"\x00bin"), range_("k\xe9")]


@scenario()
def sc_put_large_value() -> list:
    return [put("big", "x" * 200_000), range_("big", keys_only=True), range_("big", count_only=True)]


@scenario()
def sc_put_lease_detach() -> list:
    return [grant(60, LID(1)), put("k", "v", lease=LID(1)), ttl(LID(1), keys=True), put("k", "v2"),
            ttl(LID(1), keys=True), range_("k")]


@scenario()
def sc_put_many_keys_then_range() -> list:
    steps = [put(f"m{i:03d}", f"v{i}") for i in range(50)]
    return [*steps, range_("m", range_end=PREFIX_END, limit=10), range_("m", range_end=PREFIX_END, count_only=True),
            range_("m025", range_end="m030")]


# ------------------------------------------------------------------------------------------------ Delete


@scenario()
def sc_delete_missing() -> list:
    return [put("x"), delete("missing"), delete("missing", prev_kv=True), range_("x")]


@scenario()
def sc_delete_single() -> list:
    return [put("k", "v"), delete("k", prev_kv=True), range_("k"), delete("k")]


@scenario()
def sc_delete_range() -> list:
    return [*_abc(), put("d"), delete("a", range_end="c"), range_("a", range_end="z")]


@scenario()
def sc_delete_prefix_prev_kv() -> list:
    return [put("p/1", "a"), put("p/2", "b"), put("q", "c"), delete("p/", range_end=PREFIX_END, prev_kv=True),
            range_("p/", range_end=PREFIX_END), range_("q")]


@scenario()
def sc_delete_end_below_key() -> list:
    return [*_abc(), delete("c", range_end="a"), range_("a", range_end="z", count_only=True)]


@scenario(fresh=True)
def sc_delete_from_key() -> list:
    return [*_abc(), delete("b", range_end=FROM_KEY, prev_kv=True), range_(b"\0", range_end=b"\0")]


@scenario(fresh=True)
def sc_delete_all_keys() -> list:
    return [*_abc(), delete(b"\0", range_end=b"\0"), range_(b"\0", range_end=b"\0", count_only=True),
            delete(b"\0", range_end=b"\0")]


@scenario()
def sc_delete_empty_key() -> list:
    return [delete(b""), delete(b"", range_end="z")]


@scenario()
def sc_delete_then_recreate() -> list:
    return [put("k", "1"), put("k", "2"), delete("k"), put("k", "3", prev_kv=True), range_("k"),
            range_("k", revision=R(2))]


@scenario()
def sc_delete_range_partial_existing() -> list:
    return [put("a"), put("c"), delete("a", range_end="d", prev_kv=True), delete("a", range_end="d")]


@scenario()
def sc_delete_key_with_lease() -> list:
    return [grant(60, LID(1)), put("k", "v", lease=LID(1)), delete("k", prev_kv=True), ttl(LID(1), keys=True)]


@scenario()
def sc_write_unicode_and_slash_keys() -> list:
    return [put("/registry/pods/default/p1", "{}"), put("/registry/pods/default/p2", "{}"),
            put("/registry/pods/kube-system/p3", "{}"),
            range_("/registry/pods/", range_end=PREFIX_END, keys_only=True),
            range_("/registry/pods/default/", range_end=PREFIX_END, limit=1),
            unary("Range", {"key": "/registry/pods/default/p1\0", "range_end": "/registry/pods/default0",
                            "revision": R(3)}, label="pagination continue key")]


@scenario(note="etcd quirk (3.5 and 3.6 rangeLimit): with sort_order NONE the limit is applied while reading "
               "(limit+1 keys in key order), and only those are sorted by the non-KEY target and truncated")
def sc_range_sort_none_nonkey_target_with_limit() -> list:
    return [put("a", "z"), put("b", "y"), put("c", "x"), put("d", "w"), put("e", "v"),
            range_("a", range_end="z", sort_target="VALUE", limit=2),
            range_("a", range_end="z", sort_target="VALUE", sort_order="ASCEND", limit=2),
            range_("a", range_end="z", sort_target="MOD", limit=1),
            range_("a", range_end="z", sort_target="VERSION", limit=3, keys_only=True)]


@scenario(note="found by random seed 3: a plain Put checks the lease before ignore_value/ignore_lease "
               "(applierV3backend.Put), a Put inside a Txn checks the key first (checkRequestPut)")
def sc_put_error_precedence() -> list:
    return [put("nokey", ignore_value=True, lease=LID(77)),
            unary("Txn", {"success": [{"request_put": {"key": "nokey", "ignore_value": True, "lease": LID(77)}}]}),
            put("nokey", "v", ignore_lease=True, lease=LID(77)),
            put(b"", "v", lease=LID(77)),
            put("k", "x" * 10, ignore_value=True, lease=LID(77))]
