"""The async engine (PostgreSQL through asyncpg, SQLite through aiosqlite), schema migration at start-up,
and `Database`: a request's only way to its data (one helper for reads, one for writes)."""

import asyncio
import contextlib
import functools
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

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
        # An AUTOCOMMIT connection gets no BEGIN: nothing would ever commit it.
        if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None
        # Cancelling a task does not stop the statement SQLite runs in aiosqlite's thread; this
        # handler does, once the request's budget is spent (see Database._use).
        deadline = StatementDeadline()
        record.info[StatementDeadline.KEY] = deadline
        dbapi_connection.run_async(lambda driver: driver.set_progress_handler(deadline.passed, 1000))
        # SQLite's lower() and LIKE fold ASCII only; the API promises Unicode case-insensitivity.
        dbapi_connection.create_function("unicode_lower", 1, _unicode_lower, deterministic=True)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


class StatementDeadline:
    """When SQLite's progress handler aborts the connection's statement (time.monotonic; inf: never)."""

    KEY = "todo_statement_deadline"

    def __init__(self) -> None:
        self.at = math.inf

    def passed(self) -> int:
        return int(time.monotonic() > self.at)  # non-zero aborts the statement ("interrupted")


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
        json_deserializer=orjson.loads,  # the tags of every row read: several times faster than json.loads
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


# --- A request's way to the database ------------------------------------------------------------


class AdmissionGate:
    """One permit per pooled connection, granted first come, first served.

    SQLAlchemy's pool hands a freed connection to whichever task asks next, so under load a newcomer
    can overtake requests that have waited for seconds (the p99 at 1000 connections). asyncio's
    semaphore queues its waiters in order.
    """

    def __init__(self, engine: AsyncEngine, *, wait_seconds: float) -> None:
        pool: Any = engine.pool
        self._permits = asyncio.Semaphore(pool.size() + max(pool._max_overflow, 0))
        self._wait_seconds = wait_seconds

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._wait_seconds):
                await self._permits.acquire()
        except TimeoutError:
            raise ServiceUnavailable("The server is busy; retry shortly", retry_after=1) from None
        try:
            yield
        finally:
            self._permits.release()


class ConnectionSource(Protocol):
    def reading(self) -> AbstractAsyncContextManager[AsyncConnection]: ...
    def writing(self, *, one_statement: bool = False) -> AbstractAsyncContextManager[AsyncConnection]: ...


class PooledConnections:
    """Connections from the engine's pool: reads without BEGIN/ROLLBACK where that is safe, writes in
    one transaction each (committed when the block ends without an exception)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as connection:
            # Read at runtime: an unannounced PgBouncer found at the first connect switches it off.
            if self.engine.get_execution_options().get(AUTOCOMMIT_READS):
                await connection.execution_options(**_AUTOCOMMIT)
            yield connection

    def writing(self, *, one_statement: bool = False) -> AbstractAsyncContextManager[AsyncConnection]:
        if one_statement and self.engine.get_execution_options().get(AUTOCOMMIT_READS):
            # One statement is atomic by itself: no BEGIN and COMMIT round trips, and no transaction
            # left open while a busy event loop serves other requests (the same care as reads about
            # PgBouncer's transaction pooling).
            return self.reading()
        return self.engine.begin()


class Database:
    """One request's access to the database: `reading()` and `writing()`, and no other way.

    - A request uses one connection at a time (GraphQL's sibling fields take turns), admitted first
      come, first served, and gives it back at the end of each block.
    - All of a request's database work, waiting included, fits in DB_REQUEST_TIMEOUT. Past it the
      statement is cancelled (asyncpg cancels it on the server; SQLite's is interrupted in its
      thread), the connection goes back to the pool, and the request gets 503.
    """

    def __init__(self, connections: ConnectionSource, gate: AdmissionGate | None, *, timeout_seconds: float) -> None:
        self._connections = connections
        self._gate = gate
        self._timeout_seconds = timeout_seconds
        self._deadline = asyncio.get_running_loop().time() + timeout_seconds
        self._turn = asyncio.Lock()
        self._closed = False

    def reading(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for statements that only read."""
        return self._use(self._connections.reading)

    def writing(self, *, one_statement: bool = False) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection in a transaction, committed when the block ends without an exception.

        `one_statement=True` promises a single statement, atomic by itself: where the connection allows it,
        it runs without BEGIN and COMMIT.
        """
        return self._use(functools.partial(self._connections.writing, one_statement=one_statement))

    async def close(self) -> None:
        """Wait for the block in progress, then refuse further use.

        When a non-null GraphQL field fails, graphql-core answers without awaiting its siblings:
        they must not start database work for a request that has been answered.
        """
        async with self._turn:
            self._closed = True

    @asynccontextmanager
    async def _use(
        self, open_connection: Callable[[], AbstractAsyncContextManager[AsyncConnection]]
    ) -> AsyncIterator[AsyncConnection]:
        async with self._turn:
            if self._closed:
                raise RuntimeError("this request has already been answered")
            budget = asyncio.timeout_at(self._deadline)
            try:
                async with budget, self._admitted(), open_connection() as connection:
                    with _statements_stopped_before(connection, self._deadline):
                        yield connection
            except (TimeoutError, StatementStopped) as stopped:
                if isinstance(stopped, TimeoutError) and not budget.expired():
                    raise
                raise ServiceUnavailable(
                    f"The request's database work took longer than {self._timeout_seconds:g} s; "
                    "ask for less at once, or retry",
                    retry_after=1,
                ) from None

    def _admitted(self) -> AbstractAsyncContextManager[None]:
        return self._gate.admitted() if self._gate is not None else contextlib.nullcontext()


# SQLite's handler stops a statement this long before the budget ends, so it ends as an ordinary error
# ("interrupted") and its connection is cleaned up as usual. Cancelling the task mid-statement instead
# leaves the sqlite3 connection a zombie, holding its locks until the garbage collector frees it.
SQLITE_STOP_AHEAD_SECONDS = 0.05


class StatementStopped(Exception):
    """SQLite's progress handler stopped a statement at the request's deadline."""


@contextlib.contextmanager
def _statements_stopped_before(connection: AsyncConnection, deadline: float) -> Iterator[None]:
    """SQLite: its progress handler aborts a statement still running near `deadline` (loop time).
    Elsewhere the budget's cancellation is enough: asyncpg cancels the statement on the server."""
    statement_deadline: StatementDeadline | None = connection.info.get(StatementDeadline.KEY)
    if statement_deadline is None:
        yield
        return
    # In time.monotonic's terms: the handler runs in aiosqlite's thread, away from the loop's clock.
    remaining = deadline - asyncio.get_running_loop().time()
    statement_deadline.at = time.monotonic() + remaining - SQLITE_STOP_AHEAD_SECONDS
    try:
        yield
    except OperationalError as error:
        stopped = time.monotonic() >= statement_deadline.at
        statement_deadline.at = math.inf
        if stopped:
            raise StatementStopped() from error
        raise
    except asyncio.CancelledError:
        # A client that went away cancelled the task, but the statement may still run in the
        # thread: stop it now.
        statement_deadline.at = -math.inf
        raise
    except BaseException:
        statement_deadline.at = math.inf
        raise
    statement_deadline.at = math.inf


class Datastore:
    """The process's database: where connections come from, and a `Database` for each request."""

    def __init__(self, connections: ConnectionSource, *, gate: AdmissionGate | None, request_timeout: float) -> None:
        self._connections = connections
        self._gate = gate
        self._request_timeout = request_timeout

    @classmethod
    def pooled(cls, engine: AsyncEngine, settings: Settings) -> "Datastore":
        gate = AdmissionGate(engine, wait_seconds=settings.db_pool_timeout)
        return cls(PooledConnections(engine), gate=gate, request_timeout=settings.db_request_timeout)

    def for_request(self, *, timeout_seconds: float | None = None) -> Database:
        return Database(self._connections, self._gate, timeout_seconds=timeout_seconds or self._request_timeout)


def insert_ignoring_conflicts(connection: AsyncConnection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """INSERT ... ON CONFLICT DO NOTHING in the connection's dialect."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()
