"""Seeded random operations against etcd and the server under test, compared after every operation.

The operation list depends on the seed only (never on responses), so both servers get the same requests.
Revisions in requests are relative to the last revision the server reported (`Rel`), which is the same
on both as long as nothing has diverged; the first mismatch stops the run.

Reproduce a failing seed:

    DIFF_TARGET=kvstore python -m tests.differential.randomops --seed 7 [--ops 2000]
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass
from typing import Any

from proto.etcdserverpb import rpc_pb2
from tests.differential.harness import Mismatch, PairPool, run_steps
from tests.differential.normalize import FROM_KEY, LID, PREFIX_END
from tests.differential.session import STREAM_RECV_TIMEOUT_S, Session, Stream
from tests.differential.steps import (
    Step,
    cmp,
    op_del,
    op_put,
    op_range,
    op_txn,
    unary,
    watch_create,
    watch_open,
    watch_recv,
)

KEYS_MAX = 24
LEASES_MAX = 16
DEFAULT_OPS = 2000
SORT_ORDERS = ("NONE", "ASCEND", "DESCEND")
SORT_TARGETS = ("KEY", "VERSION", "CREATE", "MOD", "VALUE")


@dataclass(frozen=True)
class Rel:
    """The last revision the server reported, minus `back` (negative `back` = a future revision)."""

    back: int


class RandomSession(Session):
    last_rev: int = 1

    def value(self, v: Any, fd: Any = None) -> Any:
        if isinstance(v, Rel):
            return max(0, self.last_rev - v.back) if v.back >= 0 else self.last_rev - v.back
        return super().value(v, fd)


def _track(step: Step) -> Step:
    """Remember the header revision of every response, for later `Rel` placeholders."""
    inner = step.run

    def run(s: Session) -> Any:
        out = inner(s)
        rev = out.get("header", {}).get("revision") if isinstance(out, dict) else None
        if rev and isinstance(s, RandomSession):
            s.last_rev = max(s.last_rev, rev)
        return out

    step.run = run
    return step


def _no_query_of_death(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop ignore_value/ignore_lease from Puts in a branch with a from-key DeleteRange.

    Such a delete escapes etcd's duplicate-key check (it compares range_end "\\0" bytewise), so a later
    ignore_* Put can find its key deleted at apply time, and etcd 3.5 panics ("unexpected error during
    txn"), killing the reference. The scenario txn_ignore_lease_after_from_key_delete covers it instead."""
    if not any(op.get("request_delete_range", {}).get("range_end") is FROM_KEY for op in ops):
        return ops
    out = []
    for op in ops:
        if "request_put" in op:
            put = {k: v for k, v in op["request_put"].items() if k not in ("ignore_value", "ignore_lease")}
            put.setdefault("value", "")
            op = {"request_put": put}
        out.append(op)
    return out


def _parallel(step: Step) -> Step:
    """Send each operation to both servers at once: a run costs the slower server's time, not the sum."""
    step.parallel = True
    return step


class Generator:
    def __init__(self, seed: int, restarts: bool = False) -> None:
        self.rng = random.Random(seed)
        # etcd gives leases their full TTL again on restart, ours keeps counting: TTLs not compared then
        self.ttl_drop: tuple[str, ...] = ("TTL",) if restarts else ()
        self.leases: list[int] = []  # LID numbers granted so far (client-chosen, never expire in a run)
        self.next_lease = 1

    # -- pieces -----------------------------------------------------------------------------------------
    def key(self) -> str:
        return f"k{self.rng.randrange(KEYS_MAX):02d}"

    def value(self) -> str:
        return self.rng.choice(["", "a", "b", "v" * self.rng.randrange(1, 40), str(self.rng.randrange(1000))])

    def lease_ref(self) -> Any:
        if self.leases and self.rng.random() < 0.9:
            return LID(self.rng.choice(self.leases))
        return LID(900 + self.rng.randrange(5))  # unknown

    def key_range(self) -> dict[str, Any]:
        r = self.rng.random()
        if r < 0.4:
            return {"key": self.key()}
        if r < 0.7:
            a, b = sorted([self.key(), self.key()])
            if self.rng.random() < 0.1:
                a, b = b, a  # range_end <= key: empty
            return {"key": a, "range_end": b}
        if r < 0.9:
            return {"key": f"k{self.rng.randrange(3)}", "range_end": PREFIX_END}
        return {"key": self.key(), "range_end": FROM_KEY}

    def range_opts(self) -> dict[str, Any]:
        o: dict[str, Any] = self.key_range()
        rng = self.rng
        if rng.random() < 0.3:
            o["limit"] = rng.randrange(0, 6)
        if rng.random() < 0.25:
            o["sort_order"] = rng.choice(SORT_ORDERS)
            o["sort_target"] = rng.choice(SORT_TARGETS)
        if rng.random() < 0.1:
            o["keys_only"] = True
        if rng.random() < 0.1:
            o["count_only"] = True
        if rng.random() < 0.15:
            o["revision"] = Rel(rng.randrange(-2, 40))
        for f in ("min_mod_revision", "max_mod_revision", "min_create_revision", "max_create_revision"):
            if rng.random() < 0.05:
                o[f] = Rel(rng.randrange(0, 30))
        if rng.random() < 0.05:
            o["serializable"] = True
        return o

    def put_opts(self) -> dict[str, Any]:
        o: dict[str, Any] = {"key": self.key(), "value": self.value()}
        rng = self.rng
        if rng.random() < 0.3:
            o["prev_kv"] = True
        if rng.random() < 0.15:
            o["lease"] = self.lease_ref()
        if rng.random() < 0.04:
            o["ignore_value"] = True
            o["value"] = "" if rng.random() < 0.9 else "x"
        if rng.random() < 0.04:
            o["ignore_lease"] = True
            o.pop("lease", None)
        return o

    def del_opts(self) -> dict[str, Any]:
        o = self.key_range()
        if self.rng.random() < 0.4:
            o["prev_kv"] = True
        return o

    def compare(self) -> dict[str, Any]:
        rng = self.rng
        target = rng.choice(["VERSION", "CREATE", "MOD", "VALUE", "LEASE"])
        result = rng.choice(["EQUAL", "GREATER", "LESS", "NOT_EQUAL"])
        value: Any = {"VERSION": rng.randrange(0, 4), "CREATE": Rel(rng.randrange(0, 20)),
                      "MOD": Rel(rng.randrange(0, 20)), "VALUE": self.value(),
                      "LEASE": self.lease_ref() if rng.random() < 0.7 else 0}[target]
        extra = {}
        if rng.random() < 0.1:
            a, b = sorted([self.key(), self.key()])
            return cmp(a, target, result, value, range_end=b)
        return cmp(self.key(), target, result, value, **extra)

    def txn_op(self, depth: int) -> dict[str, Any]:
        r = self.rng.random()
        if r < 0.4:
            return op_put(**self.put_opts())
        if r < 0.6:
            return op_del(**self.del_opts())
        if r < 0.95 or depth > 0:
            return op_range(**self.range_opts())
        return op_txn(*self.txn_parts(depth + 1))

    def txn_parts(self, depth: int) -> tuple[list[Any], list[Any], list[Any]]:
        rng = self.rng
        compares = [self.compare() for _ in range(rng.randrange(0, 4))]
        success = _no_query_of_death([self.txn_op(depth) for _ in range(rng.randrange(0, 5))])
        failure = _no_query_of_death([self.txn_op(depth) for _ in range(rng.randrange(0, 4))])
        return compares, success, failure

    # -- one operation -----------------------------------------------------------------------------------
    def op(self) -> Step:
        rng = self.rng
        r = rng.random()
        if r < 0.30:
            return unary("Put", self.put_opts())
        if r < 0.40:
            return unary("DeleteRange", self.del_opts())
        if r < 0.60:
            c, s, f = self.txn_parts(0)
            return unary("Txn", {"compare": c, "success": s, "failure": f})
        if r < 0.85:
            return unary("Range", self.range_opts())
        if r < 0.87:
            return unary("Compact", {"revision": Rel(rng.randrange(0, 40)), "physical": rng.random() < 0.3})
        if r < 0.91:
            if len(self.leases) < LEASES_MAX:
                n = self.next_lease
                self.next_lease += 1
                self.leases.append(n)
                return unary("LeaseGrant", {"TTL": 3600, "ID": LID(n)})
            return unary("LeaseGrant", {"TTL": 3600, "ID": LID(rng.choice(self.leases))})  # already exists
        if r < 0.94:
            if self.leases and rng.random() < 0.8:
                n = self.leases.pop(rng.randrange(len(self.leases)))
                return unary("LeaseRevoke", {"ID": LID(n)})
            return unary("LeaseRevoke", {"ID": LID(900 + rng.randrange(5))})
        if r < 0.97:
            return unary("LeaseTimeToLive", {"ID": self.lease_ref(), "keys": rng.random() < 0.7}, drop=self.ttl_drop)
        if r < 0.98:
            return unary("LeaseLeases")
        if r < 0.99:
            return self.history_watch()
        return unary("Range", {"key": self.key(), "revision": Rel(rng.randrange(0, 200))})

    def history_watch(self) -> Step:
        """A watch replaying history from a past (or compacted, or future) revision on a new stream."""
        rng = self.rng
        spec: dict[str, Any] = {**self.key_range(), "start_revision": Rel(rng.randrange(-1, 60))}
        if rng.random() < 0.5:
            spec["prev_kv"] = True
        if rng.random() < 0.2:
            spec["filters"] = [rng.choice(["NOPUT", "NODELETE"])]

        def run(s: Session) -> Any:
            stream = Stream(s.watch.Watch)
            try:
                stream.send(rpc_pb2.WatchRequest(create_request=s.resolve(rpc_pb2.WatchCreateRequest, spec)))
                out: list[Any] = []
                for _ in range(HISTORY_RESPONSES_MAX):
                    # etcd syncs an unsynced watcher every 100 ms and sends its catch-up in one response;
                    # on a busy machine that first response can take a while, later ones come promptly
                    only_created = len(out) == 1 and "created" in out[0]
                    wait_s = STREAM_RECV_TIMEOUT_S if not out else HISTORY_FIRST_BATCH_S if only_created else (
                        HISTORY_QUIET_S)
                    r = stream.recv(wait_s)
                    if r is None or isinstance(r, tuple):
                        break
                    resp = s.norm(r)
                    if resp.get("created"):
                        out.append({"created": resp})
                    elif resp.get("canceled"):
                        out.append({"canceled": resp.get("compact_revision", 0)})
                    # catch-up batches may split differently (etcd: up to 1000 revisions per response)
                    out.extend(resp.get("events", []))
                return out
            finally:
                stream.close()

        return Step(f"history watch {spec}", run, parallel=True)


def build(seed: int, ops: int, restarts: int = 0) -> tuple[list[Step], int]:
    """The steps of a run: a whole-keyspace watch first (its events are compared at the end), then `ops`
    random operations. Returns (steps, index of the first operation).

    restarts > 0: that many operations, at seeded positions, first SIGKILL and restart both servers
    (the whole-run watch is then left out: it dies with the process)."""
    gen = Generator(seed, restarts=restarts > 0)
    at = set(random.Random(seed ^ 0x5EED).sample(range(1, ops), restarts)) if restarts else set()
    steps: list[Step] = []
    if not restarts:
        steps += [watch_open(), watch_create(key=b"\0", range_end=b"\0", prev_kv=True), watch_recv()]
    first = len(steps)
    steps += [_parallel(_track(_after_crash(gen.op()) if i in at else gen.op())) for i in range(ops)]
    if not restarts:
        steps.append(Step("every watch event of the run, in order", _drain_events, parallel=True))
    return steps, first


def _after_crash(step: Step) -> Step:
    """SIGKILL the server, start it again on the same data, then run the operation."""
    inner = step.run

    def run(s: Session) -> Any:
        s.server.kill()
        s.server.start()
        s.rebind(s.server.channel())
        return inner(s)

    step.run = run
    step.label = "[after kill -9 and restart] " + step.label
    return step


DRAIN_QUIET_S = 1.0
HISTORY_QUIET_S = 0.25
HISTORY_FIRST_BATCH_S = 1.5
HISTORY_RESPONSES_MAX = 1000
DRAIN_RESPONSES_MAX = 100_000


def _drain_events(s: Session) -> Any:
    """All events the whole-keyspace watch got, flattened: a watcher that fell behind may get several
    revisions in one catch-up response, so response boundaries are not compared here (the scenarios do)."""
    events: list[Any] = []
    for _ in range(DRAIN_RESPONSES_MAX):
        r = s.streams["w"].recv(DRAIN_QUIET_S)
        if r is None:
            break
        if isinstance(r, tuple):
            events.append({"stream_end": r[0]})
            break
        resp = s.norm(r)
        events.extend(resp.get("events", []))
        if resp.get("canceled"):
            events.append({"canceled": resp})
    return events


def _drain_watch_label(m: Mismatch, ops: int, first: int) -> str:
    if m.index >= first + ops:
        return "the whole-run watch stream"
    return f"operation #{m.index - first}"


def run_seed(pool: PairPool, seed: int, ops: int = DEFAULT_OPS, restarts: int = 0,
             flags: dict[str, object] | None = None) -> tuple[str, list[Mismatch]]:
    """Run one seed on a fresh pair; returns (report, mismatches) with the first operation mismatch."""
    steps, first = build(seed, ops, restarts)
    pair = pool.fresh(flags)
    try:
        sa = RandomSession(pair.a.channel(), b"", 1, 0, label=pair.a.kind, server=pair.a)
        sb = RandomSession(pair.b.channel(), b"", 1, 0, label=pair.b.kind, server=pair.b)
        try:
            # stop at the first mismatch: later state has diverged and says nothing new
            mismatches = _run_until_mismatch(steps, sa, sb, first, ops)
        finally:
            sa.close()
            sb.close()
        report = ""
        if mismatches:
            m = mismatches[0]
            report = (f"seed {seed}: {_drain_watch_label(m, ops, first)} differs\n"
                      f"{m.render(pair.a.kind, pair.b.kind)}\n"
                      f"reproduce: DIFF_TARGET={pair.b.kind} python -m tests.differential.randomops "
                      f"--seed {seed} --ops {ops}"
                      + (f" --restarts {restarts}" if restarts else "")
                      + "".join(f" --flag {k}={v}" for k, v in (flags or {}).items())
                      + f"\n{pair.b.stderr_tail(1500)}")
        return report, mismatches
    finally:
        pair.stop()


def _run_until_mismatch(steps: list[Step], sa: Session, sb: Session, first: int, ops: int) -> list[Mismatch]:
    ops_end = first + ops
    head = run_steps(steps[:ops_end], sa, sb, stop_at_first=True)
    if head:
        return head
    tail = run_steps(steps[ops_end:], sa, sb)
    for m in tail:
        m.index += ops_end
    return tail


def main(argv: list[str] | None = None) -> int:
    from tests.servers import start_server

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--ops", type=int, default=DEFAULT_OPS)
    p.add_argument("--target", default=None, help="kvstore or etcd (default: $DIFF_TARGET or kvstore)")
    p.add_argument("--show", type=int, default=-1, help="print the operation with this index and exit")
    p.add_argument("--restarts", type=int, default=0, help="kill -9 and restart both servers this many times")
    p.add_argument("--flag", action="append", default=[], help="server flag for both, e.g. snapshot-count=200")
    a = p.parse_args(argv)
    flags = dict(f.split("=", 1) for f in a.flag)
    import os

    target = a.target or os.environ.get("DIFF_TARGET", "kvstore")
    if a.show >= 0:
        steps, first = build(a.seed, a.ops, a.restarts)
        print(steps[first + a.show].label)
        return 0
    pool = PairPool(target, lambda kind, name, flags: start_server(kind, name, flags))
    try:
        report, mismatches = run_seed(pool, a.seed, a.ops, a.restarts, flags)
    finally:
        pool.close()
    print(report or f"seed {a.seed}: {a.ops} operations, no mismatch")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
