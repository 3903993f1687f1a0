"""The crash tests' checks catch what they claim to catch: lost, altered, invented and resurrected
writes, a revision that went down, and watch gaps, duplicates and foreign events. No server needed."""

from __future__ import annotations

import pytest

from proto.mvccpb import kv_pb2
from tests.crash.load import COUNTER_KEY, Ack, Event, History, counter_problems, store_problems


def _kv(key: bytes, value: bytes, mod: int, create: int | None = None) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(key=key, value=value, mod_revision=mod, create_revision=create or mod, version=1)


def _history() -> History:
    h = History()
    h.add_acks([Ack(b"/crash/a", b"1", 2), Ack(b"/crash/hot", b"x", 3), Ack(b"/crash/hot", b"y", 4)])
    h.in_doubt = {(b"/crash/hot", b"z"), (b"/crash/b", b"maybe"), (b"/crash/a", None)}
    return h


def _store(**overrides: kv_pb2.KeyValue | None) -> dict[bytes, kv_pb2.KeyValue]:
    kvs = {b"/crash/a": _kv(b"/crash/a", b"1", 2), b"/crash/hot": _kv(b"/crash/hot", b"y", 4, 3)}
    for name, kv in overrides.items():
        key = b"/crash/" + name.encode()
        if kv is None:
            kvs.pop(key, None)
        else:
            kvs[key] = kv
    return kvs


def test_a_faithful_store_passes() -> None:
    assert store_problems(4, _store(), _history()) == []
    # a put in doubt may have landed, after the last acknowledged one
    assert (
        store_problems(6, _store(hot=_kv(b"/crash/hot", b"z", 6, 3), b=_kv(b"/crash/b", b"maybe", 5)), _history()) == []
    )
    # a delete in doubt may have landed
    assert store_problems(5, _store(a=None), _history()) == []


def _deleted_history() -> History:
    h = _history()
    h.add_acks([Ack(b"/crash/hot", b"", 5, deleted=True)])
    return h


def test_an_acknowledged_delete_must_stick() -> None:
    assert store_problems(5, _store(hot=None), _deleted_history()) == []
    # a put in doubt after the delete may have recreated it
    assert store_problems(6, _store(hot=_kv(b"/crash/hot", b"z", 6)), _deleted_history()) == []
    problems = store_problems(5, _store(), _deleted_history())
    assert any("resurrected" in p for p in problems), problems


@pytest.mark.parametrize(
    ("revision", "store", "expected"),
    [
        (4, _store(hot=None), "lost"),
        (4, _store(hot=_kv(b"/crash/hot", b"x", 3)), "lost"),
        (4, _store(a=_kv(b"/crash/a", b"2", 2)), "wrong value"),
        (5, _store(hot=_kv(b"/crash/hot", b"q", 5, 3)), "which no client wrote"),
        (5, _store(c=_kv(b"/crash/c", b"?", 5)), "unexpected key"),
        (3, _store(), "revision went down"),
    ],
)
def test_store_problems_are_found(revision: int, store: dict[bytes, kv_pb2.KeyValue], expected: str) -> None:
    problems = store_problems(revision, store, _history())
    assert any(expected in p for p in problems), problems


def test_watch_log_accepts_exactly_the_next_revisions() -> None:
    h = _history()
    h.in_doubt.add((b"/crash/hot", None))
    h.extend_events([Event(2, b"/crash/a", b"1", False), Event(3, b"/crash/hot", b"x", False)], "ok")
    h.extend_events([Event(4, b"/crash/hot", b"y", False), Event(5, b"/crash/b", b"maybe", False)], "ok")
    h.extend_events([Event(6, b"/crash/hot", b"", True)], "a delete in doubt")
    h.add_acks([Ack(b"/crash/b", b"", 7, deleted=True)])
    h.extend_events([Event(7, b"/crash/b", b"", True)], "an acknowledged delete")
    assert h.last_event_revision == 7


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([Event(3, b"/crash/hot", b"x", False)], "gap"),
        ([Event(2, b"/crash/a", b"1", False), Event(2, b"/crash/a", b"1", False)], "duplicate"),
        ([Event(2, b"/crash/a", b"other", False)], "but the write there was"),
        ([Event(2, b"/crash/a", b"1", False), Event(3, b"/crash/x", b"1", False)], "but the write there was"),
        ([Event(2, b"/crash/a", b"", True)], "but the write there was"),
        (
            [
                Event(2, b"/crash/a", b"1", False),
                Event(3, b"/crash/hot", b"x", False),
                Event(4, b"/crash/hot", b"y", False),
                Event(5, b"/crash/b", b"never", False),
            ],
            "matches no write",
        ),
    ],
)
def test_watch_log_rejects(events: list[Event], expected: str) -> None:
    with pytest.raises(AssertionError, match=expected):
        _history().extend_events(events, "test")


def test_two_acks_at_one_revision_are_rejected() -> None:
    h = _history()
    h.add_acks([Ack(b"/crash/c", b"c", 4)])
    with pytest.raises(AssertionError, match="two acknowledged writes at revision 4"):
        h.ack_by_revision()


@pytest.mark.parametrize(
    ("values", "ok"),
    [([1, 2, 3], True), ([], True), ([1, 3], False), ([1, 2, 2], False), ([2], False)],
)
def test_counter_increments_must_be_consecutive(values: list[int], ok: bool) -> None:
    h = History()
    h.events = [Event(2 + i, COUNTER_KEY, b"%d" % v, False) for i, v in enumerate(values)]
    assert (counter_problems(h) == []) is ok
