"""Fault injectors. Each one blocks while its fault lasts and returns what it did (history.Fault).

Process faults work in both layouts; network faults need the netns layout
(tests.robustness.cluster). ``excluded`` names the members that cannot reach
two AZs while the fault lasts: the availability target does not apply to them
then (it does again from the heal on).
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.robustness.cluster import AZS, Cluster, Impairment
from tests.robustness.history import Fault

RESTART_AFTER_S = 2.0  # a killed process comes back after this long


def _now() -> int:
    return time.monotonic_ns()


def _pick(c: Cluster, role: str, rng: random.Random) -> str:
    leader = c.journal_leader()
    if role == "leader":
        return leader
    return rng.choice([z for z in AZS if z != leader])


def kill_node(c: Cluster, role: str, rng: random.Random) -> Fault:
    z = _pick(c, role, rng)
    start = _now()
    c.nodes[z].kill()
    time.sleep(RESTART_AFTER_S)
    c.restart_node(z)
    c.nodes[z].wait_listening()
    return Fault(f"kill-{role}", f"journal {z}", start, _now(), "kill -9, restart")


def stop_node(c: Cluster, role: str, seconds: float, rng: random.Random) -> Fault:
    z = _pick(c, role, rng)
    start = _now()
    c.nodes[z].pause()
    time.sleep(seconds)
    c.nodes[z].cont()
    return Fault(f"stop-{role}-{seconds:g}s", f"journal {z}", start, _now(), f"SIGSTOP, SIGCONT after {seconds:g} s")


def torn_tail(c: Cluster, role: str, rng: random.Random) -> Fault:
    z = _pick(c, role, rng)
    start = _now()
    c.nodes[z].kill()
    segments = sorted(Path(c.nodes[z].data_dir).glob("logs/*/raft/*.seg"))
    detail = "kill -9, no segment to tear"
    if segments:
        with open(segments[-1], "ab") as f:
            # Half a record header and garbage: what a write cut short by the crash leaves.
            f.write(rng.randbytes(rng.randrange(1, 48)))
        detail = f"kill -9, torn tail on {segments[-1].name}, restart"
    time.sleep(RESTART_AFTER_S)
    c.restart_node(z)
    c.nodes[z].wait_listening()
    return Fault(f"torn-tail-{role}", f"journal {z}", start, _now(), detail)


def lost_tmpfs(c: Cluster, rng: random.Random) -> Fault:
    z = rng.choice(AZS)
    m = c.members[z]
    start = _now()
    m.kill()
    shutil.rmtree(m.state_dir, ignore_errors=True)
    time.sleep(RESTART_AFTER_S)
    c.restart_member(z)
    c.wait_member_ready(z)  # the target applies once it serves again: process start-up is not the subject
    return Fault(
        "lost-tmpfs",
        f"member {m.name}",
        start,
        _now(),
        "kill -9, state dir (tmpfs) removed, restart",
        excluded=[m.name],
    )


def stop_member(c: Cluster, seconds: float, rng: random.Random) -> Fault:
    z = rng.choice(AZS)
    m = c.members[z]
    start = _now()
    m.pause()
    time.sleep(seconds)
    m.cont()
    return Fault(f"stop-member-{seconds:g}s", f"member {m.name}", start, _now(), "SIGSTOP, SIGCONT", excluded=[m.name])


def cut_az(c: Cluster, role: str, seconds: float, rng: random.Random) -> Fault:
    z = _pick(c, role, rng)
    start = _now()
    c.cut(z, up=False)
    try:
        time.sleep(seconds)
    finally:
        c.cut(z, up=True)
    return Fault(
        f"cut-{role}-{seconds:g}s",
        f"az {z}",
        start,
        _now(),
        "link down in the hub (no TCP reset)",
        excluded=[c.members[z].name],
    )


def impair_az(c: Cluster, role: str, spec: Impairment, seconds: float, name: str, rng: random.Random) -> Fault:
    z = _pick(c, role, rng)
    start = _now()
    c.impair(z, spec)
    try:
        time.sleep(seconds)
    finally:
        c.impair(z, None)
    what = f"{spec.delay_ms:g} ms delay" if spec.delay_ms else f"{spec.loss_pct:g}% loss"
    return Fault(f"{name}-{role}", f"az {z}", start, _now(), f"{what} each way on the AZ's link for {seconds:g} s")


def impair_member(c: Cluster, spec: Impairment, seconds: float, name: str, rng: random.Random) -> Fault:
    """The delay line on one member's own link: its clients and all its journal traffic, nothing else."""
    z = rng.choice(AZS)
    m = c.members[z]
    start = _now()
    c.impair(f"m{z}", spec)
    try:
        time.sleep(seconds)
    finally:
        c.impair(f"m{z}", None)
    what = f"{spec.delay_ms:g} ms delay" if spec.delay_ms else f"{spec.loss_pct:g}% loss"
    # Not excluded: slower, the member still reaches every AZ and must stay available.
    return Fault(name, f"member {m.name}", start, _now(), f"{what} each way on the member's link for {seconds:g} s")


@dataclass(frozen=True)
class FaultKind:
    name: str
    netns: bool
    inject: Callable[[Cluster, random.Random], Fault]

    @property
    def impairs(self) -> bool:
        return self.name.startswith(("delay-", "loss-"))


IMPAIR_S = 10.0  # how long a delay or loss lasts
KINDS: dict[str, FaultKind] = {
    k.name: k
    for k in [
        FaultKind("none", False, lambda c, rng: Fault("none", "", _now(), _now())),
        FaultKind("kill-leader", False, lambda c, rng: kill_node(c, "leader", rng)),
        FaultKind("kill-follower", False, lambda c, rng: kill_node(c, "follower", rng)),
        FaultKind("stop-leader-3s", False, lambda c, rng: stop_node(c, "leader", 3, rng)),
        FaultKind("stop-leader-8s", False, lambda c, rng: stop_node(c, "leader", 8, rng)),
        FaultKind("stop-follower-3s", False, lambda c, rng: stop_node(c, "follower", 3, rng)),
        FaultKind("torn-tail-leader", False, lambda c, rng: torn_tail(c, "leader", rng)),
        FaultKind("lost-tmpfs", False, lost_tmpfs),
        FaultKind("stop-member-3s", False, lambda c, rng: stop_member(c, 3, rng)),
        FaultKind("cut-leader-3s", True, lambda c, rng: cut_az(c, "leader", 3, rng)),
        FaultKind("cut-leader-15s", True, lambda c, rng: cut_az(c, "leader", 15, rng)),
        FaultKind("cut-follower-3s", True, lambda c, rng: cut_az(c, "follower", 3, rng)),
        # 100 ms each way on the AZ's link: 200 ms more round trip to and from that AZ.
        FaultKind(
            "delay-leader-200ms",
            True,
            lambda c, rng: impair_az(c, "leader", Impairment(delay_ms=100), IMPAIR_S, "delay-200ms", rng),
        ),
        FaultKind(
            "delay-follower-200ms",
            True,
            lambda c, rng: impair_az(c, "follower", Impairment(delay_ms=100), IMPAIR_S, "delay-200ms", rng),
        ),
        FaultKind(
            "delay-member-200ms",
            True,
            lambda c, rng: impair_member(c, Impairment(delay_ms=100), IMPAIR_S, "delay-member-200ms", rng),
        ),
        FaultKind(
            "loss-leader-20pct",
            True,
            lambda c, rng: impair_az(c, "leader", Impairment(loss_pct=10), IMPAIR_S, "loss-20pct", rng),
        ),
    ]
}
