"""The checkers themselves: known-good histories pass, known-bad ones fail, with the rule named."""

from __future__ import annotations

from typing import Any

from tests.robustness import linearizability as lin
from tests.robustness import report as rep
from tests.robustness import watch
from tests.robustness.history import Event, Fault, History, Op, WatchResponse


def op(kind: str, call: int, ret: int | None, client: int = 0, member: str = "m1", **inp: Any) -> Op:
    out = inp.pop("out", None)
    return Op(client, member, kind, call, ret, inp, out)


def put(call: int, ret: int | None, key: str, value: str, rev: int | None, client: int = 0, member: str = "m1") -> Op:
    return op("put", call, ret, client, member, key=key, value=value, out=None if rev is None else {"rev": rev})


def get(
    call: int, ret: int, key: str, value: str | None, mod_rev: int, rev: int, client: int = 1, member: str = "m2"
) -> Op:
    return op("get", call, ret, client, member, key=key, out={"value": value, "mod_rev": mod_rev, "rev": rev})


def ok(ops: list[Op]) -> bool | None:
    verdicts = lin.check(ops)
    if any(v.ok is False for v in verdicts):
        return False
    return None if any(v.ok is None for v in verdicts) else True


# ------------------------------------------------------------ linearizability


def test_sequential_history_is_linearizable() -> None:
    h = [put(0, 1, "k", "a", 2), get(2, 3, "k", "a", 2, 2), put(4, 5, "k", "b", 3), get(6, 7, "k", "b", 3, 3)]
    assert ok(h) is True
    assert lin.revision_problems(h) == []


def test_stale_read_after_acknowledged_write_is_caught() -> None:
    # The put of b returned before the get was called: reading a is stale.
    h = [put(0, 1, "k", "a", 2), put(2, 3, "k", "b", 3), get(4, 5, "k", "a", 2, 2)]
    assert ok(h) is False
    assert lin.revision_problems(h)  # the read's header revision is behind, too


def test_concurrent_read_may_see_either_value() -> None:
    h = [put(0, 1, "k", "a", 2), put(2, 10, "k", "b", 3), get(3, 4, "k", "a", 2, 2), get(5, 6, "k", "b", 3, 3)]
    assert ok(h) is True


def test_read_cannot_go_back_after_seeing_new_value() -> None:
    h = [put(0, 1, "k", "a", 2), put(2, 10, "k", "b", 3), get(3, 4, "k", "b", 3, 3), get(5, 6, "k", "a", 2, 3)]
    assert ok(h) is False


def test_unknown_write_may_have_applied_or_not() -> None:
    applied = [put(0, None, "k", "x", None), get(5, 6, "k", "x", 4, 4)]
    not_applied = [put(0, None, "k", "x", None), get(5, 6, "k", None, 0, 4)]
    assert ok(applied) is True
    assert ok(not_applied) is True


def test_unknown_write_cannot_apply_before_its_call() -> None:
    h = [get(0, 1, "k", "x", 4, 4), put(2, None, "k", "x", None)]
    assert ok(h) is False


def test_value_never_written_is_caught() -> None:
    assert ok([put(0, 1, "k", "a", 2), get(2, 3, "k", "zzz", 2, 2)]) is False


def test_lost_acknowledged_write_is_caught() -> None:
    h = [put(0, 1, "k", "a", 2), get(2, 3, "k", None, 0, 2)]
    assert ok(h) is False


def test_compare_and_swap() -> None:
    cas_ok = op("cas", 2, 3, key="k", expected=2, value="b", out={"ok": True, "rev": 3})
    cas_bad = op("cas", 4, 5, key="k", expected=2, value="c", out={"ok": True, "rev": 4})  # 2 is gone
    assert ok([put(0, 1, "k", "a", 2), cas_ok, get(6, 7, "k", "b", 3, 3)]) is True
    assert ok([put(0, 1, "k", "a", 2), cas_ok, cas_bad]) is False
    failed = op("cas", 4, 5, key="k", expected=2, value="c", out={"ok": False, "rev": 3, "value": "b", "mod_rev": 3})
    assert ok([put(0, 1, "k", "a", 2), cas_ok, failed]) is True
    wrong_failure = op(
        "cas", 2, 3, key="k", expected=2, value="c", out={"ok": False, "rev": 2, "value": "a", "mod_rev": 2}
    )
    assert ok([put(0, 1, "k", "a", 2), wrong_failure]) is False


def test_delete() -> None:
    d = op("delete", 2, 3, key="k", out={"deleted": 1, "rev": 3})
    assert ok([put(0, 1, "k", "a", 2), d, get(4, 5, "k", None, 0, 3)]) is True
    d0 = op("delete", 2, 3, key="k", out={"deleted": 0, "rev": 2})
    assert ok([put(0, 1, "k", "a", 2), d0]) is False  # the key existed


def test_leases() -> None:
    g = op("grant", 0, 1, lease=5, out={"ok": True})
    r = op("revoke", 2, 3, lease=5, out={"ok": True})
    r2 = op("revoke", 4, 5, lease=5, out={"ok": True})
    assert ok([g, r]) is True
    assert ok([g, r, r2]) is False  # revoked twice
    assert ok([op("revoke", 0, 1, lease=9, out={"ok": True})]) is False  # never granted


def test_duplicate_revision_across_keys_is_caught() -> None:
    h = [put(0, 1, "k", "a", 2), put(2, 3, "j", "b", 2)]
    assert ok(h) is True  # each key alone is fine
    assert any("two writes" in p for p in lin.revision_problems(h))


def test_stale_read_of_another_key_is_caught_by_revision_order() -> None:
    # k is only ever read; the read's header revision shows the member was behind a write to j.
    h = [put(0, 1, "j", "a", 5), get(2, 3, "k", None, 0, 4)]
    assert ok(h) is True
    assert lin.revision_problems(h)


def test_many_concurrent_clients_stay_tractable() -> None:
    h: list[Op] = []
    rev = 1
    for i in range(300):
        rev += 1
        h.append(put(i * 10, i * 10 + 25, "k", f"v{i}", rev, client=i % 4))
        h.append(get(i * 10 + 26, i * 10 + 27, "k", f"v{i}", rev, rev, client=4 + i % 4))
    assert ok(h) is True


# --------------------------------------------------------------------- watch


def w(watcher: int, rev: int, *events: Event, member: str = "m1", **kw: Any) -> WatchResponse:
    return WatchResponse(watcher, member, 0, rev, list(events), **kw)


def ev(rev: int, key: str, value: str, prev: tuple[str, int] | None = None, type: str = "PUT") -> Event:
    return Event(type, key, value, rev, prev)


def watch_history() -> History:
    h = History()
    h.ops = [put(0, 1, "k", "a", 2), put(2, 3, "k", "b", 3), put(4, 5, "j", "c", 4)]
    for watcher in (0, 1):
        h.watch += [
            w(watcher, 1, created=True, start=2),
            w(watcher, 3, ev(2, "k", "a"), ev(3, "k", "b", ("a", 2))),
            w(watcher, 4, ev(4, "j", "c")),
        ]
    return h


def test_watch_good_history_passes() -> None:
    assert watch.validate(watch_history(), 4) == []


def rules(h: History, final: int | None = 4) -> set[str]:
    return {p.split(":")[0] for p in watch.validate(h, final)}


def test_watch_gap_is_caught() -> None:
    h = watch_history()
    h.watch[1] = w(0, 3, ev(2, "k", "a"))  # revision 3 skipped
    assert "reliable" in rules(h)


def test_watch_duplicate_and_order_are_caught() -> None:
    h = watch_history()
    h.watch.insert(3, w(0, 3, ev(3, "k", "b", ("a", 2))))
    assert rules(h) & {"atomic", "unique"}


def test_watch_bad_prev_kv_is_caught() -> None:
    h = watch_history()
    bad = w(0, 3, ev(2, "k", "a"), ev(3, "k", "b", ("zzz", 2)))
    h.watch[1] = bad
    assert rules(h) & {"prev_kv", "same"}


def test_watch_progress_ahead_is_caught() -> None:
    h = watch_history()
    h.watch.insert(2, w(0, 4, progress=True))  # says 4 is done, then delivers 4
    assert "progress" in rules(h)


def test_watchers_disagreeing_is_caught() -> None:
    h = watch_history()
    h.watch[4] = w(1, 3, ev(2, "k", "a"), ev(3, "k", "bb", ("a", 2)))
    assert rules(h) & {"same", "history"}


def test_watch_event_without_write_is_caught() -> None:
    h = watch_history()
    h.ops = h.ops[:2]
    assert "history" in rules(h)


def test_watch_resume_elsewhere_must_continue() -> None:
    h = watch_history()
    h.watch[1:2] = [w(0, 2, ev(2, "k", "a")), w(0, 0, broken="UNAVAILABLE"), w(0, 2, created=True, start=4)]
    assert "resumable" in rules(h)


def test_watch_stopping_early_is_caught() -> None:
    assert "reliable" in rules(watch_history(), final=5)


# -------------------------------------------------------------- availability


def test_unavailability_measures_gaps_and_skips_excluded_members() -> None:
    s = 1_000_000_000
    h = History(members=["m1", "m2"], started=0)
    h.ops = [put(i * s // 10, i * s // 10 + 1, "k", f"a{i}", i + 2, member="m1") for i in range(100)]
    h.ops += [
        put(i * s // 10, i * s // 10 + 1, "j", f"b{i}", 200 + i, member="m2") for i in range(100) if not 30 <= i < 60
    ]
    longest, per_member, _ = rep.unavailability(h)
    assert 2.9 < per_member["m2"] < 3.2 and longest == per_member["m2"]
    h.faults = [Fault("stop-member-3s", "member m2", 29 * s // 10, 6 * s, excluded=["m2"])]
    longest, per_member, _ = rep.unavailability(h)
    assert per_member["m2"] < 0.5 and longest < 0.5
