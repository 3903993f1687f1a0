"""kill -9 at random points of a batch apply: the state file holds exactly "everything up to P".

The server applies the journal in batches, one LMDB write transaction each (kvstore/member.py).
Its test-only fault hooks (off unless their environment variable is set) SIGKILL it in the middle
of the Nth batch, before the commit, or right after the Nth commit, before the next journal read;
other cycles are killed from outside at a random moment. The load mixes puts, range deletes, txns,
leases (granted, attached, revoked) and compactions, so batches hold every kind of entry and the
physical compaction runs between them.

After each kill the test opens the state file the way the crash left it and replays the journal
itself, from position 1 to the file's applied position P, into a fresh state machine: both must be
the same state byte for byte (the replicated snapshot stream, and HashKV). Then the server restarts
(the file plus the journal's tail) and its HashKV and revision must equal the reference replayed to
the position the server reports applied. Seeds are printed; every loop is bounded.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import threading
import time
from pathlib import Path

import grpc
import pytest

from journal.local import LocalJournal
from kvstore.member import FAULT_KILL_AFTER_COMMIT_ENV, FAULT_KILL_IN_BATCH_ENV
from kvstore.mvcc.backend import STATE_FILE, Backend
from kvstore.statemachine import StateMachine
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc
from tests.servers import ServerProcess, kvstore_available, start_kvstore

SEED = int(os.environ.get("KVSTORE_CRASH_SEED", "20261201"))
CYCLES = 6
WRITERS = 4
KEYS = 64
LOAD_S_MAX = 8.0  # a cycle's load stops here if the fault has not fired
RPC_TIMEOUT_S = 5.0
LOG_NAME = "default"

pytestmark = pytest.mark.skipif(not kvstore_available(), reason="kvstore.server does not exist yet")


def _key(rng: random.Random) -> bytes:
    return b"/b/%02d" % rng.randrange(KEYS)


def _writer(endpoint: str, seed: int, stop: threading.Event) -> None:
    """Random writes until the server dies or stop is set; errors are the expected end."""
    rng = random.Random(seed)
    channel = grpc.insecure_channel(endpoint)
    kv, lease = rpc.KVStub(channel), rpc.LeaseStub(channel)
    leases: list[int] = []
    try:
        while not stop.is_set():
            op = rng.random()
            if op < 0.45:
                attach = leases and rng.random() < 0.3
                kv.Put(
                    pb.PutRequest(key=_key(rng), value=rng.randbytes(rng.randrange(1, 300)),
                                  lease=rng.choice(leases) if attach else 0),
                    timeout=RPC_TIMEOUT_S,
                )
            elif op < 0.55:
                lo, hi = sorted((_key(rng), _key(rng)))
                kv.DeleteRange(pb.DeleteRangeRequest(key=lo, range_end=hi), timeout=RPC_TIMEOUT_S)
            elif op < 0.8:
                k = _key(rng)
                kv.Txn(
                    pb.TxnRequest(
                        compare=[pb.Compare(key=k, target=pb.Compare.VERSION, result=pb.Compare.GREATER, version=0)],
                        success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=b"s")),
                                 pb.RequestOp(request_put=pb.PutRequest(key=k + b"/t", value=b"t"))],
                        failure=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=k + b"/t"))],
                    ),
                    timeout=RPC_TIMEOUT_S,
                )
            elif op < 0.88:
                leases.append(lease.LeaseGrant(pb.LeaseGrantRequest(TTL=600), timeout=RPC_TIMEOUT_S).ID)
            elif op < 0.93 and leases:
                lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=leases.pop(rng.randrange(len(leases)))),
                                  timeout=RPC_TIMEOUT_S)
            elif op < 0.96:
                rev = kv.Range(pb.RangeRequest(key=b"/b/", count_only=True), timeout=RPC_TIMEOUT_S).header.revision
                try:
                    kv.Compact(pb.CompactionRequest(revision=rev - rng.randrange(0, 20)), timeout=RPC_TIMEOUT_S)
                except grpc.RpcError as err:
                    if err.code() != grpc.StatusCode.OUT_OF_RANGE:  # compacted already: fine
                        raise
    except grpc.RpcError:
        pass  # the server died under the load: the point of the exercise
    finally:
        channel.close()


def _load_until_dead(srv: ServerProcess, rng: random.Random, kill_after_s: float | None) -> None:
    stop = threading.Event()
    threads = [
        threading.Thread(target=_writer, args=(srv.endpoint, rng.getrandbits(32), stop), daemon=True)
        for _ in range(WRITERS)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + (kill_after_s if kill_after_s is not None else LOAD_S_MAX)
    assert srv.proc is not None
    while time.monotonic() < deadline and srv.proc.poll() is None:
        time.sleep(0.01)
    if srv.proc.poll() is None:
        srv.kill()  # the outside kill, or a fault that did not fire in time
    stop.set()
    for t in threads:
        t.join(RPC_TIMEOUT_S * 3)
    srv.kill()  # reap


class Reference:
    """The journal replayed by the test itself, entry by entry, into a fresh state machine."""

    def __init__(self, journal_dir: Path) -> None:
        self.journal_dir = journal_dir
        self.sm = StateMachine()

    def advance(self, upto: int) -> None:
        assert upto >= self.sm.applied_position, "the state went back"
        if upto > self.sm.applied_position:
            asyncio.run(self._replay(upto))

    async def _replay(self, upto: int) -> None:
        journal = LocalJournal(str(self.journal_dir))
        try:
            async for batch in journal.read(LOG_NAME, self.sm.applied_position + 1):
                for entry in batch:
                    if entry.position > upto:
                        return
                    self.sm.apply(entry.position, entry.timestamp_ms, entry.data)
                if batch[-1].position >= upto:
                    return
        finally:
            await journal.close()


def _file_state(srv: ServerProcess) -> tuple[int, bytes, int, int]:
    """(applied position, snapshot stream, revision, HashKV) of the state file as the crash left it."""
    sm = StateMachine(Backend(str(srv.work_dir / "state" / STATE_FILE)))
    try:
        return sm.applied_position, sm.dumps(), sm.store.revision, sm.store.hash_kv(sm.store.revision)
    finally:
        sm.close()


def _server_state(srv: ServerProcess) -> tuple[int, int, int]:
    """(applied position, revision, HashKV at it) as the running server answers."""
    maintenance = rpc.MaintenanceStub(srv.channel())
    status = maintenance.Status(pb.StatusRequest(), timeout=RPC_TIMEOUT_S)
    h = maintenance.HashKV(pb.HashKVRequest(), timeout=RPC_TIMEOUT_S)
    return status.raftAppliedIndex, h.header.revision, h.hash


def test_kill9_at_random_points_of_batch_apply() -> None:
    print(f"KVSTORE_CRASH_SEED={SEED}")
    rng = random.Random(SEED)
    srv = start_kvstore("batch-crash")
    reference = Reference(srv.work_dir / "data" / "journal")
    failed = True
    try:
        applied_before = 0
        for cycle in range(CYCLES):
            fault = ("in-batch", "after-commit", "outside")[cycle % 3]
            srv.env.pop(FAULT_KILL_IN_BATCH_ENV, None)
            srv.env.pop(FAULT_KILL_AFTER_COMMIT_ENV, None)
            if fault != "outside":
                name = FAULT_KILL_IN_BATCH_ENV if fault == "in-batch" else FAULT_KILL_AFTER_COMMIT_ENV
                srv.env[name] = str(rng.randint(20, 400))  # batches counted from this start
                srv.restart()
            kill_after = rng.uniform(0.3, 3.0) if fault == "outside" else None
            _load_until_dead(srv, rng, kill_after)

            position, stream, revision, hash_kv = _file_state(srv)
            assert position >= applied_before, f"cycle {cycle}: the state file went back to {position}"
            reference.advance(position)
            assert reference.sm.applied_position == position
            assert (revision, hash_kv) == (reference.sm.store.revision, reference.sm.store.hash_kv(revision)), (
                f"cycle {cycle} ({fault}): the state file at position {position} differs from the replay"
            )
            assert stream == reference.sm.dumps(), f"cycle {cycle} ({fault}): state bytes differ at {position}"

            srv.env.pop(FAULT_KILL_IN_BATCH_ENV, None)
            srv.env.pop(FAULT_KILL_AFTER_COMMIT_ENV, None)
            srv.start()
            applied, now, served_hash = _server_state(srv)
            reference.advance(applied)
            ref = reference.sm.store
            assert (now, served_hash) == (ref.revision, ref.hash_kv(ref.revision)), (
                f"cycle {cycle} ({fault}): after restart at position {applied} the server differs from the replay"
            )
            print(f"cycle {cycle} ({fault}): file at position {position}, served {applied}, revision {now}")
            applied_before = applied
        failed = False
    finally:
        srv.stop(cleanup=not failed)
        reference.sm.close()


def _put(srv: ServerProcess, key: bytes, value: bytes) -> int:
    resp = rpc.KVStub(srv.channel()).Put(pb.PutRequest(key=key, value=value), timeout=RPC_TIMEOUT_S)
    return int(resp.header.revision)


def _get(srv: ServerProcess, key: bytes) -> tuple[int, list[bytes]]:
    resp = rpc.KVStub(srv.channel()).Range(pb.RangeRequest(key=key), timeout=RPC_TIMEOUT_S)
    return int(resp.header.revision), [kv.value for kv in resp.kvs]


def test_state_file_of_another_journal_or_from_the_future_is_refused() -> None:
    """A state file is used only with the journal it follows, and only if that journal reaches its
    position: otherwise the server says why, rebuilds it from the journal, and serves the journal's
    state."""
    a, b = start_kvstore("foreign-a"), start_kvstore("foreign-b")
    try:
        for i in range(5):
            _put(a, b"k", b"a%d" % i)
        _put(b, b"k", b"b")
        a.stop(cleanup=False)
        b.stop(cleanup=False)
        (b.work_dir / "state" / STATE_FILE).write_bytes((a.work_dir / "state" / STATE_FILE).read_bytes())
        b.start()
        assert _get(b, b"k") == (2, [b"b"])
        assert "belongs to another journal" in b.stderr_tail()

        # The data dir (journal) as it is now, then more writes, then the data dir put back:
        # the state file is ahead of the journal.
        b.stop(cleanup=False)
        saved = b.work_dir / "data-saved"
        shutil.copytree(b.work_dir / "data", saved)
        b.start()
        _put(b, b"k", b"later")
        b.stop(cleanup=False)
        shutil.rmtree(b.work_dir / "data")
        saved.rename(b.work_dir / "data")
        b.start()
        assert _get(b, b"k") == (2, [b"b"])
        assert "from the future of this journal" in b.stderr_tail()
    finally:
        a.stop()
        b.stop()
