"""Frames written to one connection in one event-loop turn go out in one write.

A leader answering a group of appends it committed together, or a client sending the appends of
many concurrent callers, would otherwise make one send(2) per frame; on loopback and in VMs each
of those costs tens of µs of kernel time (the peer's receive path runs in the sender's syscall).
Order is kept: every frame of the connection goes through the same FrameOut.
"""

from __future__ import annotations

import asyncio

FLUSH_BYTES_MIN = 256 * 1024  # pending bytes that go out at once, without waiting for the turn's end


class FrameOut:
    """Buffered frames of one StreamWriter, written together at the end of the loop turn."""

    __slots__ = ("_pending", "_pending_bytes", "_scheduled", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._scheduled = False

    def write(self, frame: bytes) -> None:
        """Queue a frame (ConnectionError if the connection is closing). The caller's drain() sees
        the bytes once they are flushed: at most FLUSH_BYTES_MIN are held back."""
        if self.writer.is_closing():
            raise ConnectionError("connection closed")
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        if self._pending_bytes >= FLUSH_BYTES_MIN:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if self.writer.is_closing():
            return  # the connection went away: its reader fails whatever waited for an answer
        try:
            self.writer.write(data)
        except RuntimeError:  # uvloop, on a transport closed under us
            pass
