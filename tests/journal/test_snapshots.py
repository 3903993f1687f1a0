"""Member snapshots in bounded chunks: the local journal, and nodes in one process (real sockets and disks).

Snapshots here are larger than the frames that carry them (the clients run with small frame limits),
so every test goes through the chunked path.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from journal.api import JournalError, Snapshot, SnapshotFile, SnapshotStream, read_all
from journal.client import JournalClient
from journal.connection import NodeConnection, RemoteError
from journal.local import LocalJournal
from journal.snapshots import (
    SNAPSHOT_CHUNK_BYTES,
    SNAPSHOT_FILE,
    SNAPSHOT_HEADER,
    SNAPSHOT_SYNC_BYTES,
    SNAPSHOT_TMP_PREFIX,
    SnapshotFileReader,
    SnapshotWriter,
)
from tests.journal.cluster import InProcessCluster

FRAME_BYTES_MAX = 256 * 1024  # client frames: a snapshot of a few MiB takes dozens of chunks


def blob_of(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ at every offset (a misplaced chunk shows)."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d-%d" % (seed, i)).digest()
        i += 1
    return bytes(out[:size])


async def stream_of(data: bytes, piece: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i : i + piece]
        await asyncio.sleep(0)


def temporaries(directory: Path) -> list[Path]:
    return sorted(directory.rglob(SNAPSHOT_TMP_PREFIX + "*"))


# ------------------------------------------------------------------ local


async def test_local_stream_put_and_chunked_read(tmp_path: Path) -> None:
    j = LocalJournal(str(tmp_path))
    await j.append("s", [b"e"] * 20)
    data = blob_of(2 * SNAPSHOT_CHUNK_BYTES + 12345)
    await j.snapshot_put("s", SnapshotStream(10, stream_of(data, 1_000_003)))  # odd pieces: re-chunked
    reader = await j.snapshot_open("s")
    assert reader is not None and (reader.position, reader.size_bytes) == (10, len(data))
    chunks = [c async for c in reader.chunks()]
    await reader.close()
    assert all(len(c) <= SNAPSHOT_CHUNK_BYTES for c in chunks) and len(chunks) == 3
    assert b"".join(chunks) == data
    assert await j.snapshot_get("s") == Snapshot(10, data)  # the small-snapshot call reads through it
    assert temporaries(tmp_path) == []
    await j.close()


def _resident_pages(path: str) -> tuple[int, int]:
    """(resident, all) pages of a file in the page cache: mincore(2) over a shared map of it."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(path)
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        try:
            vec = (ctypes.c_ubyte * pages)()
            assert libc.mincore(addr, size, vec) == 0, ctypes.get_errno()
            return sum(b & 1 for b in vec), pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def _fs_type(path: str) -> str:
    best, kind = "", ""
    with open("/proc/mounts") as f:
        for line in f:
            _, mount, fs, *_ = line.split()
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                best, kind = mount, fs
    return kind


def test_writer_keeps_few_dirty_pages_and_leaves_the_page_cache(tmp_path: Path) -> None:
    """A snapshot of any size leaves at most SNAPSHOT_SYNC_BYTES unflushed (the next fsync on the disk,
    the journal's, waits behind no more), and what is flushed is not kept in the page cache."""
    piece = os.urandom(1 << 20)
    w = SnapshotWriter(str(tmp_path), 7)
    total = 3 * SNAPSHOT_SYNC_BYTES + 12345
    while w.size_bytes < total:
        w.write(piece[: total - w.size_bytes])
        assert SNAPSHOT_HEADER.size + w.size_bytes - w._dirty.synced < SNAPSHOT_SYNC_BYTES
    info = w.finish()
    assert w.install()
    path = str(tmp_path / SNAPSHOT_FILE)
    if os.path.exists("/proc/mounts") and _fs_type(os.path.realpath(path)) not in ("tmpfs", "ramfs", ""):
        resident, pages = _resident_pages(path)  # on tmpfs the page cache is the file: nothing to drop
        assert resident < pages // 4, (resident, pages)
    r = SnapshotFileReader(path)
    try:
        data = r.read_at(0, info.size_bytes)
        assert len(data) == total and data[: 1 << 20] == piece and r.info == info
    finally:
        r.close()


async def test_local_file_put_and_older_ignored(tmp_path: Path) -> None:
    j = LocalJournal(str(tmp_path))
    await j.append("s", [b"e"] * 20)
    path = tmp_path / "blob"
    path.write_bytes(blob_of(100_000, seed=1))
    await j.snapshot_put("s", SnapshotFile(12, str(path)))
    await j.snapshot_put("s", SnapshotStream(5, stream_of(b"older", 2)))  # never go back
    got = await j.snapshot_get("s")
    assert got is not None and got.position == 12 and got.blob == path.read_bytes()
    await j.close()


async def test_local_reader_survives_a_newer_put(tmp_path: Path) -> None:
    j = LocalJournal(str(tmp_path))
    await j.append("s", [b"e"] * 20)
    old, new = blob_of(SNAPSHOT_CHUNK_BYTES + 1, seed=2), blob_of(1000, seed=3)
    await j.snapshot_put("s", Snapshot(5, old))
    reader = await j.snapshot_open("s")
    assert reader is not None
    await j.snapshot_put("s", Snapshot(9, new))  # renamed over the open file
    assert await read_all(reader) == old
    assert await j.snapshot_get("s") == Snapshot(9, new)
    await j.close()


async def test_local_failed_stream_keeps_the_previous_snapshot(tmp_path: Path) -> None:
    j = LocalJournal(str(tmp_path))
    await j.append("s", [b"e"] * 20)
    await j.snapshot_put("s", Snapshot(3, b"state@3"))

    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        await j.snapshot_put("s", SnapshotStream(8, broken()))
    assert await j.snapshot_get("s") == Snapshot(3, b"state@3")
    assert temporaries(tmp_path) == []
    await j.close()


async def test_local_corruption_is_detected_and_leftovers_removed(tmp_path: Path) -> None:
    j = LocalJournal(str(tmp_path))
    await j.append("s", [b"e"] * 20)
    data = blob_of(SNAPSHOT_CHUNK_BYTES + 5000, seed=4)
    await j.snapshot_put("s", Snapshot(7, data))
    await j.close()
    (snap,) = list(tmp_path.rglob(SNAPSHOT_FILE))
    with open(snap, "r+b") as f:  # flip one byte of the blob, in its second chunk
        f.seek(SNAPSHOT_HEADER.size + SNAPSHOT_CHUNK_BYTES + 10)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    (snap.parent / (SNAPSHOT_TMP_PREFIX + "left-by-a-crash")).write_bytes(b"partial")
    j = LocalJournal(str(tmp_path))
    reader = await j.snapshot_open("s")
    assert reader is not None
    assert temporaries(tmp_path) == []
    got = []
    with pytest.raises(JournalError, match="corrupt"):
        async for c in reader.chunks():
            got.append(c)
    assert len(got) == 2  # every chunk was handed out; the error comes before the caller could finish
    await reader.close()
    with pytest.raises(JournalError, match="corrupt"):
        await j.snapshot_get("s")
    await j.close()


# ------------------------------------------------------------ replicated


async def node_infos(cl: InProcessCluster, log: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for n in cl.nodes:
        c = NodeConnection(cl.addr(n), FRAME_BYTES_MAX)
        try:
            a = await c.call("snap_info", {"log": log}, 5.0)
            out[n] = None if a["position"] is None else (a["position"], a["size"], a["crc32"])
        finally:
            await c.close()
    return out


async def wait_all_hold(cl: InProcessCluster, log: str, position: int, timeout_s: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        infos = await node_infos(cl, log)
        if all(i is not None and i[0] == position for i in infos.values()):  # type: ignore[index]
            return infos
        assert time.monotonic() < deadline, infos
        await asyncio.sleep(0.1)


async def test_replicated_put_larger_than_a_frame(cluster: InProcessCluster) -> None:
    c = cluster.client(frame_bytes_max=FRAME_BYTES_MAX)
    await c.append("s", [b"e"] * 50)
    data = blob_of(3 * 1024 * 1024 + 17, seed=5)
    await c.snapshot_put("s", SnapshotStream(40, stream_of(data, 300_001)))
    reader = await c.snapshot_open("s")
    assert reader is not None and (reader.position, reader.size_bytes) == (40, len(data))
    chunks = [x async for x in reader.chunks()]
    assert max(len(x) for x in chunks) <= FRAME_BYTES_MAX // 2 and len(chunks) > 20
    assert b"".join(chunks) == data
    infos = await wait_all_hold(cluster, "s", 40)  # the third node got it too, after the quorum
    assert len(set(infos.values())) == 1
    assert temporaries(cluster.base) == []
    # Small snapshots still go through the same calls.
    await c.snapshot_put("s", Snapshot(45, b"state@45"))
    assert await c.snapshot_get("s") == Snapshot(45, b"state@45")
    await c.snapshot_put("s", Snapshot(41, b"older"))  # ignored
    assert await c.snapshot_get("s") == Snapshot(45, b"state@45")
    await c.close()


async def test_a_follower_down_during_the_put_gets_it_when_back(cluster: InProcessCluster) -> None:
    c = cluster.client(frame_bytes_max=FRAME_BYTES_MAX)
    await c.append("s", [b"e"] * 10)
    leader = await cluster.leader("s")
    follower = next(n for n in cluster.ids if n != leader)
    await cluster.stop(follower)
    data = blob_of(1024 * 1024 + 3, seed=6)
    await c.snapshot_put("s", Snapshot(9, data))  # two of three nodes in two AZs: durable
    await cluster.start(follower)
    infos = await wait_all_hold(cluster, "s", 9)  # pushed to it in the background
    assert len(set(infos.values())) == 1
    # With the leader gone, the two others (one of them the late follower) still serve it.
    await cluster.stop(leader)
    assert await c.snapshot_get("s") == Snapshot(9, data)
    await c.close()


async def test_upload_restarts_at_a_new_leader(cluster: InProcessCluster) -> None:
    c = cluster.client(frame_bytes_max=64 * 1024)
    await c.append("s", [b"e"] * 10)
    leader = await cluster.leader("s")
    data = blob_of(6 * 1024 * 1024, seed=7)
    put = asyncio.create_task(c.snapshot_put("s", Snapshot(8, data)))
    node = cluster.nodes[leader]
    deadline = time.monotonic() + 20
    while not any(u.writer.size_bytes > 0 for u in node.snapshots._uploads.values()):
        assert time.monotonic() < deadline and not put.done()
        await asyncio.sleep(0.01)
    await cluster.stop(leader)  # mid-upload: the next leader has no such upload
    await asyncio.wait_for(put, 60)
    assert await c.snapshot_get("s") == Snapshot(8, data)
    assert temporaries(cluster.base / leader) == []  # its partial file was removed at close
    await c.close()


async def test_chunks_resume_by_offset_and_bad_uploads_are_refused(cluster: InProcessCluster) -> None:
    c = JournalClient([cluster.addr(n) for n in cluster.ids])
    await c.append("s", [b"e"] * 10)
    await c.close()
    leader = await cluster.leader("s")
    conn = NodeConnection(cluster.addr(leader), FRAME_BYTES_MAX)
    data = b"0123456789" * 1000
    try:
        import zlib

        begin = {"log": "s", "position": 5, "size": len(data), "crc32": zlib.crc32(data)}
        uid = (await conn.call("snap_begin", begin, 5.0))["upload"]
        half = len(data) // 2
        for _ in range(2):  # the same chunk twice (its first answer lost): written once
            a = await conn.call("snap_chunk", {"log": "s", "upload": uid, "offset": 0, "data": data[:half]}, 5.0)
            assert a["received"] == half
        a = await conn.call("snap_chunk", {"log": "s", "upload": uid, "offset": 9000, "data": b"x"}, 5.0)
        assert a["received"] == half  # a gap is not written: the client goes on from `received`
        await conn.call("snap_chunk", {"log": "s", "upload": uid, "offset": half, "data": data[half:]}, 5.0)
        deadline = time.monotonic() + 20
        while not (await conn.call("snap_commit", {"log": "s", "upload": uid}, 5.0))["done"]:
            assert time.monotonic() < deadline
        with pytest.raises(RemoteError) as e:
            await conn.call("snap_chunk", {"log": "s", "upload": 12345, "offset": 0, "data": b"x"}, 5.0)
        assert e.value.code == "unknown_upload"
        # A wrong CRC is refused at commit and leaves the stored snapshot alone.
        bad = {"log": "s", "position": 6, "size": 3, "crc32": 0}
        uid = (await conn.call("snap_begin", bad, 5.0))["upload"]
        await conn.call("snap_chunk", {"log": "s", "upload": uid, "offset": 0, "data": b"abc"}, 5.0)
        with pytest.raises(RemoteError) as e:
            await conn.call("snap_commit", {"log": "s", "upload": uid}, 5.0)
        assert e.value.code == "invalid"
    finally:
        await conn.close()
    c = cluster.client()
    assert await c.snapshot_get("s") == Snapshot(5, data)
    await c.close()
    assert temporaries(cluster.base) == []
