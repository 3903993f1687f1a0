"""A linearizability checker for recorded etcd histories.

The search is Wing & Gong's, with Lowe's memoisation (a cache of (set of
linearized operations, model state) already explored), as porcupine does it,
run on each key separately (P-compositionality: a history is linearizable iff
each key's sub-history is, since every operation here touches one key).
Operations whose outcome is unknown return at +infinity: the search may place
them anywhere after their call, including after everything else (not applied).

The model of a key is (value, mod_revision); a mod_revision of None means
"written by an operation whose outcome is unknown", which any later observation
then pins down. Revisions are checked across keys separately (revision_problems):
unique per write, and in real-time order for writes and for reads' header
revisions, which is what catches a stale linearizable read of a key nobody
else touched.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tests.robustness.history import WRITES, Op

State = tuple[Any, ...]
KEY_INITIAL: State = (None, 0)  # absent; a put must get a revision above 0
LEASE_INITIAL: State = (False,)
SEARCH_STEPS_MAX = 5_000_000  # per key: a search this long is reported as inconclusive, not passed


def _kv_step(state: State, op: Op) -> tuple[bool, State]:
    value, mod_rev = state
    out = op.out if op.ret is not None else None
    if op.kind == "put":
        if out is None:
            return True, (op.inp["value"], None)
        rev = int(out["rev"])
        return (mod_rev is None or rev > mod_rev), (op.inp["value"], rev)
    if op.kind == "get":
        assert out is not None
        got, got_rev = out["value"], out["mod_rev"]
        if got != value:
            return False, state
        if got is None:
            return True, state
        if mod_rev is not None and got_rev != mod_rev:
            return False, state
        return True, (value, got_rev)
    if op.kind == "delete":
        if out is None:
            return True, (None, None) if value is not None else state
        if out["deleted"]:
            rev = int(out["rev"])
            return (value is not None and (mod_rev is None or rev > mod_rev)), (None, rev)
        return value is None, state
    if op.kind == "cas":
        expected = int(op.inp["expected"])
        matches: bool | None
        if value is None:
            matches = expected == 0  # etcd compares a missing key's mod_revision as 0
        else:
            matches = None if mod_rev is None else mod_rev == expected
        if out is None:
            # Applied only if it matched at its linearization point; an unknown
            # mod_revision is taken as a match (the not-applied case is the same
            # operation linearized at the end).
            return True, ((op.inp["value"], None) if matches is not False else state)
        if out["ok"]:
            rev = int(out["rev"])
            return (matches is not False and (mod_rev is None or rev > mod_rev)), (op.inp["value"], rev)
        if matches is True:
            return False, state
        if out.get("value") != value:
            return False, state
        if value is not None and mod_rev is not None and out.get("mod_rev") != mod_rev:
            return False, state
        return True, (value, out.get("mod_rev") if value is not None else mod_rev)
    raise ValueError(f"not a key operation: {op.kind}")


def _lease_step(state: State, op: Op) -> tuple[bool, State]:
    (exists,) = state
    out = op.out if op.ret is not None else None
    if op.kind == "grant":
        if out is None:
            return True, (True,)
        return (not exists) if out["ok"] else exists, (True,)
    if op.kind == "revoke":
        if out is None:
            return True, (False,)
        return exists if out["ok"] else (not exists), (False,)
    raise ValueError(f"not a lease operation: {op.kind}")


@dataclass(slots=True)
class _Node:
    """A call or return event in the doubly linked event list (porcupine's entry)."""

    op: int
    is_call: bool
    time: float
    match: _Node | None = None
    prev: _Node | None = None
    next: _Node | None = None


def _lift(call: _Node) -> None:
    assert call.prev is not None and call.match is not None and call.match.prev is not None
    call.prev.next = call.next
    if call.next is not None:
        call.next.prev = call.prev
    ret = call.match
    ret.prev.next = ret.next  # type: ignore[union-attr]
    if ret.next is not None:
        ret.next.prev = ret.prev


def _unlift(call: _Node) -> None:
    ret = call.match
    assert ret is not None and ret.prev is not None and call.prev is not None
    ret.prev.next = ret
    if ret.next is not None:
        ret.next.prev = ret
    call.prev.next = call
    if call.next is not None:
        call.next.prev = call


@dataclass(slots=True)
class KeyVerdict:
    key: str
    ok: bool | None  # None: the search gave up (inconclusive)
    ops: int
    steps: int
    detail: str = ""


def check_partition(
    ops: list[Op], step: Callable[[State, Op], tuple[bool, State]], initial: State
) -> tuple[bool | None, int, str]:
    """Wing & Gong / Lowe on one key's operations. Returns (linearizable, steps, detail)."""
    events: list[tuple[float, int, int]] = []  # (time, 0 call / 1 return, op index)
    for i, op in enumerate(ops):
        events.append((float(op.call), 0, i))
        events.append((math.inf if op.ret is None else float(op.ret), 1, i))
    # Calls before returns at equal times: touching operations count as concurrent.
    events.sort()
    head = _Node(-1, True, -math.inf)
    calls: dict[int, _Node] = {}
    tail = head
    for t, kind, i in events:
        node = _Node(i, kind == 0, t)
        if kind == 0:
            calls[i] = node
        else:
            calls[i].match = node
        node.prev = tail
        tail.next = node
        tail = node
    linearized = 0
    cache: dict[int, set[State]] = defaultdict(set)
    stack: list[tuple[_Node, State]] = []
    state = initial
    entry = head.next
    steps = 0
    deepest = 0
    while head.next is not None:
        steps += 1
        if steps > SEARCH_STEPS_MAX:
            return None, steps, f"search gave up after {steps} steps"
        assert entry is not None
        if entry.is_call:
            ok, new_state = step(state, ops[entry.op])
            if ok:
                bits = linearized | (1 << entry.op)
                seen = cache[bits]
                if new_state not in seen:
                    seen.add(new_state)
                    stack.append((entry, state))
                    deepest = max(deepest, len(stack))
                    state = new_state
                    linearized = bits
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if not stack:
                return False, steps, _explain(ops, entry.op, deepest)
            call, state = stack.pop()
            linearized &= ~(1 << call.op)
            _unlift(call)
            entry = call.next
    return True, steps, ""


def _explain(ops: list[Op], blocking: int, deepest: int) -> str:
    op = ops[blocking]
    return (
        f"no linearization: at most {deepest} of {len(ops)} operations could be ordered; "
        f"stuck before the return of {op.kind} {op.inp} -> {op.out} by client {op.client} on {op.member}"
    )


def check(ops: Iterable[Op]) -> list[KeyVerdict]:
    """Check every key (and lease) separately. Failed-for-sure operations and unknown reads are left out."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.failed:
            continue
        if op.ret is None and op.kind == "get":
            continue  # a read with no answer constrains nothing
        by_key[op.key].append(op)
    verdicts = []
    for key, key_ops in sorted(by_key.items()):
        lease = key.startswith("lease/")
        ok, steps, detail = check_partition(
            key_ops, _lease_step if lease else _kv_step, LEASE_INITIAL if lease else KEY_INITIAL
        )
        verdicts.append(KeyVerdict(key, ok, len(key_ops), steps, detail))
    return verdicts


def revision_problems(ops: Iterable[Op]) -> list[str]:
    """Revisions across keys: unique per write; real-time order (if A returned before B was
    called, B's revision is above A's written revision, or at least A's for a read)."""
    problems: list[str] = []
    known = [op for op in ops if op.ret is not None and op.out is not None and not op.failed]
    by_rev: dict[int, Op] = {}
    for op in known:
        rev = op.revision
        if rev is None:
            continue
        if rev in by_rev:
            problems.append(f"revision {rev} given to two writes: {by_rev[rev].inp} and {op.inp}")
        by_rev[rev] = op

    def seen_rev(op: Op) -> int:
        """The revision an answer shows the store was at: its own write's, else the header's."""
        rev = op.revision
        if rev is not None:
            return rev
        return int(op.out.get("rev", 0)) if op.out is not None and op.kind in ("get", *WRITES) else 0

    ordered_by_ret = sorted((op for op in known if op.kind in ("get", *WRITES)), key=lambda o: o.ret or 0)
    by_call = sorted((op for op in known if op.kind in ("get", *WRITES)), key=lambda o: o.call)
    i = 0
    floor = 0
    floor_op: Op | None = None
    for op in by_call:
        while i < len(ordered_by_ret) and (ordered_by_ret[i].ret or 0) < op.call:
            r = seen_rev(ordered_by_ret[i])
            if r > floor:
                floor, floor_op = r, ordered_by_ret[i]
            i += 1
        mine = seen_rev(op)
        wrote = op.revision is not None
        if mine < floor or (wrote and mine == floor):
            assert floor_op is not None
            problems.append(
                f"{op.kind} {op.inp} on {op.member} saw revision {mine}, but {floor_op.kind} {floor_op.inp} "
                f"on {floor_op.member} had returned revision {floor} before it was called (stale)"
            )
            if len(problems) > 20:
                break
    return problems
