"""SQLModel tables (User, Task, IdempotencyKey) and the API's input/output schemas."""

import hashlib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar

import sqlmodel
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
)
from pydantic_core import PydanticCustomError
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
TAGS_MAX = 10
TAG_MAX = 32
PAGE_MAX = 1_000_000
LIMIT_MAX = 100
INT32_MAX = 2**31 - 1

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


class IdempotencyKey(SQLModel, table=True):
    """A POST /tasks retried with the same Idempotency-Key replays the first response."""

    __tablename__: ClassVar[str] = "idempotency_keys"

    user_id: str = sqlmodel.Field(
        sa_column=Column(Text, ForeignKey(f"{User.__tablename__}.id", ondelete="CASCADE"), primary_key=True)
    )
    key: str = sqlmodel.Field(sa_column=Column(String(255), primary_key=True))
    request_hash: str = sqlmodel.Field(sa_column=Column(String(64), nullable=False))
    status_code: int = sqlmodel.Field(sa_column=Column(Integer, nullable=False))
    response: str = sqlmodel.Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = sqlmodel.Field(
        default_factory=utcnow,
        sa_column=Column(UTCDateTime, nullable=False, server_default=func.now(), index=True),
    )


# --- Input validation -----------------------------------------------------------------------


def _text_error(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_text", message)


def _clean_text(value: object, *, allow_newlines: bool) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _text_error("must be valid Unicode text") from None
    allowed = "\t\n\r" if allow_newlines else "\t"
    if any((ord(ch) < 32 and ch not in allowed) or ord(ch) == 127 for ch in value):
        raise _text_error("must not contain control characters")
    return value


def _title(value: object) -> str:
    title = _clean_text(value, allow_newlines=False).strip()
    if not title:
        raise _text_error("must not be blank")
    if len(title) > TITLE_MAX:
        raise _text_error(f"must be at most {TITLE_MAX} characters")
    return title


def _description(value: object) -> str | None:
    if value is None:
        return None
    description = _clean_text(value, allow_newlines=True)
    if len(description) > DESCRIPTION_MAX:
        raise _text_error(f"must be at most {DESCRIPTION_MAX} characters")
    return description


def normalize_tags(value: object) -> list[str]:
    """Trim, drop case-insensitive duplicates (first spelling wins), keep order, at most 10."""
    if not isinstance(value, list):
        raise PydanticCustomError("list_type", "must be a list of strings")
    tags: list[str] = []
    seen: set[str] = set()
    for item in value:
        tag = _clean_text(item, allow_newlines=False).strip()
        if not tag or len(tag) > TAG_MAX:
            raise _text_error(f"each tag must be 1-{TAG_MAX} characters after trimming")
        if tag.lower() not in seen:
            seen.add(tag.lower())
            tags.append(tag)
    if len(tags) > TAGS_MAX:
        raise _text_error(f"at most {TAGS_MAX} distinct tags")
    return tags


def _due_date(value: object) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("z", "Z"))
        except ValueError:
            raise PydanticCustomError("datetime", "must be an ISO-8601 date or date-time") from None
    else:
        raise PydanticCustomError("datetime", "must be an ISO-8601 date-time string")
    try:
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError("datetime", "is out of range") from None


Title = Annotated[str, BeforeValidator(_title), Field(min_length=1, max_length=TITLE_MAX)]
Description = Annotated[Annotated[str, Field(max_length=DESCRIPTION_MAX)] | None, BeforeValidator(_description)]
Tags = Annotated[list[str], BeforeValidator(normalize_tags), Field(max_length=TAGS_MAX)]
DueDate = Annotated[datetime | None, BeforeValidator(_due_date)]


class _Input(BaseModel):
    # Unknown fields (a frontend's `category`, server-owned `id`, `user_id`, ...) are ignored.
    model_config = ConfigDict(extra="ignore")


class TaskCreate(_Input):
    title: Title
    description: Description = None
    completed: StrictBool = False
    priority: Priority = Priority.MEDIUM
    tags: Tags = Field(default_factory=list)
    due_date: DueDate = None

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [{"title": "Buy milk", "description": "2 litres", "priority": "high", "tags": ["errands"]}]
        },
    )


class TaskUpdate(_Input):
    """PATCH: any subset. Explicit null clears description/due_date; it is refused elsewhere."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"priority": "low", "due_date": None}, {"tags": ["errands", "weekend"]}]},
    )

    title: Title | None = None
    description: Description = None
    completed: StrictBool | None = None
    priority: Priority | None = None
    tags: Tags | None = None
    due_date: DueDate = None

    @field_validator("title", "completed", "priority", "tags", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise PydanticCustomError("not_null", "may not be null")
        return value

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class TaskReplace(TaskUpdate):
    """PUT: title required; omitted optional fields keep their value, null clears as in PATCH."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [{"title": "Buy oat milk", "description": None, "completed": True, "priority": "medium"}]
        },
    )

    title: Title


class CompleteInput(_Input):
    completed: StrictBool | None = None

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [{"completed": True}]})


class TaskPublic(BaseModel):
    id: int
    user_id: str
    title: str
    description: str | None
    completed: bool
    priority: Priority
    tags: list[str]
    due_date: datetime | None
    created_at: datetime
    updated_at: datetime

    model_config = ConfigDict(from_attributes=True)

    @property
    def etag(self) -> str:
        return etag_of(self.model_dump_json().encode())


def etag_of(representation: bytes) -> str:
    """Strong validator of a task's JSON representation: any visible change changes it."""
    return f'"{hashlib.blake2b(representation, digest_size=12).hexdigest()}"'


class UserPublic(BaseModel):
    id: str
    email: str | None
    name: str | None


# --- List query -----------------------------------------------------------------------------


class TaskStatus(StrEnum):
    ALL = "all"
    PENDING = "pending"
    COMPLETED = "completed"


class TaskSort(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    TITLE = "title"
    DUE_DATE = "due_date"
    PRIORITY = "priority"


class SortOrder(StrEnum):
    ASC = "asc"
    DESC = "desc"


_SORT_SPELLINGS = {
    "created_at": "created",
    "createdat": "created",
    "updated_at": "updated",
    "updatedat": "updated",
    "duedate": "due_date",
}


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _sort_spelling(value: object) -> object:
    value = _lower(value)
    return _SORT_SPELLINGS.get(value, value) if isinstance(value, str) else value


def _optional_text(value: object) -> object:
    if value is None:
        return None
    text_value = _clean_text(value, allow_newlines=False).strip()
    return text_value or None


SearchText = Annotated[Annotated[str, Field(max_length=200)] | None, BeforeValidator(_optional_text)]


class TaskListQuery(BaseModel):
    """Filters, sort and page of a task list; shared by GET /tasks and GraphQL `tasks`."""

    # Frozen, hence hashable: GraphQL's DataLoader keys on it.
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    status: Annotated[TaskStatus, BeforeValidator(_lower)] = Field(
        default=TaskStatus.ALL, description="all, pending (not completed) or completed"
    )
    priority: Annotated[Priority | None, BeforeValidator(_lower)] = Field(
        default=None, description="Only tasks of this priority"
    )
    tag: SearchText = Field(default=None, description="Only tasks carrying this tag (exact, ignoring case)")
    search: SearchText = Field(
        default=None,
        validation_alias=AliasChoices("search", "q"),
        description="Case-insensitive substring of title or description; % and _ are literal (alias: q)",
    )
    sort: Annotated[TaskSort, BeforeValidator(_sort_spelling)] = Field(
        default=TaskSort.CREATED,
        validation_alias=AliasChoices("sort", "sort_by"),
        description="created, updated, title, due_date or priority; also created_at, updatedAt, dueDate, ... "
        "(alias: sort_by)",
    )
    order: Annotated[SortOrder, BeforeValidator(_lower)] = Field(
        default=SortOrder.DESC,
        validation_alias=AliasChoices("order", "sort_order"),
        description="asc or desc (alias: sort_order)",
    )
    page: int = Field(default=1, ge=1, le=PAGE_MAX, description="1-based page number")
    limit: int = Field(default=20, ge=1, le=LIMIT_MAX, description="Page size, 1-100")

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit
