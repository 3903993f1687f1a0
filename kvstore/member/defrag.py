"""Defragment: a compacting copy of the state file replaces it while the member keeps applying.

`defragment(member)` is the member's (etcd's Maintenance.Defragment); `apply_to`
applies the journal to a state machine that is not the member's (the copy).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from journal.api import PositionTrimmed
from kvstore.member.config import (
    APPLY_BATCH_BYTES_MAX,
    APPLY_PAUSE_S,
    DEFRAG_CATCH_UP_ROUNDS_MAX,
    DEFRAG_LOCKED_CATCH_UP_ENTRIES_MAX,
    FAULT_GATE_POLL_S,
    batch_parts,
)
from kvstore.mvcc.backend import Backend, remove_state_file
from kvstore.statemachine import StateMachine

if TYPE_CHECKING:
    from kvstore.member.core import Member

log = logging.getLogger("kvstore.member")


async def defragment(member: Member) -> None:
    """etcd's defragment: a compacting copy of the file replaces it (the tmpfs file shrinks to
    the pages in use). The copy runs in a thread while the member goes on applying and
    serving; the entries applied meanwhile are then applied to the copy as well (it knows the
    position it was copied at, and applying is deterministic), and only the last of that
    catch-up and the swap hold up applying: never the copy (631 ms at 2.8 GiB)."""
    steps = _Steps()
    async with member._defrag_lock:
        backend = member.sm.backend
        tmp = backend.swap_path("defrag")
        try:
            await asyncio.to_thread(backend.compact_copy, tmp)
            steps.done("copy")
            if member._fault_defrag_gate:
                await _held_at_gate(member._fault_defrag_gate)
            copy = StateMachine(Backend(tmp, map_size=member._map_size))
            copied_at = copy.applied_position
            steps.done("open")
            try:
                if await _catch_up(member, copy, backend):
                    steps.done("catch-up")
                    cleanup = await _swap(member, copy, backend, tmp, steps)
                else:  # the journal moved past the copy (trimmed, a snapshot installed): copy again
                    cleanup = None
            finally:
                copy.backend.close(drop_pages=False)  # only the catch-up read pages of it
        except BaseException:
            remove_state_file(tmp)
            raise
        if cleanup is None:
            remove_state_file(tmp)
            async with member._write_lock:  # as etcd does: applying waits for the whole copy
                backend = member.sm.backend
                tmp = backend.swap_path("defrag")
                try:
                    await asyncio.to_thread(backend.compact_copy, tmp)
                    steps.done("copy with applying held")
                    cleanup = swap_in(member, backend, tmp, steps)
                except BaseException:
                    remove_state_file(tmp)
                    raise
            copied_at = member.sm.applied_position
    await cleanup()  # unmap and free the old file off the event loop, once its snapshot readers are done
    steps.done("free the old file")
    log.info("defragmented; %d entries applied meanwhile, then to the copy; %s",
             member.sm.applied_position - copied_at, steps, extra=member._log_fields())  # fmt: skip


async def _held_at_gate(gate: str) -> None:
    """Fault injection (tests only): the copy is taken; it waits here until the gate file exists."""
    with open(gate + ".held", "w"):
        pass
    while not os.path.exists(gate):
        await asyncio.sleep(FAULT_GATE_POLL_S)


async def _catch_up(member: Member, copy: StateMachine, backend: Backend) -> bool:
    """Apply to the copy what the member applied since it was taken, in rounds while applying
    goes on; False if the journal no longer has those entries."""
    for _ in range(DEFRAG_CATCH_UP_ROUNDS_MAX):
        if member.sm.backend is not backend:
            return False
        behind = member.sm.applied_position - copy.applied_position
        if behind <= DEFRAG_LOCKED_CATCH_UP_ENTRIES_MAX:
            break
        if not await apply_to(member, copy, member.sm.applied_position):
            return False
    return True


async def _swap(
    member: Member, copy: StateMachine, backend: Backend, tmp: str, steps: _Steps
) -> Callable[[], Awaitable[None]] | None:
    async with member._write_lock:
        steps.done("wait for applying")
        behind = member.sm.applied_position - copy.applied_position
        if member.sm.backend is not backend or not await apply_to(member, copy, member.sm.applied_position):
            return None
        assert copy.applied_position == member.sm.applied_position
        steps.done(f"last {behind} entries with applying held")
        copy.backend.close(drop_pages=False)  # only the catch-up read pages of it: a cheap munmap
        remove_state_file(tmp + "-lock")  # the copy's; the swapped-in env makes its own
        return swap_in(member, backend, tmp, steps)


def swap_in(member: Member, backend: Backend, tmp: str, steps: _Steps) -> Callable[[], Awaitable[None]]:
    """The copy in place of the file (between batches: the caller holds the write lock); returns
    what frees the old one (snapshot streams and hashes go on reading it until they end)."""
    old_env = backend.env
    cleanup = backend.swap_in(tmp)
    steps.done("swap the file")
    member.sm = StateMachine(backend)
    member.hub.store = member.sm.store  # the same state, new handles: watchers go on as they are
    steps.done("new state machine")
    return lambda: member.retire(old_env, cleanup)


class _Steps:
    """How long each step of a defragment took (its log line: where a serving gap would come from)."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._steps: list[tuple[str, float]] = []

    def done(self, step: str) -> None:
        now = time.monotonic()
        self._steps.append((step, now - self._last))
        self._last = now

    def __str__(self) -> str:
        return ", ".join(f"{name} {s * 1000:.1f} ms" for name, s in self._steps)


async def apply_to(member: Member, sm: StateMachine, position: int) -> bool:
    """Apply the journal's entries after sm's position up to `position` to a state machine
    that is not the member's (its results and events are the member's already)."""
    if sm.applied_position >= position:
        return True
    reader = member.journal.read(member.log_name, sm.applied_position + 1)
    try:
        async for batch in reader:
            for part in batch_parts([e for e in batch if e.position <= position], APPLY_BATCH_BYTES_MAX):
                with sm.backend.batch():
                    for entry in part:
                        sm.apply(entry.position, entry.timestamp_ms, entry.data)
                await asyncio.sleep(APPLY_PAUSE_S)
            if sm.applied_position >= position:
                return True
    except PositionTrimmed:
        return False
    finally:
        await reader.aclose()  # type: ignore[attr-defined]
    return False
