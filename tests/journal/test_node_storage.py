"""The node's persistence of the replication core's Readies (journal.node_storage)."""

from __future__ import annotations

from pathlib import Path

from journal import replication as r
from journal.node_storage import ReplicaStorage, read_state, write_state


def entry(index: int, term: int, position: int, kind: r.EntryKind = r.EntryKind.DATA) -> r.LogEntry:
    data = b"" if kind is r.EntryKind.NOOP else b"d%d-%d" % (index, term)
    return r.LogEntry(index, term, position, 1000 + index, kind, data, "cl", index, 0, 1)


def ready(
    entries: tuple[r.LogEntry, ...] = (),
    hard_state: r.HardState | None = None,
    snapshot: r.SnapshotMeta | None = None,
) -> r.Ready:
    return r.Ready(
        seq=1, hard_state=hard_state, snapshot=snapshot, entries=entries, messages=(), messages_after_persist=(),
        commit_index=0, commit_position=0, append_results=(), barrier_results=(), role=r.Role.FOLLOWER, term=1,
        leader="",
    )  # fmt: skip


def chain(first: int, last: int, term: int, position_before: int) -> tuple[r.LogEntry, ...]:
    out = []
    pos = position_before
    for i in range(first, last + 1):
        if i == first and term > 1:
            out.append(entry(i, term, pos, r.EntryKind.NOOP))  # a new leader's NOOP repeats the position
        else:
            pos += 1
            out.append(entry(i, term, pos))
    return tuple(out)


def open_storage(d: Path, segment_bytes_max: int = 1 << 20) -> ReplicaStorage:
    return ReplicaStorage(str(d), "always", segment_bytes_max)


def test_entries_and_hard_state_survive_reopen(tmp_path: Path) -> None:
    st = open_storage(tmp_path)
    assert st.load() == r.RestoredState()
    es = chain(1, 10, 1, 0)
    st.persist(ready(es, r.HardState(1, "a")))
    st.close()
    st2 = open_storage(tmp_path)
    restored = st2.load()
    assert restored.entries == es
    assert restored.hard_state == r.HardState(1, "a")


def test_divergent_suffix_is_replaced(tmp_path: Path) -> None:
    st = open_storage(tmp_path)
    st.persist(ready(chain(1, 10, 1, 0)))
    # A new leader (term 2) overwrites from index 6.
    new = chain(6, 8, 2, 5)
    st.persist(ready(new, r.HardState(2, "")))
    st.close()
    restored = open_storage(tmp_path).load()
    assert restored.entries == chain(1, 5, 1, 0) + new


def test_local_trim_keeps_the_rest(tmp_path: Path) -> None:
    st = open_storage(tmp_path, segment_bytes_max=300)
    es = chain(1, 40, 1, 0)
    st.persist(ready(es))
    segments_before = len(st.segments.segment_paths())
    e = es[29]
    snap = r.SnapshotMeta(e.index, e.term, e.position, e.timestamp_ms, (("cl", (r.DedupRecord(30, 30, 1, 1030),)),))
    st.persist(ready(snapshot=snap))
    assert len(st.segments.segment_paths()) < segments_before
    st.close()
    restored = open_storage(tmp_path, segment_bytes_max=300).load()
    assert restored.snapshot == snap
    assert restored.entries == es[30:]


def test_installed_snapshot_beyond_the_log_resets_it(tmp_path: Path) -> None:
    st = open_storage(tmp_path)
    st.persist(ready(chain(1, 5, 1, 0)))
    snap = r.SnapshotMeta(50, 3, 45, 9999)
    after = (r.LogEntry(51, 3, 46, 10_000, r.EntryKind.DATA, b"x"),)
    st.persist(ready(after, r.HardState(3, ""), snapshot=snap))
    st.close()
    restored = open_storage(tmp_path).load()
    assert restored.snapshot == snap and restored.hard_state == r.HardState(3, "")
    assert restored.entries == after


def test_crash_between_snapshot_state_and_log_reset(tmp_path: Path) -> None:
    st = open_storage(tmp_path)
    st.persist(ready(chain(1, 5, 1, 0)))
    st.close()
    # The state file says "snapshot at 3, term 2" but the log still holds term-1 entries there.
    write_state(str(tmp_path / "raft_state"), r.HardState(2, ""), r.SnapshotMeta(3, 2, 3, 1003))
    restored = open_storage(tmp_path).load()
    assert restored.snapshot.index == 3
    assert restored.entries == ()


def test_entries_that_do_not_chain_are_dropped(tmp_path: Path) -> None:
    st = open_storage(tmp_path)
    good = chain(1, 4, 1, 0)
    st.persist(ready(good))
    # An entry whose position skips one: written by a bug or a stale history.
    st.segments.append([_record(r.LogEntry(5, 1, 9, 1005, r.EntryKind.DATA, b"bad"))])
    st.segments.sync()
    st.close()
    assert open_storage(tmp_path).load().entries == good


def _record(e: r.LogEntry) -> object:
    from journal.node_storage import encode_entry_payload
    from journal.segments import Record

    return Record(e.index, e.term, e.timestamp_ms, encode_entry_payload(e))


def test_state_file_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "state")
    assert read_state(path) == (r.HardState(), r.SnapshotMeta())
    snap = r.SnapshotMeta(7, 2, 6, 123, (("a", (r.DedupRecord(1, 2, 3, 4),)),))
    write_state(path, r.HardState(5, "b"), snap)
    assert read_state(path) == (r.HardState(5, "b"), snap)
