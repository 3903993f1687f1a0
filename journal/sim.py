"""Deterministic, seeded simulator of the journal's replication core.

It runs the REAL ``journal.replication.ReplicationCore`` on 3 or 5 nodes spread over
AZs, under a simulated network (delay, loss, duplication, reordering, partitions of
nodes, links and whole AZs), crashes and restarts that drop whatever was not fsynced
(fsync completions arrive late, in order; half the seeds keep one write in flight
per node and take ``ready(writes=False)`` meanwhile, as journal.node does), clock skew and drift, and clients that
append (retrying with the same client_id/request_seq), append conditionally and ask
for barriers. Everything is driven by one ``random.Random(seed)``, so a failing seed
replays exactly:

    python -m journal.sim --seed 1234 --nodes 5 -v

Checked after every event: at most one leader per term; committed prefixes never
diverge; an entry, when first committed, is durable on a majority spanning two AZs;
committed timestamps never decrease; a retried request gets the same positions;
a successful conditional append landed right after the expected tail; barrier answers
are committed and cover every append acknowledged before the barrier call. At the end
(faults healed, every node up): the cluster must make progress again, and every
acknowledged append is in the committed log exactly once, in acknowledged order.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from journal.replication import (
    AppendResult,
    BarrierResult,
    Config,
    EntryKind,
    ErrorCode,
    HardState,
    InstallSnapshot,
    LogEntry,
    Message,
    Peer,
    Ready,
    ReplicationCore,
    RestoredState,
    Role,
    SnapshotMeta,
)

AZS = ("az-a", "az-b", "az-c", "az-d", "az-e")


class InvariantViolation(AssertionError):
    """A safety or liveness property failed; the message says which and how to replay."""


@dataclass(frozen=True, slots=True)
class SimParams:
    """Fault and workload knobs (drawn per seed by ``SimParams.draw``)."""

    nodes: int = 3
    azs: int = 3  # nodes are spread round-robin over this many AZs
    duration_ms: int = 2_000  # faulty phase
    settle_ms_max: int = 8_000  # healed phase: progress must resume within this
    tick_ms: int = 10
    delay_ms_min: int = 1
    delay_ms_max: int = 15
    loss: float = 0.02
    duplicate: float = 0.02
    slow: float = 0.03  # chance a message takes up to 10x longer (reordering)
    fsync_ms_max: int = 8
    fault_every_ms: int = 150
    clock_skew_ms: int = 500
    clients: int = 3
    client_timeout_ms: int = 400
    conditional: float = 0.15  # share of appends with an expected_position
    barrier: float = 0.2  # share of client operations that are barriers
    trim: float = 0.1  # chance per fault tick that every live node trims its log
    crash_on_vote: float = 0.05  # chance a node crashes soon after changing its term or vote
    one_write_in_flight: bool = False  # as journal.node: light Readies while a write is in flight

    @staticmethod
    def draw(rng: random.Random, nodes: int, duration_ms: int) -> SimParams:
        # Mostly one node per AZ; sometimes 2 AZs, where a bare majority could sit in one AZ.
        azs = nodes if rng.random() < 0.7 else 2
        return SimParams(
            nodes=nodes,
            azs=azs,
            duration_ms=duration_ms,
            delay_ms_max=rng.choice((3, 10, 25)),
            loss=rng.choice((0.0, 0.01, 0.05, 0.15)),
            duplicate=rng.choice((0.0, 0.02, 0.1)),
            slow=rng.choice((0.0, 0.03, 0.1)),
            fsync_ms_max=rng.choice((1, 5, 20)),
            fault_every_ms=rng.choice((80, 150, 300)),
            clock_skew_ms=rng.choice((0, 50, 2_000)),
            conditional=rng.choice((0.0, 0.15, 0.5)),
            trim=rng.choice((0.0, 0.1, 0.3)),
            one_write_in_flight=rng.random() < 0.5,
        )


@dataclass(slots=True)
class _Disk:
    """What survives a crash: the durable image of one node's storage."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta = field(default_factory=SnapshotMeta)
    entries: list[LogEntry] = field(default_factory=list)

    def write(self, rd: Ready) -> None:
        """Apply a Ready's writes exactly as the Ready's docstring tells a shell to."""
        if rd.snapshot is not None:
            s = rd.snapshot
            keep = self.term_at(s.index) == s.term
            self.entries = [e for e in self.entries if e.index > s.index] if keep else []
            self.snapshot = s
        if rd.entries:
            first = rd.entries[0].index
            assert first <= self.last_index() + 1, "a Ready left a gap in the log"
            self.entries = [e for e in self.entries if e.index < first] + list(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.snapshot.index

    def term_at(self, index: int) -> int | None:
        if index == self.snapshot.index:
            return self.snapshot.term
        offset = index - self.snapshot.index - 1
        if 0 <= offset < len(self.entries):
            return self.entries[offset].term
        return None

    def holds(self, index: int, term: int) -> bool:
        return index < self.snapshot.index or self.term_at(index) == term

    def restored(self) -> RestoredState:
        return RestoredState(self.hard_state, self.snapshot, tuple(self.entries))


@dataclass(slots=True)
class _Node:
    node_id: str
    az: str
    core: ReplicationCore | None = None  # None while crashed
    incarnation: int = 0
    disk: _Disk = field(default_factory=_Disk)
    unsynced: list[Ready] = field(default_factory=list)  # handed over, fsync pending
    fsync_done_at_ms: int = 0  # fsyncs complete in order
    clock_offset_ms: int = 0
    clock_drift: float = 0.0
    checked_commit: int = 0  # committed prefix already compared with the reference
    paused_until_ms: int = 0  # SIGSTOP: events wait until then
    led_term: int = 0  # the last term this node was seen leading (in this incarnation)


@dataclass(slots=True)
class _Request:
    client: int
    seq: int
    datas: tuple[bytes, ...]
    expected_position: int | None
    first_sent_ms: int
    acked_before_send: int  # highest position acknowledged (to anyone) before the first send
    attempts: int = 0
    result: tuple[tuple[int, int], ...] | None = None  # (position, timestamp_ms) once acked


@dataclass(slots=True)
class _Client:
    index: int
    client_id: str
    next_seq: int = 1
    leader_guess: str = ""
    request: _Request | None = None
    barrier_id: int = 0
    barrier_floor: int = 0  # highest acked position when the barrier was called
    busy_until_ms: int = 0
    timer_gen: int = 0


class Simulation:
    def __init__(self, seed: int, params: SimParams, verbose: bool = False) -> None:
        self.seed = seed
        self.p = params
        self.rng = random.Random(seed)
        self.verbose = verbose
        self.now_ms = 0
        self._queue: list[tuple[int, int, Callable[[], None]]] = []
        self._event_seq = 0
        peers = tuple(Peer(f"n{i}", AZS[i % params.azs]) for i in range(params.nodes))
        self.config_peers = peers
        self.nodes = {p.node_id: _Node(p.node_id, p.az) for p in peers}
        self.cut: set[tuple[str, str]] = set()  # directed links that drop everything
        self.clients = [_Client(i, f"client-{i}") for i in range(params.clients)]
        self.faults_on = True
        # Checker state.
        # term -> the one leader of that term, with its incarnation: a node that restarts
        # must not lead the same term twice either (its term and vote are durable).
        self.leaders: dict[int, tuple[str, int]] = {}
        self.commit_terms: list[int] = []  # the term in which each reference entry was first seen committed
        self.committed: list[LogEntry] = []  # the reference committed log (index i at [i-1])
        self.acked: list[_Request] = []
        self.acked_position_max = 0
        self.tokens: dict[int, tuple[int, int]] = {}  # token -> (client index, seq)
        self.barrier_floors: dict[int, int] = {}  # barrier id -> highest acked position at its call
        self._token_seq = 0
        self.barriers_answered = 0
        self.appends_acked = 0
        self.events = 0
        self.snapshots_sent = 0

    # ------------------------------------------------------------------ scheduling

    def _at(self, delay_ms: int, action: Callable[[], None]) -> None:
        self._event_seq += 1
        heapq.heappush(self._queue, (self.now_ms + max(0, delay_ms), self._event_seq, action))

    def log(self, text: str) -> None:
        if self.verbose:
            print(f"{self.now_ms:>7} {text}")

    def fail(self, text: str) -> None:
        cmd = f"python -m journal.sim --seed {self.seed} --nodes {self.p.nodes} --duration-ms {self.p.duration_ms} -v"
        raise InvariantViolation(f"seed {self.seed} at t={self.now_ms}ms: {text}\n  replay: {cmd}")

    # ------------------------------------------------------------------ nodes

    def _config(self, node_id: str) -> Config:
        return Config(node_id, self.config_peers, election_ticks=10, heartbeat_ticks=1, append_entries_max=8)

    def start_node(self, node: _Node) -> None:
        node.incarnation += 1
        node.core = ReplicationCore(
            self._config(node.node_id), random.Random(self.rng.getrandbits(32)), node.disk.restored()
        )
        node.unsynced = []
        node.fsync_done_at_ms = self.now_ms
        node.clock_offset_ms = self.rng.randint(-self.p.clock_skew_ms, self.p.clock_skew_ms)
        node.clock_drift = self.rng.uniform(-0.05, 0.05)
        node.checked_commit = node.core.commit
        node.led_term = 0
        self.log(f"{node.node_id} start (incarnation {node.incarnation}) term={node.core.term}")
        self._schedule_tick(node, node.incarnation)

    def crash_node(self, node: _Node) -> None:
        """Lose the process and whatever was not fsynced (sometimes a prefix of it survives)."""
        if node.core is None:
            return
        survivors = self.rng.randint(0, len(node.unsynced)) if self.rng.random() < 0.5 else 0
        for rd in node.unsynced[:survivors]:
            node.disk.write(rd)
        self.log(f"{node.node_id} CRASH ({len(node.unsynced)} unsynced readies, {survivors} survive)")
        node.core = None
        node.paused_until_ms = 0
        node.unsynced = []

    def _crash_soon(self, node: _Node) -> None:
        incarnation = node.incarnation

        def crash() -> None:
            if node.core is not None and node.incarnation == incarnation:
                self.crash_node(node)
                self._at(self.rng.randint(5, 100), lambda: self.start_node(node) if node.core is None else None)

        self._at(self.rng.randint(0, self.p.fsync_ms_max), crash)

    def _node_now_ms(self, node: _Node) -> int:
        """The node's wall clock: skewed and drifting, as the shell would pass it."""
        return int(self.now_ms * (1 + node.clock_drift)) + node.clock_offset_ms + 1_000_000

    def _schedule_tick(self, node: _Node, incarnation: int) -> None:
        interval = max(1, round(self.p.tick_ms * (1 + node.clock_drift)))

        def tick() -> None:
            if node.core is None or node.incarnation != incarnation:
                return
            if self._deferred(node, tick):
                return
            node.core.tick()
            self._drain(node)
            self._schedule_tick(node, incarnation)

        self._at(interval, tick)

    def _drain(self, node: _Node) -> None:
        """The shell's loop: take every Ready, send, schedule its fsync, answer clients."""
        core = node.core
        assert core is not None
        while True:
            # With one_write_in_flight, as journal.node: only light Readies while a write is pending.
            light = self.p.one_write_in_flight and bool(node.unsynced)
            if not core.has_ready(writes=not light):
                break
            rd = core.ready(writes=not light)
            for m in rd.messages:
                self._send(m)
            for r in rd.append_results:
                self._reply_append(node, r)
            for b in rd.barrier_results:
                self._reply_barrier(node, b)
            if light:
                continue
            if rd.hard_state is not None and self.faults_on and self.rng.random() < self.p.crash_on_vote:
                self._crash_soon(node)  # inside the window where a new term/vote is not yet durable
            delay = self.rng.randint(0, self.p.fsync_ms_max) if rd.must_persist() else 0
            node.fsync_done_at_ms = max(node.fsync_done_at_ms, self.now_ms + delay)
            node.unsynced.append(rd)
            self._schedule_fsync(node, node.incarnation, rd)
        self._check_node(node)

    def _schedule_fsync(self, node: _Node, incarnation: int, rd: Ready) -> None:
        def done() -> None:
            if node.core is None or node.incarnation != incarnation:
                return
            if self._deferred(node, done):
                return
            assert node.unsynced and node.unsynced[0] is rd
            node.unsynced.pop(0)
            node.disk.write(rd)
            node.core.advance(rd)
            for m in rd.messages_after_persist:
                self._send(m)
            self._drain(node)

        self._at(node.fsync_done_at_ms - self.now_ms, done)

    # ------------------------------------------------------------------ network

    def _send(self, m: Message) -> None:
        if isinstance(m, InstallSnapshot):
            self.snapshots_sent += 1
        if (m.src, m.dst) in self.cut:
            return
        if self.faults_on and self.rng.random() < self.p.loss:
            return
        copies = 2 if self.faults_on and self.rng.random() < self.p.duplicate else 1
        for _ in range(copies):
            delay = self.rng.randint(self.p.delay_ms_min, self.p.delay_ms_max)
            if self.faults_on and self.rng.random() < self.p.slow:
                delay *= self.rng.randint(2, 10)
            self._at(delay, lambda: self._deliver(m))

    def _deferred(self, node: _Node, action: Callable[[], None]) -> bool:
        """A paused (SIGSTOPped) process handles nothing until it resumes, then all of it."""
        if self.now_ms >= node.paused_until_ms:
            return False
        self._at(node.paused_until_ms - self.now_ms, action)
        return True

    def _deliver(self, m: Message) -> None:
        node = self.nodes[m.dst]
        if node.core is None or (m.src, m.dst) in self.cut:
            return
        if self._deferred(node, lambda: self._deliver(m)):
            return
        if self.verbose:
            self.log(f"{m.src}->{m.dst} {_describe(m)}")
        node.core.step(m)
        self._drain(node)

    # ------------------------------------------------------------------ faults

    def _schedule_faults(self) -> None:
        def fault() -> None:
            if not self.faults_on:
                return
            self._inject_fault()
            self._schedule_faults()

        self._at(self.rng.randint(1, 2 * self.p.fault_every_ms), fault)

    def _inject_fault(self) -> None:
        nodes = list(self.nodes.values())
        kind = self.rng.random()
        if kind < 0.25:
            node = self.rng.choice(nodes)
            if node.core is not None:
                self.crash_node(node)
                self._at(self.rng.randint(20, 600), lambda: self.start_node(node) if node.core is None else None)
        elif kind < 0.40:
            node = self.rng.choice(nodes)  # isolate one node (often the leader)
            leader = [n for n in nodes if n.core is not None and n.core.role is Role.LEADER]
            if leader and self.rng.random() < 0.6:
                node = leader[0]
            self._isolate({node.node_id})
        elif kind < 0.52:
            az = self.rng.choice(sorted({n.az for n in nodes}))
            self._isolate({n.node_id for n in nodes if n.az == az})
        elif kind < 0.55:
            leaders = [n for n in nodes if n.core is not None and n.core.role is Role.LEADER]
            node = leaders[0] if leaders and self.rng.random() < 0.7 else self.rng.choice(nodes)
            # Never shorten a pause: events already deferred to its end must keep their order.
            node.paused_until_ms = max(node.paused_until_ms, self.now_ms + self.rng.randint(50, 800))
            self.log(f"{node.node_id} PAUSE until {node.paused_until_ms}")
        elif kind < 0.62:
            a, b = self.rng.sample([n.node_id for n in nodes], 2)
            self.cut.add((a, b))  # one-way link cut
            self.log(f"CUT {a}->{b}")
        elif kind < 0.85:
            if self.cut:
                self.log("HEAL")
            self.cut.clear()
        if self.rng.random() < self.p.trim:
            # As the node shell does: every live replica trims below a position close to the tail.
            committed = self._committed_position()
            below = max(0, committed + 1 - self.rng.randint(0, 20))
            self.log(f"TRIM below position {below}")
            for node in nodes:
                if node.core is not None and node.paused_until_ms <= self.now_ms:
                    node.core.trim(below)
                    self._drain(node)

    def _isolate(self, group: set[str]) -> None:
        self.log(f"PARTITION {sorted(group)} from the rest")
        for a in self.nodes:
            for b in self.nodes:
                if (a in group) != (b in group):
                    self.cut.add((a, b))

    # ------------------------------------------------------------------ clients

    def _client_wake(self, client: _Client, delay_ms: int, forget_leader: bool = False) -> None:
        client.timer_gen += 1
        gen = client.timer_gen

        def wake() -> None:
            if client.timer_gen == gen:
                if forget_leader:
                    client.leader_guess = ""
                self._client_act(client)

        self._at(delay_ms, wake)

    def _client_act(self, client: _Client) -> None:
        """Send (or resend) the client's current operation, or start a new one."""
        if client.request is None and client.barrier_id == 0:
            if not self.faults_on and self._settled_clients():
                return
            if self.rng.random() < self.p.barrier:
                self._token_seq += 1
                client.barrier_id = self._token_seq
                client.barrier_floor = self.acked_position_max
                self.barrier_floors[client.barrier_id] = client.barrier_floor
            else:
                self._new_request(client)
        target = client.leader_guess or self.rng.choice(sorted(self.nodes))
        if client.request is None and self.rng.random() < 0.3:
            target = self.rng.choice(sorted(self.nodes))  # barriers also probe possibly stale leaders
        node = self.nodes[target]
        if client.request is not None:
            req = client.request
            req.attempts += 1
            self._token_seq += 1
            self.tokens[self._token_seq] = (client.index, req.seq)
            token = self._token_seq
            self._at(
                self.rng.randint(1, 3),
                lambda: self._node_propose(node, client.client_id, req, token),
            )
        else:
            barrier_id = client.barrier_id
            self.tokens[barrier_id] = (client.index, -1)
            self._at(self.rng.randint(1, 3), lambda: self._node_barrier(node, barrier_id))
        # No answer in time (crash, partition, lost result): retry, anywhere.
        self._client_wake(client, self.p.client_timeout_ms, forget_leader=True)

    def _new_request(self, client: _Client) -> None:
        seq = client.next_seq
        client.next_seq += 1
        n = self.rng.randint(1, 3)
        datas = tuple(f"{client.client_id}/{seq}/{k}".encode() for k in range(n))
        expected = None
        if self.rng.random() < self.p.conditional:
            expected = self.acked_position_max  # a guess at the tail, often right
        client.request = _Request(client.index, seq, datas, expected, self.now_ms, self.acked_position_max)

    def _node_propose(self, node: _Node, client_id: str, req: _Request, token: int) -> None:
        if node.core is None or self._deferred(node, lambda: self._node_propose(node, client_id, req, token)):
            return
        self.log(f"{node.node_id} propose {client_id} seq {req.seq} x{len(req.datas)} expected={req.expected_position}")
        node.core.propose(client_id, req.seq, req.datas, self._node_now_ms(node), req.expected_position, token)
        self._drain(node)

    def _node_barrier(self, node: _Node, barrier_id: int) -> None:
        if node.core is None or self._deferred(node, lambda: self._node_barrier(node, barrier_id)):
            return
        node.core.barrier(barrier_id)
        self._drain(node)

    def _reply_append(self, node: _Node, r: AppendResult) -> None:
        self._at(self.rng.randint(1, 3), lambda: self._on_append_result(node, r))

    def _reply_barrier(self, node: _Node, b: BarrierResult) -> None:
        self._at(self.rng.randint(1, 3), lambda: self._on_barrier_result(node, b))

    def _on_append_result(self, node: _Node, r: AppendResult) -> None:
        client_index, seq = self.tokens.get(r.token, (-1, -1))
        if client_index < 0:
            return
        client = self.clients[client_index]
        done = [q for q in self.acked if q.client == client_index and q.seq == seq]
        if r.error is None:
            got = tuple((a.position, a.timestamp_ms) for a in r.appended)
            if done:  # a late answer to an earlier attempt: dedup must agree
                if done[0].result != got:
                    self.fail(f"{client.client_id} seq {seq} answered twice differently: {done[0].result} vs {got}")
                return
            req = client.request
            if req is None or req.seq != seq:
                return
            self._on_acked(client, req, got)
            return
        if client.request is None or client.request.seq != seq:
            return
        if r.error is ErrorCode.NOT_LEADER:
            client.leader_guess = r.leader
            self._client_wake(client, self.rng.randint(1, 20) if r.leader else self.rng.randint(20, 60))
        elif r.error is ErrorCode.BUSY:
            self._client_wake(client, self.rng.randint(20, 60))
        elif r.error is ErrorCode.POSITION_MISMATCH:
            # Not checked against acked positions: a deposed leader that does not know it
            # yet answers with its own (stale) tail. Only a barrier gives a linearizable tail.
            if r.tail == client.request.expected_position:
                self.fail(f"conditional append refused though the tail {r.tail} was the expected one")
            client.request = None  # the conditional append lost: move on with a new seq
            self._client_wake(client, self.rng.randint(1, 20))
        else:
            self.fail(f"unexpected append error {r.error} for {client.client_id} seq {seq}")

    def _on_acked(self, client: _Client, req: _Request, got: tuple[tuple[int, int], ...]) -> None:
        positions = [p for p, _ in got]
        if len(got) != len(req.datas) or positions != list(range(positions[0], positions[0] + len(got))):
            self.fail(f"ack {got} does not match the request's {len(req.datas)} entries")
        if req.expected_position is not None and positions[0] != req.expected_position + 1:
            self.fail(f"conditional append expected {req.expected_position} but landed at {positions[0]}")
        if positions[0] <= req.acked_before_send:
            self.fail(f"append acked at {positions[0]} though {req.acked_before_send} was acked before it was sent")
        req.result = got
        self.acked.append(req)
        self.appends_acked += 1
        self.acked_position_max = max(self.acked_position_max, positions[-1])
        self.log(f"ACK {client.client_id} seq {req.seq} -> {got}")
        client.request = None
        self._client_wake(client, self.rng.randint(0, 10))

    def _on_barrier_result(self, node: _Node, b: BarrierResult) -> None:
        client_index, _ = self.tokens.get(b.request_id, (-1, -1))
        if client_index < 0:
            return
        client = self.clients[client_index]
        if b.error is None:
            floor = self.barrier_floors[b.request_id]
            if b.position < floor:
                self.fail(f"barrier {b.request_id} answered {b.position} < {floor} acked before the call")
            if b.position > self._committed_position():
                self.fail(f"barrier answered {b.position}, beyond the committed position {self._committed_position()}")
            self.barriers_answered += 1
            if client.barrier_id == b.request_id:
                self.log(f"BARRIER {client.client_id} -> {b.position} (floor {client.barrier_floor})")
                client.barrier_id = 0
                self._client_wake(client, self.rng.randint(0, 10))
            return
        if client.barrier_id != b.request_id:
            return
        client.leader_guess = b.leader
        self._client_wake(client, self.rng.randint(1, 20) if b.leader else self.rng.randint(20, 60))

    def _settled_clients(self) -> bool:
        return all(c.request is None and c.barrier_id == 0 for c in self.clients)

    # ------------------------------------------------------------------ invariants

    def _committed_position(self) -> int:
        return self.committed[-1].position if self.committed else 0

    def _check_node(self, node: _Node) -> None:
        core = node.core
        assert core is not None
        if core.role is Role.LEADER:
            me = (node.node_id, node.incarnation)
            other = self.leaders.setdefault(core.term, me)
            if other != me:
                self.fail(f"two leaders in term {core.term}: {other} and {me}")
            if node.led_term != core.term:
                node.led_term = core.term
                self._check_leader_completeness(node)
                if node.disk.hard_state != HardState(core.term, node.node_id):
                    # Else a crash could make it forget the term and vote again in it.
                    self.fail(f"{node.node_id} leads term {core.term} before its vote is durable")
        if core.commit <= node.checked_commit:
            node.checked_commit = min(node.checked_commit, core.commit)
            return
        snap = core.snapshot_meta
        lo = node.checked_commit + 1
        if lo <= snap.index:
            self._check_against_reference(node, snap.index, snap.term, snap.position, snap.timestamp_ms)
            lo = snap.index + 1
        for e in core.log_entries(lo, core.commit):
            if e.index > len(self.committed):
                self._extend_reference(node, e)
            ref = self.committed[e.index - 1]
            if ref != e:
                self.fail(f"{node.node_id} committed {e} but the reference holds {ref}")
        node.checked_commit = core.commit

    def _check_leader_completeness(self, node: _Node) -> None:
        """Raft's Leader Completeness: a new leader holds every entry committed in earlier terms."""
        core = node.core
        assert core is not None
        held = {e.index: e.term for e in core.log_entries(1, len(self.committed))}
        for ref, commit_term in zip(self.committed, self.commit_terms, strict=True):
            if commit_term >= core.term or ref.index <= core.snapshot_meta.index:
                continue
            if held.get(ref.index) != ref.term:
                self.fail(f"{node.node_id} leads term {core.term} without committed entry {ref.index}@{ref.term}")

    def _check_against_reference(self, node: _Node, index: int, term: int, position: int, ts: int) -> None:
        if index > len(self.committed):
            self.fail(f"{node.node_id} holds a snapshot at {index} beyond anything committed")
        ref = self.committed[index - 1]
        if (ref.term, ref.position, ref.timestamp_ms) != (term, position, ts):
            self.fail(f"{node.node_id} snapshot at {index} ({term}, {position}) diverges from {ref}")

    def _extend_reference(self, node: _Node, e: LogEntry) -> None:
        """A new index is committed: check it is durable on a two-AZ majority right now."""
        assert e.index == len(self.committed) + 1
        holders = [n for n in self.nodes.values() if n.disk.holds(e.index, e.term)]
        azs = {n.az for n in holders}
        if len(holders) < len(self.nodes) // 2 + 1 or len(azs) < 2:
            self.fail(f"index {e.index} committed by {node.node_id} is durable only on {[n.node_id for n in holders]}")
        prev = self.committed[-1] if self.committed else None
        if prev is not None:
            if e.timestamp_ms < prev.timestamp_ms:
                self.fail(f"timestamp went backwards at index {e.index}: {prev.timestamp_ms} -> {e.timestamp_ms}")
            step = 1 if e.kind is EntryKind.DATA else 0
            if e.position != prev.position + step:
                self.fail(f"positions not dense at index {e.index}")
        self.committed.append(e)
        assert node.core is not None
        self.commit_terms.append(node.core.term)

    def _final_check(self) -> None:
        by_data: dict[bytes, LogEntry] = {}
        for e in self.committed:
            if e.kind is not EntryKind.DATA:
                continue
            if e.data in by_data:
                self.fail(f"{e.data!r} committed twice, at {by_data[e.data].position} and {e.position}")
            by_data[e.data] = e
        # Appends are atomic: a proposal's entries are all committed, contiguous, or none is.
        batches: dict[bytes, list[LogEntry]] = {}
        for e in by_data.values():
            batches.setdefault(e.data.rsplit(b"/", 1)[0], []).append(e)
        for key, entries in batches.items():
            positions = sorted(e.position for e in entries)
            size = entries[0].batch_size
            if len(entries) != size or positions != list(range(positions[0], positions[0] + size)):
                self.fail(f"proposal {key!r} committed partially or split: positions {positions} of {size}")
        for req in self.acked:
            assert req.result is not None
            for data, (position, ts) in zip(req.datas, req.result, strict=True):
                found = by_data.get(data)
                if found is None or found.position != position or found.timestamp_ms != ts:
                    self.fail(f"acked {data!r} at {position} is {found or 'missing'} in the final log")
        for node in self.nodes.values():
            core = node.core
            assert core is not None
            for e in core.log_entries(1, core.commit):
                if self.committed[e.index - 1] != e:
                    self.fail(f"{node.node_id} final log diverges at {e.index}")

    # ------------------------------------------------------------------ run

    def run(self) -> dict[str, Any]:
        for node in self.nodes.values():
            self.start_node(node)
        for client in self.clients:
            self._client_wake(client, self.rng.randint(0, 50))
        self._schedule_faults()
        self._run_until(self.p.duration_ms)
        # Heal: no more faults, every node up; the cluster must settle.
        self.faults_on = False
        self.cut.clear()
        self.log("HEAL ALL, restart crashed nodes")
        for node in self.nodes.values():
            if node.core is None:
                self.start_node(node)
        deadline = self.now_ms + self.p.settle_ms_max
        self._run_until(deadline, stop=self._settled)
        if not self._settled():
            self.fail("no progress after healing: " + self._describe_cluster())
        self._final_check()
        return {
            "seed": self.seed,
            "events": self.events,
            "sim_ms": self.now_ms,
            "acked": self.appends_acked,
            "barriers": self.barriers_answered,
            "committed": len(self.committed),
            "terms": max(self.leaders, default=0),
            "snapshots": self.snapshots_sent,
        }

    def _settled(self) -> bool:
        """Clients done and every node caught up with one leader's commit."""
        if not self._settled_clients():
            return False
        cores = [n.core for n in self.nodes.values()]
        leaders = [c for c in cores if c is not None and c.role is Role.LEADER]
        if len(leaders) != 1:
            return False
        target = leaders[0].commit
        return all(c is not None and c.commit == target and c.status().last_index == target for c in cores)

    def _run_until(self, end_ms: int, stop: Callable[[], bool] | None = None) -> None:
        events_max = 5_000_000  # a hard bound on any run
        while self._queue and self._queue[0][0] <= end_ms:
            if stop is not None and stop():
                return
            self.now_ms, _, action = heapq.heappop(self._queue)
            action()
            self.events += 1
            if self.events > events_max:
                self.fail("event budget exhausted")
        self.now_ms = max(self.now_ms, end_ms) if stop is None else self.now_ms

    def _describe_cluster(self) -> str:
        parts = []
        for n in self.nodes.values():
            if n.core is None:
                parts.append(f"{n.node_id}:down")
            else:
                s = n.core.status()
                parts.append(f"{n.node_id}:{s.role.value} t{s.term} c{s.commit_index} l{s.last_index}")
        pending = [(c.client_id, c.request.seq if c.request else None, c.barrier_id) for c in self.clients]
        return " ".join(parts) + f" clients={pending}"


def _describe(m: Message) -> str:
    name = type(m).__name__
    fields = {k: getattr(m, k) for k in m.__slots__ if k not in ("src", "dst")}
    if "entries" in fields:
        entries = fields.pop("entries")
        fields["entries"] = [f"{e.index}@{e.term}" for e in entries]
    if "snapshot" in fields:
        s = fields.pop("snapshot")
        fields["snapshot"] = f"{s.index}@{s.term}"
    return name + " " + " ".join(f"{k}={v}" for k, v in fields.items())


def run_seed(seed: int, nodes: int = 3, duration_ms: int = 2_000, verbose: bool = False) -> dict[str, Any]:
    """Run one seeded simulation; raise InvariantViolation on any failure."""
    params = SimParams.draw(random.Random(seed * 7919 + nodes), nodes, duration_ms)
    sim = Simulation(seed, params, verbose)
    if verbose:
        print(f"seed {seed}: {params}")
    return sim.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m journal.sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="run this one seed")
    parser.add_argument("--seeds", type=int, default=100, help="without --seed: run seeds 0..N-1")
    parser.add_argument("--nodes", type=int, default=3, choices=(3, 5))
    parser.add_argument("--duration-ms", type=int, default=2_000)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else list(range(args.seeds))
    failures = 0
    for seed in seeds:
        try:
            stats = run_seed(seed, args.nodes, args.duration_ms, args.verbose)
        except InvariantViolation as e:
            failures += 1
            print(f"FAIL {e}")
            continue
        except AssertionError as e:  # an assertion inside the core: report the seed too
            failures += 1
            replay = f"python -m journal.sim --seed {seed} --nodes {args.nodes} --duration-ms {args.duration_ms} -v"
            print(f"FAIL seed {seed}: core assertion {e!r}\n  replay: {replay}")
            continue
        if args.seed is not None or args.verbose:
            print(f"ok {stats}")
    print(f"{len(seeds) - failures}/{len(seeds)} seeds passed ({args.nodes} nodes)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
