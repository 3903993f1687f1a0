"""Watch progress is a promise (kube's consistent reads from cache rely on it): a progress response at
revision R on a stream comes only after every event <= R of every watcher on that stream.

Not differential: etcd 3.5.1 breaks the promise for an unsynced watcher (#15220, fixed in 3.5.13), and the
server targets the fixed behaviour. The check runs against the server under test; with DIFF_TARGET=etcd it
documents the 3.5.1 bug (xfail)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from bench.workloads import prefix_end
from proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from tests.differential.harness import PairPool
from tests.differential.session import Stream

WRITES = 300
PROGRESS_EVERY_S = 0.003
QUIET_S = 1.0
RESPONSES_MAX = 50_000


def _run(target: Any, prefix: bytes, history: bool) -> tuple[list[int], list[tuple[str, int, int]]]:
    """Write WRITES keys; watch them (from the first write if `history`, else live) while sending
    progress requests; return (write revisions, [(kind, revision, index)]) in arrival order."""
    ch = target.channel()
    kv = rpc_pb2_grpc.KVStub(ch)
    revs: list[int] = []
    if history:
        for i in range(WRITES):
            revs.append(kv.Put(rpc_pb2.PutRequest(key=prefix + b"%04d" % i, value=b"v"), timeout=10).header.revision)
    stream = Stream(rpc_pb2_grpc.WatchStub(ch).Watch)
    create = rpc_pb2.WatchCreateRequest(key=prefix, range_end=prefix_end(prefix), prev_kv=True,
                                        start_revision=revs[0] if history else 0)
    stream.send(rpc_pb2.WatchRequest(create_request=create))
    stop = threading.Event()

    def progress() -> None:
        while not stop.is_set():
            stream.send(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))
            time.sleep(PROGRESS_EVERY_S)

    def writer() -> None:
        for i in range(WRITES):
            revs.append(kv.Put(rpc_pb2.PutRequest(key=prefix + b"w%04d" % i, value=b"v"), timeout=10).header.revision)

    seen: list[tuple[str, int, int]] = []
    first = stream.recv(10)
    assert first is not None and not isinstance(first, tuple) and first.created, first
    threads = [threading.Thread(target=progress)]
    if not history:
        threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(seen) < RESPONSES_MAX:
            writing = not history and threads[1].is_alive()
            if not writing and seen and seen[-1][0] == "progress" and seen[-1][1] >= revs[-1]:
                break  # everything written was delivered and then covered by a progress response
            r = stream.recv(QUIET_S)
            if r is None or isinstance(r, tuple):
                break
            if r.events:
                seen.extend(("event", ev.kv.mod_revision, i) for i, ev in enumerate(r.events))
            elif r.watch_id == -1 and not r.canceled and not r.created:
                seen.append(("progress", r.header.revision, 0))
    finally:
        stop.set()
        for t in threads:
            t.join()
        stream.close()
    return revs, seen


def _check(revs: list[int], seen: list[tuple[str, int, int]]) -> list[str]:
    problems = []
    events = [r for k, r, _ in seen if k == "event"]
    if events != sorted(revs):
        at = next((i for i, (a, b) in enumerate(zip(events, sorted(revs), strict=False)) if a != b), "-")
        problems.append(f"events {len(events)} != writes {len(revs)} (first difference at {at})")
    delivered = 0
    last_progress = 0
    for kind, rev, _ in seen:
        if kind == "event":
            delivered = max(delivered, rev)
            if rev <= last_progress:
                problems.append(f"event at {rev} after a progress notification at {last_progress}")
        else:
            if rev < last_progress:
                problems.append(f"progress went back from {last_progress} to {rev}")
            missing = [r for r in revs if r <= rev and r > delivered]
            if missing:
                problems.append(f"progress at {rev} before events {missing[:5]}...")
            last_progress = rev
    if not any(k == "progress" for k, _, _ in seen):
        problems.append("no progress response at all")
    return problems[:10]


@pytest.mark.parametrize("history", [False, True], ids=["synced-watcher", "catching-up-watcher"])
def test_progress_never_ahead_of_events(history: bool, diff_pool: PairPool, diff_target: str) -> None:
    target = diff_pool.shared().b
    prefix = f"/progress/{'h' if history else 's'}/{time.monotonic_ns()}/".encode()
    revs, seen = _run(target, prefix, history)
    problems = _check(revs, seen)
    if problems and diff_target == "etcd" and history:
        pytest.xfail("etcd 3.5.1 answers progress requests before an unsynced watcher caught up (#15220): "
                     + "; ".join(problems))
    assert not problems, f"{target!r}: " + "; ".join(problems)
