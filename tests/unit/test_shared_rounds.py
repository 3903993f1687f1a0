"""Shared barrier rounds (kvstore/member/rounds.py): every waiter gets its round's outcome or
leaves at its own deadline, and no round's failure is left for the loop to report."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from kvstore.member.rounds import SharedRounds


class _Fetch:
    """A barrier the test answers: each call waits for `answer` (a position, or the message of
    the error it raises: a fresh exception, referenced by nothing but the round, as a real one)."""

    def __init__(self) -> None:
        self.calls = 0
        self.answer: asyncio.Future[int | str] | None = None
        self.started = asyncio.Event()

    async def __call__(self) -> int:
        self.calls += 1
        self.answer = asyncio.get_running_loop().create_future()
        self.started.set()
        outcome = await self.answer
        if isinstance(outcome, str):
            raise RuntimeError(outcome)
        return outcome


def _unretrieved(loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    reports: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    return reports


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_failed_round_whose_waiters_all_left_leaves_nothing_unretrieved() -> None:
    loop = asyncio.get_running_loop()
    reports = _unretrieved(loop)
    fetch = _Fetch()
    rounds = SharedRounds(fetch)
    waiter = loop.create_task(rounds.next())
    await fetch.started.wait()
    waiter.cancel()  # its deadline passed while the round ran
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert fetch.answer is not None
    fetch.answer.set_result("not_leader")
    await _settle()
    del waiter
    gc.collect()
    await _settle()
    assert [r["message"] for r in reports] == []


async def test_a_round_for_a_reader_cancelled_before_it_began_leaves_nothing_unretrieved() -> None:
    loop = asyncio.get_running_loop()
    reports = _unretrieved(loop)
    fetch = _Fetch()
    rounds = SharedRounds(fetch)
    waiter = loop.create_task(rounds.next())
    await asyncio.sleep(0)  # the reader created the round, then was cancelled before it began
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await fetch.started.wait()
    assert fetch.answer is not None
    fetch.answer.set_result("not_leader")
    await _settle()
    del waiter
    gc.collect()
    await _settle()
    assert [r["message"] for r in reports] == []


async def test_waiters_that_stay_get_the_rounds_outcome_after_others_left() -> None:
    loop = asyncio.get_running_loop()
    fetch = _Fetch()
    rounds = SharedRounds(fetch)
    leaving = loop.create_task(rounds.next())
    staying = loop.create_task(rounds.next())
    await fetch.started.wait()
    leaving.cancel()
    assert fetch.answer is not None
    fetch.answer.set_result("not_leader")
    with pytest.raises(RuntimeError, match="not_leader"):
        await staying
    with pytest.raises(asyncio.CancelledError):
        await leaving
    # The next newcomer starts a new round, which can succeed.
    fetch.started.clear()
    after = loop.create_task(rounds.next())
    await fetch.started.wait()
    fetch.answer.set_result(7)
    assert await after == 7
    assert fetch.calls == 2


async def test_a_cancelled_round_answers_its_waiters_and_the_next_rounds() -> None:
    """The round's task cancelled mid-fetch (the loop shutting down): nobody is left waiting forever."""
    loop = asyncio.get_running_loop()
    fetch = _Fetch()
    rounds = SharedRounds(fetch)
    first = loop.create_task(rounds.next())
    await fetch.started.wait()
    second = loop.create_task(rounds.next())  # waits for the next round
    await asyncio.sleep(0)
    task = rounds._task
    assert task is not None
    task.cancel()
    await _settle()
    assert first.done() and second.done()
    for t in (first, second):
        with pytest.raises(asyncio.CancelledError):
            await t
