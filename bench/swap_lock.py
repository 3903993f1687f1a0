"""`python -m bench.swap_lock`: how long a defragment's swap blocks the event loop's thread, in one process.

A state file of --mib MiB is written and every page of it mapped (as a member that served
it has), then the defragment's steps run as the member runs them (the compacting copy in a
thread, Backend.swap_in on the loop, the old file's cleanup in a thread) while the loop does
what a serving loop's allocators do: mmap and munmap 1 MiB, every millisecond. Reported per
step: the longest time one such call was blocked, i.e. off the CPU without being runnable
(wall time minus CPU time minus run-queue wait, from /proc/self/task/TID/schedstat). On a
shared machine the wall time of a step says little; the blocked time is a lock (here: the
process's mmap lock held by a munmap of the whole old map).

    python -m bench.swap_lock --mib 1024               # the cleanup as the member does it (steps)
    python -m bench.swap_lock --mib 1024 --whole-unmap # the old file unmapped in one munmap
"""

from __future__ import annotations

import argparse
import asyncio
import mmap
import os
import shutil
import sys
import tempfile
import threading
import time

from kvstore.mvcc import backend as backend_module
from kvstore.mvcc.backend import DB_RECORDS, Backend, drop_mapped_pages, rev_bytes

RECORD_BYTES = 1000
PROBE_ALLOC_BYTES = 1 << 20
PROBE_PAUSE_S = 0.001


def _schedstat() -> tuple[int, int, int]:
    """(wall ns, on-CPU ns, run-queue wait ns) of this thread."""
    with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
        cpu, wait, _ = f.read().split()
    return time.perf_counter_ns(), int(cpu), int(wait)


async def _run(mib: int, whole_unmap: bool) -> dict[str, float]:
    directory = tempfile.mkdtemp(prefix="swap-lock-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    backend = Backend(os.path.join(directory, "state.mdb"), map_size=max(4 << 30, 4 * mib << 20))
    try:
        records = backend.dbs[DB_RECORDS]
        value = b"v" * RECORD_BYTES
        with backend.env.begin(write=True) as txn:
            for i in range((mib << 20) // (RECORD_BYTES + 100)):
                txn.put(rev_bytes(i + 1), value, db=records, append=True)
        with backend.env.begin() as txn:  # every page mapped, as in a member that served them
            for _ in txn.cursor(records).iternext(values=True):
                pass
        backend._file_bytes = os.path.getsize(backend.path)
        if whole_unmap:  # put back in finally (tests run this in their process)
            backend_module.drop_mapped_pages = lambda *_a, **_k: 0
        blocked: dict[str, float] = {}
        step = "idle"

        async def probe() -> None:
            while True:
                w0, c0, q0 = _schedstat()
                m = mmap.mmap(-1, PROBE_ALLOC_BYTES)
                m[0] = 1
                m.close()
                w1, c1, q1 = _schedstat()
                blocked[step] = max(blocked.get(step, 0.0), ((w1 - w0) - (c1 - c0) - (q1 - q0)) / 1e9)
                await asyncio.sleep(PROBE_PAUSE_S)

        task = asyncio.get_running_loop().create_task(probe())
        await asyncio.sleep(0.2)
        tmp = backend.swap_path("defrag")
        step = "copy"
        await asyncio.to_thread(backend.compact_copy, tmp)
        t = time.perf_counter()
        cleanup = backend.swap_in(tmp)  # on the loop: its whole time is the loop's
        blocked["swap_in on the loop"] = time.perf_counter() - t
        step = "cleanup"
        t = time.perf_counter()
        await asyncio.to_thread(cleanup)
        blocked["cleanup wall s"] = time.perf_counter() - t
        step = "after"
        await asyncio.sleep(0.2)
        task.cancel()
        return blocked
    finally:
        backend_module.drop_mapped_pages = drop_mapped_pages
        backend.close()
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.swap_lock", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--mib", type=int, default=1024, help="state file size (default 1024 MiB, on /dev/shm)")
    p.add_argument("--whole-unmap", action="store_true", help="unmap the old file in one munmap (before the fix)")
    ns = p.parse_args(sys.argv[1:] if argv is None else argv)
    blocked = asyncio.run(_run(ns.mib, ns.whole_unmap))
    wall = blocked.pop("cleanup wall s")
    how = "one munmap" if ns.whole_unmap else "in steps"
    print(f"{ns.mib} MiB, old file unmapped {how}: cleanup {wall:.2f} s; longest blocked mmap/munmap of the loop: "
          + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in blocked.items()))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
