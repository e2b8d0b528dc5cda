"""The application factory: REST under /api, GraphQL under /graphql, one service layer behind both."""

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.ext.asyncio import AsyncEngine
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from backend.auth import check_authenticated_routes, document_bearer_scheme
from backend.config import Settings, get_settings
from backend.db import Datastore, create_engine, migrate_database
from backend.explorers import mount_explorers
from backend.gql.schema import create_graphql_router
from backend.http_errors import register_error_handlers
from backend.metrics import create_metrics_router, instrument_pool
from backend.middleware import HttpHardeningMiddleware
from backend.observability import ObservabilityMiddleware, configure_logging
from backend.rate_limit import create_limiter
from backend.routes import api_router, health
from backend.services import idempotency
from backend.tokens import JwksCache, TokenVerifier

logger = logging.getLogger(__name__)

EXPOSED_HEADERS = [
    "X-Total-Count",
    "Content-Range",
    "Link",
    "Location",
    "ETag",
    "Retry-After",
    "Idempotent-Replayed",
    "X-Request-ID",
]
ALLOWED_HEADERS = ["Authorization", "Content-Type", "If-Match", "Idempotency-Key", "X-Request-ID"]
PROBE_PATHS = ("/health", "/ready", "/metrics")  # answered at once, even when requests queue
IDEMPOTENCY_PURGE_SECONDS = 3600
IDEMPOTENCY_PURGE_TIMEOUT_SECONDS = 60.0
OPENAPI_TAGS = [
    {"name": "tasks", "description": "Your tasks, under `/api/tasks` and again under `/api/{user_id}/tasks`."},
    {"name": "users", "description": "Who the bearer token says you are."},
    {"name": "graphql", "description": "The same operations over GraphQL; open `/graphql` in a browser."},
]


async def _purge_idempotency_keys_forever(app: FastAPI) -> None:
    while True:
        await asyncio.sleep(IDEMPOTENCY_PURGE_SECONDS)
        try:
            db = app.state.datastore.for_request(timeout_seconds=IDEMPOTENCY_PURGE_TIMEOUT_SECONDS)
            purged = await idempotency.purge_expired(db)
            logger.info("purged %d expired idempotency keys", purged)
        except Exception:  # a database hiccup must not end the loop
            logger.warning("purging idempotency keys failed", exc_info=True)


def create_app(settings: Settings | None = None, *, engine: AsyncEngine | None = None) -> FastAPI:
    """Build the app. With `engine`, the caller owns the engine and its schema (tests, embedding)."""
    settings = settings or get_settings()
    configure_logging(settings)
    if settings.trusts_every_forwarder:
        logger.warning(
            "FORWARDED_ALLOW_IPS=%r: any client can set its own address (and rate-limit identity) through "
            "X-Forwarded-For; list the load balancer's address or subnet instead (refused in production)",
            settings.forwarded_allow_ips,
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app_engine = engine or create_engine(settings)
        stop_pool_metrics = instrument_pool(app_engine)
        if engine is None:
            await migrate_database(settings)
        app.state.engine = app_engine
        app.state.datastore = Datastore.pooled(app_engine, settings)
        async with httpx.AsyncClient(timeout=settings.jwks_fetch_timeout) as http_client:
            app.state.token_verifier = TokenVerifier(settings, JwksCache(settings, http_client))
            purger = asyncio.create_task(_purge_idempotency_keys_forever(app))
            # What start-up built (modules, schemas, models) lives as long as the process: keep the
            # garbage collector from walking it again on every full collection.
            gc.collect()
            gc.freeze()
            try:
                yield
            finally:
                purger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await purger
                stop_pool_metrics()
                await app.state.limiter.aclose()
                if engine is None:
                    await app_engine.dispose()

    app = FastAPI(
        title="Todo API",
        version="1.0.0",
        summary="Multi-user tasks over REST and GraphQL, authenticated by Better Auth JWTs.",
        lifespan=lifespan,
        openapi_tags=OPENAPI_TAGS,
        docs_url=None,  # served by mount_explorers from local assets
        redoc_url=None,
        openapi_url="/openapi.json" if settings.api_docs_enabled else None,
    )
    app.state.settings = settings
    app.state.limiter = create_limiter(settings)

    register_error_handlers(app)
    app.include_router(api_router)
    app.include_router(create_graphql_router(settings), prefix="/graphql")
    app.include_router(health.router)
    if settings.metrics_enabled:
        app.include_router(create_metrics_router(settings))
    mount_explorers(app, swagger_ui=settings.api_docs_enabled, graphiql=settings.graphiql_enabled)
    check_authenticated_routes(app)
    document_bearer_scheme(app)

    # Outermost last: observability -> proxy headers -> CORS -> hardening (UTF-8 target, body limit,
    # security headers) -> routes.
    app.add_middleware(
        HttpHardeningMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_concurrent=settings.max_concurrent_requests,
        unqueued_paths=PROBE_PATHS,
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_credentials=False,  # bearer tokens only: no cookie ever needs to cross origins
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        max_age=600,
    )
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.forwarded_allow_ips)
    app.add_middleware(ObservabilityMiddleware, record_metrics=settings.metrics_enabled)
    return app


app = create_app()
