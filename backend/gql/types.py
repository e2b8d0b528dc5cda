"""GraphQL types, inputs and enums, mapped explicitly from the service layer's models."""

from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum
from operator import attrgetter
from typing import TYPE_CHECKING, Annotated, Any

import strawberry

from backend import models, schemas
from backend.gql import operations
from backend.services.tasks import TaskPage

if TYPE_CHECKING:
    from backend.gql.context import Context


def _describe_enum(python_enum: type[Enum], name: str, description: str, values: dict[str, str]) -> None:
    """Register a model enum with GraphQL, with a description on every value."""
    strawberry.enum(python_enum, name=name, description=description)
    for value in python_enum.__strawberry_definition__.values:  # type: ignore[attr-defined]
        value.description = values[value.name]


_describe_enum(
    schemas.TaskStatus,
    "TaskStatus",
    "Which tasks a list returns, by completion.",
    {"ALL": "Every task.", "PENDING": "Tasks not completed yet.", "COMPLETED": "Completed tasks."},
)
_describe_enum(
    models.Priority,
    "Priority",
    "How important a task is. Sorting by priority ranks HIGH above MEDIUM above LOW.",
    {"LOW": "Low priority.", "MEDIUM": "Medium priority (the default).", "HIGH": "High priority."},
)
_describe_enum(
    schemas.TaskSort,
    "TaskSort",
    "The key a task list is sorted by; ties are broken by id, so pages never overlap.",
    {
        "CREATED": "Creation time.",
        "UPDATED": "Time of the last change.",
        "TITLE": "Title, ignoring case.",
        "DUE_DATE": "Due date; tasks without one come last in either order.",
        "PRIORITY": "Priority rank (HIGH > MEDIUM > LOW).",
    },
)
_describe_enum(
    schemas.SortOrder,
    "SortOrder",
    "Sort direction.",
    {"ASC": "Ascending (oldest, A-Z, LOW first).", "DESC": "Descending (newest, Z-A, HIGH first)."},
)


def _serialize_datetime(value: datetime) -> str:
    if value.tzinfo is not UTC:  # rows arrive in UTC already; converting anyway costs a new object each
        value = value.astimezone(UTC)
    return value.isoformat().replace("+00:00", "Z")


def _parse_datetime(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("DateTime must be an ISO-8601 string")
    return datetime.fromisoformat(value.strip().replace("z", "Z"))


DateTime = strawberry.scalar(
    name="DateTime",
    description="An ISO-8601 / RFC 3339 date-time, returned in UTC (`2026-01-31T09:30:00Z`). "
    "Input without an offset is taken as UTC; a date alone means midnight UTC.",
    serialize=_serialize_datetime,
    parse_value=_parse_datetime,
    specified_by_url="https://datatracker.ietf.org/doc/html/rfc3339",
)


# How each field reads the domain object, by Python name. `from_model` builds the Strawberry objects with
# these, and compiled plans (backend/gql/compiled.py) read the service's rows with them: the same values.
TASK_FIELDS: dict[str, Callable[[schemas.TaskPublic], Any]] = {
    "id": lambda task: strawberry.ID(str(task.id)),
    "version": lambda task: task.etag,
    "user_id": attrgetter("user_id"),
    "title": attrgetter("title"),
    "description": attrgetter("description"),
    "completed": attrgetter("completed"),
    "priority": attrgetter("priority"),
    "tags": attrgetter("tags"),
    "due_date": attrgetter("due_date"),
    "created_at": attrgetter("created_at"),
    "updated_at": attrgetter("updated_at"),
}
TASK_PAGE_FIELDS: dict[str, Callable[[TaskPage], Any]] = {
    "items": attrgetter("items"),  # TaskPublic rows: from_model turns them into TaskType
    "total": attrgetter("total"),
    "page": attrgetter("page"),
    "limit": attrgetter("limit"),
    "has_next": attrgetter("has_next"),
}
USER_FIELDS: dict[str, Callable[[schemas.UserPublic], Any]] = {
    "id": attrgetter("id"),
    "email": attrgetter("email"),
    "name": attrgetter("name"),
}


@strawberry.type(name="Task", description="A to-do item. Only its owner can see or change it.")
class TaskType:
    id: strawberry.ID = strawberry.field(description="Server-assigned identifier: digits, as a string.")
    version: str = strawberry.field(
        description="Changes whenever the task does (REST's ETag): pass it as `expectedVersion` to change "
        "the task only if nobody else has meanwhile."
    )
    user_id: str = strawberry.field(description="Id of the owner (the authenticated user).")
    title: str = strawberry.field(description="What to do: 1-200 characters, trimmed.")
    description: str | None = strawberry.field(description="Optional details, at most 1000 characters.")
    completed: bool = strawberry.field(description="Whether the task is done.")
    priority: models.Priority = strawberry.field(description="Importance: LOW, MEDIUM or HIGH.")
    tags: list[str] = strawberry.field(description="Up to 10 labels of 1-32 characters, unique ignoring case.")
    due_date: datetime | None = strawberry.field(description="When the task is due, if ever (UTC).")
    created_at: datetime = strawberry.field(description="When the task was created (UTC).")
    updated_at: datetime = strawberry.field(description="When the task last changed (UTC).")

    @strawberry.field(description="The task's owner: always the authenticated user.")
    async def owner(self, info: strawberry.Info["Context", None]) -> "UserType":
        return UserType.from_model(await operations.owner(info.context, user_id=self.user_id))

    @classmethod
    def from_model(cls, task: schemas.TaskPublic) -> "TaskType":
        return cls(**{name: value(task) for name, value in TASK_FIELDS.items()})


@strawberry.type(name="TaskPage", description="One page of a task list, with the total across all pages.")
class TaskPageType:
    items: list[TaskType] = strawberry.field(description="The tasks on this page.")
    total: int = strawberry.field(description="How many tasks match the filters, across all pages.")
    page: int = strawberry.field(description="This page's number, starting at 1.")
    limit: int = strawberry.field(description="The page size requested.")
    has_next: bool = strawberry.field(description="Whether a further page exists.")

    @classmethod
    def from_model(cls, page: TaskPage) -> "TaskPageType":
        values = {name: value(page) for name, value in TASK_PAGE_FIELDS.items()}
        values["items"] = [TaskType.from_model(task) for task in page.items]
        return cls(**values)


@strawberry.input(
    name="CreateTaskInput",
    description="A new task. Only `title` is required; the other fields have defaults.",
)
class CreateTaskInput:
    title: str = strawberry.field(description="1-200 characters after trimming.")
    description: str | None = strawberry.field(default=None, description="At most 1000 characters.")
    completed: bool | None = strawberry.field(default=strawberry.UNSET, description="Defaults to false.")
    priority: models.Priority | None = strawberry.field(default=strawberry.UNSET, description="Defaults to MEDIUM.")
    tags: list[str] | None = strawberry.field(
        default=strawberry.UNSET,
        description="Up to 10 tags of 1-32 characters; duplicates ignoring case are dropped, order kept.",
    )
    due_date: datetime | None = strawberry.field(default=None, description="When the task is due (UTC if no offset).")
    idempotency_key: str | None = strawberry.field(
        default=strawberry.UNSET,
        description="1-255 characters of your choice: a retry with the same key and input returns the task the "
        "first request created instead of a second one (as REST's Idempotency-Key; kept 24 h).",
    )


@strawberry.input(
    name="UpdateTaskInput",
    description="Fields to change; omitted fields keep their value. An explicit null clears "
    "`description` or `dueDate`; null is refused for the other fields.",
)
class UpdateTaskInput:
    title: str | None = strawberry.field(default=strawberry.UNSET, description="1-200 characters after trimming.")
    description: str | None = strawberry.field(
        default=strawberry.UNSET, description="At most 1000 characters; null clears it."
    )
    completed: bool | None = strawberry.field(default=strawberry.UNSET, description="Done or not.")
    priority: models.Priority | None = strawberry.field(default=strawberry.UNSET, description="LOW, MEDIUM or HIGH.")
    tags: list[str] | None = strawberry.field(default=strawberry.UNSET, description="Replaces all tags.")
    due_date: datetime | None = strawberry.field(default=strawberry.UNSET, description="null clears it.")


def provided_fields(graphql_input: object) -> dict[str, Any]:
    """The input's fields the client actually sent (explicit nulls included)."""
    return {name: value for name, value in vars(graphql_input).items() if value is not strawberry.UNSET}


async def resolve_tasks(
    root: Any,
    info: strawberry.Info["Context", None],
    status: Annotated[
        schemas.TaskStatus | None, strawberry.argument(description="Filter by completion (null: ALL).")
    ] = schemas.TaskStatus.ALL,
    priority: Annotated[models.Priority | None, strawberry.argument(description="Only tasks of this priority.")] = None,
    tag: Annotated[str | None, strawberry.argument(description="Only tasks with this tag, ignoring case.")] = None,
    search: Annotated[
        str | None,
        strawberry.argument(description="Case-insensitive text in title or description; % and _ are literal."),
    ] = None,
    due_before: Annotated[
        datetime | None,
        strawberry.argument(description="Only tasks due strictly before this instant (a date alone: 00:00 UTC)."),
    ] = None,
    due_after: Annotated[
        datetime | None,
        strawberry.argument(description="Only tasks due at or after this instant (a date alone: 00:00 UTC)."),
    ] = None,
    overdue: Annotated[
        bool | None,
        strawberry.argument(description="true: only tasks not completed and due before now; false: all the others."),
    ] = None,
    has_due_date: Annotated[
        bool | None, strawberry.argument(description="true: only tasks with a due date; false: only those without.")
    ] = None,
    sort: Annotated[
        schemas.TaskSort | None, strawberry.argument(description="Sort key (null: CREATED).")
    ] = schemas.TaskSort.CREATED,
    order: Annotated[
        schemas.SortOrder | None, strawberry.argument(description="Sort direction (null: DESC).")
    ] = schemas.SortOrder.DESC,
    page: Annotated[int | None, strawberry.argument(description="Page number, from 1 (null: 1).")] = 1,
    limit: Annotated[int | None, strawberry.argument(description="Page size, 1-100 (null: 20).")] = 20,
) -> TaskPageType:
    """Query.tasks and User.tasks."""
    page_of_tasks = await operations.tasks(
        info.context,
        user_id=root.id if isinstance(root, UserType) else None,
        status=status,
        priority=priority,
        tag=tag,
        search=search,
        due_before=due_before,
        due_after=due_after,
        overdue=overdue,
        has_due_date=has_due_date,
        sort=sort,
        order=order,
        page=page,
        limit=limit,
    )
    return TaskPageType.from_model(page_of_tasks)


@strawberry.type(name="User", description="A user of the app. You can only ever see yourself.")
class UserType:
    id: str = strawberry.field(description="The user's id (the token's subject).")
    email: str | None = strawberry.field(description="E-mail address, when known.")
    name: str | None = strawberry.field(description="Display name, when known.")
    tasks: TaskPageType = strawberry.field(resolver=resolve_tasks, description="This user's tasks, one page at a time.")

    @classmethod
    def from_model(cls, user: schemas.UserPublic) -> "UserType":
        return cls(**{name: value(user) for name, value in USER_FIELDS.items()})
