"""PgBouncer in transaction pool mode: many clients' transactions interleaved over a tiny server pool.

A plain SQLAlchemy + asyncpg engine passes sequential requests through PgBouncer and then fails
with `prepared statement "__asyncpg_stmt_..." does not exist` once transactions of many clients
share few server connections. The app's PgBouncer mode must make that impossible; the same run
with the mode switched off shows the test can see the failure.

Nobody has to announce the PgBouncer (a `-pooler` host, port 6432, `pgbouncer=true`, DB_PGBOUNCER):
the app notices one that refuses the statement_timeout startup parameter (its stock configuration)
or accepts it without applying it (`ignore_startup_parameters`).
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from backend.db import AUTOCOMMIT_READS, create_engine
from backend.main import create_app
from backend.tests.conftest import (
    ADMIN_DATABASE_URL,
    _asyncpg_dsn,
    create_scratch_database,
    drop_scratch_database,
    make_settings,
)
from backend.tests.external_servers import pgbouncer, serving
from backend.tests.factories import auth_headers
from backend.tests.live_server import live_server
from backend.tests.workload import run_round_trip

pytestmark = pytest.mark.slow

CLIENTS = 60
SERVER_POOL = 2
STOCK_USERS = 200
STOCK_SERVER_POOL = 3
PREPARED_STATEMENT_ERROR = 'prepared statement "__asyncpg_stmt_'
DETECTED = "leads to a transaction pooler"
STILL_SLEEPING = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE state = 'active' AND query LIKE '%todo-cancel-probe%' AND pid <> pg_backend_pid()"
)


@asynccontextmanager
async def database_behind_pgbouncer(**config: str) -> AsyncIterator[str]:
    """A scratch database reached through a PgBouncer of its own on a random port; yields a URL with no hint."""
    url = await create_scratch_database("todo_bouncer")
    admin = make_url(ADMIN_DATABASE_URL)
    try:
        with pgbouncer(admin.host or "127.0.0.1", admin.port or 5432, **config) as port:
            yield make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        await drop_scratch_database(url)


@pytest.fixture(scope="module")
async def bouncer_url() -> AsyncIterator[str]:
    """A PgBouncer with a pool of two server connections that ignores the statement_timeout startup parameter.

    Ignoring it lets the app without its PgBouncer mode (which sends it) get as far as the
    prepared statements; it also hides the pooler from the refused-parameter detection.
    """
    async with database_behind_pgbouncer(
        default_pool_size=str(SERVER_POOL), ignore_startup_parameters="statement_timeout"
    ) as url:
        yield url


@pytest.fixture(scope="module")
async def stock_bouncer_url() -> AsyncIterator[str]:
    """A PgBouncer as packaged (no ignore_startup_parameters, no max_prepared_statements), 3 server connections."""
    async with database_behind_pgbouncer(default_pool_size=str(STOCK_SERVER_POOL)) as url:
        yield url


async def interleave(bouncer_url: str, *, pgbouncer_mode: bool | None, run: str, clients: int = CLIENTS) -> list[str]:
    """`clients` users' round trips at once, one pooled connection each; None leaves the mode to detection."""
    settings = make_settings(bouncer_url, db_pgbouncer=pgbouncer_mode, db_pool_size=clients, db_max_overflow=0)
    async with serving(create_app(settings)) as client:

        async def one_user(number: int) -> list[str]:
            user_id = f"{run}-{number}"
            trip = await run_round_trip(client, user_id, auth_headers(user_id))
            return trip.problems

        results = await asyncio.gather(*(one_user(number) for number in range(clients)))
    return [problem for problems in results for problem in problems]


def detection_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if DETECTED in record.getMessage()]


async def test_interleaved_transactions_through_a_small_server_pool(
    bouncer_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    problems = await interleave(bouncer_url, pgbouncer_mode=True, run="on")
    assert problems == []
    assert PREPARED_STATEMENT_ERROR not in caplog.text


async def test_without_pgbouncer_mode_the_same_run_fails(bouncer_url: str, caplog: pytest.LogCaptureFixture) -> None:
    problems = await interleave(bouncer_url, pgbouncer_mode=False, run="off")
    assert problems, "the interleaving no longer exposes asyncpg's prepared statements"
    assert PREPARED_STATEMENT_ERROR in caplog.text


async def test_a_stock_pgbouncer_nobody_announced_serves_200_users(
    stock_bouncer_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    problems = await interleave(stock_bouncer_url, pgbouncer_mode=None, run="stock", clients=STOCK_USERS)
    assert problems == []
    assert PREPARED_STATEMENT_ERROR not in caplog.text
    # 200 pooled connections, one warning, and nothing at start-up came with a traceback.
    [warning] = detection_warnings(caplog)
    assert warning.levelno == logging.WARNING
    assert [record for record in caplog.records if record.exc_info] == []
    assert "Traceback" not in caplog.text


def test_uvicorn_starts_through_a_stock_pgbouncer_with_one_warning(stock_bouncer_url: str, tmp_path: Path) -> None:
    """As deployed: its own process, DATABASE_URL pointing at the bouncer, the log as an operator reads it."""
    with live_server(tmp_path, DATABASE_URL=stock_bouncer_url) as base_url:
        created = httpx.post(f"{base_url}/api/tasks", json={"title": "pooled"}, headers=auth_headers("pat"))
        listed = httpx.get(f"{base_url}/api/tasks", headers=auth_headers("pat"))
    assert created.status_code == 201, created.text
    assert [task["title"] for task in listed.json()] == ["pooled"]
    log = (tmp_path / "server.log").read_text()
    assert log.count(DETECTED) == 1, log
    assert "Traceback" not in log


async def test_a_pgbouncer_ignoring_statement_timeout_is_detected_too(
    bouncer_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    problems = await interleave(bouncer_url, pgbouncer_mode=None, run="ignoring")
    assert problems == []
    assert PREPARED_STATEMENT_ERROR not in caplog.text
    assert len(detection_warnings(caplog)) == 1


async def test_concurrent_first_connections_switch_once(
    stock_bouncer_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(make_settings(stock_bouncer_url, db_pgbouncer=None, db_pool_size=20))
    assert engine.get_execution_options()[AUTOCOMMIT_READS] is True

    async def first_use() -> object:
        async with engine.connect() as connection:
            return await connection.scalar(text("SELECT 1"))

    try:
        assert await asyncio.gather(*(first_use() for _ in range(20))) == [1] * 20
    finally:
        await engine.dispose()
    assert len(detection_warnings(caplog)) == 1
    # Reads keep their BEGIN from now on, as with DB_PGBOUNCER=true.
    assert engine.get_execution_options()[AUTOCOMMIT_READS] is False


async def test_db_pgbouncer_false_turns_the_detection_off(stock_bouncer_url: str) -> None:
    settings = make_settings(stock_bouncer_url, db_pgbouncer=False)
    with pytest.raises(DBAPIError, match="unsupported startup parameter: statement_timeout"):
        async with serving(create_app(settings)):
            pass


async def until_nothing_sleeps() -> None:
    admin = await asyncpg.connect(_asyncpg_dsn(ADMIN_DATABASE_URL))
    try:
        while True:
            if not await admin.fetchval(STILL_SLEEPING):
                return
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


async def test_a_detected_pgbouncer_still_cancels_a_statement_that_runs_too_long(stock_bouncer_url: str) -> None:
    """Without the statement_timeout startup parameter, asyncpg's command_timeout cancels it on the server."""
    engine = create_engine(make_settings(stock_bouncer_url, db_pgbouncer=None, db_statement_timeout_ms=200))
    try:
        async with asyncio.timeout(60):  # a guard against hanging, not a speed target
            async with engine.connect() as connection:
                with pytest.raises(TimeoutError):  # asyncpg's command_timeout (the app answers 503)
                    await connection.execute(text("SELECT pg_sleep(60), 'todo-cancel-probe'"))
            await until_nothing_sleeps()
    finally:
        await engine.dispose()
