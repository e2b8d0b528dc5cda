"""The SQLModel tables (Better Auth's user, tasks, task_counts, idempotency_keys), their constraints and indexes.

The schema comes from here: Alembic revisions (backend/migrations) are generated from these definitions.
The API's input and output shapes are in backend/schemas.py.
"""

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

import sqlmodel
from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    case,
    cast,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import Grouping
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import immutabledict
from sqlmodel import SQLModel

from backend.config import get_settings

TITLE_MAX = 200
DESCRIPTION_MAX = 1000

# Stable constraint names on both databases (Polar kit/db/models/base.py).
SQLModel.metadata.naming_convention = immutabledict(
    {
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """timestamptz on PostgreSQL; on SQLite, naive UTC text. Always aware UTC in Python."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        # asyncpg already returns timestamptz as aware UTC datetimes: no Python call per value there.
        if dialect.name == "postgresql":
            return None
        return super().result_processor(dialect, coltype)


TagsType = JSON().with_variant(JSONB(), "postgresql")


# --- Tables -------------------------------------------------------------------------------


class User(SQLModel, table=True):
    """Better Auth's user table, mirrored column for column (camelCase names, quoted)."""

    __tablename__: ClassVar[str] = get_settings().user_table

    id: str = sqlmodel.Field(sa_column=Column(Text, primary_key=True))
    name: str = sqlmodel.Field(sa_column=Column(Text, nullable=False))
    email: str = sqlmodel.Field(sa_column=Column(Text, nullable=False, unique=True))
    email_verified: bool = sqlmodel.Field(
        default=False,
        sa_column=Column("emailVerified", Boolean, nullable=False, server_default=text("false")),
    )
    image: str | None = sqlmodel.Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = sqlmodel.Field(
        default_factory=utcnow,
        sa_column=Column("createdAt", UTCDateTime, nullable=False, server_default=func.now()),
    )
    updated_at: datetime = sqlmodel.Field(
        default_factory=utcnow,
        sa_column=Column("updatedAt", UTCDateTime, nullable=False, server_default=func.now()),
    )


class Priority(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


PRIORITY_RANK = {Priority.LOW: 1, Priority.MEDIUM: 2, Priority.HIGH: 3}


class Task(SQLModel, table=True):
    __tablename__: ClassVar[str] = "tasks"

    id: int | None = sqlmodel.Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    user_id: str = sqlmodel.Field(
        sa_column=Column(Text, ForeignKey(f"{User.__tablename__}.id", ondelete="CASCADE"), nullable=False)
    )
    title: str = sqlmodel.Field(sa_column=Column(Text, nullable=False))  # length: CHECK below
    description: str | None = sqlmodel.Field(default=None, sa_column=Column(Text, nullable=True))
    completed: bool = sqlmodel.Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=text("false"))
    )
    priority: str = sqlmodel.Field(
        default=Priority.MEDIUM.value,
        sa_column=Column(Text, nullable=False, server_default=text("'medium'")),
    )
    tags: list[str] = sqlmodel.Field(
        default_factory=list, sa_column=Column(TagsType, nullable=False, server_default=text("'[]'"))
    )
    due_date: datetime | None = sqlmodel.Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    created_at: datetime = sqlmodel.Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False, server_default=func.now())
    )
    updated_at: datetime = sqlmodel.Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False, server_default=func.now())
    )


tasks_table = Task.__table__  # type: ignore[attr-defined]
priority_rank = case({p.value: rank for p, rank in PRIORITY_RANK.items()}, value=tasks_table.c.priority, else_=0)

tasks_table.append_constraint(
    CheckConstraint(f"length(trim(title)) >= 1 AND length(title) <= {TITLE_MAX}", name="title_length")
)
tasks_table.append_constraint(
    CheckConstraint(f"description IS NULL OR length(description) <= {DESCRIPTION_MAX}", name="description_length")
)
tasks_table.append_constraint(CheckConstraint("priority IN ('low', 'medium', 'high')", name="priority_value"))
# Every list query is "one user's tasks, ordered by X, then id": one index per sort key.
# The (user_id, ...) prefixes also serve the foreign key and the spec's user_id index.
Index("ix_tasks_user_id_created_at", tasks_table.c.user_id, tasks_table.c.created_at, tasks_table.c.id)
Index(
    "ix_tasks_user_id_completed",
    tasks_table.c.user_id,
    tasks_table.c.completed,
    tasks_table.c.created_at,
    tasks_table.c.id,
)
Index("ix_tasks_user_id_updated_at", tasks_table.c.user_id, tasks_table.c.updated_at, tasks_table.c.id)
Index("ix_tasks_user_id_due_date", tasks_table.c.user_id, tasks_table.c.due_date, tasks_table.c.id)
Index("ix_tasks_user_id_priority", tasks_table.c.user_id, Grouping(priority_rank), tasks_table.c.id)
# PostgreSQL only: SQLite folds case with a function registered per connection by this app,
# and an index on it would break every other SQLite client that writes the table.
Index(
    "ix_tasks_user_id_title",
    tasks_table.c.user_id,
    func.lower(tasks_table.c.title),
    tasks_table.c.id,
).ddl_if(dialect="postgresql")
# PostgreSQL only: trigram indexes answer `lower(column) LIKE '%text%'` (sql_functions.contains_ignoring_case)
# without reading every task of the user; they need the pg_trgm extension (revision 0002_trigram_search).
for searched in (tasks_table.c.title, tasks_table.c.description):
    Index(
        f"ix_tasks_{searched.name}_trgm",
        Grouping(func.lower(searched)).label("folded"),
        postgresql_using="gin",
        postgresql_ops={"folded": "gin_trgm_ops"},
    ).ddl_if(dialect="postgresql")
tag_keys = cast(func.lower(cast(tasks_table.c.tags, Text)), JSONB)
Index(
    "ix_tasks_tag_keys",
    Grouping(tag_keys).label("tag_keys"),
    postgresql_using="gin",
    postgresql_ops={"tag_keys": "jsonb_path_ops"},
).ddl_if(dialect="postgresql")


class TaskCount(SQLModel, table=True):
    """Each user's task totals, kept by database triggers, so a list's total costs one row read.

    Triggers (not the service) maintain it, so rows written by any tool are counted too. The triggers
    and the backfill are in migration backend/migrations/versions/0001_baseline.py; a change is a new revision.
    """

    __tablename__: ClassVar[str] = "task_counts"

    user_id: str = sqlmodel.Field(
        sa_column=Column(Text, ForeignKey(f"{User.__tablename__}.id", ondelete="CASCADE"), primary_key=True)
    )
    total: int = sqlmodel.Field(default=0, sa_column=Column(Integer, nullable=False, server_default=text("0")))
    completed: int = sqlmodel.Field(default=0, sa_column=Column(Integer, nullable=False, server_default=text("0")))


task_counts_table = TaskCount.__table__  # type: ignore[attr-defined]


class IdempotencyState(StrEnum):
    IN_PROGRESS = "in_progress"  # the creating transaction holds the row
    FINISHED = "finished"  # `response` is the task as first returned


class IdempotencyKey(SQLModel, table=True):
    """A create retried with the same idempotency key (REST header, GraphQL input) replays the first answer."""

    __tablename__: ClassVar[str] = "idempotency_keys"

    user_id: str = sqlmodel.Field(
        sa_column=Column(Text, ForeignKey(f"{User.__tablename__}.id", ondelete="CASCADE"), primary_key=True)
    )
    key: str = sqlmodel.Field(sa_column=Column(String(255), primary_key=True))
    request_hash: str = sqlmodel.Field(sa_column=Column(String(64), nullable=False))
    state: str = sqlmodel.Field(sa_column=Column(Text, nullable=False))
    response: str | None = sqlmodel.Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = sqlmodel.Field(
        default_factory=utcnow,
        sa_column=Column(UTCDateTime, nullable=False, server_default=func.now(), index=True),
    )


idempotency_table = IdempotencyKey.__table__  # type: ignore[attr-defined]
idempotency_table.append_constraint(
    CheckConstraint(f"state IN {tuple(state.value for state in IdempotencyState)}", name="state_value")
)
