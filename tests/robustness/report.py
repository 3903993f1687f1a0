"""One run's report: operations, verdicts, the longest unavailability, faults injected."""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.robustness import linearizability, watch
from tests.robustness.history import WRITES, Fault, History

AVAILABILITY_TARGET_S = 2.0
SUCCESS_KINDS = ("get", *WRITES)  # writes and linearizable reads: what the target is about
FAULT_TAIL_S = 5.0  # a gap that starts within this long after a fault ends belongs to it


def _gaps(times: list[int], start: int, end: int, excluded: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Intervals with no success, minus the excluded windows (the member could not reach two AZs)."""
    points = [start, *sorted(times), end]
    out: list[tuple[int, int]] = []
    for a, b in itertools.pairwise(points):
        pieces = [(a, b)]
        for xs, xe in excluded:
            nxt = []
            for pa, pb in pieces:
                if xe <= pa or xs >= pb:
                    nxt.append((pa, pb))
                    continue
                if pa < xs:
                    nxt.append((pa, xs))
                if xe < pb:
                    nxt.append((xe, pb))
            pieces = nxt
        out.extend(pieces)
    return out


def unavailability(h: History) -> tuple[float, dict[str, float], dict[int, float]]:
    """(longest gap over all members, per member, per fault index), in seconds, between successful
    writes or linearizable reads of each member: after any fault, every member that can reach two
    AZs must succeed again within the target."""
    by_member: dict[str, list[int]] = defaultdict(list)
    for op in h.ops:
        if op.ret is not None and not op.failed and op.out is not None and op.kind in SUCCESS_KINDS:
            by_member[op.member].append(op.ret)
    # Measured from each member's first success (connections warm up) to the last call.
    start = h.started or min((op.call for op in h.ops), default=0)
    end = max((op.call for op in h.ops), default=start)
    per_member: dict[str, float] = {}
    per_fault: dict[int, float] = {i: 0.0 for i in range(len(h.faults))}
    for member in h.members or sorted(by_member):
        times = sorted(by_member.get(member, []))
        if not times:
            per_member[member] = (end - start) / 1e9
            continue
        excluded = [(f.start, f.end) for f in h.faults if member in f.excluded]
        gaps = _gaps(times, times[0], max(end, times[-1]), excluded)
        per_member[member] = max(((b - a) / 1e9 for a, b in gaps), default=0.0)
        for i, f in enumerate(h.faults):
            for a, b in gaps:
                if b >= f.start and a <= f.end + FAULT_TAIL_S * 1e9:
                    per_fault[i] = max(per_fault[i], (b - a) / 1e9)
    return max(per_member.values(), default=0.0), per_member, per_fault


@dataclass
class Report:
    scenario: str
    seed: int
    seconds: float
    ops: int
    ops_ok: int
    ops_unknown: int
    ops_failed: int
    keys: int
    linearizable: bool | None
    linearizability_problems: list[str]
    revision_problems: list[str]
    watch_responses: int
    watch_events: int
    watch_problems: list[str]
    longest_gap_s: float
    gap_by_member_s: dict[str, float]
    faults: list[dict[str, Any]] = field(default_factory=list)
    load_avg: tuple[float, float] = (0.0, 0.0)  # the machine's 1-minute load at the start and the end
    # What the nodes logged of the machine (machine_stalls()): slow fsyncs and late ticks, count and longest.
    stalls: dict[str, float] = field(default_factory=dict)

    @property
    def longest_fault_gap_s(self) -> float:
        """The longest gap that starts during a fault or within FAULT_TAIL_S of its end."""
        return max((f["gap_s"] for f in self.faults), default=0.0)

    @property
    def safe(self) -> bool:
        return bool(self.linearizable) and not self.revision_problems and not self.watch_problems

    @property
    def available(self) -> bool:
        """The target is about faults: the longest gap around one (or anywhere, with no fault)."""
        gap = self.longest_fault_gap_s if self.faults else self.longest_gap_s
        return gap <= AVAILABILITY_TARGET_S

    @property
    def verdict(self) -> str:
        if self.linearizable is None and not self.revision_problems and not self.watch_problems:
            return "INCONCLUSIVE"
        if not self.safe:
            return "UNSAFE"
        return "PASS" if self.available else "UNAVAILABLE"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict, "longest_fault_gap_s": self.longest_fault_gap_s}

    def text(self) -> str:
        lines = [
            f"scenario {self.scenario} seed {self.seed}, {self.seconds:g} s: {self.verdict}",
            f"  operations: {self.ops} ({self.ops_ok} ok, {self.ops_unknown} unknown outcome, "
            f"{self.ops_failed} failed) on {self.keys} keys/leases",
            f"  linearizable: {self.linearizable}; revision order: {'ok' if not self.revision_problems else 'BROKEN'}",
            f"  watch: {self.watch_responses} responses, {self.watch_events} events; "
            f"{'ok' if not self.watch_problems else 'BROKEN'}",
            f"  longest unavailability: {self.longest_fault_gap_s:.2f} s around a fault (target "
            f"{AVAILABILITY_TARGET_S:g} s), {self.longest_gap_s:.2f} s anywhere; "
            + ", ".join(f"{m} {g:.2f} s" for m, g in sorted(self.gap_by_member_s.items())),
            f"  machine load average: {self.load_avg[0]:.1f} at the start, {self.load_avg[1]:.1f} at the end",
        ]
        if self.stalls:
            lines.append(
                f"  machine stalls the nodes logged: {self.stalls['slow_fsyncs']:g} slow fsyncs (longest "
                f"{self.stalls['slow_fsync_max_s']:.2f} s), {self.stalls['late_ticks']:g} late ticks (longest "
                f"{self.stalls['late_tick_max_s']:.2f} s)"
            )
        for f in self.faults:
            lines.append(
                f"  fault {f['name']} on {f['target']} at +{f['at_s']:.1f} s for {f['took_s']:.1f} s "
                f"({f['detail']}): longest gap {f['gap_s']:.2f} s"
            )
        for p in [*self.linearizability_problems, *self.revision_problems, *self.watch_problems][:30]:
            lines.append(f"  PROBLEM {p}")
        return "\n".join(lines)


def build(h: History, scenario: str, seed: int, seconds: float, load_avg: tuple[float, float] = (0.0, 0.0)) -> Report:
    verdicts = linearizability.check(h.ops)
    bad = [v for v in verdicts if v.ok is False]
    unknown = [v for v in verdicts if v.ok is None]
    lin: bool | None = False if bad else (None if unknown else True)
    longest, per_member, per_fault = unavailability(h)
    base = h.started or (h.ops[0].call if h.ops else 0)
    faults = [
        {**asdict(f), "at_s": (f.start - base) / 1e9, "took_s": (f.end - f.start) / 1e9, "gap_s": per_fault[i]}
        for i, f in enumerate(h.faults)
    ]
    return Report(
        scenario=scenario,
        seed=seed,
        seconds=seconds,
        ops=len(h.ops),
        ops_ok=sum(1 for op in h.ops if op.ret is not None and not op.failed),
        ops_unknown=sum(1 for op in h.ops if op.ret is None),
        ops_failed=sum(1 for op in h.ops if op.failed),
        keys=len(verdicts),
        linearizable=lin,
        linearizability_problems=[f"{v.key}: {v.detail}" for v in [*bad, *unknown]],
        revision_problems=linearizability.revision_problems(h.ops),
        watch_responses=len(h.watch),
        watch_events=sum(len(w.events) for w in h.watch),
        watch_problems=watch.validate(h, h.final_revision or None),
        longest_gap_s=longest,
        gap_by_member_s=per_member,
        faults=faults,
        load_avg=load_avg,
    )


_SLOW_FSYNC = re.compile(r"slow fsync: writing \d+ entries took ([0-9.]+) s")
_LATE_TICK = re.compile(r"tick ([0-9.]+) s late")


def machine_stalls(logs: list[str]) -> dict[str, float]:
    """Slow fsyncs and late ticks in the nodes' logs (journal.node warns of both): a slow disk
    or a starved process, which a gap may owe to the machine rather than to the fault."""
    fsyncs = [float(m.group(1)) for text in logs for m in _SLOW_FSYNC.finditer(text)]
    ticks = [float(m.group(1)) for text in logs for m in _LATE_TICK.finditer(text)]
    return {
        "slow_fsyncs": len(fsyncs),
        "slow_fsync_max_s": max(fsyncs, default=0.0),
        "late_ticks": len(ticks),
        "late_tick_max_s": max(ticks, default=0.0),
    }


def merge_faults(h: History, faults: list[Fault]) -> None:
    h.faults.extend(faults)
