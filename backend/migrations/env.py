"""Alembic's environment: the target is SQLModel.metadata (backend/models.py), on PostgreSQL and SQLite.

Start-up passes its own connection, already in a transaction and holding the schema lock
(backend.migrations.upgrade_to_head); the alembic CLI opens one from DATABASE_URL (settings as the app
reads them) and takes the lock here.
"""

import asyncio
import warnings
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.schema import SchemaItem
from sqlmodel import SQLModel

from backend import models
from backend.config import get_settings
from backend.database_url import normalize_database_url
from backend.db import create_engine, migration_settings
from backend.migrations import BASELINE_REVISION, hold_schema_lock, made_before_migrations

config = context.config
target_metadata = SQLModel.metadata
USER_TABLE: str = models.User.__tablename__

if config.config_file_name is not None:  # the CLI (alembic.ini); start-up configures no file
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def include_name(name: str | None, type_: str, _parent_names: Any) -> bool:
    """Compare only our tables: Better Auth's others (session, account, ...) are none of ours."""
    if type_ == "table":
        return name in target_metadata.tables
    return True


def include_object(
    item: SchemaItem, _name: str | None, type_: str, reflected: bool, compare_to: SchemaItem | None
) -> bool:
    """Compare Better Auth's user table only for the columns we read; skip indexes meant for the other dialect."""
    table = getattr(item, "table", None)
    if table is not None and table.name == USER_TABLE:
        # Better Auth owns the table: it may add columns (role, ...) and name its constraints its own way.
        return type_ == "column" and not (reflected and compare_to is None)
    if type_ == "index" and not context.is_offline_mode():
        return _built_on(item, context.get_context().dialect.name)
    return True


def compare_server_default(_context: Any, _inspected: Any, metadata_column: Any, *_defaults: Any) -> bool | None:
    """Better Auth sets the user table's defaults (or none); every other default is compared as usual."""
    return False if metadata_column.table.name == USER_TABLE else None


def _built_on(item: SchemaItem, dialect_name: str) -> bool:
    """False for an index declared with .ddl_if(dialect=...) for another dialect (autogenerate ignores ddl_if)."""
    condition = getattr(item, "_ddl_if", None)
    if condition is None or condition.dialect is None:
        return True
    dialects = (condition.dialect,) if isinstance(condition.dialect, str) else condition.dialect
    return dialect_name in dialects


def render_item(type_: str, item: Any, _autogen_context: AutogenContext) -> str | Literal[False]:
    """Revisions stand alone: the app's column types are rendered as the SQLAlchemy types they wrap."""
    if type_ == "type" and isinstance(item, models.UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**options: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        include_name=include_name,
        include_object=include_object,
        render_item=render_item,
        compare_server_default=compare_server_default,
        **options,
    )


def run_on(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    _configure(connection=connection, render_as_batch=sqlite)
    with context.begin_transaction(), warnings.catch_warnings():
        if sqlite:
            # SQLite cannot reflect expression indexes, so autogenerate skips them, saying so per index;
            # backend/tests/test_migrations.py compares them through sqlite_master instead.
            warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
            warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression-based index")
        if made_before_migrations(connection):
            context.get_context().stamp(ScriptDirectory.from_config(config), BASELINE_REVISION)
        context.run_migrations()


async def run_from_settings() -> None:
    engine = create_engine(migration_settings(get_settings()))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(hold_schema_lock)
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


def run_offline() -> None:
    _configure(url=normalize_database_url(get_settings().database_url), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if context.is_offline_mode():
    run_offline()
elif connection is not None:
    run_on(connection)
else:
    asyncio.run(run_from_settings())
