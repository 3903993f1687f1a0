"""Real journal node processes: a member snapshot larger than one frame (64 MiB), put while a follower
is down (kill -9), reaches that follower once it is back; then, with the leader killed, the two
others serve it byte for byte."""

from __future__ import annotations

import asyncio
import hashlib
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

from bench.journal_procs import ProcCluster
from journal.api import SnapshotStream
from journal.client import JournalClient
from journal.connection import NodeConnection
from journal.wire import FRAME_BYTES_MAX_DEFAULT

LOG = "snap"
PIECE_BYTES = 1024 * 1024
SNAPSHOT_BYTES = FRAME_BYTES_MAX_DEFAULT + 8 * PIECE_BYTES + 12_345  # more than one frame can carry


def piece(i: int) -> bytes:
    return hashlib.sha256(b"%d" % i).digest() * (PIECE_BYTES // 32)


async def produce() -> AsyncIterator[bytes]:
    sent = 0
    i = 0
    while sent < SNAPSHOT_BYTES:
        data = piece(i)[: SNAPSHOT_BYTES - sent]
        sent += len(data)
        i += 1
        yield data


def expected_crc() -> int:
    crc, sent, i = 0, 0, 0
    while sent < SNAPSHOT_BYTES:
        data = piece(i)[: SNAPSHOT_BYTES - sent]
        crc, sent, i = zlib.crc32(data, crc), sent + len(data), i + 1
    return crc


async def info_of(addr: str) -> tuple[int, int, int] | None:
    c = NodeConnection(addr, FRAME_BYTES_MAX_DEFAULT)
    try:
        a = await c.call("snap_info", {"log": LOG}, 5.0)
    finally:
        await c.close()
    return None if a["position"] is None else (int(a["position"]), int(a["size"]), int(a["crc32"]))


async def test_follower_installs_a_snapshot_larger_than_a_frame(tmp_path: Path) -> None:
    cluster = ProcCluster(tmp_path, "abc", fsync="always", tick_ms=50)
    cluster.start()
    client = JournalClient(cluster.endpoints, rpc_timeout_ms=5000, spool_dir=str(tmp_path))
    try:
        await client.append(LOG, [b"entry-%d" % i for i in range(30)])
        leader = await cluster.leader(client, LOG)
        late = next(n for n in cluster.nodes.values() if n is not leader)
        late.kill()
        await client.snapshot_put(LOG, SnapshotStream(25, produce()))
        want = (25, SNAPSHOT_BYTES, expected_crc())
        assert await info_of(leader.addr) == want
        late.start()
        late.wait_listening()
        deadline = time.monotonic() + 120
        while (got := await info_of(late.addr)) != want:  # pushed to it by the leader, in chunks
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.2)
        leader.kill()
        reader = await client.snapshot_open(LOG)
        assert reader is not None and (reader.position, reader.size_bytes, reader.crc32) == want
        crc, size = 0, 0
        async for chunk in reader.chunks():  # CRC-checked at the end by the reader too
            crc, size = zlib.crc32(chunk, crc), size + len(chunk)
        assert (size, crc) == want[1:]
    finally:
        await client.close()
        cluster.stop()
