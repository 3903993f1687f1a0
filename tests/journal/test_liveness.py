"""Bounded detection of silent connections (issue 10): a node that accepts but never answers.

A SIGSTOPped process or a cut-off host looks like this to its peers: the
kernel (or nobody) holds the connection open and nothing comes back. These
tests use a server that accepts and reads but never writes, and check that
each kind of connection gives up on it by itself (with an error that makes
the caller go elsewhere), rather than waiting for TCP or the request timeout.
The outer asyncio timeouts only keep a broken build from hanging the suite.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from journal.api import Unavailable
from journal.client import DEDUP_WINDOW, JournalClient
from journal.connection import NodeConnection, SilentConnection, UnreachableNode, open_connection, read_or_silent
from journal.peer_link import PeerLink, PeerSpec
from journal.wire import FrameDecoder, encode_frame
from tests.journal.cluster import InProcessCluster

HANG_GUARD_S = 30.0


class SilentServer:
    """Accepts connections and swallows everything: a frozen node."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        while await reader.read(65536):
            pass

    @property
    def addr(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"


@pytest.fixture
async def silent() -> AsyncIterator[SilentServer]:
    s = SilentServer()
    s.server = await asyncio.start_server(s._handle, "127.0.0.1", 0)
    yield s
    for w in s.writers:
        w.close()
    s.server.close()


async def test_unary_call_to_a_silent_node_fails_with_a_connection_error(silent: SilentServer) -> None:
    conn = NodeConnection(silent.addr, 1 << 20, liveness_timeout_ms=300)
    try:
        async with asyncio.timeout(HANG_GUARD_S):
            with pytest.raises(ConnectionError, match="silent"):
                await conn.call("barrier", {"log": "x"}, timeout_s=60.0)  # far beyond the liveness timeout
    finally:
        await conn.close()


async def test_read_stream_from_a_silent_node_reconnects(silent: SilentServer) -> None:
    client = JournalClient(
        [silent.addr], request_timeout_ms=2000, rpc_timeout_ms=500, liveness_timeout_ms=300, read_from="any"
    )
    try:
        async with asyncio.timeout(HANG_GUARD_S):
            with pytest.raises(Unavailable):
                async for _ in client.read("x", 1):
                    pass
        assert silent.connections >= 2, "the read stream never gave up on the silent node"
    finally:
        await client.close()


async def test_peer_link_to_a_silent_node_reconnects(silent: SilentServer) -> None:
    link = PeerLink(PeerSpec("b", "b", silent.addr), "a", silence_ms_max=200)
    task = asyncio.create_task(link.run())
    try:
        async with asyncio.timeout(HANG_GUARD_S):
            while link.reconnects < 2:
                await asyncio.sleep(0.05)
        assert silent.connections >= 2
    finally:
        link.closed = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_idle_read_stream_gets_heartbeats_and_a_redirect_off_a_follower(tmp_path: Path) -> None:
    cluster = InProcessCluster(tmp_path)
    await cluster.start()
    client = cluster.client()
    try:
        await client.append("h", [b"one"])
        leader = await cluster.leader("h")
        host, port = cluster.addr(leader).split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(encode_frame("read", {"id": 7, "log": "h", "from": 2, "leader_only": True}))
        decoder = FrameDecoder()
        frames: list[tuple[str, dict[str, object]]] = []
        async with asyncio.timeout(HANG_GUARD_S):
            while len(frames) < 3:
                decoder.feed(await reader.read(65536))
                frames.extend(decoder.frames())
        assert all(k == "entries" and p["entries"] == [] and p["id"] == 7 for k, p in frames[:3]), frames
        writer.close()
        # A leader-only stream on a follower that is caught up is sent on at once.
        follower = next(n for n in cluster.ids if n != leader)
        host, port = cluster.addr(follower).split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(encode_frame("read", {"id": 8, "log": "h", "from": 2, "leader_only": True}))
        decoder = FrameDecoder()
        async with asyncio.timeout(HANG_GUARD_S):
            got: list[tuple[str, dict[str, object]]] = []
            while not got:
                decoder.feed(await reader.read(65536))
                got.extend(decoder.frames())
        assert got[0][0] == "error" and got[0][1]["code"] == "not_leader", got
        assert got[0][1]["message"] == f"{follower} does not lead 'h'"  # the reason once, not three times
        writer.close()
    finally:
        await client.close()
        await cluster.close()


async def test_sequence_numbers_stay_within_the_dedup_window() -> None:
    client = JournalClient(["127.0.0.1:1"])
    first = await client._take_seq()
    for _ in range(DEDUP_WINDOW - 1):  # up to first + DEDUP_WINDOW - 1
        await client._take_seq()
    blocked = asyncio.create_task(client._take_seq())
    await asyncio.sleep(0.05)
    assert not blocked.done(), "a request started past the dedup window of an unanswered one"
    client._answered(first)
    async with asyncio.timeout(HANG_GUARD_S):
        assert await blocked == first + DEDUP_WINDOW
    await client.close()


async def test_own_pause_is_not_taken_for_the_peers_silence() -> None:
    """After this process was paused (here: the event loop blocked for longer than the silence
    deadline), what the peer sent meanwhile is read instead of declaring the peer silent."""

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.05)

    server = await asyncio.start_server(chatty, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        assert await read_or_silent(reader, 65536, 0.6, "chatty")  # drained: the next read needs new bytes
        asyncio.get_running_loop().call_soon(time.sleep, 1.5)  # the whole process stalls
        async with asyncio.timeout(HANG_GUARD_S):
            for _ in range(3):
                assert await read_or_silent(reader, 65536, 0.6, "chatty")
        with pytest.raises(SilentConnection):
            silent_reader = asyncio.StreamReader()  # nothing ever comes
            await read_or_silent(silent_reader, 1, 0.6, "mute")
    finally:
        writer.close()
        server.close()


class UnansweredConnects:
    """asyncio.open_connection whose first ``lost`` calls never complete (SYNs lost in a cut)."""

    def __init__(self, lost: int) -> None:
        self.lost = lost
        self.calls = 0
        self.hung: list[asyncio.Future[None]] = []
        self.real = asyncio.open_connection

    async def __call__(self, host: str, port: int, **kw: object) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.calls += 1
        if self.calls <= self.lost:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.hung.append(fut)
            await fut  # until cancelled
        return await self.real(host, port, **kw)  # type: ignore[arg-type]


async def test_a_connect_left_unanswered_is_retried_with_a_new_attempt(
    silent: SilentServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a cut heals, a connect that started during it does not wait for the kernel's
    1 s SYN retransmission: a new attempt got through, the unanswered one is cancelled."""
    fake = UnansweredConnects(lost=1)
    monkeypatch.setattr(asyncio, "open_connection", fake)
    _, writer = await asyncio.wait_for(open_connection(silent.addr, HANG_GUARD_S, None), HANG_GUARD_S)
    assert fake.calls == 2
    await asyncio.sleep(0)
    assert all(f.cancelled() for f in fake.hung)
    writer.close()


async def test_a_connect_never_answered_is_an_unreachable_node(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = UnansweredConnects(lost=1_000)
    monkeypatch.setattr(asyncio, "open_connection", fake)
    with pytest.raises(UnreachableNode):
        await asyncio.wait_for(open_connection("127.0.0.1:1", 0.6, None), HANG_GUARD_S)
    await asyncio.sleep(0)
    assert fake.hung and all(f.cancelled() for f in fake.hung), "no attempt left behind"


async def test_a_refused_connect_fails_at_once() -> None:
    s = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = s.sockets[0].getsockname()[1]
    s.close()
    await s.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        # A refusal is an answer: not retried until the deadline, not an UnreachableNode.
        await asyncio.wait_for(open_connection(f"127.0.0.1:{port}", HANG_GUARD_S, None), HANG_GUARD_S)


async def test_a_name_that_does_not_resolve_leaves_the_other_nodes_reachable(
    silent: SilentServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped container's name resolves slowly, then not at all (Docker's DNS asks upstream).
    Connects to it, retried by every stream and probe, share one lookup at a time: they do not
    fill the loop's few resolver threads, so a live node's name still resolves and connects at
    once (it once cost a member every journal node for minutes: tests/docker)."""
    real = socket.getaddrinfo
    dead_lookups = []

    def getaddrinfo(host: str, *args: Any, **kw: Any) -> Any:
        if host == "gone.example":
            dead_lookups.append(host)
            time.sleep(1.5)  # in an executor thread, as a real slow lookup
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real("127.0.0.1" if host == "alive.example" else host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    port = silent.addr.rpartition(":")[2]
    dead = [asyncio.create_task(open_connection("gone.example:7000", 1.0, None)) for _ in range(8)]
    await asyncio.sleep(0.3)  # the dead name's lookups (and their retried attempts) under way
    # within the liveness timeout, or UnreachableNode
    _, writer = await asyncio.wait_for(open_connection(f"alive.example:{port}", 1.0, None), HANG_GUARD_S)
    writer.close()
    for task in dead:
        with pytest.raises(UnreachableNode):
            await asyncio.wait_for(task, HANG_GUARD_S)
    assert dead_lookups == ["gone.example"], "one lookup shared by every connect to the name"
