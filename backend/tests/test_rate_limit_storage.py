"""The in-process rate-limit storage: fixed windows, lazy expiry, bounded memory, no threads."""

import threading
import time

import pytest
from limits import parse
from limits.strategies import FixedWindowRateLimiter

from backend.rate_limit import EventLoopMemoryStorage, create_limiter
from backend.tests.conftest import make_settings


def test_counts_within_a_window_and_resets_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    storage = EventLoopMemoryStorage()
    limiter = FixedWindowRateLimiter(storage)
    limit = parse("2/minute")
    now = [1_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    assert limiter.hit(limit, "user:a")
    assert limiter.hit(limit, "user:a")
    assert not limiter.hit(limit, "user:a")
    assert limiter.hit(limit, "user:b")  # keys are separate budgets
    assert storage.get_expiry(limit.key_for("user:a")) == pytest.approx(1_060.0)
    now[0] = 1_060.5
    assert storage.get(limit.key_for("user:a")) == 0
    assert limiter.hit(limit, "user:a")


def test_expired_keys_are_swept_once_the_table_grows(monkeypatch: pytest.MonkeyPatch) -> None:
    storage = EventLoopMemoryStorage()
    monkeypatch.setattr(EventLoopMemoryStorage, "SWEEP_AT", 100)
    now = [0.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    for number in range(100):
        storage.incr(f"old:{number}", 10)
    now[0] = 20.0
    storage.incr("new", 10)
    assert storage.reset() == 1  # only the fresh key survived the sweep


def test_the_default_limiter_uses_it_and_starts_no_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    limiter = create_limiter(make_settings("sqlite+aiosqlite:///unused.db", rate_limit="5/minute"))
    strategy = limiter.limiter
    assert isinstance(strategy.storage, EventLoopMemoryStorage)
    started: list[threading.Thread] = []
    original_start = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        started.append(thread)
        original_start(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    for number in range(2_000):
        strategy.hit(parse("5/minute"), f"user:{number % 50}")
    assert started == []
