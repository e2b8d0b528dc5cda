"""PgBouncer in transaction pool mode: many clients' transactions interleaved over a tiny server pool.

A plain SQLAlchemy + asyncpg engine passes sequential requests through PgBouncer and then fails
with `prepared statement "__asyncpg_stmt_..." does not exist` once transactions of many clients
share few server connections. The app's PgBouncer mode must make that impossible; the same run
with the mode switched off shows the test can see the failure.
"""

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import make_url

from backend.main import create_app
from backend.tests.conftest import ADMIN_DATABASE_URL, create_scratch_database, drop_scratch_database, make_settings
from backend.tests.factories import auth_headers
from backend.tests.services_fixtures import pgbouncer, serving
from backend.tests.workload import run_round_trip

CLIENTS = 60
SERVER_POOL = 2
PREPARED_STATEMENT_ERROR = 'prepared statement "__asyncpg_stmt_'


@pytest.fixture(scope="module")
async def bouncer_url() -> AsyncIterator[str]:
    """A scratch database behind a PgBouncer with a pool of two server connections."""
    url = await create_scratch_database("todo_bouncer")
    admin = make_url(ADMIN_DATABASE_URL)
    # statement_timeout is ignored only so that the app without its PgBouncer mode (which sends it)
    # gets as far as the prepared statements.
    bouncer = pgbouncer(
        admin.host or "127.0.0.1",
        admin.port or 5432,
        default_pool_size=str(SERVER_POOL),
        ignore_startup_parameters="statement_timeout",
    )
    try:
        with bouncer as port:
            yield make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        await drop_scratch_database(url)


async def interleave(bouncer_url: str, *, pgbouncer_mode: bool, run: str) -> list[str]:
    settings = make_settings(bouncer_url, db_pgbouncer=pgbouncer_mode, db_pool_size=CLIENTS, db_max_overflow=0)
    async with serving(create_app(settings)) as client:

        async def one_user(number: int) -> list[str]:
            user_id = f"{run}-{number}"
            trip = await run_round_trip(client, user_id, auth_headers(user_id))
            return trip.problems

        results = await asyncio.gather(*(one_user(number) for number in range(CLIENTS)))
    return [problem for problems in results for problem in problems]


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
