"""/health and /ready: no auth, no rate limit, not in OpenAPI; /ready is 503 while the database is away."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from backend.db import create_engine
from backend.main import create_app
from backend.tests.conftest import make_settings
from backend.tests.factories import auth_headers

pytestmark = pytest.mark.single_database

UNREACHABLE_DATABASE = "postgresql://postgres@127.0.0.1:9/nowhere"  # the discard port: nothing listens


@pytest.mark.parametrize("settings_overrides", [{"rate_limit": "1/minute"}])
async def test_probes_answer_without_token_and_outside_the_rate_limit(
    client: httpx.AsyncClient, settings_overrides: dict[str, Any]
) -> None:
    assert (await client.get("/api/me", headers=auth_headers())).status_code == 200
    assert (await client.get("/api/me", headers=auth_headers())).status_code == 429
    for _ in range(3):
        health, ready = await client.get("/health"), await client.get("/ready")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        assert (ready.status_code, ready.json()) == (200, {"status": "ok"})


async def test_probes_are_not_in_the_openapi_client_surface(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not {"/health", "/ready", "/metrics", "/docs"} & set(paths)


@pytest.fixture
async def app_without_database() -> AsyncIterator[FastAPI]:
    settings = make_settings(UNREACHABLE_DATABASE, db_connect_timeout=1.0)
    engine = create_engine(settings)
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):
        yield app
    await engine.dispose()


async def test_ready_is_503_while_the_database_is_unreachable(app_without_database: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app_without_database)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        health = await client.get("/health")
        ready = await client.get("/ready")
    assert health.status_code == 200
    assert ready.status_code == 503
    assert ready.headers["retry-after"].isdigit()
    assert ready.json()["error"] == "SERVICE_UNAVAILABLE"
