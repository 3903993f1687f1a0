"""A journal node's outbound link to one peer: frames out, the peer's heartbeats in."""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from dataclasses import dataclass

from journal.connection import SilentConnection, open_connection, read_or_silent, set_liveness_options
from journal.wire import encode_frame

log = logging.getLogger(__name__)

# Unsent bytes in the socket to one peer before frames wait in per-log backlogs
# (drained round-robin, so every log gets its turn on the shared connection).
PEER_SOCKET_BYTES_MAX = 2 * 1024 * 1024
# Backlogged bytes of one log to one peer before that log's frames are dropped.
# The core's flow control bounds what is in flight per log (inflight_appends_max
# Appends of at most append_bytes_max), so in practice only a stuck peer loses
# frames. A dropped Append costs a Raft retransmission round for that log.
PEER_LOG_BACKLOG_BYTES_MAX = 80 * 1024 * 1024
PEER_BACKOFF_MS_MAX = 200  # reconnect soon after a cut heals (attempts are bounded by the silence deadline)


@dataclass(frozen=True, slots=True)
class PeerSpec:
    node_id: str
    az: str
    addr: str


class PeerLink:
    """Outbound frames to one peer, written straight to the socket while it has room.

    Frames are written at once (no queue, no task hop: a leader's appends
    leave before its own fsync starts) while the socket buffer holds at most
    PEER_SOCKET_BYTES_MAX. Beyond that they wait in one bounded backlog per
    log, which a pump drains round-robin, one frame per log per turn, as the
    socket drains: a flood of one log's Appends cannot queue another log's
    heartbeats and Appends behind it (fair batching), and a log over its
    backlog bound (PEER_LOG_BACKLOG_BYTES_MAX) loses only its own frames.
    Frames are dropped while the peer is disconnected (Raft retransmits).
    """

    def __init__(
        self, spec: PeerSpec, node_id: str, silence_ms_max: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.spec = spec
        self.node_id = node_id
        # The peer writes a heartbeat frame on this connection every HEARTBEAT_MS;
        # silence past this (the longest election timeout) means the connection is
        # dead even if TCP has not noticed: reconnect instead of waiting for TCP's
        # retransmission back-off (about 11 s after a 15 s cut).
        self.silence_s_max = silence_ms_max / 1000
        self.reconnects = 0
        self.ssl_context = ssl_context
        self.writer: asyncio.StreamWriter | None = None
        self.dropped = 0
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        self.backlog: dict[str, collections.deque[bytes]] = {}  # per log, in order; insertion order = turns
        self.backlog_bytes: dict[str, int] = {}
        self.pump: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.writer is not None

    def send(self, frame: bytes, log: str = "") -> None:
        w = self.writer
        if w is None or w.is_closing():
            self.dropped += 1
            return
        if not self.backlog and w.transport.get_write_buffer_size() <= PEER_SOCKET_BYTES_MAX:
            try:
                w.write(frame)
            except RuntimeError:  # uvloop, on a transport closed under us
                self.dropped += 1
            return
        queued = self.backlog_bytes.get(log, 0)
        if queued + len(frame) > PEER_LOG_BACKLOG_BYTES_MAX:
            self.dropped += 1
            return
        self.backlog.setdefault(log, collections.deque()).append(frame)
        self.backlog_bytes[log] = queued + len(frame)
        if self.pump is None:
            self.pump = asyncio.get_running_loop().create_task(self._pump(w))

    async def _pump(self, w: asyncio.StreamWriter) -> None:
        """Drain the per-log backlogs into the socket, one frame per log per turn."""
        try:
            w.transport.set_write_buffer_limits(high=PEER_SOCKET_BYTES_MAX)
            while self.backlog and self.writer is w and not w.is_closing():
                await w.drain()  # returns once the socket buffer is below its low-water mark
                while self.backlog and w.transport.get_write_buffer_size() <= PEER_SOCKET_BYTES_MAX:
                    for log in list(self.backlog):
                        q = self.backlog[log]
                        frame = q.popleft()
                        self.backlog_bytes[log] -= len(frame)
                        if not q:
                            del self.backlog[log], self.backlog_bytes[log]
                        w.write(frame)
        except (OSError, ConnectionError, RuntimeError):
            pass  # the connection went away; run() reconnects
        finally:
            self.pump = None
            if self.backlog and (self.writer is not w or w.is_closing()):
                self.dropped += sum(len(q) for q in self.backlog.values())
                self.backlog.clear()
                self.backlog_bytes.clear()

    async def run(self) -> None:
        backoff_ms = 20
        while not self.closed:
            writer: asyncio.StreamWriter | None = None
            try:
                reader, writer = await open_connection(self.spec.addr, self.silence_s_max, self.ssl_context)
                set_liveness_options(writer.get_extra_info("socket"), int(self.silence_s_max * 1000))
                writer.write(encode_frame("hello", {"node": self.node_id}))
                # The peer writes only heartbeats on this connection: reading
                # notices when it goes away or goes silent. Frames go out only
                # once its first heartbeat came back: a frozen peer's kernel
                # accepts connections, and what it buffered would be a flood of
                # stale messages for it to work through when it resumes.
                while not self.closed:
                    try:
                        data = await read_or_silent(reader, 4096, self.silence_s_max, f"peer {self.spec.node_id}")
                    except SilentConnection as e:
                        self.reconnects += 1
                        log.info("%s; reconnecting", e)
                        break
                    if not data:
                        break
                    if self.writer is None:
                        self.writer = writer
                        backoff_ms = 20
            except (OSError, TimeoutError, ConnectionError, RuntimeError) as e:
                # RuntimeError: uvloop's answer to a write on a closed transport.
                log.debug("peer %s: %s", self.spec.node_id, e)
            except Exception:
                log.exception("peer %s: link failed; reconnecting", self.spec.node_id)
            finally:
                self.writer = None
                if writer is not None:
                    writer.close()
            await asyncio.sleep(backoff_ms / 1000)
            backoff_ms = min(PEER_BACKOFF_MS_MAX, backoff_ms * 2)
