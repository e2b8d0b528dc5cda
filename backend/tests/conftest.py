"""Fixtures: a database test runs on a fresh PostgreSQL database, through PgBouncer and on SQLite.

Data tests (services, schema, migrations, budgets) need all three: their modules say
`pytestmark = pytest.mark.every_database`, which is also what a module that says nothing gets.
Tests of authentication and of the transports (headers, status codes, GraphQL's rules) do not
depend on the database: their modules say `pytest.mark.single_database` and run once, on PostgreSQL.

Each test runs inside an outer transaction that is rolled back afterwards; service writes become
savepoints on that connection, so their commits stay inside the test (SQLAlchemy 2.0 recipe).
"""

import asyncio
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from backend.config import Settings
from backend.db import Database, Datastore, create_engine, migrate_to_head
from backend.main import create_app
from backend.tests.external_servers import FIGURES, pgbouncer
from backend.tests.factories import TEST_SECRET
from backend.tokens import JwksCache, TokenVerifier

pytest_plugins = ("backend.tests.graphql_modes",)  # the graphql_modes marker: both GraphQL execution modes

TEST_REQUEST_TIMEOUT = 60.0  # a test's whole database work; the budget itself is tested with pooled connections
ADMIN_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def create_scratch_database(prefix: str = "todo_test") -> str:
    """A new, uniquely named PostgreSQL database; returns its SQLAlchemy URL."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(_asyncpg_dsn(ADMIN_DATABASE_URL))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return (
        make_url(ADMIN_DATABASE_URL)
        .set(drivername="postgresql+asyncpg", database=name)
        .render_as_string(hide_password=False)
    )


async def drop_scratch_database(url: str) -> None:
    name = make_url(url).database
    admin = await asyncpg.connect(_asyncpg_dsn(ADMIN_DATABASE_URL))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("reliability figures")
        for name, value in sorted(FIGURES.items()):
            terminalreporter.write_line(f"{name}: {value}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Under pytest-xdist a worker hands the figures it measured to the controller, which prints them."""
    worker_output: dict[str, Any] | None = getattr(session.config, "workeroutput", None)
    if worker_output is not None:
        worker_output["figures"] = dict(FIGURES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    FIGURES.update(getattr(node, "workeroutput", {}).get("figures", {}))


@pytest.hookimpl(trylast=True)  # after pytest has grouped the tests by database kind
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first: under xdist the long ones then overlap the many short ones instead of
    running alone at the end. (In one process the order changes nothing.)"""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


DATABASE_KIND_IN_ID = re.compile(r"\[(postgresql|sqlite|pgbouncer)\b")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadscope` (`make test`) with a module's tests on one database kind as the unit of work.

    A module's own servers (clusters, PgBouncer, uvicorn, a browser) start once, on one worker;
    a worker switches its database kind (a scratch database made and dropped) only between units.
    With `--no-loadscope-reorder` the units go out in collection order: the slow ones first.
    """
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]  # xdist ships no types

    class ModuleAndDatabaseScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            kind = DATABASE_KIND_IN_ID.search(nodeid)
            return f"{module}[{kind.group(1)}]" if kind else module

    return ModuleAndDatabaseScheduling(config, log)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "app_env": "test",
        "database_url": database_url,
        "better_auth_secret": TEST_SECRET,
        "better_auth_url": "http://localhost:3000",
        "rate_limit": "100000/minute",
        "redis_url": None,
        "cors_origins": ["http://localhost:3000"],
        "graphql_introspection": True,
        **overrides,
    }
    return Settings(_env_file=None, **values)


@pytest.fixture(scope="session")
def suite_pgbouncer_port() -> Iterator[int]:
    """One PgBouncer (transaction pooling, as Neon's "-pooler" endpoints) in front of the test server."""
    admin = make_url(ADMIN_DATABASE_URL)
    with pgbouncer(admin.host or "127.0.0.1", admin.port or 5432, default_pool_size="5") as port:
        yield port


def through_pgbouncer(url: str, port: int) -> str:
    """The same database reached through PgBouncer; `pgbouncer=true` switches the app's PgBouncer mode on."""
    routed = make_url(url).set(host="127.0.0.1", port=port).update_query_dict({"pgbouncer": "true"})
    return routed.render_as_string(hide_password=False)


DATABASE_KINDS = ["postgresql", "sqlite", "pgbouncer"]
SINGLE_DATABASE = "postgresql"  # production's database


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`database_url`'s kinds: all of them, or PostgreSQL alone under the `single_database` mark.

    The mark closest to the test wins, so one test of a single-database module can ask for
    `every_database` (and the other way round).
    """
    if "database_url" not in metafunc.fixturenames:
        return
    marks = (mark.name for mark in metafunc.definition.iter_markers())  # the closest first
    closest = next((name for name in marks if name in ("single_database", "every_database")), "every_database")
    kinds = [SINGLE_DATABASE] if closest == "single_database" else DATABASE_KINDS
    metafunc.parametrize("database_url", kinds, indirect=True, scope="session")


@pytest.fixture(scope="session")
async def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("sqlite") / "todo.db"
        yield f"sqlite+aiosqlite:///{path}"
        return
    url = await create_scratch_database()
    try:
        if request.param == "pgbouncer":
            yield through_pgbouncer(url, request.getfixturevalue("suite_pgbouncer_port"))
        else:
            yield url
    finally:
        await drop_scratch_database(url)


@pytest.fixture(scope="session")
def dialect(database_url: str) -> str:
    return make_url(database_url).get_backend_name()


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_settings(database_url))
    await migrate_to_head(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with engine.connect() as connection:
        transaction = await connection.begin()
        try:
            yield connection
        finally:
            await transaction.rollback()


class JoinedConnection:
    """The test's connection, inside its outer transaction: reads run on it, writes in savepoints.

    Service writes commit their savepoint and the test still rolls everything back. One use at a
    time, like a pooled connection (concurrent requests in a test take turns).
    """

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection
        self._turn = asyncio.Lock()

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        async with self._turn:
            yield self._connection

    @asynccontextmanager
    async def writing(self, *, one_statement: bool = False) -> AsyncIterator[AsyncConnection]:
        async with self._turn, self._connection.begin_nested():
            yield self._connection


def joined_datastore(connection: AsyncConnection) -> Datastore:
    return Datastore(JoinedConnection(connection), gate=None, request_timeout=TEST_REQUEST_TIMEOUT)


@pytest.fixture
async def db(connection: AsyncConnection) -> Database:
    """A request's database access whose writes stay inside the test's transaction."""
    return joined_datastore(connection).for_request()


@pytest.fixture
def datastore(engine: AsyncEngine, database_url: str) -> Datastore:
    """The engine's pooled connections as the app uses them: writes really commit (clean up after)."""
    return Datastore.pooled(engine, make_settings(database_url))


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module (or with @pytest.mark.parametrize) to change the app's settings."""
    return {}


@pytest.fixture
async def app(
    database_url: str, engine: AsyncEngine, connection: AsyncConnection, settings_overrides: dict[str, Any]
) -> AsyncIterator[FastAPI]:
    """The app on the test's connection: every request's writes are savepoints the test rolls back."""
    app = create_app(make_settings(database_url, **settings_overrides), engine=engine)
    async with app.router.lifespan_context(app):
        app.state.datastore = joined_datastore(connection)
        yield app


class FakeClock:
    """A clock that moves only when a test advances it; starts at the real wall time."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def clock(app: FastAPI) -> AsyncIterator[FakeClock]:
    """The app's token verifier and JWKS cache read this clock instead of the real ones.

    A frozen clock makes concurrent JWKS waiters refetch (no time passed since the last attempt):
    only tests that step over an interval use it.
    """
    fake = FakeClock()
    settings: Settings = app.state.settings
    async with httpx.AsyncClient(timeout=settings.jwks_fetch_timeout) as http_client:
        app.state.token_verifier = TokenVerifier(settings, JwksCache(settings, http_client, clock=fake), clock=fake)
        yield fake


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
def count_queries(engine: AsyncEngine) -> Callable[[], Any]:
    """Use as `with count_queries() as statements:`; lists the SQL run meanwhile (not BEGIN/SAVEPOINT)."""
    from contextlib import contextmanager

    @contextmanager
    def counting() -> Any:
        statements: list[str] = []

        def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if not statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK", "BEGIN")):
                statements.append(statement)

        event.listen(engine.sync_engine, "before_cursor_execute", record)
        try:
            yield statements
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", record)

    return counting
