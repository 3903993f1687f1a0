"""Crash safety of `kvstore serve`: kill -9 under a write load, restart on the same data and state dirs.

After every restart: every acknowledged put is readable with its value and mod_revision, the
revision never went down, a new put gets the next revision, and a watch resumed from the last
revision a watcher saw before the crash delivers exactly the following events (no gap, no
duplicate), and compare-and-swap increments form an unbroken 1, 2, 3, ... Restarts come in every
flavour: after kill -9 with the state file (LMDB, on the state dir, committed with every applied
batch) in place, after a graceful stop, with the state dir wiped or its file garbled, cut short or
stale (a rebuild or a longer replay), and with a torn or garbage tail appended to the journal's last
segment file.

The server runs with its default journal fsync policy (`always`). The kill points are random,
from a seed (KVSTORE_CRASH_SEED, printed on failure), and every loop is bounded.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from journal.segments import HEADER, HEADER_BYTES, Record, encode_record
from tests.crash.load import (
    COUNTER_KEY,
    COUNTERS,
    History,
    Watcher,
    check_store,
    counter_problems,
    current_revision,
    put,
    read_all,
    run_load_until_killed,
)
from tests.servers import ServerProcess, ServerStartError, kvstore_available, start_etcd

SEED = int(os.environ.get("KVSTORE_CRASH_SEED", "20261123"))
WRITERS = 4
MIN_ACKS_PER_CYCLE = 20  # the kill waits for at least this many acknowledged puts: a load, not an idle server
OPS_PER_WRITER_MAX = 20_000
STARTUP_JOIN_S = 60.0

pytestmark = [
    pytest.mark.skipif(not kvstore_available(), reason="kvstore.server does not exist yet"),
    # an exception in a load or watch thread must fail the test, not scroll by as a warning
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]


def state_dir(srv: ServerProcess) -> Path:
    return srv.work_dir / "state"


def state_file(srv: ServerProcess) -> Path:
    """The one state file in the state dir (its name is the server's business; LMDB's lock file
    and the gRPC socket aside)."""
    files = [p for p in state_dir(srv).iterdir() if p.is_file() and not p.name.endswith("-lock")]
    assert len(files) == 1, f"expected one state file, found {files}"
    return files[0]


def last_segment(srv: ServerProcess) -> Path:
    segments = sorted((srv.work_dir / "data").rglob("*.seg"))
    assert segments, f"no journal segment under {srv.work_dir / 'data'}"
    dirs = {p.parent for p in segments}
    assert len(dirs) == 1, f"expected one journal log, found {sorted(dirs)}"
    return segments[-1]  # names are the zero-padded first position: the last sorts last


def _last_record_header(data: bytes) -> tuple[int, int, int]:
    """(position, epoch, timestamp_ms) of the last whole record in a segment file's bytes."""
    at, last = 0, (0, 0, 0)
    while at + HEADER_BYTES <= len(data):
        payload_len, _crc, position, epoch, ts = HEADER.unpack_from(data, at)
        if at + HEADER_BYTES + payload_len > len(data):
            break
        last = (position, epoch, ts)
        at += HEADER_BYTES + payload_len
    assert at == len(data), "the segment already ends in a partial record"
    return last


def tail_bytes(kind: str, segment: bytes, rng: random.Random) -> bytes:
    """What a crash can leave after the last whole record."""
    position, epoch, ts = _last_record_header(segment)
    assert position > 0
    record = encode_record(Record(position + 1, epoch, ts + 1, rng.randbytes(200)))
    if kind == "garbage":  # random bytes, as from a file system that grew the file but not its data
        return rng.randbytes(rng.randint(1, 4096))
    if kind == "zeros":  # a preallocated or zero-filled tail
        return bytes(rng.randint(HEADER_BYTES, 4096))
    if kind == "torn-record":  # the next record, cut mid-payload: the write the kill interrupted
        return record[: rng.randint(1, len(record) - 1)]
    if kind == "bad-crc":  # the next record, whole, one payload bit flipped
        flip = rng.randrange(HEADER_BYTES, len(record))
        return record[:flip] + bytes([record[flip] ^ 0x01]) + record[flip + 1 :]
    if kind == "huge-length":  # a header that claims a payload far beyond any limit
        return HEADER.pack(0xFFFFFFF0, 0, position + 1, epoch, ts) + rng.randbytes(64)
    raise ValueError(kind)


TAILS = ("garbage", "zeros", "torn-record", "bad-crc", "huge-length")


def crash_cycle(
    srv: ServerProcess,
    history: History,
    rng: random.Random,
    cycle: int,
    *,
    graceful: bool = False,
    before_restart: Callable[[], None] | None = None,
    writers: int = WRITERS,
    kill_window_s: tuple[float, float] = (0.05, 1.0),
) -> None:
    """One load, one kill (or SIGTERM) at a random point while it runs, one restart, every check."""
    endpoint = srv.endpoint
    watcher = Watcher(endpoint, history.last_event_revision + 1)
    kill = (lambda: srv.stop(cleanup=False)) if graceful else srv.kill
    acks, in_doubt, alive = run_load_until_killed(
        endpoint,
        writers,
        cycle,
        kill_after_s=rng.uniform(*kill_window_s),
        kill=kill,
        ops_max=OPS_PER_WRITER_MAX,
        min_acks=MIN_ACKS_PER_CYCLE,
    )
    assert alive == writers + COUNTERS, f"cycle {cycle}: only {alive} load threads were running at the kill"
    assert len(acks) >= MIN_ACKS_PER_CYCLE, f"cycle {cycle}: {len(acks)} acks before the kill"
    history.add_acks(acks)
    history.in_doubt |= in_doubt
    seen = watcher.drain()
    watcher.close()
    history.extend_events(seen, f"cycle {cycle}: watch before the crash")

    if before_restart is not None:
        before_restart()
    srv.restart()

    revision, _ = check_store(endpoint, history)
    now = current_revision(endpoint)
    assert now >= revision >= history.max_seen_revision

    # the watch resumes from the last revision it saw; a new put continues the revisions
    resumed = Watcher(endpoint, history.last_event_revision + 1)
    marker = put(endpoint, b"/crash/marker/%d" % cycle, b"after restart %d" % cycle)
    assert marker.revision == now + 1, (
        f"cycle {cycle}: first put after restart at {marker.revision}, store was at {now}"
    )
    history.add_acks([marker])
    events = resumed.take_until(marker.revision)
    resumed.close()
    history.extend_events(events, f"cycle {cycle}: watch resumed after restart")
    print(
        f"cycle {cycle}: {len(acks)} acks ({sum(a.deleted for a in acks)} deletes), {len(in_doubt)} in doubt, "
        f"{len(seen)} events seen before the crash, "
        f"{len(events)} after; revision {marker.revision}"
    )


def final_checks(srv: ServerProcess, history: History, full_replay: bool = True) -> None:
    """History from revision 1 equals what the watchers saw across all crashes; a full journal replay
    (state dir wiped) rebuilds the same store, revision for revision."""
    endpoint = srv.endpoint
    check_store(endpoint, history)
    full = Watcher(endpoint, 1)
    replayed = full.take_until(history.last_event_revision)
    full.close()
    assert replayed == history.events, "the history from revision 1 differs from what the watchers saw"
    assert not counter_problems(history), counter_problems(history)
    assert sum(ev.key == COUNTER_KEY for ev in history.events) > 0, "no counter increment committed"

    if not full_replay:
        return
    before = read_all(endpoint)
    srv.stop(cleanup=False)
    shutil.rmtree(state_dir(srv))
    srv.start()
    after = read_all(endpoint)
    assert after[0] == before[0], f"revision {before[0]} before the full replay, {after[0]} after"
    assert after[1] == before[1], "the store rebuilt from the journal alone differs"


def test_kill9_under_write_load(server: ServerProcess) -> None:
    print(f"KVSTORE_CRASH_SEED={SEED}")
    rng = random.Random(SEED)
    history = History()

    crash_cycle(server, history, rng, 0)  # kill -9: the state file plus the journal's tail
    crash_cycle(server, history, rng, 1, graceful=True)  # SIGTERM under load
    state = state_file(server)
    graceful_mtime_ns = state.stat().st_mtime_ns

    def state_file_written() -> None:
        assert state.stat().st_mtime_ns > graceful_mtime_ns, "the state file did not change under a 6 s load"

    # a longer load: the restart opens the file the killed process was committing to
    crash_cycle(server, history, rng, 2, before_restart=state_file_written, kill_window_s=(5.5, 6.5))
    crash_cycle(server, history, rng, 3, before_restart=lambda: shutil.rmtree(state_dir(server)))
    final_checks(server, history)
    assert len(history.acks) >= 4 * MIN_ACKS_PER_CYCLE


def damage_tail(srv: ServerProcess, tail: str, rng: random.Random) -> Callable[[], None]:
    """Append a `tail` to the last segment; the returned check asserts recovery removed it and
    left every byte before it alone."""
    seg = last_segment(srv)
    data = seg.read_bytes()
    junk = tail_bytes(tail, data, rng)
    with open(seg, "ab") as f:
        f.write(junk)

    def recovered() -> None:
        now = seg.read_bytes()
        assert now[: len(data)] == data, f"{tail}: recovery changed records before the damage"
        assert not now[len(data) :].startswith(junk), f"the {tail} tail is still in {seg.name}"

    return recovered


def test_torn_tails_and_damaged_state_files(server: ServerProcess) -> None:
    """Each kind of damaged journal tail, combined with each kind of damaged state dir: a state file
    with garbage over its header pages, cut short, older than the last one, or gone. The state dir
    is only a cache: its damage costs a rebuild or a longer replay, never data."""
    print(f"KVSTORE_CRASH_SEED={SEED}")
    rng = random.Random(f"{SEED}:tails")
    history = History()
    state = state_dir(server)

    crash_cycle(server, history, rng, 0, graceful=True)
    stale = state_file(server).read_bytes()

    def garble_header() -> None:  # LMDB's two meta pages: the file is refused and rebuilt
        path = state_file(server)
        data = bytearray(path.read_bytes())
        data[: 2 * 4096] = rng.randbytes(2 * 4096)
        path.write_bytes(bytes(data))

    def cut_short() -> None:
        path = state_file(server)
        data = path.read_bytes()
        path.write_bytes(data[: rng.randrange(1, len(data))])

    def restore_stale() -> None:  # an older, valid state file: replay from further back
        state_file(server).write_bytes(stale)

    def wipe() -> None:
        shutil.rmtree(state)

    # (tail, state damage, graceful stop before the damage)
    plan: list[tuple[str, Callable[[], None] | None, bool]] = [
        ("garbage", None, False),
        ("zeros", garble_header, True),
        ("torn-record", cut_short, True),
        ("bad-crc", restore_stale, False),
        ("huge-length", wipe, False),
    ]
    assert sorted(t for t, _, _ in plan) == sorted(TAILS)
    for cycle, (tail, state_damage, graceful) in enumerate(plan, start=1):
        checks: list[Callable[[], None]] = []

        def damage(
            tail: str = tail,
            state_damage: Callable[[], None] | None = state_damage,
            checks: list[Callable[[], None]] = checks,
        ) -> None:
            checks.append(damage_tail(server, tail, rng))
            if state_damage is not None:
                state_damage()

        crash_cycle(server, history, rng, cycle, graceful=graceful, before_restart=damage)
        for check in checks:
            check()
    final_checks(server, history)


def kill_during_startup(srv: ServerProcess, delay_s: float) -> None:
    """Start the server and SIGKILL it after delay_s, while it opens its state file or replays the
    journal (or, if it was quick, once it serves)."""
    failed: list[BaseException] = []

    def start() -> None:
        try:
            srv.start()
        except ServerStartError:
            pass  # the kill landed before it was ready: the point of the exercise
        except BaseException as e:
            failed.append(e)

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    time.sleep(delay_s)
    srv.kill()
    starter.join(STARTUP_JOIN_S)
    assert not starter.is_alive() and not failed, failed


@pytest.mark.slow
def test_kill_during_recovery(server: ServerProcess) -> None:
    """A journal long enough that recovery takes a while, and kills while the server recovers:
    from the state file plus the tail, then from the journal alone (state dir wiped)."""
    print(f"KVSTORE_CRASH_SEED={SEED}")
    rng = random.Random(f"{SEED}:recovery")
    history = History()
    crash_cycle(server, history, rng, 0, writers=8, kill_window_s=(10.0, 12.0))
    crash_cycle(server, history, rng, 1, writers=8, kill_window_s=(10.0, 12.0))
    server.stop(cleanup=False)
    for attempt in range(8):
        if attempt == 4:
            shutil.rmtree(state_dir(server), ignore_errors=True)
        kill_during_startup(server, rng.uniform(0.5, 3.0))
    server.start()
    check_store(server.endpoint, history)
    crash_cycle(server, history, rng, 2)
    final_checks(server, history)


@pytest.mark.slow
@pytest.mark.etcd
def test_harness_on_real_etcd() -> None:
    """The crash harness itself, against a real etcd: kill -9 and SIGTERM under the same load must pass
    the same checks (no state dir or journal segments there, so no wipe and no torn tail)."""
    srv = start_etcd("crash-harness")
    try:
        rng = random.Random(SEED)
        history = History()
        for cycle in range(4):
            crash_cycle(srv, history, rng, cycle, graceful=cycle == 1)
        final_checks(srv, history, full_replay=False)
    finally:
        srv.stop()


@pytest.mark.slow
def test_kill9_soak(server: ServerProcess) -> None:
    """Many crashes at random points, with every kind of restart mixed in."""
    cycles = int(os.environ.get("KVSTORE_CRASH_CYCLES", "30"))
    print(f"KVSTORE_CRASH_SEED={SEED} cycles={cycles}")
    rng = random.Random(SEED)
    history = History()

    def wipe() -> None:
        shutil.rmtree(state_dir(server))

    def damage() -> None:
        seg = last_segment(server)
        junk = tail_bytes(rng.choice(TAILS), seg.read_bytes(), rng)
        with open(seg, "ab") as f:
            f.write(junk)

    for cycle in range(cycles):
        flavour = rng.choice(("kill", "kill", "kill", "graceful", "wipe", "tail", "long"))
        crash_cycle(
            server,
            history,
            rng,
            cycle,
            graceful=flavour == "graceful",
            before_restart={"wipe": wipe, "tail": damage}.get(flavour),
            writers=rng.randint(2, 8),
            kill_window_s=(4.0, 8.0) if flavour == "long" else (0.05, 1.0),
        )
    final_checks(server, history)
