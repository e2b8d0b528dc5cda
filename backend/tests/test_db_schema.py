"""The database enforces what the API promises, on both databases (spec FR-010)."""

from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect, literal, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.db import Database, create_engine, migrate_to_head
from backend.migrations import alembic_config
from backend.models import tasks_table
from backend.sql_functions import contains_ignoring_case
from backend.tests.conftest import create_scratch_database, drop_scratch_database, make_settings
from backend.tests.factories import create_task, principal

pytestmark = pytest.mark.every_database


async def insert_user(connection: AsyncConnection, user_id: str = "raw-user", email: str = "raw@example.com") -> None:
    await connection.execute(
        text('INSERT INTO "user" (id, name, email) VALUES (:id, :name, :email)'),
        {"id": user_id, "name": "Raw", "email": email},
    )


async def test_rows_written_by_other_tools_get_defaults(connection: AsyncConnection) -> None:
    await insert_user(connection)
    await connection.execute(text("INSERT INTO tasks (user_id, title) VALUES ('raw-user', 'seeded')"))
    row = (await connection.execute(text("SELECT completed, priority, tags, created_at, updated_at FROM tasks"))).one()
    assert row.completed in (False, 0)
    assert row.priority == "medium"
    assert row.tags in ([], "[]")
    assert row.created_at is not None
    assert row.updated_at is not None


@pytest.mark.parametrize(
    ("columns", "values"),
    [
        ("user_id, title", "'raw-user', ''"),
        ("user_id, title", "'raw-user', '   '"),
        ("user_id, title", f"'raw-user', '{'x' * 201}'"),
        ("user_id, title, description", f"'raw-user', 'ok', '{'d' * 1001}'"),
        ("user_id, title, priority", "'raw-user', 'ok', 'urgent'"),
        ("user_id, title", "'nobody', 'orphan'"),
        ("title", "'no owner'"),
        ("user_id", "'raw-user'"),
    ],
)
async def test_constraints_refuse_what_the_api_refuses(connection: AsyncConnection, columns: str, values: str) -> None:
    await insert_user(connection)
    with pytest.raises(IntegrityError):
        await connection.execute(text(f"INSERT INTO tasks ({columns}) VALUES ({values})"))


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
async def test_user_table_mirrors_better_auth(connection: AsyncConnection) -> None:
    def describe(sync_connection: Any) -> tuple[set[str], list[Any], list[Any]]:
        inspector = inspect(sync_connection)
        columns = {column["name"] for column in inspector.get_columns("user")}
        foreign_keys = inspector.get_foreign_keys("tasks")
        indexes = inspector.get_indexes("tasks")
        return columns, foreign_keys, indexes

    columns, foreign_keys, indexes = await connection.run_sync(describe)
    assert columns == {"id", "name", "email", "emailVerified", "image", "createdAt", "updatedAt"}
    assert [(fk["referred_table"], fk["constrained_columns"]) for fk in foreign_keys] == [("user", ["user_id"])]
    index_columns = {tuple(index["column_names"][:2]) for index in indexes}
    assert ("user_id", "completed") in index_columns
    assert ("user_id", "created_at") in index_columns


async def test_jit_user_never_alters_an_existing_row(connection: AsyncConnection, db: Database) -> None:
    await insert_user(connection, "ba-user", "original@example.com")
    await create_task(db, principal("ba-user", email="changed@example.com", name="Changed"))
    row = (await connection.execute(text("SELECT name, email FROM \"user\" WHERE id = 'ba-user'"))).one()
    assert (row.name, row.email) == ("Raw", "original@example.com")


BETTER_AUTH_USER_DDL = """
CREATE TABLE "user" (
    "id" text NOT NULL PRIMARY KEY,
    "name" text NOT NULL,
    "email" text NOT NULL UNIQUE,
    "emailVerified" boolean NOT NULL,
    "image" text,
    "createdAt" timestamptz DEFAULT CURRENT_TIMESTAMP NOT NULL,
    "updatedAt" timestamptz DEFAULT CURRENT_TIMESTAMP NOT NULL,
    "role" text
)
"""


async def test_schema_creation_leaves_an_existing_user_table_alone() -> None:
    """The baseline skips a user table Better Auth made; `alembic check` ignores the columns it added."""
    url = await create_scratch_database("todo_schema")
    engine = create_engine(make_settings(url))
    try:
        async with engine.begin() as connection:
            await connection.execute(text(BETTER_AUTH_USER_DDL))
            await connection.execute(
                text(
                    'INSERT INTO "user" (id, name, email, "emailVerified", role) '
                    "VALUES ('ba1', 'Ann', 'ann@example.com', true, 'admin')"
                )
            )
        await migrate_to_head(engine)
        await migrate_to_head(engine)  # idempotent
        async with engine.begin() as connection:
            columns = await connection.run_sync(lambda sync: {c["name"] for c in inspect(sync).get_columns("user")})
            assert "role" in columns
            await connection.run_sync(lambda sync: command.check(alembic_config(sync)))
            await connection.execute(text("INSERT INTO tasks (user_id, title) VALUES ('ba1', 'works')"))
            row = (await connection.execute(text('SELECT name, role FROM "user"'))).one()
            assert (row.name, row.role) == ("Ann", "admin")
    finally:
        await engine.dispose()
        await drop_scratch_database(url)


@pytest.mark.parametrize("column", ["title", "description"])
async def test_the_search_predicate_matches_its_trigram_index(
    connection: AsyncConnection, dialect: str, column: str
) -> None:
    """The list's search condition is the very expression the GIN trigram index covers (PostgreSQL)."""
    if dialect != "postgresql":
        pytest.skip("trigram indexes exist on PostgreSQL only; SQLite scans the user's rows")
    searched = select(tasks_table.c.id).where(contains_ignoring_case(tasks_table.c[column], literal("mi%lk")))
    compiled = searched.compile(connection.sync_connection, compile_kwargs={"literal_binds": True})
    await connection.execute(text("SET LOCAL enable_seqscan = off"))
    plan = "\n".join((await connection.exec_driver_sql(f"EXPLAIN {compiled}")).scalars().all())
    assert f"ix_tasks_{column}_trgm" in plan, plan
