"""Watch validators, in the spirit of etcd's robustness suite (tests/robustness/validate).

The recorder's writers only put and delete single keys under one fresh prefix,
and every watcher watches that whole prefix with prev_kv, so the store's
history there is exactly one event per revision: each watcher must see every
revision from where it started, in order, once, and the same event as every
other watcher and as the operation history says.

Rules (each problem names its rule):
- ordered: revisions increase within a watcher, across responses;
- unique: no (revision, key) twice;
- atomic: a revision's events never split across responses;
- reliable: no gap: each event's revision is the previous one + 1, from the start revision;
- resumable: a stream resumed at revision R delivers R first (a special case of reliable);
- prev_kv: an event's prev_kv is the key's previous event (value, mod_revision), or none after a delete;
- progress: a progress notification at revision R is never ahead: later events are above R;
- same: every watcher sees the same event at a revision;
- history: events match the writes recorded (key, value, revision), and every acknowledged write
  in the watched range is seen.
"""

from __future__ import annotations

from collections import defaultdict

from tests.robustness.history import Event, History, WatchResponse

PROBLEMS_PER_RULE_MAX = 10


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self._count: dict[str, int] = defaultdict(int)

    def add(self, rule: str, text: str) -> None:
        self._count[rule] += 1
        if self._count[rule] <= PROBLEMS_PER_RULE_MAX:
            self.items.append(f"{rule}: {text}")


def validate(h: History, final_revision: int | None = None) -> list[str]:
    p = _Problems()
    by_watcher: dict[int, list[WatchResponse]] = defaultdict(list)
    for w in h.watch:
        by_watcher[w.watcher].append(w)
    timeline: dict[int, tuple[int, Event]] = {}  # revision -> (first watcher to see it, event)
    reached: dict[int, int] = {}
    for watcher, responses in sorted(by_watcher.items()):
        last = 0  # highest revision delivered
        expected = 0  # the next revision this watcher must see (0: not started)
        progress_floor = 0
        seen: set[tuple[int, str]] = set()
        for resp in responses:
            if resp.created:
                if expected and resp.start != expected:
                    p.add("resumable", f"watcher {watcher} resumed at {resp.start}, not at {expected}")
                expected = resp.start
                continue
            if resp.broken:
                continue
            if resp.progress:
                if resp.rev < last:
                    p.add("progress", f"watcher {watcher}: progress at {resp.rev} after events up to {last}")
                progress_floor = max(progress_floor, resp.rev)
                continue
            if not resp.events:
                continue
            if resp.events[0].mod_rev <= last:
                rule = "atomic" if resp.events[0].mod_rev == last else "ordered"
                p.add(rule, f"watcher {watcher}: revision {resp.events[0].mod_rev} after {last}")
            prev_rev = last
            for ev in resp.events:
                if ev.mod_rev < prev_rev:
                    p.add("ordered", f"watcher {watcher}: revision {ev.mod_rev} after {prev_rev} in one response")
                if (ev.mod_rev, ev.key) in seen:
                    p.add("unique", f"watcher {watcher}: {ev.key} at {ev.mod_rev} twice")
                seen.add((ev.mod_rev, ev.key))
                if expected and ev.mod_rev != expected and ev.mod_rev > prev_rev:
                    p.add(
                        "reliable",
                        f"watcher {watcher} on {resp.member}: got revision {ev.mod_rev}, "
                        f"expected {expected} (gap of {ev.mod_rev - expected})",
                    )
                if ev.mod_rev <= progress_floor:
                    p.add(
                        "progress",
                        f"watcher {watcher}: event at {ev.mod_rev} after a progress notification at {progress_floor}",
                    )
                expected = ev.mod_rev + 1
                prev_rev = ev.mod_rev
                first = timeline.get(ev.mod_rev)
                if first is None:
                    timeline[ev.mod_rev] = (watcher, ev)
                elif first[1] != ev:
                    p.add(
                        "same", f"revision {ev.mod_rev}: watcher {first[0]} saw {first[1]}, watcher {watcher} saw {ev}"
                    )
            last = max(last, prev_rev)
        reached[watcher] = last
    _check_prev_kv(timeline, p)
    _check_history(h, timeline, p)
    if final_revision is not None:
        for watcher, last in sorted(reached.items()):
            if last < final_revision:
                p.add("reliable", f"watcher {watcher} stopped at revision {last}, the store reached {final_revision}")
    return p.items


def _check_prev_kv(timeline: dict[int, tuple[int, Event]], p: _Problems) -> None:
    latest: dict[str, Event] = {}
    if not timeline:
        return
    revs = sorted(timeline)
    for rev in revs:
        ev = timeline[rev][1]
        before = latest.get(ev.key)
        if before is not None:
            want = (before.value, before.mod_rev) if before.type == "PUT" else None
            if ev.prev != want:
                p.add("prev_kv", f"{ev.key} at {rev}: prev_kv {ev.prev}, its previous event gives {want}")
        elif ev.prev is not None:
            # The prefix is fresh per run and watchers start before its first write.
            p.add("prev_kv", f"{ev.key} at {rev}: prev_kv {ev.prev} for the key's first event")
        latest[ev.key] = ev


def _check_history(h: History, timeline: dict[int, tuple[int, Event]], p: _Problems) -> None:
    writes_by_value: dict[tuple[str, str], list[int]] = defaultdict(list)
    deletes_by_key: dict[str, list[int]] = defaultdict(list)
    for i, op in enumerate(h.ops):
        if op.failed:
            continue
        if op.kind in ("put", "cas"):
            writes_by_value[(op.inp["key"], op.inp["value"])].append(i)
        elif op.kind == "delete":
            deletes_by_key[op.inp["key"]].append(i)
    for rev, (_, ev) in sorted(timeline.items()):
        if ev.type == "PUT":
            cands = [h.ops[i] for i in writes_by_value.get((ev.key, ev.value), [])]
            if not cands:
                p.add("history", f"event {ev.key}={ev.value} at {rev}: no such write was made")
                continue
            if all(op.revision is not None and op.revision != rev for op in cands):
                p.add("history", f"event {ev.key}={ev.value} at {rev}: the write answered revision {cands[0].revision}")
            if all(op.ret is not None and op.out is not None and op.revision is None for op in cands):
                p.add("history", f"event {ev.key}={ev.value} at {rev}: the write answered that it did not apply")
        else:
            cands = [h.ops[i] for i in deletes_by_key.get(ev.key, [])]
            if not any(op.revision == rev or op.ret is None for op in cands):
                p.add("history", f"delete event of {ev.key} at {rev}: no delete answered that revision")
    if not timeline:
        return
    lo, hi = min(timeline), max(timeline)
    for op in h.ops:
        acked = op.revision
        if acked is not None and lo <= acked <= hi and acked not in timeline:
            p.add("history", f"{op.kind} {op.inp} acknowledged at revision {acked}: no watcher saw it")
