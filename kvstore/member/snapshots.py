"""Snapshot streams that cross between the event loop and a thread."""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import AsyncIterator, Iterator


class ThreadQueueChunks:
    """Chunks of an async iterator handed to a thread through a bounded queue."""

    _END = b""
    QUEUE_CHUNKS_MAX = 4

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(self.QUEUE_CHUNKS_MAX)
        self._closed = False

    def close(self) -> None:
        """The reader is done (or failed): unblock and stop the feeder."""
        self._closed = True
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()

    async def feed(self, source: AsyncIterator[bytes]) -> None:
        try:
            async for chunk in source:
                if self._closed:
                    return
                if chunk:
                    await asyncio.to_thread(self._queue.put, chunk)
            await asyncio.to_thread(self._queue.put, self._END)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the thread sees the source's failure
            await asyncio.to_thread(self._queue.put, exc)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if item == self._END:
                return
            yield item
