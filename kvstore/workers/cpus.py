"""Which CPU each process of a member runs on (--worker-cpu-affinity).

With one process per CPU, the member's process and each front end are pinned to a CPU of
their own, with every thread they have. Unpinned, the two processes of --workers 2 on two
CPUs and grpc's threads in each keep waking each other across CPUs; pinned, a process's
threads wake on the CPU they share, and the two served 8-30 % more serializable ranges at less
CPU per range (docs/benchmarks.md, session 7). With more processes than CPUs, or fewer, nothing
is pinned: the kernel places them.
"""

from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger("kvstore.workers")

AFFINITY_MODES = ("auto", "off")


def worker_cpus(workers: int, mode: str) -> list[int] | None:
    """The CPU of each process (index 0: the member's), or None to leave them unpinned."""
    if mode == "off" or workers < 2:
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) != workers:
        return None
    return cpus


def pin_process(cpu: int) -> None:
    """Pin every thread of this process to cpu; threads started later inherit it. A CPU the
    process may no longer use (its cpuset changed since the member chose) leaves it unpinned."""
    try:
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                os.sched_setaffinity(int(tid), {cpu})
    except OSError as err:
        log.warning("not pinned to CPU %d: %s", cpu, err)
