"""One rate budget per caller for REST and GraphQL together (slowapi; Redis-backed when configured)."""

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from limits import parse as parse_limit
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


def create_limiter(settings: Settings) -> Limiter:
    parse_limit(settings.rate_limit)  # fail at start-up on a malformed RATE_LIMIT
    storage_options: dict[str, float] = {}
    if settings.redis_url:
        storage_options = {"socket_timeout": REDIS_TIMEOUT_SECONDS, "socket_connect_timeout": REDIS_TIMEOUT_SECONDS}
    return ReportingLimiter(
        key_func=rate_limit_key,
        storage_uri=settings.redis_url or "memory://",
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
