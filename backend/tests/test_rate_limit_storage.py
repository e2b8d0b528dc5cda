"""The in-process rate-limit storage: fixed windows, lazy expiry, bounded memory, no threads, no tasks."""

import asyncio
import threading
import time
from collections.abc import Coroutine, Generator
from typing import Any

import pytest
from limits import parse
from limits.aio.strategies import FixedWindowRateLimiter

from backend.rate_limit import EventLoopMemoryStorage, create_limiter
from backend.tests.conftest import make_settings


async def test_counts_within_a_window_and_resets_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    storage = EventLoopMemoryStorage()
    limiter = FixedWindowRateLimiter(storage)
    limit = parse("2/minute")
    now = [1_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    assert await limiter.hit(limit, "user:a")
    assert await limiter.hit(limit, "user:a")
    assert not await limiter.hit(limit, "user:a")
    assert await limiter.hit(limit, "user:b")  # keys are separate budgets
    assert await storage.get_expiry(limit.key_for("user:a")) == pytest.approx(1_060.0)
    now[0] = 1_060.5
    assert await storage.get(limit.key_for("user:a")) == 0
    assert await limiter.hit(limit, "user:a")


async def test_expired_keys_are_swept_once_the_table_grows(monkeypatch: pytest.MonkeyPatch) -> None:
    storage = EventLoopMemoryStorage()
    monkeypatch.setattr(EventLoopMemoryStorage, "SWEEP_AT", 100)
    now = [0.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    for number in range(100):
        await storage.incr(f"old:{number}", 10)
    now[0] = 20.0
    await storage.incr("new", 10)
    assert await storage.reset() == 1  # only the fresh key survived the sweep


class CountingTaskFactory:
    """Counts the tasks created on the running loop (limits' own MemoryStorage starts one per hit)."""

    def __init__(self) -> None:
        self.created = 0

    def __call__(
        self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any], **kwargs: Any
    ) -> asyncio.Task[Any]:
        self.created += 1
        return asyncio.Task(coro, loop=loop, **kwargs)


async def test_the_default_limiter_counts_in_it_and_starts_no_threads_or_tasks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limiter = create_limiter(make_settings("sqlite+aiosqlite:///unused.db", rate_limit="5/minute"))
    assert isinstance(limiter.local.storage, EventLoopMemoryStorage)
    assert limiter.shared is None
    started: list[threading.Thread] = []
    original_start = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        started.append(thread)
        original_start(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    loop = asyncio.get_running_loop()
    tasks, previous_factory = CountingTaskFactory(), loop.get_task_factory()
    loop.set_task_factory(tasks)
    try:
        for number in range(2_000):
            await limiter.charge(f"user:{number % 50}")
            await asyncio.sleep(0)  # what a request does between two charges: let anything scheduled run
    finally:
        loop.set_task_factory(previous_factory)
    assert started == []
    assert tasks.created == 0
