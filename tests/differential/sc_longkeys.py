"""Keys longer than LMDB's 511-byte key limit (etcd takes any key up to the request size limit).

Our store keeps a key longer than its inline limit hashed (kvstore/mvcc/keyindex.py); these
scenarios check, against etcd, that such keys behave as any other: put, get, range order and
counts next to short keys and to each other, delete, txn, history, watch and leases.
"""

from __future__ import annotations

from tests.differential.harness import scenario
from tests.differential.normalize import LID, PREFIX_END, R
from tests.differential.steps import (
    cmp,
    compact,
    delete,
    grant,
    op_del,
    op_put,
    op_range,
    put,
    range_,
    revoke,
    ttl,
    txn,
    watch_create,
    watch_open,
    watch_quiet,
    watch_recv,
)

# Lengths around the inline limit (470) and LMDB's limit (511), and far beyond (the scenario
# prefix adds a few bytes to each).
LENGTHS = (460, 500, 511, 512, 600, 10_000, 100_000)
SHARED = "L/" + "s" * 600  # a long part shared by many long keys: their order is decided past it


def _key(n: int, fill: str = "k") -> str:
    return "lk/" + fill * (n - 3)


def _run() -> list[str]:
    """Short and long keys interleaved in key order around SHARED."""
    return [SHARED[:400], SHARED[:470], SHARED, SHARED + "\0", SHARED + "a", SHARED + "a" * 50, SHARED + "b",
            SHARED + "/", SHARED + "/x", SHARED[:469] + "t", SHARED + "c" * 10_000]


@scenario()
def sc_long_keys_put_get_range() -> list:
    steps = []
    for n in LENGTHS:
        steps += [put(_key(n), f"v{n}", prev_kv=True), range_(_key(n)), put(_key(n), f"w{n}", prev_kv=True)]
    steps += [range_("lk/", range_end=PREFIX_END), range_("lk/", range_end=PREFIX_END, limit=3),
              range_("lk/", range_end=PREFIX_END, count_only=True), range_("lk/", range_end=PREFIX_END, keys_only=True),
              range_(_key(600), range_end=PREFIX_END), range_(_key(511), range_end=_key(10_000)),
              range_("lk/", range_end=PREFIX_END, sort_order="DESCEND", sort_target="KEY"),
              range_("lk/", range_end=PREFIX_END, sort_order="ASCEND", sort_target="MOD"),
              range_(_key(100_000, "j"))]
    return steps


@scenario()
def sc_long_keys_order_among_long_and_short() -> list:
    keys = _run()
    steps = [put(k, str(i)) for i, k in enumerate(reversed(keys))]
    steps += [range_("L/", range_end=PREFIX_END), range_(SHARED, range_end=PREFIX_END),
              range_(SHARED, range_end=PREFIX_END, count_only=True), range_(SHARED + "a", range_end=SHARED + "c"),
              range_(SHARED[:470], range_end=SHARED + "\0\0"), range_(SHARED + "\0", range_end=SHARED + "/"),
              range_(SHARED + "/", range_end=PREFIX_END)]
    # kube's pages: the first at the current revision, the next ones at its revision from the last key + NUL
    for i in range(len(keys)):
        steps.append(range_(sorted(keys)[i] + "\0", range_end="L0", limit=2, revision=R(len(keys))))
    return steps


@scenario()
def sc_long_keys_delete() -> list:
    keys = _run()
    return [*[put(k, "x") for k in keys], delete(SHARED + "a", prev_kv=True), range_(SHARED + "a"),
            delete(SHARED, range_end=SHARED + "c", prev_kv=True), range_("L/", range_end=PREFIX_END, keys_only=True),
            delete(_key(100_000, "d")), put(_key(100_000, "d"), "y"), delete(_key(100_000, "d"), prev_kv=True),
            delete("L/", range_end=PREFIX_END), range_("L/", range_end=PREFIX_END, count_only=True)]


@scenario()
def sc_long_keys_txn() -> list:
    a, b = _key(600, "t"), _key(10_000, "t")
    return [
        put(a, "1"),
        txn([cmp(a, "VALUE", "EQUAL", "1"), cmp(b, "VERSION", "EQUAL", 0)],
            [op_put(b, "2", prev_kv=True), op_range(a), op_range("lk/", range_end=PREFIX_END, count_only=True)],
            [op_range(a)]),
        txn([cmp(b, "MOD", "GREATER", 0)], [op_del(a, prev_kv=True), op_put(a, "3"), op_range(a)], []),
        txn([cmp(a, "CREATE", "LESS", 0)], [], [op_range(b, keys_only=True), op_del(b, prev_kv=True)]),
        range_("lk/", range_end=PREFIX_END),
    ]


@scenario()
def sc_long_keys_history_and_compaction() -> list:
    k = _key(10_000, "h")
    return [put(k, "1"), put(k, "2"), delete(k), put(k, "3"), range_(k, revision=R(1)), range_(k, revision=R(2)),
            range_(k, revision=R(3)), range_(k, revision=R(4)), compact(R(3), physical=True),
            range_(k, revision=R(3)), range_(k), range_(k, revision=R(2))]


@scenario()
def sc_long_keys_watch() -> list:
    k = _key(600, "w")
    # Two streams: the order in which one event reaches two watchers of one stream is not defined.
    return [watch_open(), watch_create(key=k, prev_kv=True), watch_recv(n=1),
            watch_open("p"), watch_create("p", key="lk/www", range_end=PREFIX_END), watch_recv("p", n=1),
            put(k, "1"), watch_recv(), watch_recv("p"), put(k, "2"), watch_recv(), watch_recv("p"),
            put(_key(100_000, "w"), "3"), watch_recv("p"), delete(k), watch_recv(), watch_recv("p"),
            watch_quiet(), watch_quiet("p"),
            watch_create(key=k, start_revision=R(1), prev_kv=True), watch_recv(n=2)]


@scenario()
def sc_long_keys_lease() -> list:
    a, b = _key(600, "e"), _key(100_000, "e")
    return [grant(60, LID(1)), put(a, "1", lease=LID(1)), put(b, "2", lease=LID(1)), put("lk/e", "3", lease=LID(1)),
            ttl(LID(1), keys=True), put(a, "4"), ttl(LID(1), keys=True), revoke(LID(1)),
            range_("lk/e", range_end=PREFIX_END)]
