"""The member's side of a front end's barrier request (kvstore/workers/notify.py): whatever the
member's barrier raises, the front end gets an answer, so its shared round ends."""

from __future__ import annotations

from typing import Any

import msgpack

from kvstore.workers.notify import BARRIER, BARRIER_FAILED, Notifier


class _Writer:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.sent.append(msgpack.unpackb(data, raw=False))


class _Member:
    def __init__(self, outcome: int | Exception) -> None:
        self.outcome = outcome

    async def barrier_position(self) -> int:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


async def test_an_unexpected_barrier_failure_is_answered_as_barrier_failed() -> None:
    writer = _Writer()
    notifier = Notifier(_Member(KeyError("position")), "/nonexistent")  # type: ignore[arg-type]
    await notifier._answer_barrier(writer)  # type: ignore[arg-type]
    assert len(writer.sent) == 1 and writer.sent[0][:2] == [BARRIER_FAILED, "UNAVAILABLE"]


async def test_a_barrier_position_is_answered() -> None:
    writer = _Writer()
    notifier = Notifier(_Member(9), "/nonexistent")  # type: ignore[arg-type]
    await notifier._answer_barrier(writer)  # type: ignore[arg-type]
    assert writer.sent == [[BARRIER, 9]]
