"""The API's input and output shapes (pydantic), shared by REST and GraphQL, with every input rule.

Both transports validate through these models, so a rule exists once: REST through FastAPI, GraphQL
by building the same models from its arguments.
"""

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

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

from backend.models import DESCRIPTION_MAX, TITLE_MAX, Priority

TAGS_MAX = 10
TAG_MAX = 32
PAGE_MAX = 1_000_000
LIMIT_MAX = 100
INT32_MAX = 2**31 - 1


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


def single_line_text_problem(value: str) -> str | None:
    """Why `value` is not single-line text (None when it is), for a value no model holds."""
    try:
        _clean_text(value, allow_newlines=False)
    except PydanticCustomError as refused:
        return refused.message()
    return None


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


@dataclass(frozen=True, slots=True)
class VersionCheck:
    """A write's precondition: the task's current version (its ETag) is one of `versions`, or any.

    Transports parse it from what they receive (REST's If-Match, GraphQL's expectedVersion).
    """

    versions: frozenset[str] = frozenset()
    any_version: bool = False

    def allows(self, version: str) -> bool:
        return self.any_version or version in self.versions


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
    due_before: DueDate = Field(
        default=None, description="Only tasks due strictly before this instant (a date alone means 00:00 UTC)"
    )
    due_after: DueDate = Field(
        default=None, description="Only tasks due at or after this instant (a date alone means 00:00 UTC)"
    )
    overdue: bool | None = Field(
        default=None, description="true: only tasks not completed and due before now; false: all the others"
    )
    has_due_date: bool | None = Field(
        default=None, description="true: only tasks with a due date; false: only tasks without one"
    )
    page: int = Field(default=1, ge=1, le=PAGE_MAX, description="1-based page number")
    limit: int = Field(default=20, ge=1, le=LIMIT_MAX, description="Page size, 1-100")

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit
