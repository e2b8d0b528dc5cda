"""One rate budget per caller for REST and GraphQL together (slowapi; Redis-backed when configured)."""

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from limits import parse as parse_limit
from limits.storage import Storage
from slowapi import Limiter
from slowapi.errors import RateLimitExceeded

from backend import metrics
from backend.config import Settings
from backend.errors import RateLimited

logger = logging.getLogger(__name__)

SHARED_SCOPE = "api"
REDIS_TIMEOUT_SECONDS = 0.25  # slowapi calls Redis synchronously: keep a dead Redis from stalling the loop

RateLimitCheck = Callable[..., Awaitable[None]]


def rate_limit_key(request: Request) -> str:
    """The verified user when there is one, else the client address (proxies per FORWARDED_ALLOW_IPS)."""
    principal = getattr(request.state, "principal", None)
    if principal is not None:
        return f"user:{principal.user_id}"
    client = request.client
    return f"ip:{client.host if client else 'unknown'}"


class ReportingLimiter(Limiter):
    """slowapi's Limiter, telling our log when Redis is lost and back (slowapi's own logger is muted)."""

    _reported_dead = False

    def _check_request_limit(self, request: Request, endpoint_func: Any, in_middleware: bool = True) -> None:
        try:
            super()._check_request_limit(request, endpoint_func, in_middleware)
        finally:
            if self._storage_dead != self._reported_dead:
                self._reported_dead = self._storage_dead
                logger.warning(
                    "rate limit storage unreachable: limiting per instance in memory until it is back"
                    if self._storage_dead
                    else "rate limit storage is back: one budget across instances again"
                )


class EventLoopMemoryStorage(Storage):
    """Fixed-window counters in process memory, for a limiter used from one event loop.

    limits' MemoryStorage sweeps expired keys from a `threading.Timer` that it restarts every
    10 ms while requests arrive: thousands of threads a minute, each walking every key under the
    GIL. Here an expired window is reset when its key is next touched, and the table is swept in
    one pass only when it has grown.
    """

    STORAGE_SCHEME = ["event-loop-memory"]  # noqa: RUF012 (limits' registry reads it off the class)
    SWEEP_AT = 50_000

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: float | str | bool) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._counts: dict[str, int] = {}
        self._expires_at: dict[str, float] = {}

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = time.time()
        if self._expires_at.get(key, 0.0) <= now:
            if len(self._expires_at) >= self.SWEEP_AT:
                self._sweep(now)
            self._counts[key] = 0
            self._expires_at[key] = now + expiry
        self._counts[key] += amount
        return self._counts[key]

    def get(self, key: str) -> int:
        return self._counts.get(key, 0) if self._expires_at.get(key, 0.0) > time.time() else 0

    def get_expiry(self, key: str) -> float:
        return self._expires_at.get(key, time.time())

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        cleared = len(self._counts)
        self._counts.clear()
        self._expires_at.clear()
        return cleared

    def clear(self, key: str) -> None:
        self._counts.pop(key, None)
        self._expires_at.pop(key, None)

    def _sweep(self, now: float) -> None:
        for key in [key for key, expires_at in self._expires_at.items() if expires_at <= now]:
            self.clear(key)


def create_limiter(settings: Settings) -> Limiter:
    parse_limit(settings.rate_limit)  # fail at start-up on a malformed RATE_LIMIT
    storage_options: dict[str, float] = {}
    if settings.redis_url:
        storage_options = {"socket_timeout": REDIS_TIMEOUT_SECONDS, "socket_connect_timeout": REDIS_TIMEOUT_SECONDS}
    return ReportingLimiter(
        key_func=rate_limit_key,
        storage_uri=settings.redis_url or "event-loop-memory://",
        storage_options=storage_options,  # type: ignore[arg-type]
        strategy="fixed-window",
        key_prefix="todo-api",
        # Redis down: count per instance in memory meanwhile; slowapi probes Redis and resumes.
        in_memory_fallback_enabled=True,
    )


def build_rate_limit_check(limiter: Limiter, limit: str) -> RateLimitCheck:
    """A shared-scope limit, so every route of both transports draws on the caller's one budget."""

    async def check_rate_limit(request: Request) -> None:  # noqa: ARG001 (slowapi finds it by name)
        return None

    limited: RateLimitCheck = limiter.shared_limit(limit, scope=SHARED_SCOPE)(check_rate_limit)
    return limited


async def enforce_rate_limit(request: Request) -> None:
    try:
        await request.app.state.check_rate_limit(request=request)
    except RateLimitExceeded:
        metrics.RATE_LIMIT_REJECTIONS.inc()
        raise RateLimited(retry_after=_seconds_until_reset(request)) from None


def _seconds_until_reset(request: Request) -> int:
    limiter: Limiter = request.app.state.limiter
    limit_item, keys = request.state.view_rate_limit
    try:
        reset_at = limiter.limiter.get_window_stats(limit_item, *keys).reset_time
    except Exception:  # the storage just failed over; a coarse answer beats a 500
        return int(limit_item.get_expiry())
    return max(1, math.ceil(reset_at - time.time()))
