"""Load and history checks shared by the journal fault tests.

Also runnable as a process (the netns test runs it inside a namespace):

    python -m tests.journal.appender --endpoints 10.0.0.1:7000,... --log p --seconds 10 --progress FILE

It appends without pause for --seconds (or until --stop-file exists), writing
"<monotonic_s> <acked>" lines to FILE (and "leader <addr> <epoch>" whenever
that changes), then checks the
history on every node and exits 0 (ok) or 1 (with the reason on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from journal.api import Entry
from journal.client import JournalClient


class Load:
    """Appenders that never pause, recording every acknowledgement."""

    def __init__(self, client: JournalClient, log: str, writers: int) -> None:
        self.client = client
        self.log = log
        self.acked: list[tuple[int, bytes]] = []
        self.errors: list[BaseException] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._writer(w)) for w in range(writers)]

    async def _writer(self, w: int) -> None:
        i = 0
        while not self._stop.is_set():
            data = f"w{w}-{i}".encode()
            try:
                a = await self.client.append(self.log, [data])
            except Exception as e:  # recorded: the test fails on any
                self.errors.append(e)
                return
            self.acked.append((a[0].position, data))
            i += 1

    async def progress(self, n: int, timeout_s: float, what: str) -> None:
        """Wait until n more appends are acknowledged."""
        target = len(self.acked) + n
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(self.acked) < target:
            assert not self.errors, f"append failed: {self.errors[0]!r}"
            if loop.time() > deadline:
                raise AssertionError(f"appends did not flow again within {timeout_s}s after {what}")
            await asyncio.sleep(0.02)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    async def halt(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def stop(self) -> None:
        await self.halt()
        assert not self.errors, f"append failed: {self.errors[0]!r}"


async def read_all(endpoints: list[str], log: str, last: int, timeout_s: float = 30.0) -> list[Entry]:
    c = JournalClient(endpoints)
    out: list[Entry] = []

    async def run() -> None:
        async for batch in c.read(log, 1):
            out.extend(batch)
            if out[-1].position >= last:
                return

    try:
        await asyncio.wait_for(run(), timeout_s)
    finally:
        await c.close()
    return out


async def verify(endpoints: list[str], log: str, acked: list[tuple[int, bytes]]) -> int:
    """Check the history on every node; return the committed position checked."""
    c = JournalClient(endpoints)
    last = await c.barrier(log)
    await c.close()
    assert acked, "nothing was acknowledged"
    assert last >= max(p for p, _ in acked)
    logs = []
    for addr in endpoints:  # every node, separately: all hold the same committed log
        got = await read_all([addr], log, last)
        assert [e.position for e in got[:last]] == list(range(1, last + 1))
        logs.append([(e.position, e.data) for e in got[:last]])
    assert all(x == logs[0] for x in logs[1:]), "nodes disagree on the committed log"
    by_pos = dict(logs[0])
    for p, data in acked:
        assert by_pos[p] == data, f"acknowledged entry at {p} lost or moved"
    datas = [d for _, d in logs[0]]
    assert len(set(datas)) == len(datas), "an entry was appended twice"
    # Each writer's entries appear in the order it appended them.
    per_writer: dict[bytes, list[int]] = {}
    for d in datas:
        w, _, i = d.partition(b"-")
        per_writer.setdefault(w, []).append(int(i))
    for seq in per_writer.values():
        assert seq == sorted(seq), "a writer's entries were reordered"
    return last


async def _main(args: argparse.Namespace) -> int:
    endpoints = args.endpoints.split(",")
    client = JournalClient(endpoints, rpc_timeout_ms=1000, request_timeout_ms=60_000)
    with open(args.progress, "a", buffering=1) as out:
        load = Load(client, args.log, args.writers)
        end = time.monotonic() + args.seconds
        leader = ("", 0)
        while time.monotonic() < end and not (args.stop_file and os.path.exists(args.stop_file)):
            await asyncio.sleep(0.1)
            out.write(f"{time.monotonic():.3f} {len(load.acked)}\n")
            try:
                st = await asyncio.wait_for(client.status(args.log), 0.5)
                if st.leader and (st.leader, st.epoch) != leader:
                    leader = (st.leader, st.epoch)
                    out.write(f"leader {st.leader} {st.epoch}\n")
            except Exception:  # a status probe may fail during a partition
                pass
            if load.errors:
                break
        try:
            await load.stop()
            last = await verify(endpoints, args.log, load.acked)
        except AssertionError as e:
            print(f"history check failed: {e}", file=sys.stderr)
            return 1
        finally:
            await client.close()
        out.write(f"ok {len(load.acked)} acked, {last} committed\n")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoints", required=True)
    p.add_argument("--log", default="p")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--writers", type=int, default=4)
    p.add_argument("--progress", required=True)
    p.add_argument("--stop-file", default="", help="stop early once this file exists")
    return asyncio.run(_main(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
