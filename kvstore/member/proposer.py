"""The proposer: requests become journal entries, sent in batches, answered when applied.

Proposals made in the same event-loop turn go out as one append (the journal
groups concurrent appends into one fsync). Each waits for the applier to reach
its entry: the applier hands the result computed there to `resolve` when the
entry's origin is this process.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from journal.api import JournalError
from kvstore import errors
from kvstore.auth.store import AuthInfo
from kvstore.errors import EtcdError, fail
from kvstore.member.config import (
    PENDING_PROPOSALS_MAX,
    PROPOSAL_APPENDS_INFLIGHT_MAX,
    PROPOSAL_BATCH_ENTRIES_MAX,
    PROPOSAL_HOLD_S_MAX,
)
from kvstore.statemachine import Kind, encode_entry

log = logging.getLogger("kvstore.member")


class Appends(Protocol):
    """Where proposals go: the journal, or in a front end the member's journal path."""

    async def append(self, log: str, entries: Sequence[bytes]) -> Any: ...


class Proposer:
    def __init__(
        self,
        journal: Appends,
        log_name: str,
        *,
        timer: Callable[[], AbstractContextManager[Any]],
        on_contact: Callable[[], None],
        counters: dict[str, int],
        log_fields: Callable[[], dict[str, Any]],
        pending_max: int = PENDING_PROPOSALS_MAX,
    ) -> None:
        self.journal = journal
        self.pending_max = pending_max  # proposals awaiting their result; beyond it "too many requests
        self.log_name = log_name
        # Identifies this process's proposals in the journal; new per start so a
        # replayed entry from an earlier incarnation never resolves a new request.
        self.origin = random.getrandbits(62) | 1
        self._timer = timer
        self._on_contact = on_contact
        self._counters = counters
        self._log_fields = log_fields
        self._seq = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self._outbox: list[tuple[int, bytes]] = []
        self._flush_scheduled = False
        self._appends_inflight = 0
        # A journal may say that more appends in flight gain nothing (the local journal: one writer).
        self._appends_inflight_max = int(getattr(journal, "appends_in_flight_useful", PROPOSAL_APPENDS_INFLIGHT_MAX))
        self._hold_timer: asyncio.TimerHandle | None = None
        self.stopping = False

    async def propose_payload(self, kind: Kind, payload: bytes, auth: AuthInfo | None = None) -> Any:
        if len(self.pending) >= self.pending_max:
            raise fail(errors.TOO_MANY_REQUESTS)
        if self.stopping:
            raise fail(errors.STOPPED)
        seq = next(self._seq)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[seq] = fut
        self._outbox.append((seq, encode_entry(kind, self.origin, seq, payload, auth)))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        result = await fut
        if isinstance(result, EtcdError):
            raise result
        return result

    def resolve(self, seq: int, result: Any) -> None:
        """The applier applied our entry `seq`: answer the request waiting for it."""
        fut = self.pending.pop(seq, None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    def stop(self) -> None:
        self.stopping = True
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(fail(errors.STOPPED))

    def _flush(self) -> None:
        """Send the proposals queued in this loop iteration, or while the appends in flight were
        out, as one append (group commit starts here)."""
        self._flush_scheduled = False
        self._send_outbox()

    def _send_outbox(self, *, capped: bool = True) -> None:
        while self._outbox and (not capped or self._appends_inflight < self._appends_inflight_max):
            batch = self._outbox[:PROPOSAL_BATCH_ENTRIES_MAX]
            del self._outbox[:PROPOSAL_BATCH_ENTRIES_MAX]
            self._appends_inflight += 1
            asyncio.get_running_loop().create_task(self._append(batch))
        if self._outbox and self._hold_timer is None:
            self._hold_timer = asyncio.get_running_loop().call_later(PROPOSAL_HOLD_S_MAX, self._send_held)

    def _send_held(self) -> None:
        self._hold_timer = None
        if not self.stopping:
            self._send_outbox(capped=False)  # held too long: out now, whatever is in flight

    async def _append(self, batch: list[tuple[int, bytes]]) -> None:
        try:
            with self._timer():
                await self.journal.append(self.log_name, [data for _, data in batch])
                self._on_contact()
            self._counters["proposals_committed"] += len(batch)
        except (JournalError, OSError) as exc:
            log.warning("journal append failed: %s", exc, extra=self._log_fields())
            self._counters["proposals_failed"] += len(batch)
            for seq, _ in batch:
                self.resolve(seq, fail(errors.TIMEOUT))
        finally:
            self._appends_inflight -= 1
            if not self.stopping:
                self._flush()  # what queued behind this append goes out now
