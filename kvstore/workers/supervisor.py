"""The member's front-end processes (--workers N): started, restarted when one dies, stopped.

Runs in the member's own process (the applier). Each front end is `kvstore
serve` again with the member's arguments and a front-end index; it dies with
the member (parent-death signal). A front end that exits is started again
(after a pause that grows while it keeps dying); the other processes' client
connections are untouched, only the dead one's drop. Reader slots a killed
front end held in the state file's lock table are freed when it is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from prometheus_client.multiprocess import mark_process_dead

from kvstore.transport.cmux import HttpHandler
from kvstore.transport.http import REQUEST_HEAD_BYTES_MAX
from kvstore.workers import member_socket_path
from kvstore.workers.metrics import with_front_ends
from kvstore.workers.notify import Notifier, notify_socket_path

if TYPE_CHECKING:
    from kvstore.member import Member

log = logging.getLogger("kvstore.workers")

RESTART_DELAY_MIN_S = 0.2
RESTART_DELAY_MAX_S = 10.0
STABLE_RUN_S = 30.0  # a front end that ran this long is restarted at once again
STOP_TIMEOUT_S = 10.0
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess mode
FRONT_END_SECRET_ENV = "KVSTORE_FRONT_END_SECRET"


def metrics_dir_for(state_dir: str) -> str:
    """Where front ends keep their metric files (prometheus_client multiprocess mode)."""
    return member_socket_path(state_dir, "metrics").removesuffix(".sock")


class FrontEnds:
    def __init__(self, argv: list[str], count: int, member: Member, secret: str, cpus: list[int] | None = None) -> None:
        self.argv = argv
        self.cpus = cpus  # the CPU of each process (0: the member's), None: unpinned
        self.secret = secret  # vouches for the client certificates front ends verified
        self.count = count
        self.member = member
        self.http_socket = member_socket_path(member.state_dir, "http")
        self.metrics_dir = metrics_dir_for(member.state_dir)
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._http: Any = None
        self.notifier = Notifier(member, notify_socket_path(member.state_dir))
        self._stopping = False

    async def listen(self, handler: HttpHandler) -> None:
        """The member's HTTP endpoints for the front ends' HTTP/1.1 connections (piped here), and
        their notification channel (kvstore/workers/notify.py)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.http_socket)
        self._http = await asyncio.start_unix_server(handler, self.http_socket, limit=REQUEST_HEAD_BYTES_MAX)
        await self.notifier.listen()

    def start(self) -> None:
        shutil.rmtree(self.metrics_dir, ignore_errors=True)  # counts of an earlier run of this member
        os.makedirs(self.metrics_dir)
        self.member.metrics.collect_with = with_front_ends(self.metrics_dir)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keep(i), name=f"front-end-{i}") for i in range(1, self.count + 1)]

    async def _keep(self, index: int) -> None:
        delay_s = RESTART_DELAY_MIN_S
        env = dict(os.environ)
        env[METRICS_DIR_ENV] = self.metrics_dir
        env[FRONT_END_SECRET_ENV] = self.secret  # in the environment: readable only by this user
        pinned = [f"--front-end-cpu={self.cpus[index]}"] if self.cpus else []
        while not self._stopping:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "kvstore", "serve", *self.argv, *pinned,
                # The member's count, not one the child would work out again from its own CPU mask.
                f"--workers={self.count + 1}",
                f"--front-end-index={index}", f"--parent-pid={os.getpid()}",
                stdin=asyncio.subprocess.DEVNULL, env=env,
            )  # fmt: skip
            self.procs[index] = proc
            code = await proc.wait()
            if self._stopping:
                return
            self.restarts += 1
            # Its gauges (the watches it served) are gone with it.
            mark_process_dead(proc.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
            # Its read transactions' slots in the lock file would pin old pages until then.
            with contextlib.suppress(Exception):
                self.member.sm.backend.env.reader_check()
            if time.monotonic() - started >= STABLE_RUN_S:
                delay_s = RESTART_DELAY_MIN_S
            log.warning("front end %d (pid %d) exited with %s; starting it again in %.1f s",
                        index, proc.pid, code, delay_s)  # fmt: skip
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, RESTART_DELAY_MAX_S)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.returncode is None]

    async def stop(self) -> None:
        """SIGTERM every front end and wait for them (SIGKILL after STOP_TIMEOUT_S)."""
        self._stopping = True
        procs = [p for p in self.procs.values() if p.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await asyncio.gather(*(p.wait() for p in procs))
        except TimeoutError:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await asyncio.gather(*(p.wait() for p in procs))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            self._http.close()
        self.notifier.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.http_socket)
