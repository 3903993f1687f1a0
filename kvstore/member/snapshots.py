"""Snapshot streams of the member: produced on the event loop in time slices; installed from a thread."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator

# The longest a snapshot stream holds the event loop at a time (then every ready request runs first).
SNAPSHOT_SLICE_S = 0.002
# The pause after a slice while requests wait for the applier (a linearizable read waits for the
# committed entries to be applied): applying, which pauses 1 ms between its parts, goes first.
SNAPSHOT_WAITERS_PAUSE_S = 0.005
# Bytes of one item of the stream produced on the loop: packing and copying one is a single call,
# which took up to 6 ms here for the 1 MiB of kvstore/mvcc/snapshot.py's default.
SNAPSHOT_ITEM_BYTES = 256 * 1024


async def on_loop(
    chunks: Generator[bytes, None, None], done: Callable[[], None], waiters: Callable[[], bool] = lambda: False
) -> AsyncIterator[bytes]:
    """A snapshot generator's chunks (kvstore/mvcc/snapshot.py: empty ones between its steps) produced
    on the event loop in slices of SNAPSHOT_SLICE_S, SNAPSHOT_WAITERS_PAUSE_S apart while waiters()
    (requests wait for the applier); done() once it is closed.

    Not in a thread: the walk is Python that holds the GIL, so a thread took up to half of the
    interpreter from a busy loop (when no core was spare), and each of the loop's returns from I/O
    waited for the GIL up to the switch interval (5 ms). Here it is one more task, which gives the
    loop back after every slice: at idle it runs nearly flat out, under load it gets a slice per
    turn of the loop."""
    try:
        slice_end = time.perf_counter() + SNAPSHOT_SLICE_S
        for chunk in chunks:
            if chunk:
                yield chunk
            if time.perf_counter() >= slice_end:
                await asyncio.sleep(SNAPSHOT_WAITERS_PAUSE_S if waiters() else 0)
                slice_end = time.perf_counter() + SNAPSHOT_SLICE_S
    finally:
        chunks.close()
        done()


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
