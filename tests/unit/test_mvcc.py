"""Unit tests of the MVCC core and the state machine: etcd's own test vectors where it has them."""

from __future__ import annotations

import msgpack
import pytest

from kvstore import errors
from kvstore.errors import EtcdError
from kvstore.mvcc import keyindex, records
from kvstore.mvcc.backend import DB_INDEX
from kvstore.mvcc.store import MVCCStore
from kvstore.statemachine import Kind, StateMachine, encode_entry
from kvstore.v3rpc import validate
from proto.etcdserverpb import rpc_pb2 as pb


class Driver:
    """Feeds requests through the state machine as journal entries, like a member does."""

    def __init__(self) -> None:
        self.sm = StateMachine()
        self.position = 0
        self.now_ms = 1_000_000

    @property
    def store(self) -> MVCCStore:
        return self.sm.store

    def apply(self, kind: Kind, req: object) -> object:
        self.position += 1
        payload = msgpack.packb(req) if kind == Kind.LEASE_EXPIRE else req.SerializeToString()  # type: ignore[attr-defined]
        out = self.sm.apply(self.position, self.now_ms, encode_entry(kind, 7, self.position, payload))
        if isinstance(out.result, EtcdError):
            raise out.result
        self.last = out
        return out.result

    def put(self, key: bytes, value: bytes = b"v", **kw: object) -> pb.PutResponse:
        return self.apply(Kind.PUT, pb.PutRequest(key=key, value=value, **kw))  # type: ignore[return-value]

    def delete(self, key: bytes, range_end: bytes = b"", **kw: object) -> pb.DeleteRangeResponse:
        return self.apply(Kind.DELETE_RANGE, pb.DeleteRangeRequest(key=key, range_end=range_end, **kw))  # type: ignore[return-value]

    def txn(self, req: pb.TxnRequest) -> pb.TxnResponse:
        validate.check_txn(req)
        return self.apply(Kind.TXN, req)  # type: ignore[return-value]

    def range(self, key: bytes, range_end: bytes = b"", **kw: object) -> pb.RangeResponse:
        req = pb.RangeRequest(key=key, range_end=range_end, **kw)
        validate.check_range(req)
        return self.store.range(req)


def keys(resp: pb.RangeResponse) -> list[bytes]:
    return [kv.key for kv in resp.kvs]


def test_fresh_store_starts_at_revision_one() -> None:
    d = Driver()
    assert d.range(b"a").header.revision == 1


def test_put_revisions_versions_and_tombstones() -> None:
    d = Driver()
    assert d.put(b"a").header.revision == 2
    assert d.put(b"a", b"w").header.revision == 3
    kv = d.range(b"a").kvs[0]
    assert (kv.create_revision, kv.mod_revision, kv.version, kv.value) == (2, 3, 2, b"w")
    assert d.delete(b"a").deleted == 1
    assert d.range(b"a").count == 0
    d.put(b"a", b"again")
    kv = d.range(b"a").kvs[0]
    assert (kv.create_revision, kv.version) == (5, 1)
    # history stays readable
    assert d.range(b"a", revision=3).kvs[0].value == b"w"
    assert d.range(b"a", revision=4).count == 0


def test_delete_of_nothing_does_not_bump_revision() -> None:
    d = Driver()
    d.put(b"a")
    resp = d.delete(b"zz")
    assert (resp.deleted, resp.header.revision, d.store.revision) == (0, 2, 2)


def test_range_limit_more_and_count() -> None:
    # TestV3RangeRequest: keys a, b, c with limits 1..4
    d = Driver()
    for k in (b"a", b"b", b"c"):
        d.put(k)
    for limit, more in ((1, True), (2, True), (3, False), (4, False)):
        resp = d.range(b"a", b"z", limit=limit)
        assert (len(resp.kvs), resp.more, resp.count) == (min(limit, 3), more, 3)


def test_range_end_rules() -> None:
    d = Driver()
    for k in (b"a", b"ab", b"b", b"\xff"):
        d.put(k)
    assert keys(d.range(b"a", b"\0")) == [b"a", b"ab", b"b", b"\xff"]
    assert keys(d.range(b"\0", b"\0")) == [b"a", b"ab", b"b", b"\xff"]
    assert keys(d.range(b"a", b"b")) == [b"a", b"ab"]
    assert keys(d.range(b"b", b"a")) == []
    assert keys(d.range(b"ab")) == [b"ab"]


def test_range_sort_create_without_order_means_ascend() -> None:
    # TestV3RangeRequest: put b, a, c, d, c; sort by CREATE, order NONE -> b, a, c, d
    d = Driver()
    for k in (b"b", b"a", b"c", b"d", b"c"):
        d.put(k)
    resp = d.range(b"a", b"z", sort_target=pb.RangeRequest.CREATE)
    assert keys(resp) == [b"b", b"a", b"c", b"d"]
    resp = d.range(b"a", b"z", sort_target=pb.RangeRequest.MOD, sort_order=pb.RangeRequest.DESCEND, limit=2)
    assert keys(resp) == [b"c", b"d"] and resp.more and resp.count == 4


def test_range_min_mod_revision_filter_keeps_count() -> None:
    # TestV3RangeRequest: MinModRevision=3 over keys modified at 2..6 -> 4 keys, count 5
    d = Driver()
    for k in (b"a", b"b", b"c", b"d", b"e"):
        d.put(k)
    resp = d.range(b"a", b"z", min_mod_revision=3)
    assert (len(resp.kvs), resp.count) == (4, 5)


def test_keys_only_and_count_only() -> None:
    d = Driver()
    d.put(b"a", b"value")
    assert d.range(b"a", keys_only=True).kvs[0].value == b""
    resp = d.range(b"a", b"z", count_only=True)
    assert (list(resp.kvs), resp.count, resp.more) == ([], 1, False)


def test_future_and_compacted_revisions() -> None:
    d = Driver()
    for v in (b"1", b"2", b"3"):
        d.put(b"a", v)
    with pytest.raises(EtcdError) as e:
        d.range(b"a", revision=10)
    assert (e.value.code, e.value.message) == errors.FUTURE_REV
    d.apply(Kind.COMPACT, pb.CompactionRequest(revision=3))
    assert d.range(b"a", revision=3).kvs[0].value == b"2"  # the compact revision itself stays readable
    with pytest.raises(EtcdError) as e:
        d.range(b"a", revision=2)
    assert (e.value.code, e.value.message) == errors.COMPACTED
    with pytest.raises(EtcdError) as e:
        d.apply(Kind.COMPACT, pb.CompactionRequest(revision=3))
    assert e.value.message == errors.COMPACTED[1]


def test_compaction_drops_deleted_keys_and_old_versions() -> None:
    d = Driver()
    d.put(b"a")
    d.put(b"a")
    d.put(b"b")
    d.delete(b"b")
    backend = d.store.backend
    assert records.count(backend.txn, backend.dbs) == 4
    hash_before = d.store.hash_kv(5)
    d.apply(Kind.COMPACT, pb.CompactionRequest(revision=5))
    # Logically compacted at once (the hash counts only what is kept), physically in steps.
    assert d.store.hash_kv(5) != hash_before and d.store.compaction_pending
    hash_compacted = d.store.hash_kv(5)
    snapshot_compacted = d.sm.dumps()
    with backend.batch():
        while d.store.compact_step(entries_max=1):
            pass
    assert not d.store.compaction_pending
    assert records.count(backend.txn, backend.dbs) == 1
    assert list(keyindex.iter_range(backend.txn, backend.dbs, DB_INDEX, b"\0", b"\0", values=False)) == [b"a"]
    assert d.store.hash_kv(5) == hash_compacted and d.sm.dumps() == snapshot_compacted


def test_compact_zero_once() -> None:
    d = Driver()
    d.apply(Kind.COMPACT, pb.CompactionRequest(revision=0))
    with pytest.raises(EtcdError):
        d.apply(Kind.COMPACT, pb.CompactionRequest(revision=0))


def put_op(key: bytes, value: bytes = b"v") -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))


def range_op(key: bytes, **kw: object) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, **kw))


def del_op(key: bytes, range_end: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key, range_end=range_end))


def test_txn_compare_mod_revision_like_kube_apiserver() -> None:
    d = Driver()
    create = pb.TxnRequest(
        compare=[pb.Compare(key=b"k", target=pb.Compare.MOD, result=pb.Compare.EQUAL, mod_revision=0)],
        success=[put_op(b"k", b"1")],
    )
    resp = d.txn(create)
    assert resp.succeeded and resp.header.revision == 2
    resp = d.txn(create)  # exists now: compare fails, nothing written
    assert not resp.succeeded and resp.header.revision == 2 and d.store.revision == 2
    update = pb.TxnRequest(
        compare=[pb.Compare(key=b"k", target=pb.Compare.MOD, result=pb.Compare.EQUAL, mod_revision=2)],
        success=[put_op(b"k", b"2")],
        failure=[range_op(b"k")],
    )
    resp = d.txn(update)
    assert resp.succeeded and resp.responses[0].response_put.header.revision == 3
    resp = d.txn(update)
    assert not resp.succeeded and resp.responses[0].response_range.kvs[0].value == b"2"


def test_txn_value_compare_on_missing_key_fails() -> None:
    d = Driver()
    req = pb.TxnRequest(
        compare=[pb.Compare(key=b"nope", target=pb.Compare.VALUE, result=pb.Compare.NOT_EQUAL, value=b"x")]
    )
    assert not d.txn(req).succeeded


def test_txn_range_compare_needs_every_key() -> None:
    d = Driver()
    d.put(b"a1", b"x")
    d.put(b"a2", b"y")
    cmp = pb.Compare(key=b"a", range_end=b"b", target=pb.Compare.VERSION, result=pb.Compare.EQUAL, version=1)
    assert d.txn(pb.TxnRequest(compare=[cmp])).succeeded
    d.put(b"a2", b"z")
    assert not d.txn(pb.TxnRequest(compare=[cmp])).succeeded


def test_txn_reads_its_own_writes_and_events_keep_op_order() -> None:
    d = Driver()
    resp = d.txn(pb.TxnRequest(success=[put_op(b"z"), put_op(b"a"), range_op(b"a", range_end=b"\0")]))
    rng = resp.responses[2].response_range
    assert keys(rng) == [b"a", b"z"] and rng.header.revision == 2
    assert [ev.kv.key for ev in d.last.events[0].events] == [b"z", b"a"]
    assert [ev.kv.key for ev in d.store.events_since(2, b"\0", b"\0")[0].events] == [b"z", b"a"]


def test_read_only_txn_does_not_bump_revision() -> None:
    d = Driver()
    d.put(b"a")
    resp = d.txn(pb.TxnRequest(success=[range_op(b"a")]))
    assert resp.header.revision == 2 and d.store.revision == 2


def test_txn_with_failing_check_is_not_half_applied() -> None:
    d = Driver()
    req = pb.TxnRequest(success=[put_op(b"a"), pb.RequestOp(request_put=pb.PutRequest(key=b"b", lease=99))])
    with pytest.raises(EtcdError) as e:
        d.txn(req)
    assert e.value.message == errors.LEASE_NOT_FOUND[1]
    assert d.store.revision == 1 and d.range(b"a").count == 0


@pytest.mark.parametrize(
    "ops",
    [
        [put_op(b"a"), put_op(b"a")],
        [del_op(b"a", b"c"), put_op(b"b")],
        [put_op(b"b"), pb.RequestOp(request_txn=pb.TxnRequest(success=[put_op(b"b")]))],
        [del_op(b"a", b"c"), pb.RequestOp(request_txn=pb.TxnRequest(failure=[put_op(b"b")]))],
    ],
)
def test_duplicate_keys_rejected(ops: list[pb.RequestOp]) -> None:
    with pytest.raises(EtcdError) as e:
        validate.check_txn(pb.TxnRequest(success=ops))
    assert e.value.message == errors.DUPLICATE_KEY[1]


def test_duplicate_rule_allows_overlapping_deletes_and_then_else() -> None:
    validate.check_txn(pb.TxnRequest(success=[del_op(b"a", b"c"), del_op(b"b", b"d")]))
    nested = pb.TxnRequest(success=[put_op(b"x")], failure=[put_op(b"x")])
    validate.check_txn(pb.TxnRequest(success=[pb.RequestOp(request_txn=nested)]))


def _reference_check_txn(r: pb.TxnRequest, max_txn_ops: int) -> None:
    """check_txn as etcd writes it: every op's shape (success, then failure, nested txns
    within), then the overlaps of each branch."""

    def shape(t: pb.TxnRequest, ops_max: int) -> None:
        opc = max(len(t.compare), len(t.success), len(t.failure))
        if opc > ops_max:
            raise errors.fail(errors.TOO_MANY_OPS)
        for c in t.compare:
            if not c.key:
                raise errors.fail(errors.EMPTY_KEY)
        for op in (*t.success, *t.failure):
            kind = op.WhichOneof("request")
            if kind == "request_range":
                validate.check_range(op.request_range)
            elif kind == "request_put":
                validate.check_put(op.request_put)
            elif kind == "request_delete_range":
                validate.check_delete(op.request_delete_range)
            elif kind == "request_txn":
                shape(op.request_txn, ops_max - opc)
            else:
                raise errors.fail(errors.KEY_NOT_FOUND)

    shape(r, max_txn_ops)
    validate._check_intervals(r.success)
    validate._check_intervals(r.failure)


def test_check_txn_gives_etcds_first_error_for_random_txns() -> None:
    """The one-pass check (and its shortcut for branches of puts and ranges) answers every txn
    with the error, or none, that etcd's two passes give."""
    import random

    rng = random.Random(8)
    keys = [b"", b"a", b"b", b"c", b"d"]

    def op(depth: int) -> pb.RequestOp:
        x = rng.random()
        if x < 0.5:
            put = pb.PutRequest(key=rng.choice(keys), value=rng.choice([b"", b"v"]), lease=rng.choice([0, 0, 5]))
            put.ignore_value, put.ignore_lease = rng.random() < 0.1, rng.random() < 0.1
            return pb.RequestOp(request_put=put)
        if x < 0.7:
            return pb.RequestOp(request_range=pb.RangeRequest(key=rng.choice(keys), sort_order=rng.choice([0, 0, 9])))
        if x < 0.85:
            return del_op(rng.choice(keys), rng.choice([b"", b"", b"c", b"\0"]))
        if x < 0.97 and depth < 2:
            return pb.RequestOp(request_txn=txn(depth + 1))
        return pb.RequestOp()

    def txn(depth: int) -> pb.TxnRequest:
        return pb.TxnRequest(
            compare=[pb.Compare(key=rng.choice(keys[1:] * 9 + [b""])) for _ in range(rng.randrange(2))],
            success=[op(depth) for _ in range(rng.randrange(5))],
            failure=[op(depth) for _ in range(rng.randrange(3))],
        )

    outcomes = set()
    for _ in range(4000):
        r = txn(0)
        ops_max = rng.choice([3, 128])
        want = got = None
        try:
            _reference_check_txn(r, ops_max)
        except EtcdError as e:
            want = (e.code, e.message)
        try:
            validate.check_txn(r, ops_max)
        except EtcdError as e:
            got = (e.code, e.message)
        assert got == want, r
        outcomes.add(want)
    assert len(outcomes) >= 6  # every kind of answer was met: no error and each error


def test_too_many_ops() -> None:
    validate.check_txn(pb.TxnRequest(success=[put_op(b"k%d" % i) for i in range(128)]))
    with pytest.raises(EtcdError) as e:
        validate.check_txn(pb.TxnRequest(success=[put_op(b"k%d" % i) for i in range(129)]))
    assert e.value.message == errors.TOO_MANY_OPS[1]


def test_put_validation_errors() -> None:
    for req, err in (
        (pb.PutRequest(), errors.EMPTY_KEY),
        (pb.PutRequest(key=b"a", value=b"x", ignore_value=True), errors.VALUE_PROVIDED),
        (pb.PutRequest(key=b"a", lease=5, ignore_lease=True), errors.LEASE_PROVIDED),
    ):
        with pytest.raises(EtcdError) as e:
            validate.check_put(req)
        assert (e.value.code, e.value.message) == err
    d = Driver()
    with pytest.raises(EtcdError) as e:
        d.put(b"missing", b"", ignore_value=True)
    assert e.value.message == errors.KEY_NOT_FOUND[1]


def test_lease_grant_attach_revoke_in_one_revision() -> None:
    d = Driver()
    d.apply(Kind.LEASE_GRANT, pb.LeaseGrantRequest(ID=5, TTL=10))
    d.put(b"b", lease=5)
    d.put(b"a", lease=5)
    d.apply(Kind.LEASE_REVOKE, pb.LeaseRevokeRequest(ID=5))
    assert d.store.revision == 4
    events = d.last.events[0].events
    assert [(ev.type, ev.kv.key, ev.prev_kv.key) for ev in events] == [(1, b"a", b"a"), (1, b"b", b"b")]
    with pytest.raises(EtcdError) as e:
        d.apply(Kind.LEASE_REVOKE, pb.LeaseRevokeRequest(ID=5))
    assert e.value.message == errors.LEASE_NOT_FOUND[1]


def test_lease_expiry_uses_journal_time_only() -> None:
    d = Driver()
    d.apply(Kind.LEASE_GRANT, pb.LeaseGrantRequest(ID=5, TTL=10))
    d.put(b"k", lease=5)
    d.now_ms += 9_000
    assert d.apply(Kind.LEASE_EXPIRE, [5]) == []  # early: a no-op
    assert 5 in d.store.leases
    d.now_ms += 1_000
    assert d.apply(Kind.LEASE_EXPIRE, [5]) == [5]
    assert d.range(b"k").count == 0
    assert d.apply(Kind.LEASE_EXPIRE, [5]) == []  # duplicate: a no-op


def test_lease_keepalive_extends_deadline_and_min_ttl() -> None:
    d = Driver()
    assert d.apply(Kind.LEASE_GRANT, pb.LeaseGrantRequest(ID=9, TTL=1)).TTL == 2  # raised to the minimum
    d.now_ms += 1_500
    assert d.apply(Kind.LEASE_KEEPALIVE, pb.LeaseKeepAliveRequest(ID=9)).TTL == 2
    d.now_ms += 1_500
    assert d.apply(Kind.LEASE_EXPIRE, [9]) == []
    assert d.apply(Kind.LEASE_KEEPALIVE, pb.LeaseKeepAliveRequest(ID=404)).TTL == 0


def test_nospace_alarm_blocks_puts_until_disarmed() -> None:
    d = Driver()
    alarm = pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=1, alarm=pb.NOSPACE)
    d.apply(Kind.ALARM, alarm)
    with pytest.raises(EtcdError) as e:
        d.put(b"a")
    assert (e.value.code, e.value.message) == errors.NO_SPACE
    with pytest.raises(EtcdError) as e:  # a txn with a put in either branch: refused too
        d.txn(pb.TxnRequest(success=[del_op(b"a")], failure=[put_op(b"a")]))
    assert (e.value.code, e.value.message) == errors.NO_SPACE
    assert d.txn(pb.TxnRequest(success=[del_op(b"a"), pb.RequestOp(request_range=pb.RangeRequest(key=b"a"))]))
    d.delete(b"a")  # deletes still work
    alarm.action = pb.AlarmRequest.DEACTIVATE
    d.apply(Kind.ALARM, alarm)
    d.put(b"a")


def test_checkpoint_round_trip_is_exact() -> None:
    d = Driver()
    d.apply(Kind.LEASE_GRANT, pb.LeaseGrantRequest(ID=3, TTL=30))
    for i in range(50):
        d.put(b"k%d" % (i % 7), b"v%d" % i, lease=3 if i % 2 else 0)
    d.txn(pb.TxnRequest(success=[put_op(b"x"), put_op(b"y")]))
    d.delete(b"k1")
    d.apply(Kind.COMPACT, pb.CompactionRequest(revision=20))
    copy = StateMachine.loads(d.sm.dumps())
    assert copy.dumps() == d.sm.dumps()
    assert copy.store.hash_kv(copy.store.revision) == d.store.hash_kv(d.store.revision)
    assert [ev.kv.key for ev in copy.store.events_since(52, b"\0", b"\0")[0].events] == [b"x", b"y"]


def test_same_entries_give_same_state() -> None:
    import random

    def run(seed: int) -> bytes:
        rng = random.Random(seed)
        d = Driver()
        for _ in range(300):
            k = b"k%d" % rng.randrange(20)
            op = rng.random()
            if op < 0.6:
                d.put(k, b"%d" % rng.randrange(1000))
            elif op < 0.8:
                d.delete(k, b"k%d" % rng.randrange(20) if rng.random() < 0.3 else b"")
            else:
                d.txn(
                    pb.TxnRequest(
                        compare=[pb.Compare(key=k, target=pb.Compare.VERSION, result=pb.Compare.GREATER, version=1)],
                        success=[put_op(k)],
                        failure=[del_op(k)],
                    )
                )
        return d.sm.dumps()

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_watch_prev_kv_is_the_state_before_the_txn() -> None:
    # etcd reads prev_kv at mod_revision - 1: a key created and deleted in one txn has none.
    # (A from-key delete escapes the duplicate-key check, as in etcd: its interval is empty there.)
    d = Driver()
    d.txn(pb.TxnRequest(success=[put_op(b"k"), del_op(b"k", b"\0")]))
    events = d.last.events[0].events
    assert [(ev.type, ev.HasField("prev_kv")) for ev in events] == [(0, False), (1, False)]
    (rebuilt,) = d.store.events_since(2, b"k", b"")
    assert [(ev.type, ev.HasField("prev_kv")) for ev in rebuilt.events] == [(0, False), (1, False)]


def test_sort_target_with_order_none_sorts_only_the_first_limit_plus_one_keys() -> None:
    # etcd decides "fetch everything" on the requested order, NONE here: it takes limit+1
    # keys in key order, sorts those ascending, then truncates.
    d = Driver()
    for k, v in ((b"a", b"z"), (b"b", b"y"), (b"c", b"x"), (b"d", b"a")):
        d.put(k, v)
    resp = d.range(b"a", b"e", limit=2, sort_target=pb.RangeRequest.VALUE)
    assert keys(resp) == [b"c", b"b"] and resp.more


def test_recreate_in_one_txn_has_no_prev_kv_but_the_delete_does() -> None:
    d = Driver()
    d.put(b"k", b"old")
    d.txn(pb.TxnRequest(success=[del_op(b"a", b"\0"), put_op(b"k", b"new")]))
    delete, create = d.last.events[0].events
    assert delete.prev_kv.value == b"old" and not create.HasField("prev_kv")


def test_ignore_lease_put_after_a_from_key_delete_of_its_key_fails_cleanly() -> None:
    # The from-key delete escapes the duplicate-key rule; the put then finds its key gone.
    # etcd 3.5 panics here; we answer "key not found" and write nothing.
    d = Driver()
    d.put(b"b", b"v")
    for flag in ("ignore_lease", "ignore_value"):
        req = pb.TxnRequest(
            success=[del_op(b"a", b"\0"), pb.RequestOp(request_put=pb.PutRequest(key=b"b", **{flag: True}))]
        )
        with pytest.raises(EtcdError) as e:
            d.txn(req)
        assert e.value.message == errors.KEY_NOT_FOUND[1]
        assert d.store.revision == 2 and d.range(b"b").kvs[0].value == b"v"
    d.put(b"c")
    assert d.store.revision == 3


def test_live_key_count_follows_puts_deletes_aborts_and_compaction() -> None:
    d = Driver()
    d.put(b"a")
    d.put(b"b")
    d.put(b"a")
    d.delete(b"b")
    assert d.store.live_keys == 1
    with pytest.raises(EtcdError):
        d.txn(pb.TxnRequest(success=[put_op(b"c"), pb.RequestOp(request_put=pb.PutRequest(key=b"d", lease=9))]))
    assert d.store.live_keys == 1
    d.apply(Kind.COMPACT, pb.CompactionRequest(revision=d.store.revision))
    assert d.store.live_keys == 1 == StateMachine.loads(d.sm.dumps()).store.live_keys


def test_current_reads_from_the_live_index_match_reads_from_history() -> None:
    import random

    rng = random.Random(7)
    d = Driver()
    keys_ = [b"k%02d" % i for i in range(30)]
    for step in range(400):
        k = rng.choice(keys_)
        if rng.random() < 0.6:
            d.put(k)
        else:
            d.delete(k, rng.choice([b"", rng.choice(keys_), b"\0"]))
        if step % 97 == 0:
            d.apply(Kind.COMPACT, pb.CompactionRequest(revision=d.store.revision))
        lo, hi = sorted(rng.sample(keys_, 2))
        for range_end in (b"", hi, b"\0", lo):
            for limit in (0, 1, 5):
                now = d.range(lo, range_end, limit=limit)
                old = d.range(lo, range_end, limit=limit, revision=d.store.revision)
                assert (list(now.kvs), now.count, now.more) == (list(old.kvs), old.count, old.more)
                assert d.range(lo, range_end, count_only=True).count == now.count


def test_due_leases_follow_renewals_and_revokes() -> None:
    from kvstore.lease import LeaseTable
    from kvstore.mvcc.backend import Backend

    backend = Backend.temporary()
    backend.begin_batch()
    t = LeaseTable(backend)
    for i in range(1, 6):
        t.grant(i, 10, now_ms=i * 1000)  # deadlines 11s .. 15s
    t.renew(1, now_ms=5000)  # 1 now due at 15s
    t.remove(2)
    assert t.due(13_500, limit=10) == [3]
    assert t.due(15_000, limit=2) == [3, 4]
    assert t.due(15_000, limit=10) == [3, 4, 1, 5]
    backend.commit_batch()
    assert LeaseTable(backend).due(15_000, limit=10) == [3, 4, 1, 5]
    backend.close()
