"""Async engine, sessions and schema creation for PostgreSQL (asyncpg) and SQLite (aiosqlite)."""

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from backend.config import Settings
from backend.database_url import is_pgbouncer, normalize_database_url, ssl_mode
from backend.errors import ServiceUnavailable
from backend.migrations import upgrade_to_head

logger = logging.getLogger(__name__)

_AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}
AUTOCOMMIT_READS = "todo_autocommit_reads"  # an engine option: may reads skip BEGIN and ROLLBACK?
# What PgBouncer answers to a startup parameter it does not know; PostgreSQL itself never says it.
_REFUSED_STARTUP_PARAMETER = "unsupported startup parameter"


def _postgres_connect_args(settings: Settings, *, pgbouncer: bool | None = None) -> dict[str, Any]:
    if pgbouncer is None:
        pgbouncer = is_pgbouncer(settings.database_url, settings)
    original = make_url(settings.database_url)
    args: dict[str, Any] = {
        "timeout": settings.db_connect_timeout,
        # Client-side, and asyncpg cancels the statement on the server when it fires: the only
        # statement timeout in PgBouncer mode (SET LOCAL would cost a round trip per transaction).
        "command_timeout": settings.db_statement_timeout_ms / 1000 or None,
    }
    sslmode = ssl_mode(settings.database_url)
    if sslmode:
        args["ssl"] = sslmode
    server_settings = {"application_name": str(original.query.get("application_name", "todo-api"))}
    if pgbouncer:
        # Transaction pooling hands each transaction to any server connection, so a named
        # prepared statement may not exist where the next statement runs. Unique names and
        # no statement caches keep asyncpg correct there (SQLAlchemy asyncpg docs, "pgbouncer").
        args["statement_cache_size"] = 0
        args["prepared_statement_cache_size"] = 0
        args["prepared_statement_name_func"] = lambda: f"__asyncpg_{uuid.uuid4()}__"
    else:
        # PgBouncer refuses unknown startup parameters; a direct server takes them.
        server_settings["statement_timeout"] = str(settings.db_statement_timeout_ms)
    args["server_settings"] = server_settings
    return args


def _register_sqlite_hooks(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # The sqlite3 driver's own transaction handling breaks SAVEPOINT and begins lazily;
        # SQLAlchemy's documented fix: driver autocommit off, explicit BEGIN. IMMEDIATE takes
        # the write lock up front, so a second process waits (busy_timeout) instead of failing.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        # SQLite's lower() and LIKE fold ASCII only; the API promises Unicode case-insensitivity.
        dbapi_connection.create_function("unicode_lower", 1, _unicode_lower, deterministic=True)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def _unicode_lower(value: str | None) -> str | None:
    return value.lower() if isinstance(value, str) else value


def create_engine(settings: Settings) -> AsyncEngine:
    url = normalize_database_url(settings.database_url)
    if url.drivername == "sqlite+aiosqlite":
        # One connection: SQLite has one writer at a time, and a deferred transaction that
        # later writes fails with "database is locked" instead of waiting.
        engine = create_async_engine(
            url,
            pool_size=1,
            max_overflow=0,
            pool_timeout=settings.db_pool_timeout,
            execution_options={AUTOCOMMIT_READS: True},
        )
        _register_sqlite_hooks(engine)
        return engine
    pgbouncer = is_pgbouncer(settings.database_url, settings)
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=settings.db_pool_recycle,
        connect_args=_postgres_connect_args(settings, pgbouncer=pgbouncer),
        # Behind PgBouncer's transaction pooling, a statement outside a transaction may be
        # prepared on one server connection and executed on another: reads keep their BEGIN there.
        execution_options={AUTOCOMMIT_READS: not pgbouncer},
    )
    _discard_dead_connections(engine)
    if settings.db_pgbouncer is None and not pgbouncer:
        _detect_unannounced_pgbouncer(engine, settings)
    return engine


@dataclass
class _PoolerDetection:
    pgbouncer: bool = False
    checked: bool = False


def _detect_unannounced_pgbouncer(engine: AsyncEngine, settings: Settings) -> None:
    """Switch the engine to PgBouncer mode when the server turns out to be a transaction pooler.

    A stock PgBouncer refuses the statement_timeout startup parameter; one told to ignore it
    accepts the connection but drops the setting, which the engine's first connection checks
    (one query per engine). Either way that connection is opened again in PgBouncer mode, and so
    is every later one. Deciding inside the engine's own connect (SQLAlchemy's do_connect event)
    serves every caller of create_engine, and works when the database is still down at start-up.
    """
    pgbouncer_args = _postgres_connect_args(settings, pgbouncer=True)
    detection = _PoolerDetection()

    @event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
        if not detection.pgbouncer:
            connection = _connect_unless_pooled(dialect, cargs, cparams)
            if connection is not None:
                return connection
            _switch_to_pgbouncer_mode()
        return dialect.connect(*cargs, **{**cparams, **pgbouncer_args})

    def _switch_to_pgbouncer_mode() -> None:
        if detection.pgbouncer:  # concurrent first connections may all find the pooler
            return
        detection.pgbouncer = True
        engine.sync_engine.update_execution_options(**{AUTOCOMMIT_READS: False})
        logger.warning(
            "DATABASE_URL leads to a transaction pooler such as PgBouncer (it refused or dropped the "
            "statement_timeout startup parameter): PgBouncer mode is on (no prepared-statement caches, "
            "reads in transactions, statement timeout client-side); DB_PGBOUNCER=true says so up front"
        )

    def _connect_unless_pooled(dialect: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any | None:
        """A connection in direct mode, or None when the server turns out to be a pooler."""
        try:
            connection = dialect.connect(*cargs, **cparams)
        except dialect.loaded_dbapi.Error as exc:
            if _REFUSED_STARTUP_PARAMETER in str(exc):
                return None
            raise
        if detection.checked:
            return connection
        try:
            kept = _statement_timeout_kept(connection, settings.db_statement_timeout_ms)
        except BaseException:
            connection.terminate()
            raise
        if not kept:
            connection.close()
            return None
        detection.checked = True
        return connection


def _statement_timeout_kept(connection: Any, timeout_ms: int) -> bool:
    """Did the server apply the statement_timeout startup parameter? A pooler may drop it silently."""
    cursor = connection.cursor()
    try:
        # Inside a transaction (the DBAPI's implicit BEGIN), so a transaction pooler keeps the
        # statement's prepare and execute on one server connection.
        cursor.execute("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'")
        row = cursor.fetchone()
    finally:
        cursor.close()
        connection.rollback()
    return row is not None and row[0] == str(timeout_ms)


def _discard_dead_connections(engine: AsyncEngine) -> None:
    """A cheap pre-ping: replace pooled connections the server closed while they sat idle.

    A restarted server or a suspended Neon compute closes its sockets, and asyncpg notices
    without a round trip. SQLAlchemy's pool_pre_ping would cost three round trips per checkout
    (BEGIN, a ping, ROLLBACK); a connection that dies mid-statement is still answered with 503,
    and SQLAlchemy then replaces every connection older than the failure.
    """

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if dbapi_connection.driver_connection.is_closed():
            raise DisconnectionError("connection closed by the server while idle")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def migration_settings(settings: Settings) -> Settings:
    """The settings for an engine that migrates: one connection, no statement timeout.

    A revision may build an index over every row, and an instance starting meanwhile waits for it:
    neither is a runaway query. Unless DB_PGBOUNCER says otherwise, PgBouncer mode: it suits one
    transaction on any server, and skips the pooler detection (the app's engine does that, and warns once).
    """
    pgbouncer = True if settings.db_pgbouncer is None else settings.db_pgbouncer
    unbounded = {"db_statement_timeout_ms": 0, "db_pgbouncer": pgbouncer, "db_pool_size": 1, "db_max_overflow": 0}
    return settings.model_copy(update=unbounded)


async def migrate_database(settings: Settings) -> None:
    """Start-up's migration, on an engine of its own: the app's keeps DB_STATEMENT_TIMEOUT_MS."""
    engine = create_engine(migration_settings(settings))
    try:
        await migrate_to_head(engine)
    finally:
        await engine.dispose()


async def migrate_to_head(engine: AsyncEngine, *, attempts: int = 5) -> None:
    """Bring the schema to the newest revision (backend/migrations), one instance at a time.

    One transaction: PostgreSQL holds an advisory lock in it, SQLite's BEGIN IMMEDIATE the write
    lock, so instances starting together take turns and the later ones find nothing left to do.
    """
    for attempt in range(1, attempts + 1):
        try:
            async with engine.begin() as connection:
                await connection.run_sync(upgrade_to_head)
            return
        except (OperationalError, ProgrammingError) as exc:
            # SQLite may still report a lost race (a busy timeout); the retry finds the schema migrated.
            if attempt == attempts:
                raise
            logger.warning("schema migration raced or failed (%s); retrying", exc.__class__.__name__)
            await asyncio.sleep(0.2 * attempt)


def create_admission_gate(engine: AsyncEngine) -> asyncio.Semaphore:
    """As many permits as the pool has connections (see `get_session`)."""
    pool: Any = engine.pool
    return asyncio.Semaphore(pool.size() + max(pool._max_overflow, 0))


@asynccontextmanager
async def _admitted(gate: asyncio.Semaphore, wait_seconds: float) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(wait_seconds):
            await gate.acquire()
    except TimeoutError:
        raise ServiceUnavailable("The server is busy; retry shortly", retry_after=1) from None
    try:
        yield
    finally:
        gate.release()


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request; closing it rolls back whatever a service did not commit.

    Requests are admitted first come, first served, one per pooled connection: SQLAlchemy's
    pool hands a freed connection to whichever task asks next, so under load a newcomer can
    overtake requests that have waited for seconds (the p99 at 1000 connections).
    """
    state = request.app.state
    async with _admitted(state.db_gate, state.settings.db_pool_timeout), state.sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


@asynccontextmanager
async def read_only(session: AsyncSession) -> AsyncIterator[AsyncConnection]:
    """The session's connection for a read-only service call, without BEGIN/ROLLBACK round trips.

    Statements run on the connection (Core), not through the ORM. The connection goes back to
    the pool at the end. Inside a transaction that is already open (a write, a test's outer
    transaction) it simply joins it.
    """
    if session.in_transaction() or not isinstance(session.bind, AsyncEngine):
        yield await session.connection()
        return
    # Straight from the engine's pool: a read needs none of the ORM session's transaction bookkeeping.
    async with session.bind.connect() as connection:
        if session.bind.get_execution_options().get(AUTOCOMMIT_READS):
            await connection.execution_options(**_AUTOCOMMIT)
        yield connection


def insert_ignoring_conflicts(session: AsyncSession, table: Table) -> postgresql.Insert | sqlite.Insert:
    """INSERT ... ON CONFLICT DO NOTHING in the session's dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()
