"""In-process cost of applying put journal entries in batches (what a member's applier pays).

A StateMachine on a temporary LMDB environment (tmpfs), pre-filled with --keys keys, applies
--entries pre-encoded put entries (overwrites of those keys, --new-keys fresh keys instead) the way
the member's applier does (kvstore/member/core.py `_apply_batch`): one write batch per --batch
entries, `apply(flush=False)` per entry, `flush()`, commit. Prints µs per put (min and median of
--rounds, process CPU time); --profile prints a cProfile of one round instead.

--txn-puts K makes each entry a Txn of K puts of fresh keys under /scale/NNNNN/NNNNNN (the scale
benchmark's load, bench/scale.py: 10,000 keys per prefix), so --entries counts puts and a batch
holds --batch Txn entries.

    python -m bench.apply_cost --entries 4000 --batch 20 --rounds 5 [--profile]
    python -m bench.apply_cost --entries 4000 --batch 4 --txn-puts 100 --value-bytes 1024
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

from kvstore.statemachine import Kind, StateMachine, encode_entry
from proto.etcdserverpb import rpc_pb2 as pb

VALUE_BYTES = 256
FILL_TXN_PUTS = 100


SCALE_PREFIX_KEYS = 10_000  # bench/scale.py's LIST_PREFIX_KEYS


def key(i: int) -> bytes:
    return b"/registry/pods/default/pod-%07d" % i


def scale_key(i: int) -> bytes:
    return b"/scale/%05d/%06d" % (i // SCALE_PREFIX_KEYS, i % SCALE_PREFIX_KEYS)


class Run:
    def __init__(self, keys: int) -> None:
        self.sm = StateMachine()
        self.position = 0
        self.seq = 0
        value = b"v" * VALUE_BYTES
        for start in range(0, keys, FILL_TXN_PUTS):
            ops = [
                pb.RequestOp(request_put=pb.PutRequest(key=key(i), value=value))
                for i in range(start, min(keys, start + FILL_TXN_PUTS))
            ]
            self.apply_batch([self.entry(Kind.TXN, pb.TxnRequest(success=ops).SerializeToString())])

    def entry(self, kind: Kind, payload: bytes) -> bytes:
        self.seq += 1
        return encode_entry(kind, 1, self.seq, payload)

    def apply_batch(self, entries: list[bytes]) -> None:
        sm, backend = self.sm, self.sm.backend
        backend.begin_batch()
        for data in entries:
            self.position += 1
            out = sm.apply(self.position, 1_000_000 + self.position, data, flush=False)
            assert not isinstance(out.result, Exception), out.result
        sm.flush()
        backend.commit_batch()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=10_000, help="keys in the store before the runs")
    p.add_argument("--entries", type=int, default=4000, help="put entries applied per round")
    p.add_argument("--batch", type=int, default=20, help="entries per write batch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--new-keys", action="store_true", help="create keys instead of overwriting")
    p.add_argument("--txn-puts", type=int, default=0, help="entries are Txns of this many puts of fresh keys")
    p.add_argument("--value-bytes", type=int, default=VALUE_BYTES)
    p.add_argument("--prev-kv", action="store_true", help="the puts ask for prev_kv")
    p.add_argument("--profile", action="store_true", help="cProfile one round")
    args = p.parse_args()
    run = Run(args.keys)
    value = b"w" * args.value_bytes
    fresh = iter(range(args.keys, 10**9))
    scale_fresh = iter(range(10**9))

    def txn_batches() -> list[list[bytes]]:
        out: list[list[bytes]] = []
        per_batch = args.batch * args.txn_puts
        for start in range(0, args.entries, per_batch):
            batch: list[bytes] = []
            for t in range(start, min(args.entries, start + per_batch), args.txn_puts):
                ops = [
                    pb.RequestOp(request_put=pb.PutRequest(key=scale_key(next(scale_fresh)), value=value))
                    for _ in range(min(args.txn_puts, args.entries - t))
                ]
                batch.append(run.entry(Kind.TXN, pb.TxnRequest(success=ops).SerializeToString()))
            out.append(batch)
        return out

    def batches() -> list[list[bytes]]:
        if args.txn_puts:
            return txn_batches()
        out: list[list[bytes]] = []
        for start in range(0, args.entries, args.batch):
            out.append(
                [
                    run.entry(
                        Kind.PUT,
                        pb.PutRequest(
                            key=key(next(fresh) if args.new_keys else i % args.keys),
                            value=value,
                            prev_kv=args.prev_kv,
                        ).SerializeToString(),
                    )
                    for i in range(start, min(args.entries, start + args.batch))
                ]
            )
        return out

    if args.profile:
        work = batches()
        prof = cProfile.Profile()
        prof.enable()
        for b in work:
            run.apply_batch(b)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(40)
        return
    per_put: list[float] = []
    for _ in range(args.rounds):
        work = batches()
        # CPU time, not wall time: on a shared machine the wait for a core is not the apply's cost.
        started = time.process_time()
        for b in work:
            run.apply_batch(b)
        per_put.append((time.process_time() - started) / args.entries * 1e6)
    print(
        f"apply put{f' (txns of {args.txn_puts})' if args.txn_puts else ''}, batches of {args.batch}, "
        f"{args.entries} entries x {args.rounds} rounds on {args.keys} keys: "
        f"min {min(per_put):.1f} µs, median {statistics.median(per_put):.1f} µs per put "
        f"({' '.join(f'{x:.1f}' for x in per_put)})"
    )
    run.sm.close()


if __name__ == "__main__":
    main()
