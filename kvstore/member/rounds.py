"""Shared rounds: one call of an awaitable answers every caller that arrived before it began.

Linearizable reads need a position the journal has committed *after* the read
arrived. A round that is already running began too early for a newcomer, so the
newcomer joins the next round, which starts as soon as the running one ends: at
most one round runs at a time, and each answers everyone who was waiting for it.
The member shares journal barriers this way; each front end shares its barrier
requests to the member the same way (kvstore/workers/notify.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class SharedRounds:
    def __init__(self, fetch: Callable[[], Awaitable[int]]) -> None:
        self._fetch = fetch
        self._next: asyncio.Future[int] | None = None
        self._task: asyncio.Task[None] | None = None

    async def next(self) -> int:
        """The answer of a round that begins after this call (its exception, if it fails;
        CancelledError if the rounds' task is cancelled). A caller's deadline is its own: the
        round goes on for the others, and its outcome is taken even if nobody is left."""
        loop = asyncio.get_running_loop()
        if self._next is None:
            self._next = loop.create_future()
        fut = self._next
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._rounds())
        return await asyncio.shield(fut)

    async def _rounds(self) -> None:
        fut: asyncio.Future[int] | None = None
        try:
            while self._next is not None:
                fut = self._next
                self._next = None
                try:
                    result = await self._fetch()
                except Exception as exc:
                    fut.set_exception(exc)
                    # Its waiters may all have left (their deadlines passed, they were cancelled):
                    # a waiter's shield then no longer watches the round, so mark the outcome
                    # taken here, or the loop reports "Future exception was never retrieved".
                    fut.exception()
                else:
                    fut.set_result(result)
                fut = None
        finally:
            # Cancelled mid-round (the loop shutting down): no later round answers these waiters.
            for left in (fut, self._next):
                if left is not None and not left.done():
                    left.cancel()
            self._next = None
