"""The LMDB backend under the state machine: batches, nested undo, compaction steps, snapshots, defragment."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kvstore import errors
from kvstore.errors import EtcdError
from kvstore.mvcc import records, snapshot
from kvstore.mvcc.backend import Backend, drop_mapped_pages
from kvstore.mvcc.keyindex import KEY_INLINE_BYTES_MAX, in_range
from kvstore.statemachine import Kind, StateMachine, encode_entry
from proto.etcdserverpb import rpc_pb2 as pb


def _apply(sm: StateMachine, kind: Kind, req: object, *, flush: bool = True) -> object:
    position = sm.applied_position + 1
    data = encode_entry(kind, 1, position, req.SerializeToString())  # type: ignore[attr-defined]
    return sm.apply(position, 1_000 + position, data, flush=flush).result


def _random_history(sm: StateMachine, rng: random.Random, steps: int) -> None:
    for _ in range(steps):
        k = b"k%02d" % rng.randrange(30)
        op = rng.random()
        if op < 0.6:
            _apply(sm, Kind.PUT, pb.PutRequest(key=k, value=rng.randbytes(rng.randrange(1, 64))))
        elif op < 0.8:
            _apply(sm, Kind.DELETE_RANGE, pb.DeleteRangeRequest(key=k, range_end=b"k%02d" % rng.randrange(30)))
        elif op < 0.95:
            _apply(sm, Kind.TXN, pb.TxnRequest(success=[
                pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=k)),
                pb.RequestOp(request_put=pb.PutRequest(key=k + b"/x", value=b"t")),
            ]))
        else:
            _apply(sm, Kind.COMPACT, pb.CompactionRequest(revision=sm.store.revision - rng.randrange(5)))


def test_physical_compaction_progress_is_invisible() -> None:
    """Two members with the same entries, one compacting physically at once, one never: same
    reads, same hash, same snapshot bytes, same history for watchers."""
    rng = random.Random(3)
    a, b = StateMachine(), StateMachine()
    for _ in range(6):
        seed = rng.getrandbits(32)
        _random_history(a, random.Random(seed), 60)
        _random_history(b, random.Random(seed), 60)
        with a.backend.batch():
            while a.store.compact_step(entries_max=7):
                pass
        assert a.store.revision == b.store.revision
        assert a.store.hash_kv(a.store.revision) == b.store.hash_kv(b.store.revision)
        assert a.dumps() == b.dumps()
        start = max(a.store.compact_revision, 1)
        assert [(e.revision, list(e.events)) for e in a.store.events_since(start, b"k", b"l")] == [
            (e.revision, list(e.events)) for e in b.store.events_since(start, b"k", b"l")
        ]
        req = pb.RangeRequest(key=b"k", range_end=b"l", revision=max(a.store.compact_revision, a.store.revision - 3))
        assert a.store.range(req) == b.store.range(req)
    assert records.count(a.backend.txn, a.backend.dbs) < records.count(b.backend.txn, b.backend.dbs)


def test_a_failed_txn_leaves_nothing_in_the_batch() -> None:
    sm = StateMachine()
    _apply(sm, Kind.PUT, pb.PutRequest(key=b"a", value=b"1"))
    before = sm.dumps()
    bad = pb.TxnRequest(success=[
        pb.RequestOp(request_put=pb.PutRequest(key=b"b", value=b"2")),
        pb.RequestOp(request_put=pb.PutRequest(key=b"c", lease=99)),  # no such lease
    ])
    with sm.backend.batch():
        result = _apply(sm, Kind.TXN, bad)
        assert isinstance(result, EtcdError) and result.message == errors.LEASE_NOT_FOUND[1]
    position_only = StateMachine.loads(before)
    assert sm.store.revision == 2 and sm.store.live_keys == 1 and sm.applied_position == 2
    assert sm.store.hash_kv(2) == position_only.store.hash_kv(2)


def test_a_failed_txn_between_entries_of_one_batch_leaves_nothing_of_it() -> None:
    # The member's way (flush=False, one batch for many entries): the failed entry's nested
    # transaction is undone, the entries before and after it land with the batch.
    sm, reference = StateMachine(), StateMachine()
    bad = pb.TxnRequest(
        success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"b", value=b"2")),
            pb.RequestOp(request_put=pb.PutRequest(key=b"c", lease=99)),  # no such lease
        ]
    )
    with sm.backend.batch():
        _apply(sm, Kind.PUT, pb.PutRequest(key=b"a", value=b"1"), flush=False)
        result = _apply(sm, Kind.TXN, bad, flush=False)
        assert isinstance(result, EtcdError) and result.message == errors.LEASE_NOT_FOUND[1]
        _apply(sm, Kind.PUT, pb.PutRequest(key=b"d", value=b"3"), flush=False)
        sm.flush()
    _apply(reference, Kind.PUT, pb.PutRequest(key=b"a", value=b"1"))
    _apply(reference, Kind.PUT, pb.PutRequest(key=b"d", value=b"3"))
    assert sm.applied_position == 3 and sm.store.revision == 3 and sm.store.live_keys == 2
    assert sm.store.get(b"b") is None and sm.store.get(b"c") is None
    assert sm.store.hash_kv(3) == reference.store.hash_kv(3)


def _long_key_names() -> list[bytes]:
    """Keys around the inline limit: runs of long keys sharing their inline part, the inline part
    itself, keys just shorter and longer, and "/"-prefixes longer than the limit."""
    inline = KEY_INLINE_BYTES_MAX
    base = b"/p/" + b"a" * (inline - 3)
    assert len(base) == inline
    return [
        b"/p/",
        b"/p/a",
        base[:-1],
        base,
        base + b"\0",
        base + b"b",
        base + b"b" * 40,
        base + b"c",
        base + b"/",
        base + b"/x",
        base + b"/y" * 300,
        base[:-1] + b"b" + b"z" * 100,
        b"/p/" + b"a" * 600,
        b"/p/b" * 3000,
        b"/q",
    ]


def test_long_keys_keep_key_order_counts_history_and_leases() -> None:
    """Keys longer than LMDB's limit are stored hashed; every read agrees with a model in which
    keys are plain bytes: ranges in key order at every revision, counts, deletes, leases, compaction,
    snapshots."""
    rng = random.Random(5)
    sm = StateMachine()
    names = _long_key_names()
    model: dict[bytes, bytes] = {}
    history: list[tuple[int, dict[bytes, bytes]]] = []
    _apply(sm, Kind.LEASE_GRANT, pb.LeaseGrantRequest(ID=7, TTL=60))

    def bounds() -> tuple[bytes, bytes]:
        a, b = rng.choice(names), rng.choice([*names, b"\0", b"", b"/p0"])
        if rng.random() < 0.3:
            a = a + b"\0"
        return a, b

    def expected(state: dict[bytes, bytes], a: bytes, b: bytes) -> list[bytes]:
        return sorted(k for k in state if in_range(k, a, b))

    for step in range(300):
        k = rng.choice(names)
        op = rng.random()
        if op < 0.55:
            v = b"v%d" % step
            lease = 7 if rng.random() < 0.3 else 0
            assert not isinstance(_apply(sm, Kind.PUT, pb.PutRequest(key=k, value=v, lease=lease)), EtcdError)
            model[k] = v
        elif op < 0.8:
            a, b = bounds()
            _apply(sm, Kind.DELETE_RANGE, pb.DeleteRangeRequest(key=a, range_end=b))
            for gone in expected(model, a, b):
                del model[gone]
        elif op < 0.85:
            _apply(sm, Kind.COMPACT, pb.CompactionRequest(revision=sm.store.revision))
            history = [(r, m) for r, m in history if r >= sm.store.revision]
            with sm.backend.batch():
                while sm.store.compact_step(entries_max=5):
                    pass
        history.append((sm.store.revision, dict(model)))
        for _ in range(3):
            a, b = bounds()
            rev, state = rng.choice(history)
            limit = rng.choice([0, 1, 2, 5])
            req = pb.RangeRequest(key=a, range_end=b, limit=limit, revision=rev)
            resp = sm.store.range(req)
            want = expected(state, a, b)
            assert [kv.key for kv in resp.kvs] == (want[:limit] if limit else want), (a[:8], b[:8], rev)
            assert [kv.value for kv in resp.kvs] == [state[x] for x in (want[:limit] if limit else want)]
            assert resp.count == len(want)
            assert sm.store.range(pb.RangeRequest(key=a, range_end=b, count_only=True)).count == len(
                expected(model, a, b)
            )
    for k in names:
        got = sm.store.get(k)
        assert (got.value if got is not None else None) == model.get(k)
    # The lease knows its keys by their full names, and revoking it deletes them all.
    for k in (names[-2], names[-4]):
        _apply(sm, Kind.PUT, pb.PutRequest(key=k, value=b"leased", lease=7))
        model[k] = b"leased"
    lease = sm.store.leases.get(7)
    assert lease is not None
    attached = set(lease.keys)
    assert {names[-2], names[-4]} <= attached <= set(model)
    copy = StateMachine.loads(sm.dumps())
    assert copy.store.hash_kv(copy.store.revision) == sm.store.hash_kv(sm.store.revision)
    _apply(sm, Kind.LEASE_REVOKE, pb.LeaseRevokeRequest(ID=7))
    for k in attached:
        assert sm.store.get(k) is None


def test_snapshot_stream_in_small_chunks_installs_the_same_state() -> None:
    sm = StateMachine()
    _random_history(sm, random.Random(9), 300)
    _apply(sm, Kind.LEASE_GRANT, pb.LeaseGrantRequest(ID=5, TTL=60))
    _apply(sm, Kind.PUT, pb.PutRequest(key=b"leased", value=b"v", lease=5))
    chunks = list(snapshot.produce(sm.backend, chunk_bytes=256))
    assert len(chunks) > 3
    copy = StateMachine.from_chunks(iter(chunks))
    assert copy.dumps() == sm.dumps()
    assert copy.store.leases.get(5) is not None and copy.store.leases.get(5).keys == [b"leased"]  # type: ignore[union-attr]
    with pytest.raises(snapshot.SnapshotError):
        StateMachine.from_chunks(chunks[:-1])  # cut short: no end marker
    with pytest.raises(snapshot.SnapshotError):
        StateMachine.from_chunks([b"not a snapshot at all, not at all"])


def test_defragment_copy_shrinks_the_file_and_keeps_the_state(tmp_path: Path) -> None:
    directory = str(tmp_path)
    backend = Backend(os.path.join(directory, "state.mdb"))
    sm = StateMachine(backend)
    for i in range(3000):
        _apply(sm, Kind.PUT, pb.PutRequest(key=b"k%05d" % i, value=b"x" * 500))
    _apply(sm, Kind.DELETE_RANGE, pb.DeleteRangeRequest(key=b"k", range_end=b"l"))
    _apply(sm, Kind.COMPACT, pb.CompactionRequest(revision=sm.store.revision))
    with backend.batch():
        while sm.store.compact_step(entries_max=1000):
            pass
    state = sm.dumps()
    size_before, in_use = backend.file_bytes, backend.in_use_bytes
    assert in_use < size_before // 4
    tmp = backend.swap_path("defrag")
    backend.compact_copy(tmp)
    cleanup = backend.swap_in(tmp)
    sm = StateMachine(backend)
    cleanup()
    lock = os.path.basename(backend.lock_path)
    assert sorted(os.listdir(directory)) == ["state.mdb", "state.mdb-lock", lock]
    # Processes that open state.mdb read-only (--workers) share the new lock file's reader table.
    assert os.readlink(os.path.join(directory, "state.mdb-lock")) == lock
    assert backend.file_bytes < size_before // 4
    assert backend.in_use_bytes <= backend.file_bytes
    assert sm.dumps() == state
    sm.close()
    assert sorted(os.listdir(directory)) == ["state.mdb"]
    reopened = StateMachine(Backend(os.path.join(directory, "state.mdb")))
    assert reopened.dumps() == state
    reopened.close()


def _rss_shmem_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssShmem:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssShmem in /proc/self/status")


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="Linux's /proc")
def test_the_mapped_pages_of_a_file_are_dropped_and_read_again(tmp_path: Path) -> None:
    """What a replaced file's cleanup does before its environment closes (so that the close does
    not tear down the page tables of the whole map at once): the pages leave this process's
    resident set, the data stays in the file."""
    backend = Backend(str(Path("/dev/shm" if os.path.isdir("/dev/shm") else tmp_path) / f"drop-{os.getpid()}.mdb"))
    try:
        sm = StateMachine(backend)
        for i in range(40):
            _apply(sm, Kind.TXN, pb.TxnRequest(success=[
                pb.RequestOp(request_put=pb.PutRequest(key=b"k%05d" % (i * 100 + j), value=b"v" * 1000))
                for j in range(100)
            ]))  # fmt: skip
        state = sm.dumps()  # reads every page: all of them mapped
        mapped = _rss_shmem_bytes()
        visited = drop_mapped_pages(backend._file_id, backend.file_bytes, step_bytes=1 << 20)
        assert visited >= backend.file_bytes > 4 << 20
        if backend.path.startswith("/dev/shm"):  # tmpfs pages count as RssShmem
            assert mapped - _rss_shmem_bytes() >= backend.file_bytes // 2
        assert sm.dumps() == state
        assert drop_mapped_pages((0, 0), backend.file_bytes) == 0  # no such file mapped: nothing touched
    finally:
        backend.close()
        for p in (backend.path, backend.path + "-lock"):
            if os.path.exists(p):
                os.remove(p)


async def test_a_member_installs_a_snapshot_streamed_from_another(tmp_path: Path) -> None:
    """The producer is an async iterator of chunks, the consumer takes one (or a plain iterable):
    a journal that streams snapshots plugs in between."""
    from journal.local import LocalJournal
    from kvstore.member import Member, MemberConfig

    members = []
    for name in ("a", "b"):
        config = MemberConfig(name=name, data_dir=str(tmp_path / name), state_dir=str(tmp_path / f"{name}-state"))
        members.append(Member(config, LocalJournal(str(tmp_path / name / "journal"))))
    a, b = members
    _random_history(a.sm, random.Random(5), 200)
    original = a.sm.dumps()

    async def slowly(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in stream:
            await asyncio.sleep(0)
            yield chunk

    await b.install_snapshot(slowly(a.snapshot_stream()))
    assert b.sm.dumps() == original and b.sm.applied_position == a.sm.applied_position
    assert b.hub.store is b.sm.store
    with pytest.raises(snapshot.SnapshotError):

        async def broken() -> AsyncIterator[bytes]:
            yield b"garbage that is not a snapshot stream"
            yield b"x" * 10_000

        await b.install_snapshot(broken())
    assert b.sm.dumps() == original  # a failed install leaves the state as it was
    for m in members:
        await m.journal.close()
        m.sm.close()


def test_prefix_counts_match_scans_for_every_page_shape() -> None:
    """Counts of kube-style ranges ([P, P0) and a continuation [k + NUL, P0)) come from the prefix
    counters; they must equal a scan through creates, deletes, txns, aborted txns and a snapshot."""
    from kvstore.mvcc import keyindex

    rng = random.Random(11)
    sm = StateMachine()
    names = [b"/r/", b"/r/a", b"/r/a/", b"/r/a/x", b"/r/a/y/z", b"/r/b/1", b"/r/b/2", b"/s/q", b"/r0", b"/"]
    prefixes = [b"/", b"/r/", b"/r/a/", b"/r/b/", b"/r/a/y/", b"/s/"]

    def check(machine: StateMachine) -> None:
        b = machine.backend
        for p in prefixes:
            end = p[:-1] + b"0"
            starts = [p, *(k + b"\0" for k in names if k.startswith(p))]
            for start in starts:
                scan = keyindex.count_range(b.txn, b.dbs, start, end)
                assert keyindex.count_live(b.txn, b.dbs, start, end) == scan, (p, start)
                req = pb.RangeRequest(key=start, range_end=end, limit=1)
                assert machine.store.range(req).count == scan

    for _ in range(400):
        k = rng.choice(names)
        op = rng.random()
        if op < 0.5:
            _apply(sm, Kind.PUT, pb.PutRequest(key=k, value=b"v"))
        elif op < 0.75:
            _apply(sm, Kind.DELETE_RANGE, pb.DeleteRangeRequest(key=k, range_end=rng.choice([b"", b"\0", b"/r0"])))
        else:
            _apply(sm, Kind.TXN, pb.TxnRequest(success=[
                pb.RequestOp(request_put=pb.PutRequest(key=k, value=b"t")),
                pb.RequestOp(request_put=pb.PutRequest(key=rng.choice(names) + b"~", lease=rng.choice([0, 77]))),
            ]))  # lease 77 does not exist: half of these abort after their first put
        check(sm)
    check(StateMachine.loads(sm.dumps()))


def test_packed_records_read_as_unpacked_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two members with the same entries, one packing its records (records.py), one never: same
    reads at every revision, same watch history, same hash and snapshot bytes, through
    compaction (which rewrites groups) and a snapshot install."""
    rng = random.Random(21)
    packing, plain = StateMachine(), StateMachine()
    names = [b"/g/%03d" % i for i in range(60)]

    def apply_both(kind: Kind, req: object) -> None:
        _apply(packing, kind, req)
        with monkeypatch.context() as m:
            m.setattr(records, "PACK_TRIGGER_PAGES", 1 << 40)
            _apply(plain, kind, req)

    def check(rev: int) -> None:
        for a, b in ((b"/g/", b"/g0"), (b"/g/01", b"/g/05"), (rng.choice(names), b"")):
            req = pb.RangeRequest(key=a, range_end=b, revision=rev)
            assert packing.store.range(req) == plain.store.range(req)
        start = max(packing.store.compact_revision, rev)
        assert packing.store.events_since(start, b"/g/", b"/g0") == plain.store.events_since(start, b"/g/", b"/g0")

    for step in range(700):
        op = rng.random()
        if op < 0.8:
            size = rng.choice([10, 900, 1500, 3000, 5000]) if rng.random() < 0.98 else 100_000
            puts = [pb.RequestOp(request_put=pb.PutRequest(key=rng.choice(names), value=rng.randbytes(size)))
                    for _ in range(rng.randrange(1, 4))]
            apply_both(Kind.TXN, pb.TxnRequest(success=puts))
        elif op < 0.95:
            apply_both(Kind.DELETE_RANGE, pb.DeleteRangeRequest(key=rng.choice(names)))
        else:
            apply_both(Kind.COMPACT, pb.CompactionRequest(revision=packing.store.revision - rng.randrange(50)))
            with packing.backend.batch():
                while packing.store.compact_step(entries_max=rng.randrange(1, 40)):
                    pass
        if step % 50 == 0:
            check(rng.randrange(max(packing.store.compact_revision, 1), packing.store.revision + 1))
    assert packing.backend.entries(b"packed") > 10 and plain.backend.entries(b"packed") == 0
    assert packing.backend.in_use_bytes < plain.backend.in_use_bytes * 0.9
    rev = packing.store.revision
    assert packing.store.hash_kv(rev) == plain.store.hash_kv(rev)
    assert packing.dumps() == plain.dumps()
    installed = StateMachine.loads(plain.dumps())
    assert installed.backend.entries(b"packed") > 0 and installed.dumps() == packing.dumps()
    check(max(packing.store.compact_revision, 1))


def test_version_1_snapshot_installs_with_its_long_keys_restored() -> None:
    """Version 1 streams stored every key as it was (keys were at most 503 bytes); installing
    one stores the keys longer than the inline limit in their hashed form."""
    import msgpack

    from kvstore.mvcc import keyindex

    sm = StateMachine()
    long_key = b"/v/" + b"x" * 490
    _apply(sm, Kind.LEASE_GRANT, pb.LeaseGrantRequest(ID=3, TTL=60))
    _apply(sm, Kind.PUT, pb.PutRequest(key=long_key, value=b"1", lease=3))
    _apply(sm, Kind.PUT, pb.PutRequest(key=long_key + b"/", value=b"2"))
    _apply(sm, Kind.PUT, pb.PutRequest(key=b"/v/short", value=b"3"))
    raw = {keyindex.stored_key(k): k for k in (long_key, long_key + b"/")}
    stream = sm.dumps()
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(stream[len(snapshot.MAGIC) :])
    items = []
    for item in unpacker:
        if item[0] == "d":
            pairs = item[2]
            for i in range(0, len(pairs), 2):
                k = pairs[i]
                if k in raw:
                    pairs[i] = raw[k]
                elif k[8:] in raw:
                    pairs[i] = k[:8] + raw[k[8:]]
        items.append(item)
    v1 = snapshot.MAGIC_V1 + b"".join(msgpack.packb(item) for item in items)
    assert v1 != snapshot.MAGIC_V1 + stream[len(snapshot.MAGIC) :]  # the long keys were raw in it
    installed = StateMachine.loads(v1)
    assert installed.dumps() == stream
    got = installed.store.get(long_key)
    assert got is not None and got.value == b"1"
    lease = installed.store.leases.get(3)
    assert lease is not None and lease.keys == [long_key]


async def test_a_defragment_swaps_while_a_snapshot_stream_reads_the_old_file(tmp_path: Path) -> None:
    """Swapping does not wait for a snapshot stream (applying would wait with it, for as long as
    the stream takes at any size): the stream goes on reading the old file, which is freed when
    the stream ends."""
    from journal.local import LocalJournal
    from kvstore.member import Member, MemberConfig

    config = MemberConfig(name="a", data_dir=str(tmp_path / "a"), state_dir=str(tmp_path / "a-state"))
    a = Member(config, LocalJournal(str(tmp_path / "a" / "journal")))
    for i in range(30):  # about 3 MB: a stream of several chunks
        _apply(a.sm, Kind.TXN, pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"k%05d" % (i * 100 + j), value=b"v" * 1000))
            for j in range(100)
        ]))  # fmt: skip
    original = a.sm.dumps()
    stream = a.snapshot_stream()
    chunks = [await anext(stream)]
    old_sm = a.sm
    defrag = asyncio.get_running_loop().create_task(a.defragment())
    for _ in range(3000):  # the copy runs in a thread
        if a.sm is not old_sm or defrag.done():
            break
        await asyncio.sleep(0.01)
    assert a.sm is not old_sm and not defrag.done()  # swapped; the old file waits for the stream
    assert any(".old-" in name for name in os.listdir(a.state_dir))
    assert a.sm.dumps() == original
    async for chunk in stream:
        chunks.append(chunk)
    await defrag
    assert not any(".old-" in name for name in os.listdir(a.state_dir))
    assert StateMachine.from_chunks(chunks).dumps() == original
    await a.journal.close()
    a.sm.close()


def _count_ranges(names: list[bytes], prefixes: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Kube-style count ranges: [P, P0) and continuations [k + NUL, P0)."""
    out = []
    for p in prefixes:
        end = p[:-1] + b"0"
        out += [(start, end) for start in (p, *(k + b"\0" for k in names if k.startswith(p)))]
    return out


def test_prefix_counts_pending_in_a_batch_read_and_land_as_entry_by_entry() -> None:
    """Entries applied many to a batch (the member's applier) keep the prefix count changes
    pending until the batch flushes: reads inside the batch (a range, a txn's own range after
    its puts) see them, an entry undone halfway takes its own back, and the batch commits the
    same counts, responses and file as entries applied one batch each."""
    from kvstore.mvcc import keyindex

    rng = random.Random(5)
    batched, single = StateMachine(), StateMachine()
    names = [b"/r/", b"/r/a", b"/r/a/", b"/r/a/x", b"/r/a/y/z", b"/r/b/1", b"/r/b/2", b"/s/q", b"/r0", b"/"]
    ranges = _count_ranges(names, [b"/", b"/r/", b"/r/a/", b"/r/b/", b"/r/a/y/", b"/s/"])

    def entry() -> tuple[Kind, object]:
        k = rng.choice(names)
        op = rng.random()
        if op < 0.4:
            return Kind.PUT, pb.PutRequest(key=k, value=b"v")
        if op < 0.6:
            return Kind.DELETE_RANGE, pb.DeleteRangeRequest(key=k, range_end=rng.choice([b"", b"\0", b"/r0"]))
        start, end = rng.choice(ranges)
        count = pb.RequestOp(request_range=pb.RangeRequest(key=start, range_end=end, count_only=True))
        return Kind.TXN, pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(key=k + b"~", value=b"t")),
            count,
            pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=k, range_end=rng.choice([b"", b"\0"]))),
            count,
            pb.RequestOp(request_put=pb.PutRequest(key=rng.choice(names), ignore_value=True)),
        ])  # the last put fails (after the txn's other writes) when the delete took its key

    for _ in range(40):
        batched.backend.begin_batch()
        for _ in range(rng.randrange(1, 12)):
            kind, req = entry()
            assert _apply(batched, kind, req, flush=False) == _apply(single, kind, req)
            b = batched.backend
            for start, end in rng.sample(ranges, 4):
                scan = keyindex.count_range(b.txn, b.dbs, start, end)
                assert batched.store.range(pb.RangeRequest(key=start, range_end=end, limit=1)).count == scan
        batched.flush()
        batched.backend.commit_batch()
        assert batched.dumps() == single.dumps()  # prefix_counts included


def test_an_aborted_batch_leaves_the_prefix_counts_as_they_were() -> None:
    """A batch aborted (the applier failed halfway) writes none of its pending count changes,
    and the next batch does not carry them."""
    sm = StateMachine()
    for i in range(5):
        _apply(sm, Kind.PUT, pb.PutRequest(key=b"/p/q/%d" % i, value=b"v"))
    before = sm.dumps()
    sm.backend.begin_batch()
    for i in range(5, 9):
        _apply(sm, Kind.PUT, pb.PutRequest(key=b"/p/q/%d" % i, value=b"v"), flush=False)
    _apply(sm, Kind.DELETE_RANGE, pb.DeleteRangeRequest(key=b"/p/", range_end=b"/p0"), flush=False)
    assert sm.store.range(pb.RangeRequest(key=b"/p/", range_end=b"/p0", count_only=True)).count == 0
    sm.backend.abort_batch()
    again = StateMachine(sm.backend)  # the heap state of the aborted batch is gone with it
    assert again.dumps() == before
    assert again.store.range(pb.RangeRequest(key=b"/p/q/", range_end=b"/p/q0", count_only=True)).count == 5
    again.backend.begin_batch()
    _apply(again, Kind.PUT, pb.PutRequest(key=b"/p/q/x", value=b"v"), flush=False)
    again.flush()
    again.backend.commit_batch()
    for start, end in ((b"/p/", b"/p0"), (b"/p/q/", b"/p/q0"), (b"/p/q/0\0", b"/p/q0")):
        req = pb.RangeRequest(key=start, range_end=end, limit=1)
        assert again.store.range(req).count == sum(1 for _ in again.store.iter_live(start, end))
    assert again.store.range(pb.RangeRequest(key=b"/p/", range_end=b"/p0", limit=1)).count == 6
