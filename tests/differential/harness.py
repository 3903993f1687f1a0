"""The differential harness: run the same steps against two servers and compare the answers.

A scenario is a function `build() -> list[Step]`. Steps are data (request dicts with placeholders),
resolved per server by a `Session`:

* keys: a `str` in a `key`/`range_end` field gets the scenario's unique prefix (so scenarios can share
  one server); `bytes` are sent as they are. `PREFIX_END` as range_end means "every key with this key
  as prefix", `FROM_KEY` means `\\0`.
* revisions: `R(n)` is the revision at scenario start plus n (a fresh store starts at 1, so in a
  fresh-pair scenario `R(1)` is the revision of the first write).
* leases: `LID(n)` is a client-chosen lease id unique to the scenario; `Lease("a")` is the id the
  server chose in an earlier `grant(..., save="a")` step.

Every response (or gRPC error code + message) is turned into a dict by walking the protobuf fields
that are set, then normalised: cluster_id, member_id and raft_term are dropped; lease ids are replaced
by names in order of first appearance (per server, so server-chosen ids compare); remaining TTLs
compare within a tolerance; Range results sorted by a non-unique target compare with ties in key
order (etcd's Go sort.Sort is not stable, so the order inside a tie is unspecified).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from tests.differential.session import RPC_TIMEOUT_S, Session
from tests.differential.steps import Step

# ---------------------------------------------------------------------------------------------------
# scenarios and the runner


@dataclass
class Scenario:
    name: str
    build: Callable[[], list[Step]]
    fresh: bool = False  # needs its own empty servers (revisions from 1, compaction of 0, lease lists...)
    flags: dict[str, object] = field(default_factory=dict)  # etcd flags for both servers (implies fresh)
    note: str = ""  # e.g. where etcd 3.5.1 differs from the 3.6 behaviour we target
    slow: bool = False  # long (restarts, waits): excluded from the CI run, run with -m slow
    # A difference the design accepts (the issue says so): the test must fail against our server
    # (strict xfail), so it shows up if the server ever changes; against etcd it must pass.
    deliberate: str = ""


@dataclass
class Mismatch:
    index: int
    label: str
    a: Any
    b: Any
    note: str = ""

    def render(self, a_name: str, b_name: str) -> str:
        lines = [f"step #{self.index}: {self.label}"]
        if self.note:
            lines.append(f"  note: {self.note}")
        a, b = self.a, self.b
        if isinstance(a, list) and isinstance(b, list) and len(repr(a)) > 2000:
            # long sequences: show where they part
            i = next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            lines.append(f"  lengths {a_name}={len(a)} {b_name}={len(b)}; first difference at element {i}")
            a, b = a[max(0, i - 1) : i + 2], b[max(0, i - 1) : i + 2]
        lines.append(f"  {a_name}: {a!r}")
        lines.append(f"  {b_name}: {b!r}")
        return "\n".join(lines)


def current_revision(channel: grpc.Channel) -> int:
    resp = rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"\0", count_only=True), timeout=RPC_TIMEOUT_S)
    return int(resp.header.revision)


PAD_KEY = b"/__diff_pad__"
PAD_MAX = 10_000


def align_revisions(a: grpc.Channel, b: grpc.Channel) -> int:
    """Bring both shared servers to the same revision (puts to a pad key on the one behind).

    Only needed after an earlier scenario diverged; returns how many pads were written."""
    ra, rb = current_revision(a), current_revision(b)
    behind = b if ra > rb else a
    n = abs(ra - rb)
    assert n <= PAD_MAX, f"revisions too far apart to align: {ra} vs {rb}"
    kv = rpc_pb2_grpc.KVStub(behind)
    for _ in range(n):
        kv.Put(rpc_pb2.PutRequest(key=PAD_KEY, value=b"pad"), timeout=RPC_TIMEOUT_S)
    return n


def _run_parallel(step: Step, sa: Session, sb: Session) -> tuple[Any, Any]:
    """Run a waiting step on both servers at once (so two 5 s waits cost 5 s)."""
    res: list[Any] = [None, None]
    errs: list[BaseException | None] = [None, None]

    def go(idx: int, sess: Session) -> None:
        try:
            res[idx] = step.run(sess)
        except BaseException as e:  # re-raised below, in the test's thread
            errs[idx] = e

    threads = [threading.Thread(target=go, args=(0, sa)), threading.Thread(target=go, args=(1, sb))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for err in errs:
        if err is not None:
            raise err
    return res[0], res[1]


def run_steps(steps: list[Step], sa: Session, sb: Session, stop_at_first: bool = False) -> list[Mismatch]:
    mismatches: list[Mismatch] = []
    for i, step in enumerate(steps):
        if step.once:
            step.run(sa)
            continue
        if step.expect36 is not None:
            if step.run_reference:
                step.run(sa)  # keeps the reference's streams in step; its 3.5.1 answer is not compared
            if sb.label == "etcd":  # validating the harness with two 3.5.1s: keep streams in step, skip
                if step.run_reference:
                    step.run(sb)
                continue
            rb = step.run(sb)
            want = step.expect36(sb) if callable(step.expect36) else step.expect36
            if rb != want:
                note = "reference not asked, left = expected: " + step.note
                mismatches.append(Mismatch(i, step.label, want, rb, note))
            continue
        if step.parallel:
            ra, rb = _run_parallel(step, sa, sb)
        else:
            ra = step.run(sa)
            rb = step.run(sb)
        if step.compare and ra != rb:
            mismatches.append(Mismatch(i, step.label, ra, rb, step.note))
            if stop_at_first:
                break
    return mismatches


# ---------------------------------------------------------------------------------------------------
# pairs of servers


@dataclass
class Pair:
    a: Any  # ServerProcess: the reference, a real etcd
    b: Any  # ServerProcess: the server under test (ours, or a second etcd to validate the harness)

    def stop(self) -> None:
        for s in (self.a, self.b):
            s.stop()


def _flags_key(flags: dict[str, object]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in flags.items()))


class PairPool:
    """Starts pairs (etcd, target): one shared pair per flag set, and fresh pairs on demand."""

    def __init__(self, target: str, start: Callable[[str, str, dict[str, object]], Any]) -> None:
        self.target = target
        self._start = start
        self._shared: dict[tuple[tuple[str, str], ...], Pair] = {}
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._spare: tuple[threading.Thread, list[Any]] | None = None

    def _new_pair(self, flags: dict[str, object]) -> Pair:
        with self._seq_lock:
            self._seq += 1
            seq = self._seq
        out: list[Any] = [None, None]
        errs: list[BaseException | None] = [None, None]

        def go(i: int, kind: str, name: str) -> None:
            try:
                out[i] = self._start(kind, name, flags)
            except BaseException as e:
                errs[i] = e

        threads = [
            threading.Thread(target=go, args=(0, "etcd", f"ref{seq}")),
            threading.Thread(target=go, args=(1, self.target, f"sut{seq}")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if any(errs):
            for s in out:
                if s is not None:
                    s.stop()
            raise next(e for e in errs if e is not None)
        return Pair(out[0], out[1])

    def shared(self, flags: dict[str, object] | None = None) -> Pair:
        key = _flags_key(flags or {})
        if key not in self._shared:
            self._shared[key] = self._new_pair(dict(flags or {}))
        return self._shared[key]

    def fresh(self, flags: dict[str, object] | None = None) -> Pair:
        """An empty pair. One spare pair with default flags is kept warming in the background, so the
        next fresh scenario does not wait for two server start-ups (etcd alone takes ~1.3 s to elect)."""
        if flags:
            return self._new_pair(dict(flags))
        spare, self._spare = self._spare, None
        pair = self._take(spare) if spare is not None else self._new_pair({})
        self._spare = self._warm()
        return pair

    def _warm(self) -> tuple[threading.Thread, list[Any]]:
        box: list[Any] = []

        def go() -> None:
            try:
                box.append(self._new_pair({}))
            except BaseException as e:  # surfaced when the spare is taken
                box.append(e)

        t = threading.Thread(target=go, daemon=True)
        t.start()
        return t, box

    @staticmethod
    def _take(spare: tuple[threading.Thread, list[Any]]) -> Pair:
        t, box = spare
        t.join()
        if isinstance(box[0], BaseException):
            raise box[0]
        assert isinstance(box[0], Pair)
        return box[0]

    def close(self) -> None:
        if self._spare is not None:
            spare, self._spare = self._spare, None
            with contextlib.suppress(BaseException):
                self._take(spare).stop()
        for p in self._shared.values():
            p.stop()
        self._shared.clear()


def render_mismatches(scenario: Scenario, pair: Pair, mismatches: list[Mismatch]) -> str:
    head = f"scenario {scenario.name}: {len(mismatches)} mismatch(es) between {pair.a!r} and {pair.b!r}"
    if scenario.note:
        head += f"\n  scenario note: {scenario.note}"
    body = "\n".join(m.render(f"{pair.a.kind}", f"{pair.b.kind}") for m in mismatches)
    return f"{head}\n{body}\n--- logs ---\n{pair.b.stderr_tail(1500)}"


SCENARIOS: list[Scenario] = []


Build = Callable[[], list[Step]]


def scenario(
    fresh: bool = False,
    flags: dict[str, object] | None = None,
    note: str = "",
    name: str | None = None,
    slow: bool = False,
    deliberate: str = "",
) -> Callable[[Build], Build]:
    """Register `build` as a scenario named after the function (without a leading `sc_`)."""

    def deco(build: Build) -> Build:
        n = name or build.__name__.removeprefix("sc_")
        assert all(s.name != n for s in SCENARIOS), f"duplicate scenario {n}"
        SCENARIOS.append(
            Scenario(
                n,
                build,
                fresh=fresh or bool(flags),
                flags=dict(flags or {}),
                note=note,
                slow=slow,
                deliberate=deliberate,
            )
        )
        return build

    return deco


def run_scenario(scenario: Scenario, pool: PairPool, index: int) -> tuple[Pair, list[Mismatch]]:
    """Run one scenario against both servers of a pair; return the pair and the mismatches."""
    fresh = scenario.fresh
    pair = pool.fresh(scenario.flags) if fresh else pool.shared(scenario.flags)
    try:
        ca, cb = pair.a.channel(), pair.b.channel()
        if fresh:
            base, prefix = 1, b""
        else:
            align_revisions(ca, cb)
            base = current_revision(ca)
            prefix = f"/diff/{scenario.name}/".encode()
        lease_base = (index + 1) * 1_000_000
        sa = Session(ca, prefix, base, lease_base, label=pair.a.kind, server=pair.a)
        sb = Session(cb, prefix, base, lease_base, label=pair.b.kind, server=pair.b)
        try:
            mismatches = run_steps(scenario.build(), sa, sb)
        finally:
            sa.close()
            sb.close()
            if not fresh:
                # Leases left behind would expire later and bump revisions under other scenarios.
                for s in (sa, sb):
                    for lid in s.granted:
                        with contextlib.suppress(grpc.RpcError):
                            s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lid), timeout=RPC_TIMEOUT_S)
        return pair, mismatches
    finally:
        if fresh:
            pair.stop()
