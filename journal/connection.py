"""A connection to one journal node: connecting and staying alive through cuts, freezes and
slow nodes (UnreachableNode, SilentConnection, SlowAnswer), and NodeConnection, which
multiplexes a client's requests on one TCP connection. journal.client routes over these.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import socket
import ssl
import weakref
from typing import Any

from journal.api import JournalError
from journal.frame_out import FrameOut
from journal.wire import FrameDecoder, ProtocolError, encode_frame

log = logging.getLogger(__name__)

# Liveness. A node's default election timeout is 10-20 ticks of 50 ms (0.5-1 s):
# a connection silent for longer than the longest one is treated as dead, so a
# client leaves a frozen or cut-off node about when the others have elected a
# new leader, instead of waiting on TCP (minutes) or the request timeout.
HEARTBEAT_MS = 200  # a node sends an empty batch on an idle read stream this often
LIVENESS_TIMEOUT_MS = 1000  # silence (no frame at all) after which a connection is dead
# While a connect goes unanswered a new attempt starts this often (open_connection):
# a node cut off and healed is connected to within about this much of the heal.
CONNECT_ATTEMPT_MS = 250


class SilentConnection(ConnectionError):
    """An established connection went silent past the liveness timeout: the node froze or
    was cut off (unlike a refused connect, which is answered at once and costs nothing)."""


class SlowAnswer(TimeoutError):
    """The request's deadline passed on a connection that is alive (the node answered a ping
    within the last two heartbeats): a slow node, not a gone one."""


class UnreachableNode(ConnectionError):
    """A connect got no answer within the liveness timeout: the node is cut off (a live
    node's kernel completes the handshake at once, however busy the process is). Each such
    attempt costs the whole timeout, so the node is tried last for a while (SUSPECT_MS)."""


# Name lookups in flight, per event loop: (host, port) -> the one getaddrinfo every connect to
# that address waits for (see _resolve).
_lookups: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Future[list[Any]]]
] = weakref.WeakKeyDictionary()


async def _resolve(host: str, port: int) -> list[str]:
    """host's addresses, in getaddrinfo's order, from one lookup shared by every concurrent caller.

    getaddrinfo runs in the loop's default executor (a few threads) and cannot be cancelled. The
    name of a stopped or cut-off container does not resolve, slowly (Docker's DNS asks upstream):
    when every connect attempt made its own lookup, the attempts to that node filled the
    executor and the lookups of the live nodes queued behind them, so their connects timed out
    too and the member lost the whole journal. One lookup per name at a time bounds that to a
    thread per dead name.
    """
    try:
        ipaddress.ip_address(host)
        return [host]  # a literal: nothing to look up
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    lookups = _lookups.setdefault(loop, {})
    lookup = lookups.get((host, port))
    if lookup is None:
        lookup = asyncio.ensure_future(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        lookups[(host, port)] = lookup

        def done(f: asyncio.Future[list[Any]]) -> None:
            lookups.pop((host, port), None)
            if not f.cancelled():
                f.exception()  # retrieved: a caller may have stopped waiting (its timeout)

        lookup.add_done_callback(done)
    infos = await asyncio.shield(lookup)  # a caller's timeout leaves the lookup to the others
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, f"no address for {host}")
    return addresses


async def _connect_first(
    addresses: list[str], port: int, ssl_context: ssl.SSLContext | None, server_hostname: str | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the first of addresses that accepts one (as asyncio does for a name)."""
    error: OSError | None = None
    for ip in addresses:
        try:
            return await asyncio.open_connection(ip, port, ssl=ssl_context, server_hostname=server_hostname)
        except OSError as e:
            error = e
    assert error is not None
    raise error


async def open_connection(
    addr: str, timeout_s: float, ssl_context: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio.open_connection to host:port, or UnreachableNode after timeout_s (the name lookup
    included) or when the name does not resolve.

    While no attempt has completed, a new one starts every CONNECT_ATTEMPT_MS (the
    earlier ones go on: a slow but live handshake still wins): a SYN lost in a cut
    is retransmitted by the kernel only 1 s later, so without them a connect that
    started during the cut would wait out that second after the heal. A refusal
    (or any other error) is answered at once and raised as it is.
    """
    host, port = parse_addr(addr)
    attempts: list[asyncio.Task[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = []
    try:
        async with asyncio.timeout(timeout_s):
            try:
                addresses = await _resolve(host, port)
            except socket.gaierror as e:  # gone from DNS (a stopped container): as good as cut off
                raise UnreachableNode(f"{addr}: name not resolved ({e})") from None
            # TLS still checks the certificate against the name, not the address
            server_hostname = host if ssl_context is not None else None
            while True:
                attempts.append(asyncio.create_task(_connect_first(addresses, port, ssl_context, server_hostname)))
                done, _ = await asyncio.wait(
                    attempts, timeout=CONNECT_ATTEMPT_MS / 1000, return_when=asyncio.FIRST_COMPLETED
                )
                for t in done:
                    attempts.remove(t)
                    return t.result()  # the connection, or the error it was answered with
    except TimeoutError:
        raise UnreachableNode(f"{addr}: no answer to connect in {timeout_s:.1f} s") from None
    finally:
        for t in attempts:
            t.cancel()
            t.add_done_callback(_close_if_connected)  # one may have connected meanwhile: do not leak it


def _close_if_connected(t: asyncio.Task[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    if not t.cancelled() and t.exception() is None:
        t.result()[1].close()


async def read_or_silent(reader: asyncio.StreamReader, n: int, silence_s: float | None, what: str) -> bytes:
    """reader.read(n), or SilentConnection after silence_s without a byte (None: wait forever).

    Silence is counted in steps of HEARTBEAT_MS, and a step that took far longer than
    asked (this process itself was paused: SIGSTOP, a long stall) counts as two steps at
    most, so that our own pause is not taken for the peer's silence: what it sent
    meanwhile is in the socket buffer, read at the next step.
    """
    if silence_s is None:
        return await reader.read(n)
    loop = asyncio.get_running_loop()
    step_s = HEARTBEAT_MS / 1000
    silent_s = 0.0
    while True:
        started = loop.time()
        try:
            return await asyncio.wait_for(reader.read(n), step_s)
        except TimeoutError:
            silent_s += min(loop.time() - started, 2 * step_s)
            if silent_s >= silence_s:
                raise SilentConnection(f"{what}: silent for {silent_s:.1f} s") from None


def set_liveness_options(sock: socket.socket | None, timeout_ms: int = LIVENESS_TIMEOUT_MS) -> None:
    """Keepalive and TCP_USER_TIMEOUT: the kernel gives up on a connection whose sent data
    stays unacknowledged (or whose keepalives go unanswered) for about timeout_ms, instead
    of backing off retransmissions for minutes. A complement to the frame-level deadlines."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    opts = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", 1), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 2),
                        ("TCP_USER_TIMEOUT", timeout_ms)):  # fmt: skip
        if hasattr(socket, name):
            opts.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, opt, value in opts:
        try:
            sock.setsockopt(level, opt, value)
        except OSError:
            pass  # not every platform has every option: the frame deadlines still hold


class RemoteError(JournalError):
    def __init__(self, code: str, message: str, leader: str = "", tail: int = 0, first: int = 0) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.leader = leader
        self.tail = tail
        self.first = first


def parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address must be host:port, not {addr!r}")
    return host, int(port)


class NodeConnection:
    """One TCP connection multiplexing unary requests by id."""

    def __init__(
        self,
        addr: str,
        frame_bytes_max: int,
        liveness_timeout_ms: int = LIVENESS_TIMEOUT_MS,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.addr = addr
        self.frame_bytes_max = frame_bytes_max
        self.liveness_timeout_s = liveness_timeout_ms / 1000
        self._last_recv = 0.0  # loop time of the last frame received
        self._last_ping = 0.0
        self.ssl_context = ssl_context  # TLS to the node (the --peer-* flags), None for plain TCP
        self._writer: asyncio.StreamWriter | None = None
        self._out: FrameOut | None = None  # the requests of one loop turn go out in one write
        self._reader_task: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[tuple[str, dict[str, Any]]]] = {}
        self._ids = itertools.count(1)
        self._connect_lock = asyncio.Lock()
        self.closed = False

    async def _ensure(self, timeout_s: float) -> asyncio.StreamWriter:
        async with self._connect_lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            reader, writer = await open_connection(
                self.addr, min(timeout_s, self.liveness_timeout_s), self.ssl_context
            )
            set_liveness_options(writer.get_extra_info("socket"), int(self.liveness_timeout_s * 1000))
            self._writer = writer
            self._out = FrameOut(writer)
            self._last_recv = asyncio.get_running_loop().time()
            self._reader_task = asyncio.create_task(self._read_loop(reader, writer))
            return writer

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder(self.frame_bytes_max)
        try:
            while True:
                data = await reader.read(256 * 1024)
                if not data:
                    break
                decoder.feed(data)
                self._last_recv = asyncio.get_running_loop().time()
                for kind, payload in decoder.frames():
                    fut = self._waiting.pop(payload.get("id", -1), None)
                    if fut is not None and not fut.done():
                        fut.set_result((kind, payload))
        except (OSError, ProtocolError) as e:
            log.debug("connection to %s: %s", self.addr, e)
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
            waiting, self._waiting = self._waiting, {}
            for fut in waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"connection to {self.addr} lost"))

    async def call(self, kind: str, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        rid = next(self._ids)
        payload["id"] = rid
        try:
            frame = encode_frame(kind, payload, self.frame_bytes_max)
        except ProtocolError as e:  # too big for any node: retrying cannot help
            raise ValueError(f"{kind}: {e}") from None
        writer = await self._ensure(timeout_s)
        out = self._frame_out(writer)
        fut: asyncio.Future[tuple[str, dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            if writer.is_closing():
                raise ConnectionError(f"connection to {self.addr} closed")
            out.write(frame)
            await writer.drain()
            rkind, rpayload = await self._wait_answer(writer, fut, timeout_s)
        finally:
            self._waiting.pop(rid, None)
        if rkind == "error":
            raise RemoteError(
                str(rpayload.get("code", "")),
                str(rpayload.get("message", "")),
                str(rpayload.get("leader", "") or ""),
                int(rpayload.get("tail", 0) or 0),
                int(rpayload.get("first", 0) or 0),
            )
        if rkind != "ok":
            raise ProtocolError(f"unexpected answer {rkind!r}")
        return rpayload

    def _frame_out(self, writer: asyncio.StreamWriter) -> FrameOut:
        """The FrameOut of writer: every frame of a connection goes through it, to keep their order."""
        out = self._out
        return out if out is not None and out.writer is writer else FrameOut(writer)

    async def _wait_answer(
        self, writer: asyncio.StreamWriter, fut: asyncio.Future[tuple[str, dict[str, Any]]], timeout_s: float
    ) -> tuple[str, dict[str, Any]]:
        """Wait for one answer; declare the connection dead if it stays silent past the liveness timeout.

        A slow answer is fine as long as the node shows it is alive: after a
        heartbeat interval of silence the client sends a ping, which a live
        node answers at once (even an old one, with an error). A frozen or
        cut-off node answers nothing, and every request waiting on it fails
        after liveness_timeout_s with ConnectionError (then retried elsewhere).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        heartbeat_s = HEARTBEAT_MS / 1000
        seen = self._last_recv
        silent_s = 0.0  # counted as in read_or_silent: our own pause is not the node's silence
        while True:
            now = loop.time()
            if now >= deadline:
                if self._last_recv != seen or silent_s < 2 * heartbeat_s:
                    raise SlowAnswer(f"no answer from {self.addr} in {timeout_s:.1f} s (it answers pings)")
                raise TimeoutError(f"no answer from {self.addr} in {timeout_s:.1f} s")
            if self._last_recv != seen:
                seen, silent_s = self._last_recv, 0.0
            if silent_s >= self.liveness_timeout_s:
                writer.close()  # the read loop then fails everything waiting here
                raise SilentConnection(f"{self.addr} silent for {silent_s:.1f} s")
            if silent_s >= heartbeat_s and now - self._last_ping >= heartbeat_s:
                self._last_ping = now
                with contextlib.suppress(RuntimeError, OSError, ProtocolError, ConnectionError):
                    self._frame_out(writer).write(encode_frame("ping", {"id": 0}))
            step_s = min(heartbeat_s, deadline - now)
            try:
                return await asyncio.wait_for(asyncio.shield(fut), step_s)
            except TimeoutError:
                silent_s += min(loop.time() - now, 2 * step_s)

    async def close(self) -> None:
        self.closed = True
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            try:
                await self._reader_task
            except BaseException:
                pass  # it was cancelled or failed: either way it is gone
