"""Prometheus metrics (prometheus-client): requests, latency, rate-limit rejections, database pool use.

With several uvicorn workers, set PROMETHEUS_MULTIPROC_DIR in the environment: every worker then
writes its samples there and a scrape of any worker reports the sum over all of them.
"""

from collections.abc import Callable
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from backend.config import Settings

# Label values come from fixed sets only: a client picks the method token, so any other is "other".
METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_LABEL = "other"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests by method, route template and status", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time from the request's arrival to the end of its response, by method, route template and status",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
RATE_LIMIT_REJECTIONS = Counter("todo_rate_limit_rejections", "Requests refused with 429 by the shared rate limit")
# "livesum": with several workers, the total over the workers that are alive.
DB_POOL_CHECKED_OUT = Gauge(
    "todo_db_pool_checked_out", "Database connections in use by requests", multiprocess_mode="livesum"
)
DB_POOL_SIZE = Gauge(
    "todo_db_pool_size", "Database connections the pool keeps open (before overflow)", multiprocess_mode="livesum"
)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """`route` is a template of the app's routes (or one of the fixed labels of RouteTemplates)."""
    method_label = method if method in METHOD_LABELS else OTHER_LABEL
    status_label = str(status) if 100 <= status <= 599 else OTHER_LABEL
    HTTP_REQUESTS.labels(method_label, route, status_label).inc()
    HTTP_LATENCY.labels(method_label, route, status_label).observe(seconds)


def _count_checkout(*_args: Any) -> None:
    DB_POOL_CHECKED_OUT.inc()


def _count_checkin(*_args: Any) -> None:
    DB_POOL_CHECKED_OUT.dec()


def instrument_pool(engine: AsyncEngine) -> Callable[[], None]:
    """Track the engine's pool in the gauges; returns the function that stops tracking it."""
    pool = engine.sync_engine.pool
    size = pool.size() if isinstance(pool, QueuePool) else 0
    DB_POOL_SIZE.inc(size)
    event.listen(pool, "checkout", _count_checkout)
    event.listen(pool, "checkin", _count_checkin)

    def stop() -> None:
        event.remove(pool, "checkout", _count_checkout)
        event.remove(pool, "checkin", _count_checkin)
        DB_POOL_SIZE.dec(size)

    return stop


def _registry(settings: Settings) -> CollectorRegistry:
    if settings.prometheus_multiproc_dir is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated
        registry, path=settings.prometheus_multiproc_dir
    )
    return registry


def create_metrics_router(settings: Settings) -> APIRouter:
    registry = _registry(settings)
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        # Collecting reads every worker's files in multiprocess mode: keep that off the event loop.
        body = await anyio.to_thread.run_sync(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router
