"""One log's flood does not starve the others, in the local journal and on a journal node's peer links."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from journal.local import LocalJournal
from journal.peer_link import PEER_SOCKET_BYTES_MAX, PeerLink, PeerSpec
from journal.wire import FrameDecoder, encode_frame

FRAME_BYTES = 64 * 1024


async def test_a_busy_shared_thread_pool_does_not_stall_a_logs_commits(tmp_path: Path) -> None:
    """Each log writes and fsyncs on its own thread: work stuck in the shared pool (another log's
    slow disk reads, snapshot files) cannot hold back a commit."""
    j = LocalJournal(str(tmp_path))
    await j.append("leases", [b"open"])
    release = threading.Event()
    loop = asyncio.get_running_loop()
    stuck = [loop.run_in_executor(None, release.wait) for _ in range(64)]  # every worker of the default pool
    try:
        appended = await asyncio.wait_for(j.append("leases", [b"renew"]), 30)
        assert appended[0].position == 2
    finally:
        release.set()
        await asyncio.gather(*stuck)
        await j.close()


async def test_a_log_queue_is_bounded_in_bytes(tmp_path: Path) -> None:
    j = LocalJournal(str(tmp_path), fsync="never", queue_bytes_max=4 * FRAME_BYTES)
    big = b"x" * FRAME_BYTES
    results = await asyncio.gather(*(j.append("events", [big]) for _ in range(64)), j.append("leases", [b"r"]))
    assert sorted(r[0].position for r in results[:-1]) == list(range(1, 65))
    assert results[-1][0].position == 1
    await j.close()


async def test_peer_link_sends_other_logs_frames_between_a_flooding_logs_frames() -> None:
    """A flood of one log's Appends to a slow peer queues in that log's backlog; another log's
    frame goes out on the next turn instead of behind the whole flood."""
    received: list[str] = []
    go = asyncio.Event()
    done = asyncio.Event()
    total = 400

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await go.wait()  # a slow peer: nothing is read until every frame was sent
        decoder = FrameDecoder()
        while len(received) < total + 1:
            data = await reader.read(1 << 20)
            if not data:
                break
            decoder.feed(data)
            received.extend(str(p["log"]) for _, p in decoder.frames())
        done.set()
        writer.close()

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = PeerLink(PeerSpec("b", "b", f"127.0.0.1:{port}"), "a", silence_ms_max=10_000)
    _, link.writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        blob = b"e" * FRAME_BYTES
        for _ in range(total):
            link.send(encode_frame("raft", {"log": "events", "m": blob}), "events")
        backlogged = sum(len(q) for q in link.backlog.values())
        assert backlogged > 0, "the flood must exceed what the socket takes"
        assert link.writer.transport.get_write_buffer_size() <= PEER_SOCKET_BYTES_MAX + 2 * FRAME_BYTES
        link.send(encode_frame("raft", {"log": "leases", "m": b"heartbeat"}), "leases")
        go.set()
        await asyncio.wait_for(done.wait(), 60)
        assert received.count("events") == total and link.dropped == 0
        written_directly = total - backlogged
        # The leases frame went out in the first round-robin turn, not after the whole backlog.
        assert received.index("leases") <= written_directly + 1, (received.index("leases"), written_directly)
    finally:
        link.writer.close()
        server.close()
