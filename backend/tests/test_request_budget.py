"""A request's database work has a time budget (DB_REQUEST_TIMEOUT): past it, the statement stops,
the connection goes back to the pool, and the request gets 503."""

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.db import Datastore
from backend.errors import ServiceUnavailable
from backend.main import create_app
from backend.tests.conftest import make_settings
from backend.tests.external_servers import serving
from backend.tests.factories import auth_headers

pytestmark = pytest.mark.every_database

BUDGET_SECONDS = 0.3
# Each runs for seconds: PostgreSQL sleeps; SQLite counts in its own thread, where cancelling the
# task does not reach (the statement must be interrupted).
SLOW_STATEMENTS = {
    "postgresql": "SELECT pg_sleep(5)",
    "sqlite": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2e8) SELECT count(*) FROM n",
}


@pytest.mark.parametrize("use", ["reading", "writing"])
async def test_a_statement_past_the_budget_is_stopped_and_its_connection_returned(
    engine: AsyncEngine, database_url: str, dialect: str, use: str
) -> None:
    datastore = Datastore.pooled(engine, make_settings(database_url, db_request_timeout=BUDGET_SECONDS))
    db = datastore.for_request()
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match=r"longer than 0\.3 s") as refused:
        async with getattr(db, use)() as connection:
            await connection.execute(text(SLOW_STATEMENTS[dialect]))
    assert time.monotonic() - started < 3  # stopped, not waited out (the statement takes 5 s or more)
    assert refused.value.headers["Retry-After"] == "1"
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    async with datastore.for_request().reading() as connection:
        assert (await connection.execute(text("SELECT 1"))).scalar() == 1


async def test_no_database_work_starts_once_the_budget_is_spent(engine: AsyncEngine, database_url: str) -> None:
    datastore = Datastore.pooled(engine, make_settings(database_url, db_request_timeout=0.05))
    db = datastore.for_request()
    await asyncio.sleep(0.06)  # the budget runs from the request's start, waiting included
    with pytest.raises(ServiceUnavailable):
        async with db.reading() as connection:
            await connection.execute(text("SELECT 1"))


async def test_both_transports_answer_503_past_the_budget(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/budget.db", db_request_timeout=1e-6)
    async with serving(create_app(settings)) as client:
        rest = await client.get("/api/tasks", headers=auth_headers("alice"))
        graphql = await client.post("/graphql", json={"query": "{ tasks { total } }"}, headers=auth_headers("alice"))
    for response in (rest, graphql):
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "1"
    assert rest.json()["error"] == "SERVICE_UNAVAILABLE"
    assert graphql.json()["errors"][0]["extensions"]["code"] == "SERVICE_UNAVAILABLE"


async def test_a_request_uses_one_connection_at_a_time(tmp_path: Path) -> None:
    """Thirty aliased lists take turns on one connection instead of taking thirty from the pool."""
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/turns.db")
    app = create_app(settings)
    async with serving(app) as client:
        checked_out: list[int] = []
        pool = app.state.engine.pool

        def record(*_args: object) -> None:
            checked_out.append(pool.checkedout())

        from sqlalchemy import event

        event.listen(pool, "checkout", record)
        aliases = " ".join(f"a{n}: tasks(page: {n + 1}) {{ total }}" for n in range(30))
        response = await client.post("/graphql", json={"query": f"{{ {aliases} }}"}, headers=auth_headers("alice"))
        event.remove(pool, "checkout", record)
    assert response.status_code == 200, response.text
    assert isinstance(response, httpx.Response)
    assert max(checked_out) == 1
